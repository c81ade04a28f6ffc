"""relu, tanh, softmax cross-entropy and sgd_step against the reference and torch."""

import numpy as np
import pytest

import reference as R
from conftest import assert_close, f32

SHAPES = [(1,), (7,), (3, 4), (2, 3, 5, 7), (1, 6, 28, 28), (3, 17)]
SHAPE_IDS = ["x".join(map(str, s)) for s in SHAPES]


def _with_zeros(rng, shape, scale=2.0):
    x = f32(rng, *shape, scale=scale)
    x.flat[:: 5] = 0.0  # exact zeros: relu'(0) must be 0
    return x


# --------------------------------------------------------------------------
# relu / tanh
# --------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_relu(F, rng, shape):
    x, dy = _with_zeros(rng, shape), f32(rng, *shape)
    x0 = x.copy()
    y = F.relu(x)
    assert_close(y, R.relu(x), rtol=0, atol=0, what="relu y")  # exact
    dx = F.relu_backward(dy, x)
    assert_close(dx, R.relu_backward(dy, x), rtol=0, atol=0, what="relu dx")
    np.testing.assert_array_equal(x, x0)


def test_relu_backward_at_zero_and_negative_zero(F):
    x = np.array([-1.0, -0.0, 0.0, 1e-30, 2.0], np.float32)
    dy = np.full(5, 7.0, np.float32)
    np.testing.assert_array_equal(F.relu_backward(dy, x), [0, 0, 0, 7, 7])
    np.testing.assert_array_equal(F.relu(x), [0, 0, 0, np.float32(1e-30), 2])


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_tanh(F, rng, shape):
    x, dy = _with_zeros(rng, shape), f32(rng, *shape)
    x.flat[1::7] = 30.0   # saturation
    x.flat[2::7] = -30.0
    x0 = x.copy()
    y = F.tanh(x)
    assert_close(y, R.tanh(x), what="tanh y")
    assert np.all(np.abs(y) <= 1.0)
    dx = F.tanh_backward(dy, y)
    assert_close(dx, R.tanh_backward(dy, y), what="tanh dx")
    np.testing.assert_array_equal(x, x0)


def test_tanh_accuracy_elementwise(F):
    # each element within a few ulp-ish of the true value, not only norm-wise
    x = np.linspace(-10, 10, 4001, dtype=np.float32)
    y = F.tanh(x).astype(np.float64)
    ref = np.tanh(x.astype(np.float64))
    err = np.abs(y - ref) / np.maximum(np.abs(ref), 1e-3)
    assert err.max() < 1e-5, (x[err.argmax()], y[err.argmax()], ref[err.argmax()])


@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 5, 7)], ids=["3x4", "2x3x5x7"])
def test_relu_tanh_vs_torch(F, rng, shape):
    torch = pytest.importorskip("torch")
    x, dy = _with_zeros(rng, shape), f32(rng, *shape)
    for name, fwd, bwd, uses_y in (("relu", F.relu, F.relu_backward, False),
                                   ("tanh", F.tanh, F.tanh_backward, True)):
        xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        yt = getattr(torch, name)(xt)
        yt.backward(torch.tensor(dy, dtype=torch.float64))
        y = fwd(x)
        assert_close(y, yt.detach().numpy(), what=f"{name} vs torch")
        assert_close(bwd(dy, y if uses_y else x), xt.grad.numpy(), what=f"{name} grad vs torch")


# --------------------------------------------------------------------------
# softmax cross-entropy
# --------------------------------------------------------------------------

CE_CASES = [(1, 1), (1, 10), (3, 10), (7, 3), (64, 10), (5, 33)]


def _check_ce(F, logits, labels):
    loss, d = F.softmax_cross_entropy(logits, labels)
    rloss, rd = R.softmax_cross_entropy(logits, labels)
    assert isinstance(loss, float), type(loss)
    assert np.isfinite(loss)
    assert_close(np.array(loss), np.array(rloss), dtype=None, what="softmax_cross_entropy loss")
    assert_close(d, rd, what="softmax_cross_entropy dlogits")
    return loss, d


@pytest.mark.parametrize("scale", [1.0, 30.0, 5000.0])
@pytest.mark.parametrize("case", CE_CASES, ids=lambda c: "n{}_c{}".format(*c))
def test_softmax_cross_entropy(F, rng, case, scale):
    n, c = case
    logits = f32(rng, n, c, scale=scale)
    labels = rng.integers(0, c, n)
    l0 = logits.copy()
    _check_ce(F, logits, labels)
    np.testing.assert_array_equal(logits, l0)


