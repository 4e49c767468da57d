"""parity: port models between PyTorch and TensorFlow/Keras through ONNX and prove they compute the same numbers."""

__version__ = "0.1.0"
