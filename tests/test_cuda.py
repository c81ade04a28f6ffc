"""CUDA kernels (csrc/cuda/) against the float64 references in reference.py, CuPy and pylenet's CPU kernels.

Skipped, with the reason, unless all of these hold: CuPy imports, it sees a GPU, and this pylenet
was built with CUDA (``pylenet.build_info()["cuda"]``). CI has no GPU, so there they skip and
the kernels are only compiled; they passed on an H100 (benchmarks/results/gpu-tests-*.log).

``pylenet.functional`` takes CuPy arrays (DESIGN.md: device arrays, no copy) and these tests
check, per op, on the odd shapes of the CPU tests and on LeNet's layers:
  * conv2d forward, backward data / filter / bias for every algorithm (naive, im2col,
    implicit_gemm, auto) against reference.py, and that two runs give the same bits
    (no float atomics anywhere);
  * max / avg pooling against reference.py and bit for bit against the CPU kernels (ties, NaN);
  * linear against reference.py and CuPy's matmul; relu (exact) and tanh against CuPy;
  * softmax cross-entropy against reference.py, and bad labels / NaN logits raising ValueError;
  * SGD against the CPU kernel bit for bit (the same math.h update, unfused on both sides).
Tolerances are the suite's one rule, conftest.assert_close.
"""

import numpy as np
import pytest

import reference as R
from conftest import assert_close, cupy_on_a_gpu, f32

try:
    import cupy as cp
except Exception:  # not installed, or no usable CUDA runtime
    cp = None


@pytest.fixture
def gpu(request):
    """(pylenet, pylenet.functional, cupy) when the CUDA path can run here; skips otherwise."""
    cp = cupy_on_a_gpu(request)
    import pylenet
    import pylenet.functional as F
    return pylenet, F, cp


def host(a):
    """A result that must live on the GPU, copied back for comparison."""
    assert isinstance(a, cp.ndarray), f"expected a cupy array, got {type(a).__name__}"
    return cp.asnumpy(a)


# (n, c, h, w, out_c, kh, kw, stride, padding): odd shapes of test_conv.py, then LeNet
CONV_CASES = [
    (3, 3, 7, 11, 4, 3, 5, (2, 1), (1, 2)),
    (1, 3, 9, 6, 2, 1, 4, (1, 3), (0, 2)),
    (2, 2, 4, 4, 1, 6, 6, 1, 1),
    (1, 1, 1, 9, 2, 1, 3, 2, 0),
    (17, 1, 28, 28, 20, 5, 5, 1, 0),   # more than one chunk of images in backward filter
    (9, 20, 12, 12, 50, 5, 5, 1, 0),
    (2, 66, 6, 6, 70, 3, 3, 2, 1),     # channels over one GEMM tile (64)
]
ALGOS = ["naive", "im2col", "implicit_gemm", "auto"]


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c[:7])))
def test_conv2d(gpu, rng, case, algo):
    _, F, cp = gpu
    n, c, h, w, o, kh, kw, stride, padding = case
    x, wt, b = f32(rng, n, c, h, w), f32(rng, o, c, kh, kw), f32(rng, o)
    y = host(F.conv2d(cp.asarray(x), cp.asarray(wt), cp.asarray(b), stride, padding, algo=algo))
    assert_close(y, R.conv2d(x, wt, b, stride, padding), what=f"cuda conv2d y ({algo})")
    dy = f32(rng, *y.shape)
    args = (cp.asarray(dy), cp.asarray(x), cp.asarray(wt), stride, padding, algo)
    grads = [host(g) for g in F.conv2d_backward(*args)]
    for name, got, ref in zip(("dx", "dw", "db"), grads, R.conv2d_backward(dy, x, wt, stride, padding)):
        assert_close(got, ref, what=f"cuda conv2d {name} ({algo})")
    again = [host(g) for g in F.conv2d_backward(*args)]
    for name, a, b2 in zip(("dx", "dw", "db"), grads, again):
        np.testing.assert_array_equal(a, b2, err_msg=f"cuda conv2d {name} ({algo}) differs between runs")


