"""Input validation and input conversion.

* every bad input raises the documented exception; ValueErrors name the op;
* float64 / int / list / non-contiguous inputs give the same results as
  contiguous float32 ones;
* sgd_step rejects non-finite gradients without touching param.
"""

import numpy as np
import pytest

import reference as R
from conftest import assert_close, f32

G = np.random.default_rng(12345)

# valid base operands
X = f32(G, 2, 3, 8, 7)
W = f32(G, 4, 3, 3, 3)
B = f32(G, 4)
DY_CONV = f32(G, 2, 4, 6, 5)        # conv2d(X, W): (2, 4, 6, 5)
DY_POOL = f32(G, 2, 3, 4, 3)        # pool(X, 2): (2, 3, 4, 3)
XL = f32(G, 5, 6)
WL = f32(G, 4, 6)
BL = f32(G, 4)
DYL = f32(G, 5, 4)
LOGITS = f32(G, 5, 3)
LABELS = np.array([0, 2, 1, 1, 0])


@pytest.fixture
def Fn(pylenet_module):
    import pylenet.functional as functional

    return functional


def V(op, call, exc=ValueError):
    """A bad call: ``call(F)`` must raise ``exc``; a ValueError's message
    must contain the op name."""
    return op, call, exc


BAD_CALLS = [
    # ---------------------------------------------------------------- conv2d
    V("conv2d", lambda F: F.conv2d(X[0], W)),                                   # 3-D x
    V("conv2d", lambda F: F.conv2d(X[None], W)),                                # 5-D x
    V("conv2d", lambda F: F.conv2d(X, W[0])),                                   # 3-D w
    V("conv2d", lambda F: F.conv2d(X, W[:, :2])),                               # channel mismatch
    V("conv2d", lambda F: F.conv2d(X[:, :1], W)),                               # channel mismatch
    V("conv2d", lambda F: F.conv2d(X, W, np.zeros(5, np.float32))),             # bias too long
    V("conv2d", lambda F: F.conv2d(X, W, np.zeros(3, np.float32))),             # bias too short
    V("conv2d", lambda F: F.conv2d(X, W, B[None])),                             # bias 2-D
    V("conv2d", lambda F: F.conv2d(X, W, stride=0)),
    V("conv2d", lambda F: F.conv2d(X, W, stride=(1, 0))),
    V("conv2d", lambda F: F.conv2d(X, W, stride=-1)),
    V("conv2d", lambda F: F.conv2d(X, W, stride=(-2, 1))),
    V("conv2d", lambda F: F.conv2d(X, W, padding=-1)),
    V("conv2d", lambda F: F.conv2d(X, W, padding=(0, -1))),
    V("conv2d", lambda F: F.conv2d(X[:, :, :2, :2], W)),                        # kernel > input
    V("conv2d", lambda F: F.conv2d(X, f32(G, 4, 3, 11, 1), padding=1)),         # kernel > padded input
    V("conv2d", lambda F: F.conv2d(X, f32(G, 4, 3, 1, 10), padding=(0, 1))),    # kernel > padded input (w)
    V("conv2d", lambda F: F.conv2d(X[:0], W)),                                  # batch 0
    V("conv2d", lambda F: F.conv2d(X[:, :0], W[:, :0])),                        # 0 channels
    V("conv2d", lambda F: F.conv2d(X[:, :, :0], W, padding=2)),                 # height 0
    V("conv2d", lambda F: F.conv2d(X, W[:0], B[:0])),                           # 0 output channels
    V("conv2d", lambda F: F.conv2d(X, W[:, :, :0])),                            # kernel height 0
    V("conv2d", lambda F: F.conv2d(X, W, algo="fast")),
    V("conv2d", lambda F: F.conv2d(X, W, algo="NAIVE")),
    V("conv2d", lambda F: F.conv2d(X, W, algo="")),
    V("conv2d", lambda F: F.conv2d(X.astype(np.complex64), W), TypeError),
    V("conv2d", lambda F: F.conv2d(X, W.astype(np.complex128)), TypeError),
    V("conv2d", lambda F: F.conv2d(X.astype(object), W), TypeError),
    V("conv2d", lambda F: F.conv2d(X.astype(str), W), TypeError),
    V("conv2d", lambda F: F.conv2d(X, W, B.astype(np.complex64)), TypeError),
    # ------------------------------------------------------- conv2d_backward
    V("conv2d", lambda F: F.conv2d_backward(DY_CONV[:, :3], X, W)),             # dy channels
    V("conv2d", lambda F: F.conv2d_backward(DY_CONV[:1], X, W)),                # dy batch
    V("conv2d", lambda F: F.conv2d_backward(DY_CONV[:, :, :5], X, W)),          # dy height
    V("conv2d", lambda F: F.conv2d_backward(DY_CONV[:, :, :, :4], X, W)),       # dy width
    V("conv2d", lambda F: F.conv2d_backward(DY_CONV, X, W, padding=1)),         # dy for another padding
    V("conv2d", lambda F: F.conv2d_backward(DY_CONV[0], X, W)),                 # dy 3-D
    V("conv2d", lambda F: F.conv2d_backward(DY_CONV, X[0], W)),
    V("conv2d", lambda F: F.conv2d_backward(DY_CONV, X[:, :2], W)),             # channel mismatch
    V("conv2d", lambda F: F.conv2d_backward(DY_CONV, X, W, stride=0)),
    V("conv2d", lambda F: F.conv2d_backward(DY_CONV, X, W, padding=-1)),
    V("conv2d", lambda F: F.conv2d_backward(DY_CONV[:0], X[:0], W)),            # batch 0
    V("conv2d", lambda F: F.conv2d_backward(DY_CONV, X, W, algo="fft")),
    V("conv2d", lambda F: F.conv2d_backward(DY_CONV.astype(np.complex64), X, W), TypeError),
    # ------------------------------------------------------------ max_pool2d
    V("max_pool2d", lambda F: F.max_pool2d(X[0], 2)),                           # 3-D
    V("max_pool2d", lambda F: F.max_pool2d(X, 0)),                              # kernel 0
    V("max_pool2d", lambda F: F.max_pool2d(X, (2, -1))),                        # kernel negative
    V("max_pool2d", lambda F: F.max_pool2d(X, 2, 0)),                           # stride 0
    V("max_pool2d", lambda F: F.max_pool2d(X, 2, (1, -1))),                     # stride negative
    V("max_pool2d", lambda F: F.max_pool2d(X, 2, 2, -1)),                       # padding negative
    V("max_pool2d", lambda F: F.max_pool2d(X, 2, 2, 2)),                        # padding > kernel//2
    V("max_pool2d", lambda F: F.max_pool2d(X, 3, 1, (1, 2))),                   # padding > kernel//2 (w)
    V("max_pool2d", lambda F: F.max_pool2d(X, (3, 2), 1, (1, 2))),
    V("max_pool2d", lambda F: F.max_pool2d(X[:, :, :3, :3], 4)),                # kernel > input
    V("max_pool2d", lambda F: F.max_pool2d(X[:, :, :3, :3], (1, 6), 1, (0, 1))),  # kernel > padded input
    V("max_pool2d", lambda F: F.max_pool2d(X[:0], 2)),                          # batch 0
    V("max_pool2d", lambda F: F.max_pool2d(X[:, :0], 2)),                       # 0 channels
    V("max_pool2d", lambda F: F.max_pool2d(X[:, :, :, :0], 1)),                 # width 0
    V("max_pool2d", lambda F: F.max_pool2d(X.astype(np.complex64), 2), TypeError),
    V("max_pool2d", lambda F: F.max_pool2d(X.astype(object), 2), TypeError),
    V("max_pool2d", lambda F: F.max_pool2d_backward(DY_POOL[:, :, :3], X, 2)),  # dy shape
    V("max_pool2d", lambda F: F.max_pool2d_backward(DY_POOL[:, :2], X, 2)),
    V("max_pool2d", lambda F: F.max_pool2d_backward(DY_POOL[0], X, 2)),
    V("max_pool2d", lambda F: F.max_pool2d_backward(DY_POOL, X, 2, 1)),         # dy for stride 1
    V("max_pool2d", lambda F: F.max_pool2d_backward(DY_POOL, X, 2, 2, 2)),
    V("max_pool2d", lambda F: F.max_pool2d_backward(DY_POOL, X, 0)),
    V("max_pool2d", lambda F: F.max_pool2d_backward(DY_POOL, X[0], 2)),
    # ------------------------------------------------------------ avg_pool2d
    V("avg_pool2d", lambda F: F.avg_pool2d(X[0], 2)),
    V("avg_pool2d", lambda F: F.avg_pool2d(X, 0)),
    V("avg_pool2d", lambda F: F.avg_pool2d(X, 2, 0)),
    V("avg_pool2d", lambda F: F.avg_pool2d(X, 2, -2)),
    V("avg_pool2d", lambda F: F.avg_pool2d(X, 2, 2, -1)),
    V("avg_pool2d", lambda F: F.avg_pool2d(X, 2, 2, 2)),
    V("avg_pool2d", lambda F: F.avg_pool2d(X, (5, 1), 1, (2, 1))),
    V("avg_pool2d", lambda F: F.avg_pool2d(X[:, :, :3, :3], 4)),
    V("avg_pool2d", lambda F: F.avg_pool2d(X[:0], 2)),
    V("avg_pool2d", lambda F: F.avg_pool2d(X[:, :, :0], 1)),
    V("avg_pool2d", lambda F: F.avg_pool2d(X.astype(np.complex128), 2), TypeError),
    V("avg_pool2d", lambda F: F.avg_pool2d(X.astype(str), 2), TypeError),
    V("avg_pool2d", lambda F: F.avg_pool2d_backward(DY_POOL[:, :, :, :2], X, 2)),
    V("avg_pool2d", lambda F: F.avg_pool2d_backward(DY_POOL[1:], X, 2)),
    V("avg_pool2d", lambda F: F.avg_pool2d_backward(DY_POOL, X, 2, 1)),
    V("avg_pool2d", lambda F: F.avg_pool2d_backward(DY_POOL, X, 2, 2, 3)),
    V("avg_pool2d", lambda F: F.avg_pool2d_backward(DY_POOL[None], X, 2)),
    # ---------------------------------------------------------------- linear
    V("linear", lambda F: F.linear(XL[0], WL)),                                 # 1-D x
    V("linear", lambda F: F.linear(XL[None], WL)),                              # 3-D x
    V("linear", lambda F: F.linear(XL, WL[0])),                                 # 1-D w
    V("linear", lambda F: F.linear(XL, WL[:, :5])),                             # in mismatch
    V("linear", lambda F: F.linear(XL, WL.T)),                                  # (in, out) layout
    V("linear", lambda F: F.linear(XL, WL, BL[:3])),                            # bias length
    V("linear", lambda F: F.linear(XL, WL, np.zeros(6, np.float32))),
    V("linear", lambda F: F.linear(XL, WL, BL[None])),                          # bias 2-D
    V("linear", lambda F: F.linear(XL[:0], WL)),                                # batch 0
    V("linear", lambda F: F.linear(XL[:, :0], WL[:, :0])),                      # 0 features in
    V("linear", lambda F: F.linear(XL, WL[:0], BL[:0])),                        # 0 features out
    V("linear", lambda F: F.linear(XL.astype(np.complex64), WL), TypeError),
    V("linear", lambda F: F.linear(XL, WL.astype(object)), TypeError),
    V("linear", lambda F: F.linear(XL.astype(str), WL), TypeError),
    V("linear", lambda F: F.linear_backward(DYL[:, :3], XL, WL)),               # dy shape
    V("linear", lambda F: F.linear_backward(DYL[:4], XL, WL)),
    V("linear", lambda F: F.linear_backward(DYL[0], XL, WL)),
    V("linear", lambda F: F.linear_backward(DYL, XL, WL[:, :5])),
    V("linear", lambda F: F.linear_backward(DYL, XL[0], WL)),
    V("linear", lambda F: F.linear_backward(DYL[:0], XL[:0], WL)),
    V("linear", lambda F: F.linear_backward(DYL.astype(np.complex64), XL, WL), TypeError),
    # ---------------------------------------------------------- relu / tanh
    V("relu", lambda F: F.relu_backward(DYL[:, :3], DYL)),
    V("relu", lambda F: F.relu_backward(DYL.T, DYL)),
    V("relu", lambda F: F.relu_backward(DYL.reshape(-1), DYL)),
    V("relu", lambda F: F.relu(np.zeros((3, 0), np.float32))),
    V("relu", lambda F: F.relu(DYL.astype(np.complex64)), TypeError),
    V("relu", lambda F: F.relu(DYL.astype(object)), TypeError),
    V("relu", lambda F: F.relu(["a", "b"]), TypeError),
    V("relu", lambda F: F.relu_backward(DYL, DYL.astype(np.complex64)), TypeError),
    V("tanh", lambda F: F.tanh_backward(DYL[:, :3], DYL)),
    V("tanh", lambda F: F.tanh_backward(DYL[None], DYL)),
    V("tanh", lambda F: F.tanh(np.zeros((0,), np.float32))),
    V("tanh", lambda F: F.tanh(DYL.astype(np.complex128)), TypeError),
    V("tanh", lambda F: F.tanh(DYL.astype(str)), TypeError),
    V("tanh", lambda F: F.tanh_backward(DYL.astype(object), DYL), TypeError),
    # ------------------------------------------------- softmax_cross_entropy
    V("softmax_cross_entropy", lambda F: F.softmax_cross_entropy(LOGITS[0], LABELS[:1])),     # 1-D logits
    V("softmax_cross_entropy", lambda F: F.softmax_cross_entropy(LOGITS[None], LABELS)),      # 3-D logits
    V("softmax_cross_entropy", lambda F: F.softmax_cross_entropy(LOGITS, LABELS[:4])),        # too few labels
    V("softmax_cross_entropy", lambda F: F.softmax_cross_entropy(LOGITS, np.r_[LABELS, 0])),  # too many
    V("softmax_cross_entropy", lambda F: F.softmax_cross_entropy(LOGITS, LABELS[:, None])),   # 2-D labels
    V("softmax_cross_entropy", lambda F: F.softmax_cross_entropy(LOGITS, [0, 3, 1, 1, 0])),   # label == C
    V("softmax_cross_entropy", lambda F: F.softmax_cross_entropy(LOGITS, [0, 1, 1, 1, 99])),
    V("softmax_cross_entropy", lambda F: F.softmax_cross_entropy(LOGITS, [0, -1, 1, 1, 0])),  # negative
    V("softmax_cross_entropy", lambda F: F.softmax_cross_entropy(LOGITS[:0], LABELS[:0])),    # batch 0
    V("softmax_cross_entropy", lambda F: F.softmax_cross_entropy(LOGITS[:, :0], LABELS * 0)),  # 0 classes
    V("softmax_cross_entropy", lambda F: F.softmax_cross_entropy(np.where(np.arange(15).reshape(5, 3) == 7, np.nan, LOGITS), LABELS)),
    V("softmax_cross_entropy", lambda F: F.softmax_cross_entropy(np.where(np.arange(15).reshape(5, 3) == 0, np.inf, LOGITS), LABELS)),
    V("softmax_cross_entropy", lambda F: F.softmax_cross_entropy(np.where(np.arange(15).reshape(5, 3) == 14, -np.inf, LOGITS), LABELS)),
    V("softmax_cross_entropy", lambda F: F.softmax_cross_entropy(np.full((5, 3), 1e39), LABELS)),  # float64 overflowing float32
    V("softmax_cross_entropy", lambda F: F.softmax_cross_entropy(LOGITS, LABELS.astype(np.float32)), TypeError),
    V("softmax_cross_entropy", lambda F: F.softmax_cross_entropy(LOGITS, LABELS.astype(np.float64)), TypeError),
    V("softmax_cross_entropy", lambda F: F.softmax_cross_entropy(LOGITS, [0.0, 2.0, 1.0, 1.0, 0.0]), TypeError),
    V("softmax_cross_entropy", lambda F: F.softmax_cross_entropy(LOGITS, LABELS.astype(str)), TypeError),
    V("softmax_cross_entropy", lambda F: F.softmax_cross_entropy(LOGITS.astype(np.complex64), LABELS), TypeError),
    V("softmax_cross_entropy", lambda F: F.softmax_cross_entropy(LOGITS.astype(object), LABELS), TypeError),
]


