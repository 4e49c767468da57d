"""Extractors from ONNX nodes to ParamGroups, one module per family of layers.

Importing this package registers every extractor with ``converters.rules.base.extractor``;
base.py holds what the rules share (ParamGroup, the registry, node helpers).
"""

from converters.rules import attention, linear, norm, recurrent  # noqa: F401
