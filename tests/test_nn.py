"""pylenet.nn / pylenet.models: modules as PyTorch users write them, shapes, init, summary, predict."""
from collections import OrderedDict

import numpy as np
import pytest

import pylenet
import pylenet.functional as F
import pylenet.nn as nn
from pylenet import models
from pylenet.nn import AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential, Tanh

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
    """The torch.nn twin with the same modules and weights (pylenet.bench builds it)."""
    pytest.importorskip("torch")
    from pylenet.bench import torch_twin as build
    return build(model)


def summary(model, **kw):
    return model.summary(print_fn=None, **kw)


class Residual(nn.Module):
    """A small model using every kind of registration and op."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.blocks = nn.Sequential(OrderedDict([("a", nn.Conv2d(4, 4, 3, padding=1)), ("act", nn.ReLU())]))
        self.scale = nn.Parameter(np.ones(3, np.float32))  # registered, unused in forward
        self.register_buffer("steps", np.zeros((), np.int64))
        self.head = nn.Linear(8 * 14 * 14, 3)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        y = self.blocks(x)
        x = pylenet.cat([x + y, y], dim=1)
        x = F.max_pool2d(x, 2)
        return self.head(x.flatten(1))


# ----------------------------------------------------------------------------- modules
def test_registration_and_names_like_pytorch():
    m = Residual()
    assert [n for n, _ in m.named_parameters()] == [
        "scale", "stem.weight", "stem.bias", "bn.weight", "bn.bias", "blocks.a.weight", "blocks.a.bias",
        "head.weight", "head.bias"]
    assert [n for n, _ in m.named_buffers()] == ["steps", "bn.running_mean", "bn.running_var",
                                                 "bn.num_batches_tracked"]
    assert list(m.state_dict()) == [
        "scale", "steps", "stem.weight", "stem.bias", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
        "bn.num_batches_tracked", "blocks.a.weight", "blocks.a.bias", "head.weight", "head.bias"]
    assert [n for n, _ in m.named_children()] == ["stem", "bn", "blocks", "head"]
    assert [n for n, _ in m.named_modules()] == ["", "stem", "bn", "blocks", "blocks.a", "blocks.act", "head"]
    assert len(list(m.parameters())) == 9 and len(list(m.buffers())) == 4
    assert m.bn.num_batches_tracked.dtype == np.int64 and m.bn.num_batches_tracked.shape == ()
    m.eval()
    assert not any(x.training for x in m.modules())
    m.train()
    assert all(x.training for x in m.modules())
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        m.nope
    del m.scale
    assert "scale" not in dict(m.named_parameters())


def test_repr_like_pytorch():
    assert repr(models.lenet()) == (
        "LeNet(\n"
        "  (conv1): Conv2d(1, 6, kernel_size=(5, 5), stride=(1, 1), padding=(2, 2))\n"
        "  (conv2): Conv2d(6, 16, kernel_size=(5, 5), stride=(1, 1))\n"
        "  (fc1): Linear(in_features=400, out_features=120, bias=True)\n"
        "  (fc2): Linear(in_features=120, out_features=84, bias=True)\n"
        "  (fc3): Linear(in_features=84, out_features=10, bias=True)\n"
        ")")
    assert repr(nn.BatchNorm2d(6)) == "BatchNorm2d(6, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)"
    assert repr(nn.Dropout(0.25)) == "Dropout(p=0.25, inplace=False)"


def test_parameters_view_one_flat_buffer():
    m = models.lenet()
    params = list(m.parameters())
    store = params[0]._store
    assert store.size == m.num_parameters() == 61706
    base = store.__array_interface__["data"][0]
    offsets = [(p.__array_interface__["data"][0] - base) // 4 for p in params]
    assert offsets == list(np.cumsum([0] + [p.size for p in params[:-1]]))
    # Writing through a parameter writes the buffer, and a compiled step updates the parameters in place.
    m.conv1.weight[0, 0, 0, 0] = 0.5
    assert store[0] == 0.5
    step = pylenet.compile(m, optimizer=pylenet.optim.SGD(m.parameters(), lr=0.1), batch_size=8)
    before = m.fc3.bias.copy()
    rng = np.random.default_rng(0)
    step(rng.standard_normal((8, 1, 28, 28)), rng.integers(0, 10, 8))
    assert not np.array_equal(before, m.fc3.bias)
    assert m.fc3.bias.__array_interface__["data"][0] == base + 4 * offsets[-1]  # still the same memory


def test_parameter_semantics():
    p = nn.Parameter(np.arange(6, dtype=np.float64).reshape(2, 3))
    assert isinstance(p, np.ndarray) and p.dtype == np.float32 and p.requires_grad
    q = p * 2
    assert type(q) is np.ndarray  # arithmetic gives plain arrays
    assert nn.Parameter(np.zeros(3), requires_grad=False).requires_grad is False
    with pytest.raises(TypeError):
        nn.Parameter(np.array(["a"]))
    m = nn.Linear(3, 2)
    with pytest.raises(TypeError, match="nn.Parameter or None"):
        m.weight = np.zeros((2, 3))
    m.bias = None
    assert "bias" not in dict(m.named_parameters())


def test_module_without_super_init_is_a_clear_error():
    class Broken(nn.Module):
        def __init__(self):
            self.fc = nn.Linear(2, 2)

    with pytest.raises(AttributeError, match="super\\(\\).__init__"):
        Broken()


def test_load_state_dict_reports_every_problem_and_writes_nothing():
    m = models.lenet()
    good = m.state_dict()
    bad = dict(good)
    bad["conv1.weight"] = np.zeros((6, 1, 3, 3), np.float32)
    bad["fc1.bias"] = good["fc1.bias"].astype(np.float64)
    bad["fc2.bias"] = np.full(84, np.nan, np.float32)
    del bad["fc3.bias"]
    bad["extra"] = np.zeros(1, np.float32)
    before = m.state_dict()
    with pytest.raises(ValueError) as e:
        m.load_state_dict(bad)
    for needle in ("conv1.weight: shape (6, 1, 3, 3)", "fc1.bias: dtype float64", "fc2.bias: contains NaN",
                   "missing fc3.bias", "unexpected extra"):
        assert needle in str(e.value)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    partial = {k: v for k, v in good.items() if k != "fc3.bias"}
    missing, unexpected = m.load_state_dict(partial, strict=False)
    assert missing == ["fc3.bias"] and unexpected == []


def test_state_dict_both_ways_with_torch_including_batch_norm():
    torch = pytest.importorskip("torch")
    tnn = torch.nn
    tm = tnn.Sequential(tnn.Conv2d(1, 3, 3), tnn.BatchNorm2d(3), tnn.ReLU(), tnn.Flatten(), tnn.Linear(3 * 26 * 26, 4),
                        tnn.BatchNorm1d(4))
    with torch.no_grad():  # non-trivial running statistics and counters
        tm.train()
        for _ in range(3):
            tm(torch.randn(5, 1, 28, 28))
    m = Sequential(Conv2d(1, 3, 3), nn.BatchNorm2d(3), ReLU(), Flatten(), Linear(3 * 26 * 26, 4), nn.BatchNorm1d(4))
    m.load_state_dict(tm.state_dict())  # as it is, num_batches_tracked included
    assert int(m[1].num_batches_tracked) == 3
    back = tnn.Sequential(tnn.Conv2d(1, 3, 3), tnn.BatchNorm2d(3), tnn.ReLU(), tnn.Flatten(), tnn.Linear(3 * 26 * 26, 4),
                          tnn.BatchNorm1d(4))
    back.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in m.state_dict().items()})
    for (k, a), b in zip(tm.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), k
    x = np.random.default_rng(0).standard_normal((7, 1, 28, 28)).astype(np.float32)
    tm.eval()
    m.eval()
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(m(x), ref, rtol=1e-4, atol=1e-5)


def test_manual_seed_seeds_initialisation():
    pylenet.manual_seed(5)
    a = models.LeNet().state_dict()
    pylenet.manual_seed(5)
    b = models.LeNet().state_dict()
    c = models.LeNet().state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["conv1.weight"], c["conv1.weight"])
    with pytest.raises(TypeError):
        pylenet.manual_seed(1.5)


# ----------------------------------------------------------------------------- models
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_shapes_and_param_counts(name):
    m = models.create(name)
    s = summary(m, batch_size=3)
    assert [r["out_shape"] for r in s["layers"]] == [(3, *shp) for shp in EXPECTED_SHAPES[name]]
    assert m.num_parameters() == EXPECTED_PARAMS[name] == s["total_params"]
    assert sum(r["params"] for r in s["layers"]) == EXPECTED_PARAMS[name]
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


def test_the_class_lenet_is_lenet5():
    a, b = models.lenet5(seed=4), models.lenet(seed=4)
    for va, vb in zip(a.state_dict().values(), b.state_dict().values()):
        np.testing.assert_array_equal(va, vb)
    x = np.random.default_rng(1).standard_normal((9, 1, 28, 28)).astype(np.float32)
    np.testing.assert_array_equal(a(x), b(x))


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
    for layer in big.modules():
        if isinstance(layer, (Conv2d, Linear)):
            fan_in = layer.weight[0].size
            bound = 1 / np.sqrt(fan_in)
            for arr in (layer.weight, layer.bias):
                assert np.abs(arr).max() <= bound
            assert np.abs(layer.weight).max() > 0.9 * bound
            assert abs(float(layer.weight.mean())) < 0.1 * bound
    assert models.lenet5().reset_parameters(1).state_dict()["0.weight"].tolist() == \
        c.state_dict()["0.weight"].tolist()


# ----------------------------------------------------------------------------- shape inference
IMPOSSIBLE = {
    "conv-channel-mismatch": ((Conv2d(1, 6, 5), Conv2d(3, 8, 3), Flatten(), Linear(8 * 22 * 22, 10)),
                              "Sequential.1", "expects 3 input channels, got 6"),
    "linear-in-features": ((Conv2d(1, 6, 5), Flatten(), Linear(100, 10)), "Sequential.2",
                           "Linear expects 100 input features, got 3456"),
    "conv-kernel-too-big": ((Conv2d(1, 6, 29), Flatten(), Linear(10, 10)), "Sequential.0", "larger than"),
    "pool-kernel-too-big": ((Conv2d(1, 6, 5), MaxPool2d(30), Flatten(), Linear(10, 10)), "Sequential.1",
                            "larger than"),
    "linear-without-flatten": ((Conv2d(1, 6, 5), Linear(6 * 24 * 24, 10)), "Sequential.1", "flatten it first"),
    "conv-after-flatten": ((Flatten(), Linear(784, 10), Conv2d(1, 2, 3)), "Sequential.2", "4-D"),
    "pool-after-linear": ((Flatten(), Linear(784, 10), AvgPool2d(2)), "Sequential.2", "4-D"),
    "second-conv-too-big": ((Conv2d(1, 6, 5), MaxPool2d(2), Conv2d(6, 16, 13), Flatten(), Linear(16, 10)),
                            "Sequential.2", "larger than"),
}


@pytest.mark.parametrize("case", list(IMPOSSIBLE))
def test_impossible_stacks_raise_naming_the_module_and_line(case):
    layers, where, what = IMPOSSIBLE[case]
    with pytest.raises(pylenet.TraceError) as e:
        Sequential(*layers, input_shape=(1, 28, 28))
    msg = str(e.value)
    assert msg.startswith(where) and what in msg and "test_nn.py:" in msg


def test_error_names_module_path_and_source_line():
    class LeNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 6, 5)
            self.fc1 = nn.Linear(400, 120)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv1(x)), 2)
            return self.fc1(x.view(x.size(0), -1))  # 6 * 12 * 12 features, not 400

    import inspect
    line = inspect.getsourcelines(LeNet.forward)[1] + 2
    with pytest.raises(pylenet.TraceError) as e:
        LeNet()(np.zeros((2, 1, 28, 28), np.float32))
    assert str(e.value) == f"LeNet.fc1 (test_nn.py:{line}): Linear expects 400 input features, got 864"


def test_control_flow_on_shapes_works_on_values_raises():
    class ShapeBranch(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)
            self.big = nn.Linear(16, 2)

        def forward(self, x):
            if x.shape[1] == 16:  # a shape: fine
                return self.big(x)
            return self.fc(x)

    m = ShapeBranch()
    assert m(np.zeros((3, 4), np.float32)).shape == (3, 2)
    assert m(np.zeros((3, 16), np.float32)).shape == (3, 2)

    class ValueBranch(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            y = self.fc(x)
            if y:  # a value: cannot be known while tracing
                return y
            return y

    with pytest.raises(pylenet.TraceError, match="needs the tensor's values"):
        ValueBranch()(np.zeros((3, 4), np.float32))


def test_constants_and_foreign_modules_are_refused():
    class Constant(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)
            self.w = np.ones((2, 4), np.float32)  # not a Parameter

        def forward(self, x):
            return F.linear(x, self.w)

    with pytest.raises(pylenet.TraceError, match="not a parameter or buffer"):
        Constant()(np.zeros((1, 4), np.float32))

    outside = nn.Linear(4, 2)

    class Foreign(nn.Module):
        def forward(self, x):
            return outside(x)

    with pytest.raises(pylenet.TraceError, match="not a submodule"):
        Foreign()(np.zeros((1, 4), np.float32))


def test_bad_layer_arguments():
    with pytest.raises(TypeError, match="layer 1"):
        Sequential(Flatten(), "relu", Linear(784, 10))
    with pytest.raises(ValueError):
        Conv2d(0, 6, 5)
    with pytest.raises(ValueError):
        Conv2d(1, 6, 5, stride=0)
    with pytest.raises(ValueError):
        Conv2d(1, 6, 5, padding=-1)
    with pytest.raises(ValueError, match="dilation"):
        Conv2d(1, 6, 5, dilation=2)
    with pytest.raises(ValueError, match="ceil_mode"):
        MaxPool2d(2, ceil_mode=True)
    with pytest.raises(ValueError):
        Linear(10, -1)
    with pytest.raises(TypeError):
        Conv2d(1, 6, 2.5)
    with pytest.raises(ValueError):
        nn.Dropout(1.5)
    with pytest.raises(ValueError):
        nn.BatchNorm2d(4, momentum=2)
    with pytest.raises(ValueError):
        Sequential(Flatten(), Linear(784, 10), input_shape=(0, 28, 28))


def test_valid_custom_stack():
    m = Sequential(Conv2d(3, 4, (3, 5), stride=(2, 1), padding=(1, 2), bias=False), Tanh(), AvgPool2d(2, stride=1),
                   Flatten(), Linear(4 * 15 * 31, 7), input_shape=(3, 32, 32), name="custom")
    assert [r["out_shape"] for r in summary(m, batch_size=1)["layers"]] == \
        [(1, 4, 16, 32), (1, 4, 16, 32), (1, 4, 15, 31), (1, 1860), (1, 7)]
    assert list(m.state_dict()) == ["0.weight", "4.weight", "4.bias"]
    ids, probs = m.predict(np.zeros((5, 3, 32, 32), np.float32), return_probs=True)
    assert ids.shape == (5,) and probs.shape == (5, 7)


# ----------------------------------------------------------------------------- summary
def test_summary_is_consistent(capsys):
    m = models.lenet5()
    s = m.summary(batch_size=64)
    printed = capsys.readouterr().out
    assert "61,706" in printed and "memory plan" in printed
    for key in ("params", "grads", "optimizer_state", "activations", "workspace", "total"):
        assert key in printed
    p = s["memory_plan"]
    n = m.num_parameters()
    assert p["params"] == p["grads"] == 4 * n
    assert p["optimizer_state"] == 4 * n  # SGD momentum: one velocity buffer
    parts = {k: v for k, v in p.items() if k not in ("total", "activations_unshared")}
    assert all(v >= 0 for v in parts.values())
    assert p["total"] == sum(parts.values())  # every buffer the plan lists, and nothing else
    # Liveness: the arenas reuse memory, so they are smaller than all values side by side.
    assert 0 < p["activations"] < p["activations_unshared"]
    rows = s["layers"]
    for r in rows:
        assert r["activation_bytes"] == 4 * int(np.prod(r["out_shape"]))
    # FLOPs: forward ~ 2 x multiply-adds of conv/linear (plus bias/activation/pool extras),
    # training = 3 x forward, and the per-row FLOPs add up.
    macs = 6 * 28 * 28 * 25 + 16 * 10 * 10 * 150 + 400 * 120 + 120 * 84 + 84 * 10
    fwd = s["forward_flops_per_sample"]
    assert 2 * macs <= fwd <= 1.05 * 2 * macs
    assert s["training_flops_per_sample"] == pytest.approx(3 * fwd)
    assert sum(r["flops"] for r in rows) == pytest.approx(64 * fwd)


def test_summary_of_a_class_and_its_rows():
    s = summary(models.lenet())
    assert s["layers"][0]["layer"].startswith("conv1: Conv2d(1, 6")
    assert s["layers"][1]["op"] == "relu" and "LeNet" in s["layers"][1]["layer"]
    with pytest.raises(ValueError, match="input_shape"):
        summary(Residual())
    assert summary(Residual(), input_shape=(1, 28, 28))["total_params"] == Residual().num_parameters()


def test_summary_scales_with_batch_and_optimizer():
    m = models.cudnn_lenet()
    small, big = summary(m, batch_size=16), summary(m, batch_size=64)
    n = m.num_parameters()
    assert small["memory_plan"]["params"] == big["memory_plan"]["params"] == 4 * n
    assert big["memory_plan"]["activations"] > small["memory_plan"]["activations"]
    adam = summary(m, batch_size=16, optimizer="adam")
    assert adam["memory_plan"]["optimizer_state"] == 2 * 4 * n
    assert summary(m, batch_size=16, optimizer="adadelta")["memory_plan"]["optimizer_state"] == 2 * 4 * n
    assert big["input_shape"] == (64, 1, 28, 28)


# ----------------------------------------------------------------------------- calling and predict
@pytest.fixture(scope="module")
def model():
    return models.lenet5(seed=7)


def test_model_call_on_arrays_matches_torch(model, rng):
    torch = pytest.importorskip("torch")
    twin = torch_twin(model).double()
    x = rng.standard_normal((300, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        ref = twin(torch.from_numpy(x).double()).numpy()
    out = model(x)
    assert out.shape == (300, 10) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


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


def test_predict_repeated_calls_stay_in_eval_mode_and_see_new_weights(rng):
    """Later calls find the evaluation executor without switching modes (the single-image fast
    path): a model left in training mode still predicts with dropout off, keeps its mode, and a
    load_state_dict between calls is seen."""
    from pylenet import models
    m = models.mnist_net(seed=0)
    m.train()
    x = rng.standard_normal((5, 1, 28, 28)).astype(np.float32)
    first = m.predict(x, return_probs=True)[1]
    again = m.predict(x, return_probs=True)[1]
    np.testing.assert_array_equal(first, again)
    assert all(mod.training for mod in m.modules())
    m.eval()
    ref = m(x)
    np.testing.assert_array_equal(m.predict(x), ref.argmax(axis=1))
    m.train()
    other = models.mnist_net(seed=1).state_dict()
    m.load_state_dict(other)
    twin = models.mnist_net(seed=1)
    np.testing.assert_array_equal(m.predict(x, return_probs=True)[1], twin.predict(x, return_probs=True)[1])
    assert all(mod.training for mod in m.modules())


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


def test_model_call_refuses_odd_arguments(model):
    with pytest.raises(TypeError, match="one input"):
        model(np.zeros((1, 1, 28, 28), np.float32), np.zeros(1))
    with pytest.raises(ValueError, match="NaN"):
        model(np.full((1, 1, 28, 28), np.nan, np.float32))


# ---- issue 13: a parameter's memory cannot be reinterpreted behind a compiled model ----------
def test_parameter_shape_cannot_change_in_place():
    p = nn.Parameter(np.zeros((2, 3), np.float32))
    with pytest.raises(AttributeError, match="assign a new nn.Parameter"):
        p.shape = (3, 2)
    assert p.reshape(3, 2).shape == (3, 2) and p.shape == (2, 3)  # views are fine


def test_parameter_data_assignment_copies_in_place():
    p = nn.Parameter(np.zeros((2, 3), np.float32))
    before = p.__array_interface__["data"][0]
    p.data = np.ones((2, 3))
    assert p.sum() == 6 and p.__array_interface__["data"][0] == before
    with pytest.raises(ValueError, match="shape"):
        p.data = np.ones((3, 2))


def test_replaced_parameters_of_another_shape_train_like_a_fresh_model():
    """issue 13: a weight replaced by one of another shape once trained with every later
    parameter shifted. Replacing the last layer's parameters (10 -> 12 classes) after a run
    must give exactly what a model built with that layer gives."""
    import pylenet
    from pylenet import models
    rng = np.random.default_rng(1)
    x = rng.random((64, 1, 28, 28)).astype(np.float32)
    y = np.arange(64) % 10
    w = (rng.standard_normal((12, 84)) * 0.1).astype(np.float32)
    a = models.lenet5()
    pylenet.train(a, (x, y), epochs=1, progress=False)  # compiled with the old shapes
    a[11].weight = nn.Parameter(w.copy())
    a[11].bias = nn.Parameter(np.zeros(12, np.float32))
    b = models.lenet5()
    b[11] = nn.Linear(84, 12)
    b.load_state_dict(a.state_dict())
    pylenet.train(a, (x, y), epochs=2, progress=False)
    pylenet.train(b, (x, y), epochs=2, progress=False)
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        np.testing.assert_array_equal(va, vb, err_msg=k)


@pytest.mark.parametrize("kwargs,match", [
    ({"input_shape": (1, 28.5, 28)}, "input_shape"), ({"input_shape": (1, 28.0, 28)}, "input_shape"),
    ({"input_shape": (1, -28, 28)}, "input_shape"), ({"input_shape": "1x28x28"}, "input_shape"),
    ({"normalization": (0.1, 0.0)}, "std"), ({"normalization": (float("nan"), 1.0)}, "finite"),
    ({"normalization": (0.1,)}, "mean, std"), ({"name": 5}, "name")])
def test_sequential_refuses_odd_model_attributes(kwargs, match):
    """issue 13: a float input shape was silently truncated; a std of 0 divided by zero later."""
    with pytest.raises((ValueError, TypeError), match=match):
        Sequential(Flatten(), Linear(784, 10), **kwargs)


def test_predict_refuses_nan_images_and_non_finite_outputs():
    """issue 13: predict returned NaN probabilities and class 0."""
    m = models.lenet5()
    x = np.zeros((3, 1, 28, 28), np.float32)
    x[1, 0, 5, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        m.predict(x)
    m[0].weight[...] = 3e38  # finite, but the output overflows
    with pytest.raises(RuntimeError, match="non-finite output"):
        m.predict(np.ones((2, 1, 28, 28), np.float32))
