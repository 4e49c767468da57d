"""Extractors from ONNX nodes to ParamGroups, one module per family of layers.

Importing this package registers every extractor with ``converters.params.extractor``.
"""

from converters.rules import attention, linear, norm, recurrent  # noqa: F401
