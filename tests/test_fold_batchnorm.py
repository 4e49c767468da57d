"""BatchNorm folding for serving: converters.fold_batchnorm, the serving program, `parity convert --fold-batchnorm`."""

from __future__ import annotations

import numpy as np
import pytest
import torch  # noqa: F401  (torch before TensorFlow)

from converters.errors import ConversionError
from converters.fold_batchnorm import fold_keras, fold_torch, folded_kernel
from parity.errors import UsageError

# Folding rounds W * s once per element (float32 unit roundoff 6e-8) and moves the BatchNorm's
# multiply-add into the convolution's sum: the outputs differ by a few float32 roundings of dot
# products of at most 72 terms (sqrt(72) * 1.2e-7 ~ 1e-6 of the output scale). 1e-5 of the output
# scale leaves a tenfold margin and still fails for any wrong statistic, epsilon or channel order.
REL = 1e-5


def _close(a: np.ndarray, b: np.ndarray) -> None:
    scale = float(np.abs(b).max())
    np.testing.assert_allclose(a, b, atol=REL * scale, rtol=REL)


def _keras_bn_stats(model, rng: np.random.Generator) -> None:
    """Statistics and affine far from the defaults, so that a fold that ignores any of them fails."""
    import keras

    for layer in model.layers + [inner for m in model.layers if isinstance(m, keras.Sequential) for inner in m.layers]:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 2.0, c), rng.uniform(-1, 1, c), rng.uniform(-1, 1, c),
                               rng.uniform(0.2, 3.0, c)])


def keras_net():
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 3), name="x")
    a = layers.Conv2D(6, 3, padding="same", use_bias=False, name="conv1")(x)
    a = layers.BatchNormalization(epsilon=1e-5, name="bn1")(a)  # folded
    a = layers.ReLU(name="relu1")(a)
    b = layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(a)
    b = layers.BatchNormalization(name="bn_dw")(b)  # folded: channel c * 2 + j
    b = layers.ReLU(name="relu2")(b)
    b = layers.BatchNormalization(name="bn_after_relu")(b)  # kept: an activation comes first
    short = keras.Sequential([layers.Conv2D(12, 1, name="sc_conv"), layers.BatchNormalization(name="sc_bn")],
                             name="shortcut")(a)  # a nested Sequential: folded inside it
    c = layers.Add(name="add")([b, short])
    d = layers.Conv2D(4, 3, name="conv_twice")(c)
    e = layers.BatchNormalization(name="bn_shared_input")(d)  # kept: conv_twice is read twice
    f = layers.Add(name="add2")([e, d])
    g = layers.GlobalAveragePooling2D(name="gap")(f)
    g = layers.Dense(5, name="fc")(g)
    g = layers.BatchNormalization(name="bn_fc")(g)  # folded into the Dense
    model = keras.Model(x, g, name="net")
    _keras_bn_stats(model, np.random.default_rng(1))
    return model


def test_fold_keras_equal_outputs_original_untouched() -> None:
    import keras

    model = keras_net()
    before = [w.copy() for w in model.get_weights()]
    x = np.random.default_rng(2).uniform(-1, 1, (4, 8, 8, 3)).astype("float32")
    want = model(x, training=False).numpy()
    folded, pairs = fold_keras(model)
    assert pairs == [("conv1", "bn1"), ("dw", "bn_dw"), ("fc", "bn_fc"), ("sc_conv", "sc_bn")]
    _close(folded(x, training=False).numpy(), want)
    kept = {layer.name for layer in folded.layers if isinstance(layer, keras.layers.BatchNormalization)}
    assert kept == {"bn_after_relu", "bn_shared_input"}
    assert [layer.name for layer in folded.get_layer("shortcut").layers] == ["sc_conv"]
    assert folded.get_layer("conv1").use_bias and folded.get_layer("conv1").bias.shape == (6,)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), before, strict=True))
    assert "bn1" in [layer.name for layer in model.layers]  # the given model keeps its layers


