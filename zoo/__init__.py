"""Twin architectures in PyTorch and Keras, built from one config.

``zoo.get(name, preset="small", **overrides)`` returns a :class:`ModelSpec`;
``zoo.names()`` lists the models. Importing the zoo imports no framework: the family
modules import torch and Keras only inside their builders.

The registry lives in :mod:`zoo.registry`, which imports no family; each family module
registers its models there on import, and this package imports every family.
"""

from __future__ import annotations

from zoo import (  # noqa: F401  (each family registers its models on import)
    autoencoder,
    bert,
    cnn,
    mlp,
    mobilenet,
    resnet,
    rnn,
    tcn,
    unet,
    vit,
)
from zoo.registry import SpecFactory, UnknownModelError, get, names, register
from zoo.spec import ModelSpec, TensorSpec, Tolerance

__all__ = ["ModelSpec", "SpecFactory", "TensorSpec", "Tolerance", "UnknownModelError", "get", "names", "register"]
