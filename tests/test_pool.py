"""max_pool2d / avg_pool2d (forward and backward) against the reference and torch."""

import numpy as np
import pytest

import reference as R
from conftest import assert_close, f32

# (n, c, h, w, kernel_size, stride, padding)
CASES = [
    (1, 1, 7, 11, 2, None, 0),
    (3, 3, 7, 11, (3, 5), (2, 1), (1, 2)),
    (1, 3, 9, 6, (1, 4), (1, 3), (0, 2)),
    (2, 1, 5, 5, 5, 1, 0),                 # 1x1 output
    (1, 2, 4, 4, 4, None, 2),              # padding = kernel // 2
    (2, 2, 6, 13, (4, 2), (3, 2), (1, 0)),
    (1, 1, 8, 8, 1, 1, 0),                 # kernel 1
    (3, 2, 10, 9, 3, 2, 1),                # overlapping windows
    (1, 1, 3, 3, 3, 1, 1),                 # heavily overlapping, padded
    (1, 2, 11, 7, 2, 3, 0),                # stride > kernel
    (2, 3, 1, 9, (1, 3), (1, 2), 0),       # 1-row image
    (1, 1, 2, 2, 3, 3, 1),                 # kernel larger than the image, fits with padding
    (2, 3, 8, 70, 2, 2, 0),                # 2x2 fast path: rows of several vectors and a tail
    (1, 2, 9, 67, 2, None, 0),             # 2x2 fast path: odd last row and column, wide rows
]
CASE_IDS = [f"n{n}c{c}_{h}x{w}_k{k}_s{s}_p{p}".replace(" ", "") for n, c, h, w, k, s, p in CASES]

LENET = [
    (2, 6, 28, 28, 2, 2, 0),
    (2, 16, 10, 10, 2, None, 0),
    (2, 20, 24, 24, 2, 2, 0),
]
LENET_IDS = ["6x28x28", "16x10x10", "20x24x24"]

POOLS = {
    "max": ("max_pool2d", "max_pool2d_backward", R.max_pool2d, R.max_pool2d_backward),
    "avg": ("avg_pool2d", "avg_pool2d_backward", R.avg_pool2d, R.avg_pool2d_backward),
}


def out_shape(n, c, h, w, k, s, p):
    kh, kw = R.pair(k)
    sh, sw = R.pair(k if s is None else s)
    ph, pw = R.pair(p)
    return n, c, R.out_size(h, kh, sh, ph), R.out_size(w, kw, sw, pw)


def run_case(F, rng, kind, case, data="normal"):
    fwd, bwd, rfwd, rbwd = POOLS[kind]
    n, c, h, w, k, s, p = case
    if data == "normal":
        x = f32(rng, n, c, h, w)
    elif data == "ties":
        x = rng.integers(-1, 2, (n, c, h, w)).astype(np.float32)
    elif data == "negative":  # padded cells must never win a max
        x = (-1.0 - rng.random((n, c, h, w)) * 3).astype(np.float32)
    dy = f32(rng, *out_shape(*case))
    x0 = x.copy()
    y = getattr(F, fwd)(x, k, s, p)
    assert_close(y, rfwd(x, k, s, p), what=f"{fwd} y")
    dx = getattr(F, bwd)(dy, x, k, s, p)
    assert_close(dx, rbwd(dy, x, k, s, p), what=f"{bwd} dx")
    np.testing.assert_array_equal(x, x0)
    return y, dx


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_pool(F, rng, kind, case):
    run_case(F, rng, kind, case)