def test_folded_kernel_depthwise_order() -> None:
    """Output channel k of a weight scaled by s[k]: the formula itself, against a hand-computed case."""
    w = np.ones((1, 1, 2, 2), np.float32)  # out_axis -1 of a reshaped depthwise kernel, 4 channels
    gamma, beta = np.array([1, 2, 3, 4], np.float32), np.array([0, 1, 0, 1], np.float32)
    mean, var = np.array([1, 0, 0, 0], np.float32), np.array([3, 0, 8, 15], np.float32)
    k, b = folded_kernel(w.reshape(1, 1, 4), None, gamma, beta, mean, var, 1.0, -1)
    np.testing.assert_allclose(k.ravel(), [0.5, 2.0, 1.0, 1.0])
    np.testing.assert_allclose(b, [-0.5, 1.0, 0.0, 1.0])


class TorchNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(6)  # folded
        self.conv2 = torch.nn.Conv2d(6, 6, 3, padding=1, groups=3)
        self.bn2 = torch.nn.BatchNorm2d(6)  # folded (grouped convolution)
        self.bn3 = torch.nn.BatchNorm2d(6)  # kept: after a ReLU
        self.conv3 = torch.nn.Conv2d(6, 6, 1)
        self.bn4 = torch.nn.BatchNorm2d(6)  # kept: conv3 is read twice
        self.conv1d = torch.nn.Conv1d(6, 4, 3)
        self.bn1d = torch.nn.BatchNorm1d(4)  # folded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.bn3(torch.relu(self.bn2(self.conv2(x))))
        y = self.conv3(x)
        x = self.bn4(y) + y
        return self.bn1d(self.conv1d(x.mean(dim=3)))


def _torch_net() -> TorchNet:
    torch.manual_seed(0)
    net = TorchNet()
    gen = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.weight.data = torch.rand(c, generator=gen) * 1.5 + 0.5
            m.bias.data = torch.rand(c, generator=gen) * 2 - 1
            m.running_mean = torch.rand(c, generator=gen) * 2 - 1
            m.running_var = torch.rand(c, generator=gen) * 2.8 + 0.2
    return net.train()


def test_fold_torch_equal_outputs_original_untouched() -> None:
    net = _torch_net()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.from_numpy(np.random.default_rng(2).uniform(-1, 1, (4, 3, 8, 8)).astype("float32"))
    folded, pairs = fold_torch(net)
    assert pairs == [("conv1", "bn1"), ("conv2", "bn2"), ("conv1d", "bn1d")]
    assert type(folded) is TorchNet and isinstance(folded.bn1, torch.nn.Identity)
    assert isinstance(folded.bn3, torch.nn.BatchNorm2d) and isinstance(folded.bn4, torch.nn.BatchNorm2d)
    assert net.training and isinstance(net.bn1, torch.nn.BatchNorm2d)  # the given model: mode and layers kept
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    with torch.no_grad():
        want = net.eval()(x).numpy()
        got = folded(x).numpy()
    _close(got, want)