@pytest.mark.parametrize("label_dtype", [np.int64, np.int32, np.uint8, "list"])
def test_softmax_cross_entropy_label_types(F, rng, label_dtype):
    logits = f32(rng, 4, 6)
    labels = np.array([0, 5, 2, 2])
    labels = labels.tolist() if label_dtype == "list" else labels.astype(label_dtype)
    _check_ce(F, logits, labels)


def test_softmax_cross_entropy_extreme_logits(F):
    logits = np.array([[5000.0, -5000.0, 0.0], [-5000.0, -5000.0, -4990.0], [0.0, 5000.0, 5000.0]], np.float32)
    labels = np.array([1, 2, 0])
    loss, d = _check_ce(F, logits, labels)
    # sample 0: -log softmax = 10000; sample 1: log(1 + 2e^-10); sample 2: 5000 + log 2
    np.testing.assert_allclose(loss, (10000.0 + np.log1p(2 * np.exp(-10.0)) + 5000.0 + np.log(2)) / 3, rtol=1e-6)
    assert np.all(np.isfinite(d))
    np.testing.assert_allclose(d.sum(axis=1), 0.0, atol=1e-6)


def test_softmax_cross_entropy_true_class_gradient_keeps_its_precision(F):
    """issue 13: when the true class's probability rounds to 1, p - 1 is 0 in float32; the
    gradient is -(the other classes' share), which is tiny but exact."""
    logits = np.array([[30.0, 0.0, 0.0], [0.0, 25.0, -3.0]], np.float32)
    _, d = F.softmax_cross_entropy(logits, [0, 1])
    want0 = -2 * np.exp(-30.0) / (1 + 2 * np.exp(-30.0)) / 2
    want1 = -(np.exp(-25.0) + np.exp(-28.0)) / (1 + np.exp(-25.0) + np.exp(-28.0)) / 2
    np.testing.assert_allclose([d[0, 0], d[1, 1]], [want0, want1], rtol=1e-5)
    assert d[0, 0] < 0 and d[1, 1] < 0