@pytest.mark.parametrize("data", ["ties", "negative"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_max_pool_ties_and_negative(F, rng, case, data):
    y, _ = run_case(F, rng, "max", case, data)
    if data == "negative":
        assert np.all(y < 0), "a padded cell won the max"


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("case", LENET, ids=LENET_IDS)
def test_pool_lenet(F, nthreads, rng, kind, case):
    run_case(F, rng, kind, case)


def test_keyword_arguments_and_defaults(F, rng):
    x = f32(rng, 2, 3, 8, 6)
    dy = f32(rng, 2, 3, 4, 3)
    for fwd, bwd, rfwd, rbwd in POOLS.values():
        f, b = getattr(F, fwd), getattr(F, bwd)
        ref = rfwd(x, 2, None, 0)
        assert_close(f(x, 2), ref, what=f"{fwd} defaults")
        assert_close(f(x, kernel_size=2, stride=None, padding=0), ref, what=f"{fwd} kwargs")
        assert_close(f(x, (2, 2), (2, 2), (0, 0)), ref, what=f"{fwd} pairs")
        rdx = rbwd(dy, x, 2)
        assert_close(b(dy, x, 2), rdx, what=f"{bwd} defaults")
        assert_close(b(dy, x, kernel_size=2, stride=None, padding=0), rdx, what=f"{bwd} kwargs")


def test_max_pool_first_max_gets_gradient(F):
    x = np.ones((1, 1, 2, 2), np.float32)
    dx = F.max_pool2d_backward(np.full((1, 1, 1, 1), 3.0, np.float32), x, 2)
    np.testing.assert_array_equal(dx, [[[[3, 0], [0, 0]]]])
    # second row wins when it is strictly larger; first max in row-major order
    x = np.array([[[[0, 1], [2, 2]]]], np.float32)
    dx = F.max_pool2d_backward(np.ones((1, 1, 1, 1), np.float32), x, 2)
    np.testing.assert_array_equal(dx, [[[[0, 0], [1, 0]]]])


def test_max_pool_overlapping_windows_accumulate(F):
    # a single large value is the max of all four overlapping 2x2 windows
    x = np.zeros((1, 1, 3, 3), np.float32)
    x[0, 0, 1, 1] = 5.0
    dy = np.array([[[[1, 2], [3, 4]]]], np.float32)
    np.testing.assert_array_equal(F.max_pool2d(x, 2, 1), np.full((1, 1, 2, 2), 5.0))
    dx = F.max_pool2d_backward(dy, x, 2, 1)
    expect = np.zeros((1, 1, 3, 3), np.float32)
    expect[0, 0, 1, 1] = 10.0
    np.testing.assert_array_equal(dx, expect)


def test_avg_pool_counts_padding(F):
    x = np.ones((1, 1, 2, 2), np.float32)
    # kernel 2, stride 2, padding 1: each window holds one real cell of 4
    y = F.avg_pool2d(x, 2, 2, 1)
    np.testing.assert_allclose(y, np.full((1, 1, 2, 2), 0.25), rtol=1e-6)
    dx = F.avg_pool2d_backward(np.ones((1, 1, 2, 2), np.float32), x, 2, 2, 1)
    np.testing.assert_allclose(dx, np.full((1, 1, 2, 2), 0.25), rtol=1e-6)


# --------------------------------------------------------------------------
# against torch on random shapes
# --------------------------------------------------------------------------

def _random_cases(count, seed):
    g = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        n, c = (int(v) for v in g.integers(1, 5, 2))
        kh, kw = (int(v) for v in g.integers(1, 6, 2))
        ph, pw = int(g.integers(0, kh // 2 + 1)), int(g.integers(0, kw // 2 + 1))
        h, w = (int(v) for v in g.integers(1, 16, 2))
        stride = None if g.random() < 0.3 else tuple(int(v) for v in g.integers(1, 4, 2))
        if kh > h + 2 * ph or kw > w + 2 * pw:
            continue
        cases.append((n, c, h, w, (kh, kw), stride, (ph, pw)))
    return cases


TORCH_CASES = _random_cases(10, seed=777)


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("case", TORCH_CASES, ids=lambda c: "n{}c{}_{}x{}_k{}_s{}_p{}".format(*c).replace(" ", ""))
def test_pool_vs_torch(F, rng, kind, case):
    torch = pytest.importorskip("torch")
    fwd, bwd, _, _ = POOLS[kind]
    n, c, h, w, k, s, p = case
    x = f32(rng, n, c, h, w)
    dy = f32(rng, *out_shape(*case))
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    yt = getattr(torch.nn.functional, fwd)(xt, k, s, p)
    yt.backward(torch.tensor(dy, dtype=torch.float64))
    assert_close(getattr(F, fwd)(x, k, s, p), yt.detach().numpy(), what=f"{fwd} vs torch")
    assert_close(getattr(F, bwd)(dy, x, k, s, p), xt.grad.numpy(), what=f"{bwd} vs torch")


@pytest.mark.parametrize("kernel,stride,padding", [(2, 2, 0), (3, 2, 1), (2, 1, 0)])
def test_max_pool_nan_propagates_to_first_nan(F, kernel, stride, padding):
    # NaN wins a window (as in PyTorch); with several NaNs the first (row-major) gets the gradient.
    # Covers the 2x2/stride-2 fast path and the generic path.
    x = np.arange(2 * 3 * 6 * 7, dtype=np.float32).reshape(2, 3, 6, 7)
    x[0, 1, 2, 3] = np.nan
    x[1, 2, 0, 0] = np.nan
    x[1, 2, 0, 1] = np.nan
    y, dx = check_max_pool_first_wins(F, x, kernel, stride, padding)
    assert np.isnan(y[1, 2, 0, 0]) and dx[1, 2, 0, 0] >= 1
    if stride == kernel:  # non-overlapping: the second NaN of that window gets nothing
        assert dx[1, 2, 0, 1] == 0


def check_max_pool_first_wins(F, x, kernel, stride, padding):
    """Max pooling of x against a loop reference where the first maximum of a window wins
    (row-major) and a NaN beats any number; dy is all ones, so dx counts each cell's wins."""
    y = F.max_pool2d(x, kernel, stride, padding)
    dy = np.ones_like(y)
    dx = F.max_pool2d_backward(dy, x, kernel, stride, padding)
    ref_y = np.full_like(y, 0.0)
    ref_dx = np.zeros_like(x)
    n, c, oh_, ow_ = y.shape
    H, W = x.shape[2:]
    for i in range(n):
        for j in range(c):
            for oh in range(oh_):
                for ow in range(ow_):
                    best, at = None, None
                    for r in range(kernel):
                        for s in range(kernel):
                            h, w = oh * stride - padding + r, ow * stride - padding + s
                            if not (0 <= h < H and 0 <= w < W):
                                continue
                            v = x[i, j, h, w]
                            if best is None or v > best or (np.isnan(v) and not np.isnan(best)):
                                best, at = v, (h, w)
                    ref_y[i, j, oh, ow] = best
                    ref_dx[i, j, at[0], at[1]] += 1.0
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref_y))
    np.testing.assert_array_equal(y[~np.isnan(y)], ref_y[~np.isnan(ref_y)])
    np.testing.assert_array_equal(dx, ref_dx)
    return y, dx


@pytest.mark.parametrize("shape", [(2, 3, 6, 7), (1, 2, 9, 37), (1, 1, 4, 66)])
def test_max_pool_2x2_random_nans_and_ties(F, rng, shape):
    # Every order of NaNs and equal values in a window, on rows of whole vectors plus tails
    # (the 2x2 fast path's lanes, each with its own cell of the window).
    x = rng.integers(-1, 2, shape).astype(np.float32)
    x[rng.random(shape) < 0.2] = np.nan
    check_max_pool_first_wins(F, x, 2, 2, 0)