POOL_CASES = [(3, 3, 7, 11, (3, 5), (2, 1), (1, 2)), (3, 2, 10, 9, 3, 2, 1), (2, 6, 28, 28, 2, 2, 0)]


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_pool2d(gpu, rng, mode, case):
    _, F, cp = gpu
    n, c, h, w, k, s, p = case
    x = np.round(f32(rng, n, c, h, w))  # ties
    x[0, 0, 1, 1] = np.nan
    fwd, bwd = getattr(F, f"{mode}_pool2d"), getattr(F, f"{mode}_pool2d_backward")
    y = host(fwd(cp.asarray(x), k, s, p))
    np.testing.assert_array_equal(y, fwd(x, k, s, p), err_msg=f"cuda {mode}_pool2d vs cpu")
    dy = f32(rng, *y.shape)
    dx = host(bwd(cp.asarray(dy), cp.asarray(x), k, s, p))
    np.testing.assert_array_equal(dx, bwd(dy, x, k, s, p), err_msg=f"cuda {mode}_pool2d_backward vs cpu")
    finite = np.nan_to_num(x, nan=0.0)
    assert_close(host(fwd(cp.asarray(finite), k, s, p)), getattr(R, f"{mode}_pool2d")(finite, k, s, p),
                 what=f"cuda {mode}_pool2d y")


def test_linear(gpu, rng):
    _, F, cp = gpu
    x, w, b = f32(rng, 70, 130), f32(rng, 90, 130), f32(rng, 90)
    y = host(F.linear(cp.asarray(x), cp.asarray(w), cp.asarray(b)))
    assert_close(y, R.linear(x, w, b), what="cuda linear y")
    assert_close(y, cp.asnumpy(cp.asarray(x) @ cp.asarray(w).T + cp.asarray(b)), what="cuda linear vs cupy")
    dy = f32(rng, 70, 90)
    grads = F.linear_backward(cp.asarray(dy), cp.asarray(x), cp.asarray(w))
    for name, got, ref in zip(("dx", "dw", "db"), grads, R.linear_backward(dy, x, w)):
        assert_close(host(got), ref, what=f"cuda linear {name}")


def test_activations(gpu, rng):
    _, F, cp = gpu
    x, dy = f32(rng, 3, 5, 7, 11), f32(rng, 3, 5, 7, 11)
    assert_close(host(F.relu(cp.asarray(x))), R.relu(x), rtol=0, atol=0, what="cuda relu")
    assert_close(host(F.relu_backward(cp.asarray(dy), cp.asarray(x))), R.relu_backward(dy, x), rtol=0, atol=0,
                 what="cuda relu dx")
    y = host(F.tanh(cp.asarray(x)))
    assert_close(y, cp.asnumpy(cp.tanh(cp.asarray(x))), what="cuda tanh vs cupy")
    assert_close(host(F.tanh_backward(cp.asarray(dy), cp.asarray(y))), R.tanh_backward(dy, y), what="cuda tanh dx")


def test_softmax_cross_entropy(gpu, rng):
    _, F, cp = gpu
    logits, labels = f32(rng, 37, 10, scale=30.0), rng.integers(0, 10, 37)
    loss, d = F.softmax_cross_entropy(cp.asarray(logits), cp.asarray(labels))
    ref_loss, ref_d = R.softmax_cross_entropy(logits, labels)
    assert abs(loss - ref_loss) <= 1e-5 * max(1.0, abs(ref_loss))
    assert_close(host(d), ref_d, what="cuda softmax_cross_entropy dlogits")
    bad = labels.copy()
    bad[5] = 10
    with pytest.raises(ValueError, match="label 10 at index 5"):
        F.softmax_cross_entropy(cp.asarray(logits), cp.asarray(bad))
    logits[3, 4] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        F.softmax_cross_entropy(cp.asarray(logits), cp.asarray(labels))


@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_sgd_step_matches_cpu(gpu, rng, momentum, nesterov):
    _, F, cp = gpu
    p, g, v = f32(rng, 1001), f32(rng, 1001), f32(rng, 1001)
    p_gpu, v_gpu = cp.asarray(p), cp.asarray(v)
    F.sgd_step(p_gpu, cp.asarray(g), v_gpu, 0.1, momentum, 1e-4, nesterov)
    F.sgd_step(p, g, v, 0.1, momentum, 1e-4, nesterov)
    np.testing.assert_array_equal(cp.asnumpy(p_gpu), p, err_msg="cuda sgd param vs cpu")
    np.testing.assert_array_equal(cp.asnumpy(v_gpu), v, err_msg="cuda sgd velocity vs cpu")
