"""Central finite differences.

1. In float64, on the reference implementations: validates every backward
   function of ``reference.py`` (so the oracle itself is trustworthy).
2. In float32, directly on pylenet's forward: the numerical gradient of
   ``loss = sum(y * r)`` (r random) must match pylenet's own backward.
   eps = 1e-2, loose tolerance (1e-2 relative).  Inputs are chosen away
   from kinks/ties (caffe style): ReLU inputs satisfy |x| >= 5*eps and
   max-pool inputs are distinct values spaced 5*eps apart, so a +-eps
   perturbation never crosses a kink or changes a window's winner.
"""

import numpy as np
import pytest

import reference as R
from conftest import assert_close

# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def numerical_grads(loss, arrays, eps):
    """Central differences of the scalar ``loss()`` w.r.t. every element of
    every array in ``arrays`` (perturbed in place, restored afterwards).
    The step actually taken is measured after rounding to the array dtype."""
    grads = []
    for a in arrays:
        g = np.zeros(a.shape, np.float64)
        flat = a.reshape(-1)  # a view: arrays are contiguous
        assert np.shares_memory(flat, a)
        for i in range(flat.size):
            orig = flat[i]
            flat[i] = orig + eps
            up, lp = flat[i], loss()
            flat[i] = orig - eps
            dn, lm = flat[i], loss()
            flat[i] = orig
            g.reshape(-1)[i] = (lp - lm) / (float(up) - float(dn))
        grads.append(g)
    return grads


def spaced_values(rng, shape, spacing):
    """Distinct values (a shuffled grid spaced ``spacing`` apart), centred on 0."""
    n = int(np.prod(shape))
    v = (rng.permutation(n) - n / 2.0) * spacing
    return v.reshape(shape)


def away_from_zero(rng, shape, margin):
    """Random values with |x| >= margin (no ReLU kink within reach)."""
    x = rng.standard_normal(shape)
    return np.sign(x) * (np.abs(x) + margin) + (x == 0) * margin


def weighted_sum(y, r):
    return float(np.sum(np.asarray(y, np.float64) * r))


CONV_CASES = [
    # (n, c, h, w, out_c, kh, kw, stride, padding)
    (2, 2, 5, 6, 3, 3, 2, 1, 1),
    (1, 3, 6, 5, 2, 2, 3, (2, 1), (0, 1)),
    (2, 1, 4, 7, 2, 1, 4, (1, 3), (1, 2)),
]
POOL_CASES = [
    # (n, c, h, w, kernel, stride, padding)
    (2, 2, 5, 6, 2, None, 0),
    (1, 2, 5, 7, (3, 2), (1, 2), (1, 1)),   # overlapping, padded
    (1, 1, 6, 6, 3, 2, 1),
]
LINEAR_CASES = [(3, 5, 4), (1, 7, 2)]


def conv_out(case):
    n, c, h, w, oc, kh, kw, s, p = case
    sh, sw = R.pair(s)
    ph, pw = R.pair(p)
    return n, oc, R.out_size(h, kh, sh, ph), R.out_size(w, kw, sw, pw)


def pool_out(case):
    n, c, h, w, k, s, p = case
    kh, kw = R.pair(k)
    sh, sw = R.pair(k if s is None else s)
    ph, pw = R.pair(p)
    return n, c, R.out_size(h, kh, sh, ph), R.out_size(w, kw, sw, pw)


# --------------------------------------------------------------------------
# 1. the float64 reference backward functions
# --------------------------------------------------------------------------

EPS64 = 1e-6
TOL64 = dict(rtol=1e-6, atol=1e-9, dtype=None)


@pytest.mark.parametrize("case", CONV_CASES)
def test_reference_conv2d_backward(rng, case):
    n, c, h, w, oc, kh, kw, s, p = case
    x, wt, b = rng.standard_normal((n, c, h, w)), rng.standard_normal((oc, c, kh, kw)), rng.standard_normal(oc)
    r = rng.standard_normal(conv_out(case))
    num = numerical_grads(lambda: weighted_sum(R.conv2d(x, wt, b, s, p), r), [x, wt, b], EPS64)
    for a, g, name in zip(R.conv2d_backward(r, x, wt, s, p), num, ("dx", "dw", "db")):
        assert_close(a, g, what=f"reference conv2d {name}", **TOL64)


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("case", POOL_CASES)
def test_reference_pool_backward(rng, case, kind):
    n, c, h, w, k, s, p = case
    fwd, bwd = (R.max_pool2d, R.max_pool2d_backward) if kind == "max" else (R.avg_pool2d, R.avg_pool2d_backward)
    x = spaced_values(rng, (n, c, h, w), 0.1)
    r = rng.standard_normal(pool_out(case))
    (num,) = numerical_grads(lambda: weighted_sum(fwd(x, k, s, p), r), [x], EPS64)
    assert_close(bwd(r, x, k, s, p), num, what=f"reference {kind}_pool2d dx", **TOL64)