def _bad_call_params():
    counts = {}
    params = []
    for op, call, exc in BAD_CALLS:
        counts[op] = counts.get(op, 0) + 1
        match = op if exc is ValueError else None
        params.append(pytest.param(call, exc, match, id=f"{op}-{counts[op]}-{exc.__name__}"))
    return params


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("call,exc,match", _bad_call_params())
def test_bad_input_raises(Fn, call, exc, match):
    with pytest.raises(exc, match=match):
        call(Fn)


def test_stride_or_kernel_of_wrong_length_raises(Fn):
    with pytest.raises((ValueError, TypeError)):
        Fn.conv2d(X, W, stride=(1, 1, 1))
    with pytest.raises((ValueError, TypeError)):
        Fn.max_pool2d(X, (2, 2, 2))


def test_algo_accepts_the_cpu_names(Fn):
    ref = R.conv2d(X, W, B)
    for algo in ("naive", "im2col", "direct", "winograd", "auto", "heuristic"):
        assert_close(Fn.conv2d(X, W, B, algo=algo), ref, what=algo)
        Fn.conv2d_backward(DY_CONV, X, W, algo=algo)


# --------------------------------------------------------------------------
# sgd_step
# --------------------------------------------------------------------------

def sgd_operands(shape=(3, 4)):
    g = np.random.default_rng(7)
    return f32(g, *shape), f32(g, *shape), f32(g, *shape) * 0.1


def readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


SGD_TYPE_ERRORS = [
    ("param float64", lambda p, g, v: (p.astype(np.float64), g, v)),
    ("param int", lambda p, g, v: (p.astype(np.int32), g, v)),
    ("param list", lambda p, g, v: (p.tolist(), g, v)),
    ("param fortran", lambda p, g, v: (np.asfortranarray(p), g, np.asfortranarray(v))),
    ("param strided", lambda p, g, v: (np.repeat(p, 2, axis=1)[:, ::2], g, v)),
    ("param transposed", lambda p, g, v: (np.ascontiguousarray(p.T).T, g, v)),
    ("param readonly", lambda p, g, v: (readonly(p), g, v)),
    ("velocity float64", lambda p, g, v: (p, g, v.astype(np.float64))),
    ("velocity strided", lambda p, g, v: (p, g, np.repeat(v, 2, axis=0)[::2])),
    ("velocity readonly", lambda p, g, v: (p, g, readonly(v))),
    ("velocity list", lambda p, g, v: (p, g, v.tolist())),
    ("grad complex", lambda p, g, v: (p, g.astype(np.complex64), v)),
]


@pytest.mark.parametrize("make", [m for _, m in SGD_TYPE_ERRORS], ids=[n for n, _ in SGD_TYPE_ERRORS])
def test_sgd_step_type_errors(Fn, make):
    p, g, v = make(*sgd_operands())
    with pytest.raises(TypeError):
        Fn.sgd_step(p, g, v, 0.1, momentum=0.9)


