"""linear / linear_backward against the reference and torch."""

import numpy as np
import pytest

import reference as R
from conftest import assert_close, f32

# (n, in_features, out_features)
CASES = [
    (1, 1, 1),
    (3, 7, 5),
    (1, 5, 13),
    (3, 1, 4),
    (7, 17, 3),
    (2, 33, 65),     # sizes just past SIMD widths
    (5, 64, 16),
    (16, 9, 31),
    (64, 50, 40),    # the largest batch computed transposed (the weight read in place)
    (65, 33, 17),    # the smallest computed directly
    (130, 70, 13),
    (1, 803, 501),   # batch 1 to 4: dot products of rows (dot_rows), with a tail past the vectors
    (4, 47, 6),      # and a row block of A cut short
]
LENET = [
    (3, 800, 500),   # 50*4*4 -> 500
    (3, 500, 10),
    (4, 400, 120),   # 16*5*5 -> 120
    (4, 120, 84),
]


def check(F, rng, n, i, o):
    x, w, b, dy = f32(rng, n, i), f32(rng, o, i), f32(rng, o), f32(rng, n, o)
    x0, w0 = x.copy(), w.copy()
    assert_close(F.linear(x, w, b), R.linear(x, w, b), what="linear y")
    assert_close(F.linear(x, w), R.linear(x, w), what="linear y (no bias)")
    assert_close(F.linear(x, w, b=None), R.linear(x, w), what="linear y (b=None)")
    dx, dw, db = F.linear_backward(dy, x, w)
    rdx, rdw, rdb = R.linear_backward(dy, x, w)
    assert_close(dx, rdx, what="linear dx")
    assert_close(dw, rdw, what="linear dw")
    assert_close(db, rdb, what="linear db")
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(w, w0)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "n{}_in{}_out{}".format(*c))
def test_linear(F, rng, case):
    check(F, rng, *case)


@pytest.mark.parametrize("case", LENET, ids=lambda c: "n{}_in{}_out{}".format(*c))
def test_linear_lenet(F, nthreads, rng, case):
    check(F, rng, *case)


def test_linear_hand_computed(F):
    x = np.array([[1, 2, 3]], np.float32)
    w = np.array([[1, 0, 0], [0, 1, 1]], np.float32)
    b = np.array([10, 20], np.float32)
    np.testing.assert_array_equal(F.linear(x, w, b), [[11, 25]])
    dx, dw, db = F.linear_backward(np.array([[1, 2]], np.float32), x, w)
    np.testing.assert_array_equal(dx, [[1, 2, 2]])
    np.testing.assert_array_equal(dw, [[1, 2, 3], [2, 4, 6]])
    np.testing.assert_array_equal(db, [1, 2])


def _random_cases(count, seed):
    g = np.random.default_rng(seed)
    return [tuple(int(v) for v in g.integers(1, 70, 3)) for _ in range(count)]


@pytest.mark.parametrize("case", _random_cases(8, seed=31337), ids=lambda c: "n{}_in{}_out{}".format(*c))
def test_linear_vs_torch(F, rng, case):
    torch = pytest.importorskip("torch")
    n, i, o = case
    x, w, b, dy = f32(rng, n, i), f32(rng, o, i), f32(rng, o), f32(rng, n, o)
    xt, wt, bt = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x, w, b))
    yt = torch.nn.functional.linear(xt, wt, bt)
    yt.backward(torch.tensor(dy, dtype=torch.float64))
    assert_close(F.linear(x, w, b), yt.detach().numpy(), what="linear vs torch")
    dx, dw, db = F.linear_backward(dy, x, w)
    assert_close(dx, xt.grad.numpy(), what="linear dx vs torch")
    assert_close(dw, wt.grad.numpy(), what="linear dw vs torch")
    assert_close(db, bt.grad.numpy(), what="linear db vs torch")
