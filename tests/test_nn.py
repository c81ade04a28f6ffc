"""pylenet.nn / pylenet.models: shape inference, parameter counts, init, summary, predict."""
import numpy as np
import pytest

from pylenet import models
from pylenet.nn import AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential, Tanh, layer_from_config

MODEL_NAMES = ["lenet5", "lenet5_classic", "cudnn_lenet"]

# Hand-derived (per sample) output shapes and parameter counts.
EXPECTED_SHAPES = {
    "lenet5": [(6, 28, 28), (6, 28, 28), (6, 14, 14), (16, 10, 10), (16, 10, 10), (16, 5, 5), (400,), (120,),
               (120,), (84,), (84,), (10,)],
    "lenet5_classic": [(6, 28, 28), (6, 28, 28), (6, 14, 14), (16, 10, 10), (16, 10, 10), (16, 5, 5), (400,),
                       (120,), (120,), (84,), (84,), (10,)],
    "cudnn_lenet": [(20, 24, 24), (20, 12, 12), (50, 8, 8), (50, 4, 4), (800,), (500,), (500,), (10,)],
}
EXPECTED_PARAMS = {
    "lenet5": 156 + 2416 + 48120 + 10164 + 850,             # 61,706
    "lenet5_classic": 156 + 2416 + 48120 + 10164 + 850,
    "cudnn_lenet": 520 + 25050 + 400500 + 5010,             # 431,080
}


def torch_twin(model):
    """The torch.nn.Sequential with the same layers and weights (pylenet.bench builds it)."""
    pytest.importorskip("torch")
    from pylenet.bench import torch_twin as build
    return build(model)


def summary(model, **kw):
    return model.summary(print_fn=None, **kw)


# ----------------------------------------------------------------------------- models
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_shapes_and_param_counts(name):
    m = models.create(name)
    s = summary(m, batch_size=3)
    assert [r["out_shape"] for r in s["layers"]] == [(3, *shp) for shp in EXPECTED_SHAPES[name]]
    assert m.num_parameters() == EXPECTED_PARAMS[name] == s["total_params"]
    assert sum(r["params"] for r in s["layers"]) == EXPECTED_PARAMS[name]
    assert m.num_classes == 10
    assert models.lenet5().num_parameters() == 61706


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_matches_torch_twin(name):
    torch = pytest.importorskip("torch")
    m = models.create(name)
    twin = torch_twin(m)
    assert sum(p.numel() for p in twin.parameters()) == m.num_parameters()
    sd = m.state_dict()
    tsd = twin.state_dict()
    assert list(sd) == list(tsd)
    assert all(tuple(tsd[k].shape) == sd[k].shape for k in sd)
    x = torch.zeros(2, *m.input_shape)
    shapes = []
    for layer in twin:
        x = layer(x)
        shapes.append(tuple(x.shape[1:]))
    assert shapes == [r["out_shape"][1:] for r in summary(m, batch_size=2)["layers"]]


def test_create_unknown_model():
    with pytest.raises(ValueError, match="unknown model"):
        models.create("alexnet")


def test_seeded_init_like_pytorch():
    a, b, c = models.lenet5(seed=0), models.lenet5(seed=0), models.lenet5(seed=1)
    for (k, va), vb, vc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert va.dtype == np.float32
        np.testing.assert_array_equal(va, vb)
        assert not np.array_equal(va, vc), k
    # Kaiming-uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases.
    big = models.cudnn_lenet(seed=3)
    for layer in big.layers:
        if isinstance(layer, (Conv2d, Linear)):
            fan_in = layer.weight[0].size
            bound = 1 / np.sqrt(fan_in)
            for arr in (layer.weight, layer.bias):
                assert np.abs(arr).max() <= bound
            assert np.abs(layer.weight).max() > 0.9 * bound
            assert abs(float(layer.weight.mean())) < 0.1 * bound
    assert models.lenet5().reset_parameters(1).state_dict()["0.weight"].tolist() == \
        c.state_dict()["0.weight"].tolist()


def test_architecture_round_trip():
    for name in MODEL_NAMES:
        m = models.create(name)
        rebuilt = Sequential(*[layer_from_config(c) for c in m.architecture()], input_shape=m.input_shape)
        assert rebuilt.architecture() == m.architecture()
        assert repr(m).count("\n") == len(m.layers) + 1