def test_fold_refuses_what_it_cannot_rebuild() -> None:
    import keras

    class Sub(keras.Model):
        def __init__(self) -> None:
            super().__init__(name="sub")
            self.conv = keras.layers.Conv2D(2, 1)
            self.bn = keras.layers.BatchNormalization()

        def call(self, x):
            return self.bn(self.conv(x))

    sub = Sub()
    sub(np.zeros((1, 4, 4, 1), "float32"))
    with pytest.raises(ConversionError, match="functional or Sequential"):
        fold_keras(sub)
    with pytest.raises(ConversionError, match="is not built: give it an Input"):
        fold_keras(keras.Sequential([keras.layers.Conv2D(2, 1), keras.layers.BatchNormalization()]))

    class Branchy(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x if x.sum() > 0 else -x  # data-dependent: fx cannot trace it

    with pytest.raises(ConversionError, match="torch.fx"):
        fold_torch(Branchy())
    with pytest.raises(ConversionError, match="torch.nn.Module"):
        fold_torch("model.pt")


@pytest.mark.parametrize("flags", [{"grads": True}, {"train_steps": 3}, {"layers": True}],
                         ids=["grads", "train-steps", "layers"])
def test_convert_refuses_training_with_fold(tmp_path, flags) -> None:
    from parity.convert import convert_zoo

    with pytest.raises(UsageError, match="for serving, not training"):
        convert_zoo("cnn", tmp_path / "out", fold_batchnorm=True, **flags)
    assert not (tmp_path / "out").exists()


def test_cli_refuses_fold_of_an_onnx_file(tmp_path, capsys) -> None:
    from parity.cli import main

    code = main(["convert", "--onnx", str(tmp_path / "m.onnx"), "--to", "tf", "--out", str(tmp_path / "o"),
                 "--fold-batchnorm"])
    assert code == 2
    assert "--fold-batchnorm needs a source model" in capsys.readouterr().err


@pytest.mark.parametrize("source", ["torch", "tf"])
def test_convert_cnn_serving_twin(tmp_path, source) -> None:
    """The zoo cnn's serving twin in each direction: no BatchNorm left in model.py, parity at the zoo's
    tolerance on every runtime, and the serving note in parity.json."""
    import json

    from converters.fold_batchnorm import SERVING_NOTE
    from parity.convert import convert_zoo

    out = tmp_path / "twin"
    result = convert_zoo("cnn", out, source=source, fold_batchnorm=True)
    assert result.passed, [c.to_dict() for c in result.result.comparisons]
    assert {c.a for c in result.result.comparisons} == {"tf" if source == "torch" else "torch", "ort-torch", "ort-tf"}
    code = (out / "model.py").read_text()
    assert "BatchNormalization(" not in code and "nn.BatchNorm" not in code and "for serving, not training" in code
    data = json.loads((out / "parity.json").read_text())
    assert data["notes"][0].startswith(SERVING_NOTE) and "2 BatchNorms folded" in data["notes"][0]
    weights = "model.safetensors" if source == "tf" else "model.weights.h5"
    assert data["files"]["weights"] == str((out / weights).resolve())
    assert sorted(p.name for p in out.iterdir()) == sorted(["model.py", weights, "parity.json", "port_report.json",
                                                            "source.onnx"])


def test_port_writes_a_folded_serving_copy(tmp_path, capsys) -> None:
    """`parity port cnn --fold-batchnorm`: serving.keras beside the ported weights, loadable in safe mode,
    without BatchNorm, computing what the ported twin computes."""
    import keras

    import zoo
    from parity.cli import main

    out = tmp_path / "port"
    assert main(["port", "cnn", "--from", "torch", "--out", str(out), "--fold-batchnorm"]) == 0
    printed = capsys.readouterr().out
    assert "serving.keras: 2 BatchNorms folded (inference-only" in printed
    serving = keras.models.load_model(out / "serving.keras", safe_mode=True)
    ported = zoo.get("cnn", preset="small").build("tf", 1)
    ported.load_weights(out / "target.weights.h5")
    assert not any(isinstance(la, keras.layers.BatchNormalization) for la in serving.layers)
    assert any(isinstance(la, keras.layers.BatchNormalization) for la in ported.layers)
    x = np.random.default_rng(3).uniform(-1, 1, (2, 16, 16, 3)).astype("float32")
    _close(serving(x, training=False).numpy(), ported(x, training=False).numpy())


class _OwnNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.relu(self.bn(self.conv(x))), 1))


def test_convert_own_model_serving_twin(tmp_path) -> None:
    """Your own torch model through convert_models(fold_batchnorm=True): checked as it is, source untouched."""
    from parity.convert import convert_models

    net = _torch_net_like(_OwnNet())
    state = {k: v.clone() for k, v in net.state_dict().items()}
    result = convert_models(net, {"x": (3, 8, 8)}, tmp_path / "twin", fold_batchnorm=True)
    assert result.passed and len(result.result.comparisons) == 3
    assert "(1 BatchNorm folded)" in result.result.notes[-2]
    assert "BatchNormalization(" not in (tmp_path / "twin" / "model.py").read_text()
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())


def _torch_net_like(net: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean = torch.rand(m.num_features, generator=gen) * 2 - 1
            m.running_var = torch.rand(m.num_features, generator=gen) + 0.5
    return net.eval()