@pytest.mark.parametrize("case", LINEAR_CASES)
def test_reference_linear_backward(rng, case):
    n, i, o = case
    x, w, b, r = (rng.standard_normal(s) for s in ((n, i), (o, i), (o,), (n, o)))
    num = numerical_grads(lambda: weighted_sum(R.linear(x, w, b), r), [x, w, b], EPS64)
    for a, g, name in zip(R.linear_backward(r, x, w), num, ("dx", "dw", "db")):
        assert_close(a, g, what=f"reference linear {name}", **TOL64)


def test_reference_relu_tanh_backward(rng):
    x = away_from_zero(rng, (3, 7), 0.01)
    r = rng.standard_normal(x.shape)
    (num,) = numerical_grads(lambda: weighted_sum(R.relu(x), r), [x], EPS64)
    assert_close(R.relu_backward(r, x), num, what="reference relu dx", **TOL64)
    (num,) = numerical_grads(lambda: weighted_sum(R.tanh(x), r), [x], EPS64)
    assert_close(R.tanh_backward(r, R.tanh(x)), num, what="reference tanh dx", **TOL64)


@pytest.mark.parametrize("scale", [1.0, 20.0])
def test_reference_softmax_cross_entropy_backward(rng, scale):
    z = rng.standard_normal((4, 6)) * scale
    labels = rng.integers(0, 6, 4)
    (num,) = numerical_grads(lambda: R.softmax_cross_entropy(z, labels)[0], [z], EPS64)
    assert_close(R.softmax_cross_entropy(z, labels)[1], num, what="reference CE dlogits", **TOL64)


# --------------------------------------------------------------------------
# 2. pylenet float32: its forward, differentiated numerically, vs its backward
# --------------------------------------------------------------------------

EPS32 = 1e-2
TOL32 = dict(rtol=1e-2, atol=1e-3)


def f32(a):
    return np.ascontiguousarray(a, dtype=np.float32)


@pytest.mark.parametrize("algo", ["naive", "im2col", "auto"])
@pytest.mark.parametrize("case", CONV_CASES)
def test_pylenet_conv2d_gradcheck(F, rng, case, algo):
    n, c, h, w, oc, kh, kw, s, p = case
    x, wt, b = f32(rng.standard_normal((n, c, h, w))), f32(rng.standard_normal((oc, c, kh, kw))), f32(rng.standard_normal(oc))
    r = rng.standard_normal(conv_out(case))

    def loss():
        return weighted_sum(F.conv2d(x, wt, b, stride=s, padding=p, algo=algo), r)

    num = numerical_grads(loss, [x, wt, b], EPS32)
    ana = F.conv2d_backward(f32(r), x, wt, stride=s, padding=p, algo=algo)
    for a, g, name in zip(ana, num, ("dx", "dw", "db")):
        assert_close(a, g, what=f"conv2d {name} vs finite differences", **TOL32)


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("case", POOL_CASES)
def test_pylenet_pool_gradcheck(F, rng, case, kind):
    n, c, h, w, k, s, p = case
    fwd = getattr(F, f"{kind}_pool2d")
    bwd = getattr(F, f"{kind}_pool2d_backward")
    x = f32(spaced_values(rng, (n, c, h, w), 5 * EPS32))
    r = rng.standard_normal(pool_out(case))
    (num,) = numerical_grads(lambda: weighted_sum(fwd(x, k, s, p), r), [x], EPS32)
    assert_close(bwd(f32(r), x, k, s, p), num, what=f"{kind}_pool2d dx vs finite differences", **TOL32)