# ----------------------------------------------------------------------------- shape inference
IMPOSSIBLE = {
    "conv-channel-mismatch": ((Conv2d(1, 6, 5), Conv2d(3, 8, 3), Flatten(), Linear(8 * 22 * 22, 10)), "layer 1"),
    "linear-in-features": ((Conv2d(1, 6, 5), Flatten(), Linear(100, 10)), "layer 2"),
    "conv-kernel-too-big": ((Conv2d(1, 6, 29), Flatten(), Linear(10, 10)), "layer 0"),
    "pool-kernel-too-big": ((Conv2d(1, 6, 5), MaxPool2d(30), Flatten(), Linear(10, 10)), "layer 1"),
    "linear-without-flatten": ((Conv2d(1, 6, 5), Linear(6 * 24 * 24, 10)), "layer 1"),
    "conv-after-flatten": ((Flatten(), Linear(784, 10), Conv2d(1, 2, 3)), "layer 2"),
    "pool-after-linear": ((Flatten(), Linear(784, 10), AvgPool2d(2)), "layer 2"),
    "second-conv-too-big": ((Conv2d(1, 6, 5), MaxPool2d(2), Conv2d(6, 16, 13), Flatten(), Linear(16, 10)),
                            "layer 2"),
    "not-ending-1d": ((Conv2d(1, 6, 5), ReLU()), "last layer"),
    "one-class": ((Flatten(), Linear(784, 1)), "2 classes"),
}


@pytest.mark.parametrize("case", list(IMPOSSIBLE))
def test_impossible_stacks_raise_naming_the_layer(case):
    layers, where = IMPOSSIBLE[case]
    with pytest.raises(ValueError) as e:
        Sequential(*layers, name="bad")
    assert where in str(e.value)
    assert str(e.value).startswith("bad:")


def test_input_shape_mismatch_and_bad_layers():
    with pytest.raises(ValueError, match="layer 1"):
        Sequential(Flatten(), Linear(784, 10), input_shape=(2, 28, 28))
    with pytest.raises(ValueError, match="layer 0"):
        Sequential(Conv2d(1, 6, 5, stride=0), Flatten(), Linear(10, 10))
    with pytest.raises(ValueError, match="layer 0"):
        Sequential(Conv2d(1, 6, 5, padding=-1), Flatten(), Linear(10, 10))
    with pytest.raises(ValueError):
        Sequential(Flatten(), Linear(784, 10), input_shape=(0, 28, 28))
    with pytest.raises(TypeError, match="layer 1"):
        Sequential(Flatten(), "relu", Linear(784, 10))
    with pytest.raises(ValueError):
        Conv2d(0, 6, 5)
    with pytest.raises(ValueError):
        Linear(10, -1)
    with pytest.raises(TypeError):
        Conv2d(1, 6, 2.5)


def test_valid_custom_stack():
    m = Sequential(Conv2d(3, 4, (3, 5), stride=(2, 1), padding=(1, 2), bias=False), Tanh(), AvgPool2d(2, stride=1),
                   Flatten(), Linear(4 * 15 * 31, 7), input_shape=(3, 32, 32), name="custom")
    assert [r["out_shape"] for r in summary(m, batch_size=1)["layers"]] == \
        [(1, 4, 16, 32), (1, 4, 16, 32), (1, 4, 15, 31), (1, 1860), (1, 7)]
    assert list(m.state_dict()) == ["0.weight", "4.weight", "4.bias"]
    assert m.num_classes == 7
    ids, probs = m.predict(np.zeros((5, 3, 32, 32), np.float32), return_probs=True)
    assert ids.shape == (5,) and probs.shape == (5, 7)


# ----------------------------------------------------------------------------- summary
def test_summary_is_consistent(capsys):
    m = models.lenet5()
    s = m.summary(batch_size=64)
    printed = capsys.readouterr().out
    assert "61,706" in printed and "memory plan" in printed
    for key in ("params", "grads", "optimizer_state", "activations", "activation_grads", "workspace", "total"):
        assert key in printed
    p = s["memory_plan"]
    n = m.num_parameters()
    assert p["params"] == 4 * n
    assert p["grads"] >= 4 * n  # at least one gradient buffer (the runtime may keep one per chunk)
    assert p["optimizer_state"] == 4 * n  # SGD momentum: one velocity buffer
    parts = {k: v for k, v in p.items() if k not in ("total", "batch_size", "batch_capacity")}
    assert set(parts) >= {"params", "grads", "optimizer_state", "activations", "activation_grads", "workspace"}
    assert all(v >= 0 for v in parts.values())
    assert p["total"] == sum(parts.values())  # every buffer the plan lists, and nothing else
    # Activations: at least the input batch and every non-view layer's output.
    rows = s["layers"]
    assert p["activations"] >= 4 * 64 * 784 + sum(r["activation_bytes"] for r in rows)
    for r, nxt in zip(rows, rows[1:] + [None]):
        # No buffer of its own: Flatten (a view), and a ReLU before a max pool (the runtime
        # runs it in place on the pool's output).
        own = r["layer"] != "Flatten()" and not (r["layer"] == "ReLU()" and nxt and nxt["layer"].startswith("MaxPool2d"))
        expected = 4 * int(np.prod(r["out_shape"])) if own else 0
        assert r["activation_bytes"] == expected, r
    # FLOPs: forward ~ 2 x multiply-adds of conv/linear (plus bias/activation/pool extras),
    # training = 3 x forward, and the per-layer rows add up.
    macs = 6 * 28 * 28 * 25 + 16 * 10 * 10 * 150 + 400 * 120 + 120 * 84 + 84 * 10
    fwd = s["forward_flops_per_sample"]
    assert 2 * macs <= fwd <= 1.05 * 2 * macs
    assert s["training_flops_per_sample"] == pytest.approx(3 * fwd)
    assert sum(r["flops"] for r in rows) == pytest.approx(64 * fwd)


