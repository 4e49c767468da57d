"""Makes TensorFlow (and tf2onnx) look not installed in every Python process started with this folder
on PYTHONPATH, as on the GPU machine, where TensorFlow is absent: the CPU dry run of `make gpu-check`
and the keras-jax/keras-torch worker tests prove that nothing on that path needs it.

Every import finder is wrapped so that it does not find the blocked packages: ``find_spec``
returns None (as torch._dynamo and Keras probe) and ``import tensorflow`` raises
ModuleNotFoundError, exactly as where the package is not installed."""

import sys

BLOCKED = ("tensorflow", "tf2onnx", "tf_keras")


class Hidden:
    """A finder that does not see the blocked packages and otherwise defers to the finder it wraps."""

    def __init__(self, finder):  # noqa: ANN001
        self.finder = finder

    def find_spec(self, name, path=None, target=None):  # noqa: ANN001, ANN201
        if name.split(".")[0] in BLOCKED:
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, attr):  # noqa: ANN001, ANN204
        return getattr(self.finder, attr)


sys.meta_path[:] = [Hidden(f) if hasattr(f, "find_spec") else f for f in sys.meta_path]
