"""Shared fixtures. torch is imported before TensorFlow: the other order can crash."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import torch  # noqa: E402,F401  (must precede TensorFlow)