def test_summary_scales_with_batch_and_optimizer():
    m = models.cudnn_lenet()
    small, big = summary(m, batch_size=16), summary(m, batch_size=64)
    n = m.num_parameters()
    assert small["memory_plan"]["params"] == big["memory_plan"]["params"] == 4 * n
    ratio = big["memory_plan"]["activations"] / small["memory_plan"]["activations"]
    assert 3.5 < ratio <= 4.01
    adam = summary(m, batch_size=16, optimizer="adam")
    assert adam["memory_plan"]["optimizer_state"] == 2 * 4 * n
    assert summary(m, batch_size=16, optimizer="adadelta")["memory_plan"]["optimizer_state"] == 2 * 4 * n
    assert big["input_shape"] == (64, 1, 28, 28)


# ----------------------------------------------------------------------------- predict
@pytest.fixture(scope="module")
def model():
    return models.lenet5(seed=7)


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def test_predict_single_image_forms(model, rng):
    x = rng.standard_normal((1, 28, 28)).astype(np.float32)
    ids, probs = model.predict(x, return_probs=True)
    assert ids.shape == (1,) and probs.shape == (1, 10) and probs.dtype == np.float32
    ids2, probs2 = model.predict(x[0], return_probs=True)  # (28, 28)
    ids3, probs3 = model.predict(x[None], return_probs=True)  # batch of 1
    np.testing.assert_array_equal(probs, probs2)
    np.testing.assert_array_equal(probs, probs3)
    assert ids[0] == ids2[0] == ids3[0] == probs[0].argmax()
    ids4 = model.predict(x.astype(np.float64))  # other real dtypes are converted
    assert ids4[0] == ids[0]
    assert model.predict(np.zeros((28, 28), np.uint8)).shape == (1,)


def test_predict_large_batch_matches_chunks(model, rng):
    x = rng.standard_normal((1000, 1, 28, 28)).astype(np.float32)  # > the 256-image inference batch
    ids, probs = model.predict(x, return_probs=True)
    assert ids.shape == (1000,) and probs.shape == (1000, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=0, atol=1e-5)
    assert (probs >= 0).all()
    np.testing.assert_array_equal(ids, probs.argmax(axis=1))
    # The same images one at a time and in odd-sized chunks give the same answers.
    for sl in (slice(0, 1), slice(255, 258), slice(511, 1000)):
        np.testing.assert_allclose(model.predict(x[sl], return_probs=True)[1], probs[sl], rtol=1e-5, atol=1e-6)
    assert len(set(ids.tolist())) > 1  # not a constant output


def test_predict_probs_match_torch(model, rng):
    torch = pytest.importorskip("torch")
    twin = torch_twin(model)
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    x = rng.standard_normal((300, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        ref = torch.softmax(twin.double()(torch.from_numpy(x).double()), dim=1).numpy()
    _, probs = model.predict(x, return_probs=True)
    np.testing.assert_allclose(probs, ref, rtol=1e-4, atol=1e-6)


def test_predict_grey_batch_without_channel_axis(model, rng):
    x = rng.standard_normal((5, 28, 28)).astype(np.float32)
    _, with_c = model.predict(x[:, None], return_probs=True)
    np.testing.assert_array_equal(model.predict(x, return_probs=True)[1], with_c)


@pytest.mark.parametrize("shape", [(28,), (2, 28), (1, 1, 28), (3, 1, 28, 27), (2, 2, 28, 28), (0, 1, 28, 28),
                                   (2, 1, 1, 28, 28), (27, 28)])
def test_predict_wrong_shapes(model, shape):
    with pytest.raises(ValueError):
        model.predict(np.zeros(shape, np.float32))


def test_predict_wrong_types(model):
    with pytest.raises(TypeError):
        model.predict("image.png")
    with pytest.raises(TypeError):
        model.predict(np.array([["a"] * 28] * 28))
    with pytest.raises(TypeError):
        model.predict(np.zeros((28, 28), dtype=object))