@pytest.mark.parametrize("case", LINEAR_CASES)
def test_pylenet_linear_gradcheck(F, rng, case):
    n, i, o = case
    x, w, b = (f32(rng.standard_normal(s)) for s in ((n, i), (o, i), (o,)))
    r = rng.standard_normal((n, o))
    num = numerical_grads(lambda: weighted_sum(F.linear(x, w, b), r), [x, w, b], EPS32)
    for a, g, name in zip(F.linear_backward(f32(r), x, w), num, ("dx", "dw", "db")):
        assert_close(a, g, what=f"linear {name} vs finite differences", **TOL32)


def test_pylenet_relu_gradcheck(F, rng):
    x = f32(away_from_zero(rng, (2, 3, 4), 5 * EPS32))
    r = rng.standard_normal(x.shape)
    (num,) = numerical_grads(lambda: weighted_sum(F.relu(x), r), [x], EPS32)
    assert_close(F.relu_backward(f32(r), x), num, what="relu dx vs finite differences", **TOL32)


def test_pylenet_tanh_gradcheck(F, rng):
    x = f32(rng.standard_normal((2, 3, 4)) * 1.5)
    r = rng.standard_normal(x.shape)
    (num,) = numerical_grads(lambda: weighted_sum(F.tanh(x), r), [x], EPS32)
    assert_close(F.tanh_backward(f32(r), F.tanh(x)), num, what="tanh dx vs finite differences", **TOL32)


@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_pylenet_softmax_cross_entropy_gradcheck(F, rng, scale):
    z = f32(rng.standard_normal((3, 5)) * scale)
    labels = rng.integers(0, 5, 3)
    (num,) = numerical_grads(lambda: F.softmax_cross_entropy(z, labels)[0], [z], EPS32)
    assert_close(F.softmax_cross_entropy(z, labels)[1], num, what="CE dlogits vs finite differences", **TOL32)


def _chain_inputs(rng, margin):
    """Draw inputs of the tiny chain below until every pre-activation is at
    least ``margin`` away from the ReLU kink and every 2x2 pooling window
    with a positive max has its winner ``margin`` ahead of the runner-up."""
    for _ in range(1000):
        x = rng.standard_normal((2, 1, 6, 6))
        w1 = rng.standard_normal((2, 1, 3, 3)) * 0.5
        b1 = rng.standard_normal(2) * 0.1
        a = R.conv2d(f32(x), f32(w1), f32(b1), 1, 1)
        h = R.relu(a)
        win = h.reshape(2, 2, 3, 2, 3, 2).transpose(0, 1, 2, 4, 3, 5).reshape(2, 2, 3, 3, 4)
        top2 = np.sort(win, axis=-1)[..., -2:]
        gap_ok = np.all((top2[..., 1] == 0) | (top2[..., 1] - top2[..., 0] >= margin))
        if np.min(np.abs(a)) >= margin and gap_ok:
            return f32(x), f32(w1), f32(b1)
    raise AssertionError("could not draw kink-free inputs")


def test_pylenet_lenet_chain_gradcheck(F, rng):
    """A tiny conv -> relu -> maxpool -> linear -> CE chain, backward composed
    from pylenet's ops, checked against finite differences of the loss
    w.r.t. the conv weights and bias (the deepest parameters)."""
    eps = 1e-3  # moves any pre-activation by at most 9 * 4 * eps < margin
    x, w1, b1 = _chain_inputs(rng, margin=0.05)
    w2 = f32(rng.standard_normal((3, 18)) * 0.5)
    labels = np.array([0, 2])

    def forward():
        a = F.conv2d(x, w1, b1, padding=1)
        h = F.relu(a)
        m = F.max_pool2d(h, 2)
        z = F.linear(m.reshape(2, -1), w2)
        return a, h, m, z

    a, h, m, z = forward()
    loss, dz = F.softmax_cross_entropy(z, labels)
    dm, dw2, _ = F.linear_backward(dz, m.reshape(2, -1), w2)
    dh = F.max_pool2d_backward(dm.reshape(m.shape), h, 2)
    da = F.relu_backward(dh, a)
    _, dw1, db1 = F.conv2d_backward(da, x, w1, padding=1)

    num_w1, num_b1 = numerical_grads(lambda: F.softmax_cross_entropy(forward()[3], labels)[0], [w1, b1], eps)
    assert_close(dw1, num_w1, what="chained dw1 vs finite differences", **TOL32)
    assert_close(db1, num_b1, what="chained db1 vs finite differences", **TOL32)