SGD_VALUE_ERRORS = [
    ("lr negative", dict(lr=-0.1)),
    ("lr nan", dict(lr=float("nan"))),
    ("momentum negative", dict(momentum=-0.5)),
    ("nesterov without momentum", dict(momentum=0.0, nesterov=True)),
]


@pytest.mark.parametrize("kwargs", [k for _, k in SGD_VALUE_ERRORS], ids=[n for n, _ in SGD_VALUE_ERRORS])
def test_sgd_step_value_errors(Fn, kwargs):
    p, g, v = sgd_operands()
    p0, v0 = p.copy(), v.copy()
    args = dict(lr=0.1, momentum=0.9, weight_decay=0.0, nesterov=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match="sgd_step"):
        Fn.sgd_step(p, g, v, args.pop("lr"), **args)
    np.testing.assert_array_equal(p, p0)
    np.testing.assert_array_equal(v, v0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_step_nonfinite_grad_leaves_param_unchanged(Fn, bad, momentum):
    p, g, v = sgd_operands((4, 5))
    g[3, 4] = bad  # the last element: a partial update would already be done
    p0, v0 = p.copy(), v.copy()
    with pytest.raises(ValueError, match="sgd_step"):
        Fn.sgd_step(p, g, v, 0.1, momentum=momentum)
    np.testing.assert_array_equal(p, p0)
    np.testing.assert_array_equal(v, v0)
    g2 = g.copy()
    g2[3, 4] = 0.0
    g2[0, 0] = bad  # and the first
    with pytest.raises(ValueError, match="sgd_step"):
        Fn.sgd_step(p, g2, v, 0.1, momentum=momentum)
    np.testing.assert_array_equal(p, p0)
    np.testing.assert_array_equal(v, v0)


@pytest.mark.parametrize("which", ["grad", "velocity"])
def test_sgd_step_shape_mismatch(Fn, which):
    p, g, v = sgd_operands((3, 4))
    if which == "grad":
        g = g[:, :3].copy()
    else:
        v = v[:2].copy()
    p0 = p.copy()
    with pytest.raises((ValueError, TypeError)):
        Fn.sgd_step(p, g, v, 0.1, momentum=0.9)
    np.testing.assert_array_equal(p, p0)


def test_sgd_step_velocity_none_with_momentum_raises(Fn):
    p, g, _ = sgd_operands()
    p0 = p.copy()
    with pytest.raises((ValueError, TypeError)):
        Fn.sgd_step(p, g, None, 0.1, momentum=0.9)
    np.testing.assert_array_equal(p, p0)


def test_sgd_step_grad_conversion(Fn):
    """grad is an ordinary input: float64, lists and non-contiguous views are accepted."""
    base_p, g, base_v = sgd_operands((3, 4))
    results = []
    for grad in (g, g.astype(np.float64), g.tolist(), np.asfortranarray(g), np.repeat(g, 2, axis=1)[:, ::2]):
        p, v = base_p.copy(), base_v.copy()
        Fn.sgd_step(p, grad, v, 0.1, momentum=0.9, weight_decay=0.01, nesterov=True)
        results.append((p, v))
    for p, v in results[1:]:
        np.testing.assert_array_equal(p, results[0][0])
        np.testing.assert_array_equal(v, results[0][1])


# --------------------------------------------------------------------------
# module-level setters
# --------------------------------------------------------------------------

def test_set_simd_rejects_unknown(pylenet_module):
    before = pylenet_module.get_simd()
    for name in ("sse9", "", "AVX2 ", "neon"):
        with pytest.raises(ValueError):
            pylenet_module.set_simd(name)
    assert pylenet_module.get_simd() == before


@pytest.mark.parametrize("n", [0, -1])
def test_set_num_threads_rejects_non_positive(pylenet_module, n):
    before = pylenet_module.get_num_threads()
    with pytest.raises(ValueError):
        pylenet_module.set_num_threads(n)
    assert pylenet_module.get_num_threads() == before


# --------------------------------------------------------------------------
# conversions: float64 / int / lists / non-contiguous == contiguous float32
# --------------------------------------------------------------------------

def noncontig(a):
    """The same values as ``a`` in a non-contiguous view (reversed axes order
    in memory, then every other element of a larger buffer)."""
    big = np.zeros((2,) + a.shape[::-1], np.float32)
    big[0] = a.T
    v = big[0].T
    assert not v.flags.c_contiguous or a.ndim <= 1 or a.size <= 1
    return v


def strided(a):
    big = np.zeros(a.shape[:-1] + (a.shape[-1] * 3,), np.float32)
    big[..., 1::3] = a
    v = big[..., 1::3]
    assert not v.flags.c_contiguous
    return v


VARIANTS = {
    "float64": lambda a: a.astype(np.float64),
    "noncontig": noncontig,
    "strided": strided,
    "fortran": np.asfortranarray,
    "list": lambda a: a.tolist(),
    "float64-noncontig": lambda a: noncontig(a).astype(np.float64, order="K"),
}


def _same(actual, expected, what):
    if isinstance(expected, tuple):
        for i, (a, e) in enumerate(zip(actual, expected)):
            _same(a, e, f"{what}[{i}]")
        return
    if isinstance(expected, float):
        assert isinstance(actual, float)
        np.testing.assert_allclose(actual, expected, rtol=1e-6)
        return
    assert isinstance(actual, np.ndarray) and actual.dtype == np.float32, what
    assert actual.flags.c_contiguous, f"{what}: output is not C-contiguous"
    assert_close(actual, expected, rtol=1e-6, atol=0, what=what)


OPS = {
    "conv2d": (lambda F, a, b, c: F.conv2d(a, b, c, stride=(2, 1), padding=(1, 2)), (X, W, B)),
    "conv2d_backward": (lambda F, a, b, c: F.conv2d_backward(a, b, c), (DY_CONV, X, W)),
    "max_pool2d": (lambda F, a: F.max_pool2d(a, (3, 2), (2, 2), (1, 0)), (X,)),
    "max_pool2d_backward": (lambda F, a, b: F.max_pool2d_backward(a, b, 2), (DY_POOL, X)),
    "avg_pool2d": (lambda F, a: F.avg_pool2d(a, 3, 2, 1), (X,)),
    "avg_pool2d_backward": (lambda F, a, b: F.avg_pool2d_backward(a, b, 2), (DY_POOL, X)),
    "linear": (lambda F, a, b, c: F.linear(a, b, c), (XL, WL, BL)),
    "linear_backward": (lambda F, a, b, c: F.linear_backward(a, b, c), (DYL, XL, WL)),
    "relu": (lambda F, a: F.relu(a), (X,)),
    "relu_backward": (lambda F, a, b: F.relu_backward(a, b), (X[::-1].copy(), X)),
    "tanh": (lambda F, a: F.tanh(a), (X,)),
    "tanh_backward": (lambda F, a, b: F.tanh_backward(a, b), (DYL, np.tanh(XL[:, :4]))),
    "softmax_cross_entropy": (lambda F, a: F.softmax_cross_entropy(a, LABELS), (LOGITS,)),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("op", list(OPS))
def test_input_conversion(F, op, variant):
    fn, args = OPS[op]
    expected = fn(F, *args)
    convert = VARIANTS[variant]
    # convert each argument in turn, then all of them at once
    for i in range(len(args)):
        changed = list(args)
        changed[i] = convert(args[i])
        _same(fn(F, *changed), expected, f"{op} with argument {i} as {variant}")
    _same(fn(F, *[convert(a) for a in args]), expected, f"{op} with all arguments as {variant}")


def test_integer_inputs(F):
    xi = np.arange(2 * 1 * 4 * 4).reshape(2, 1, 4, 4) % 5 - 2
    wi = np.array([[[[1, -1], [2, 0]]]])
    assert_close(F.conv2d(xi, wi), R.conv2d(xi, wi), rtol=0, atol=0, what="conv2d int")
    assert_close(F.max_pool2d(xi, 2), R.max_pool2d(xi, 2), rtol=0, atol=0, what="max_pool2d int")
    assert_close(F.relu(xi), R.relu(xi), rtol=0, atol=0, what="relu int")
    assert_close(F.linear(xi.reshape(2, -1), np.ones((3, 16), np.int64)),
                 R.linear(xi.reshape(2, -1), np.ones((3, 16))), rtol=0, atol=0, what="linear int")


# ---- size arguments near 2^63 (issue 13): one bounded check before any shape arithmetic ------
HUGE = [2**31, 2**40, 2**61, 2**62, 2**63 - 1]


@pytest.mark.parametrize("v", HUGE)
@pytest.mark.parametrize("call", [
    lambda F, v: F.max_pool2d(X, v, 1, v // 2),
    lambda F, v: F.avg_pool2d(X, v, 1, v // 2),
    lambda F, v: F.max_pool2d(X, 2, v, 0),
    lambda F, v: F.avg_pool2d(X, (2, 2), (1, v), 0),
    lambda F, v: F.max_pool2d(X, (v, 2), 1, (v // 2, 0)),
    lambda F, v: F.conv2d(X, W, None, 1, v),
    lambda F, v: F.conv2d(X, W, None, v, 0),
    lambda F, v: F.conv2d(X, W, None, (1, v), (v, 0)),
], ids=["max-k", "avg-k", "max-s", "avg-s", "max-kh", "conv-p", "conv-s", "conv-sp"])
def test_huge_size_arguments_are_refused(Fn, call, v):
    with pytest.raises(ValueError, match="out of range|between"):
        call(Fn, v)


@pytest.mark.parametrize("v", HUGE)
def test_native_op_layer_bounds_size_arguments(pylenet_module, v):
    """The C++ check holds without the Python one in front of it (the graph and the executor
    call it directly)."""
    C = pylenet_module._C
    h = C.Handle()
    with pytest.raises(ValueError, match="between"):
        C.pool2d_forward(h, "max", X, (v, v), (1, 1), (v // 2, v // 2))
    with pytest.raises(ValueError, match="between"):
        C.pool2d_forward(h, "avg", X, (2, 2), (v, 1), (0, 0))
    with pytest.raises(ValueError, match="between"):
        C.conv2d_forward(h, X, W, None, (1, 1), (v, v), "auto")
    with pytest.raises(ValueError, match="between"):
        C.conv2d_forward(h, X, W, None, (v, 1), (0, 0), "auto")


@pytest.mark.parametrize("layer", [
    lambda nn: nn.MaxPool2d(2**62, 1, 2**61), lambda nn: nn.AvgPool2d(2, 2**63 - 1),
    lambda nn: nn.Conv2d(1, 1, 3, padding=2**62), lambda nn: nn.Conv2d(1, 1, 2**40)])
def test_layers_refuse_huge_sizes_when_built(pylenet_module, layer):
    with pytest.raises(ValueError, match="out of range"):
        layer(pylenet_module.nn)


def test_largest_allowed_arguments_give_exact_results(Fn):
    x = X[:1, :1]
    # A window covering the whole (padded) input: max over everything, mean over 2^60 cells.
    assert np.all(Fn.max_pool2d(x, 2**30, 1, 2**29) == x.max())
    np.testing.assert_allclose(Fn.avg_pool2d(x, 2**30, 1, 2**29), x.sum() / 2.0**60, rtol=1e-5)
    # The largest stride keeps only the first window.
    assert Fn.max_pool2d(x, 2, 2**31 - 1, 0).item() == x[..., :2, :2].max()