def test_softmax_cross_entropy_uniform(F):
    loss, d = F.softmax_cross_entropy(np.zeros((2, 4), np.float32), [3, 0])
    np.testing.assert_allclose(loss, np.log(4), rtol=1e-6)
    np.testing.assert_allclose(d, [[0.125, 0.125, 0.125, -0.375], [-0.375, 0.125, 0.125, 0.125]], rtol=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_softmax_cross_entropy_vs_torch(F, seed):
    torch = pytest.importorskip("torch")
    g = np.random.default_rng(1000 + seed)
    n, c = (int(v) for v in g.integers(1, 40, 2))
    scale = float(g.choice([0.1, 1.0, 10.0, 1000.0]))
    logits = f32(g, n, c, scale=scale)
    labels = g.integers(0, c, n)
    zt = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    lt = torch.nn.functional.cross_entropy(zt, torch.tensor(labels), reduction="mean")
    lt.backward()
    loss, d = F.softmax_cross_entropy(logits, labels)
    assert_close(np.array(loss), lt.detach().numpy(), dtype=None, what="cross_entropy vs torch")
    assert_close(d, zt.grad.numpy(), what="cross_entropy grad vs torch")


# --------------------------------------------------------------------------
# sgd_step
# --------------------------------------------------------------------------

SGD_CONFIGS = [
    # lr, momentum, weight_decay, nesterov
    (0.1, 0.0, 0.0, False),
    (0.05, 0.9, 0.0, False),
    (0.05, 0.9, 0.0, True),
    (0.01, 0.5, 1e-2, False),
    (0.2, 0.7, 0.1, True),
    (0.1, 0.0, 5e-2, False),
    (0.0, 0.9, 0.1, True),   # lr 0 leaves param unchanged but still updates velocity
]
SGD_IDS = ["lr{}_m{}_wd{}_nest{}".format(*c) for c in SGD_CONFIGS]


@pytest.mark.parametrize("shape", [(5,), (3, 4), (6, 1, 5, 5), (37,)], ids=["5", "3x4", "6x1x5x5", "37"])
@pytest.mark.parametrize("config", SGD_CONFIGS, ids=SGD_IDS)
def test_sgd_step(F, rng, config, shape):
    lr, mom, wd, nest = config
    p = f32(rng, *shape)
    v = np.zeros(shape, np.float32)
    rp, rv = p.astype(np.float64), np.zeros(shape)
    for _ in range(5):
        g = f32(rng, *shape)
        out = F.sgd_step(p, g, v, lr, momentum=mom, weight_decay=wd, nesterov=nest)
        assert out is None
        R.sgd_step(rp, g, rv, lr, mom, wd, nest)
        assert_close(p, rp, what="sgd_step param")
        assert_close(v, rv, what="sgd_step velocity")
        assert p.dtype == np.float32 and v.dtype == np.float32


def test_sgd_step_velocity_none_without_momentum(F, rng):
    p = f32(rng, 4, 3)
    rp = p.astype(np.float64)
    for _ in range(3):
        g = f32(rng, 4, 3)
        F.sgd_step(p, g, None, 0.1)
        R.sgd_step(rp, g, None, 0.1)
        assert_close(p, rp, what="sgd_step param (velocity None)")
    g = f32(rng, 4, 3)
    F.sgd_step(p, g, None, 0.1, weight_decay=0.01)
    R.sgd_step(rp, g, None, 0.1, 0.0, 0.01)
    assert_close(p, rp, what="sgd_step param (velocity None, weight decay)")


def test_sgd_step_hand_computed(F):
    p = np.array([1.0, -2.0], np.float32)
    v = np.zeros(2, np.float32)
    F.sgd_step(p, np.array([0.5, 1.0], np.float32), v, 0.1, momentum=0.9)
    np.testing.assert_allclose(v, [0.5, 1.0], rtol=1e-6)
    np.testing.assert_allclose(p, [0.95, -2.1], rtol=1e-6)
    F.sgd_step(p, np.array([0.5, 1.0], np.float32), v, 0.1, momentum=0.9)
    np.testing.assert_allclose(v, [0.95, 1.9], rtol=1e-6)
    np.testing.assert_allclose(p, [0.855, -2.29], rtol=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_sgd_vs_torch_optim(F, seed):
    torch = pytest.importorskip("torch")
    g = np.random.default_rng(4242 + seed)
    shapes = [tuple(int(v) for v in g.integers(1, 9, int(g.integers(1, 5)))) for _ in range(2)]
    lr = float(g.uniform(0.001, 0.3))
    mom = float(g.choice([0.0, 0.5, 0.9, 0.99]))
    wd = float(g.choice([0.0, 1e-4, 0.05]))
    nest = bool(mom > 0 and g.random() < 0.5)
    params = [f32(g, *s) for s in shapes]
    vels = [np.zeros(s, np.float32) for s in shapes]
    tparams = [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in params]
    opt = torch.optim.SGD(tparams, lr=lr, momentum=mom, weight_decay=wd, nesterov=nest)
    for step in range(6):
        grads = [f32(g, *s) for s in shapes]
        for tp, gr in zip(tparams, grads):
            tp.grad = torch.tensor(gr, dtype=torch.float64)
        opt.step()
        for p, v, gr in zip(params, vels, grads):
            F.sgd_step(p, gr, v, lr, momentum=mom, weight_decay=wd, nesterov=nest)
        for p, tp in zip(params, tparams):
            assert_close(p, tp.detach().numpy(),
                         what=f"sgd_step vs torch.optim.SGD step {step} (lr={lr}, m={mom}, wd={wd}, nesterov={nest})")


@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_sgd_step_rounds_every_operation_like_float32_numpy(F, rng, momentum, nesterov):
    """Every SIMD path's update loop (cpu/optim_kernel.inc, compiled without FMA contraction)
    rounds each operation of math.h's formula: the same bits as NumPy doing those operations
    in float32, at any level. 2 * 16384 + 37 values: two chunks of the parallel loop and a
    vector tail."""
    n = 2 * 16384 + 37
    lr, wd, m = np.float32(0.05), np.float32(5e-4), np.float32(momentum)
    p = rng.standard_normal(n).astype(np.float32)
    v = rng.standard_normal(n).astype(np.float32) if momentum else None
    rp, rv = p.copy(), None if v is None else v.copy()
    for _ in range(3):
        g = rng.standard_normal(n).astype(np.float32)
        F.sgd_step(p, g, v, float(lr), momentum=momentum, weight_decay=float(wd), nesterov=nesterov)
        d = g + wd * rp
        if momentum:
            rv = m * rv + d
            d = d + m * rv if nesterov else rv
        rp = rp - lr * d
        np.testing.assert_array_equal(p, rp)
        if momentum:
            np.testing.assert_array_equal(v, rv)
