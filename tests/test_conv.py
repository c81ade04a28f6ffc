"""conv2d / conv2d_backward against the float64 reference and torch.

Every test runs on every SIMD path (``F`` fixture) and, for conv, on every
algorithm ("naive", "im2col", "direct", "winograd", "auto"). "direct" handles stride 1 with
padding smaller than the kernel and kernel widths up to 8, "winograd" 3x3 and 5x5 kernels at
stride 1 with padding smaller than the kernel; elsewhere they must raise ValueError. Winograd's
5x5 filter gradient (and so "auto", which may pick it) is checked to 4e-5 of the largest value
instead of 1e-5: its transforms scale values by up to 16/24 and 1/24 before the long sums.
"""

import numpy as np
import pytest

import reference as R
from conftest import assert_close, f32

ALGOS = ["naive", "im2col", "direct", "winograd", "auto"]


def direct_supports(case):
    n, c, h, w, oc, kh, kw, stride, padding = case
    (sh, sw), (ph, pw) = R.pair(stride), R.pair(padding)
    return sh == 1 and sw == 1 and ph < kh and pw < kw and kw <= 8


def winograd_supports(case):
    n, c, h, w, oc, kh, kw, stride, padding = case
    (sh, sw), (ph, pw) = R.pair(stride), R.pair(padding)
    return sh == 1 and sw == 1 and kh == kw and kh in (3, 5) and ph < kh and pw < kw


def tolerance(algo, case):
    kh = case[5]
    return 4e-5 if algo in ("winograd", "auto") and kh == 5 else 1e-5


def unsupported(algo, case):
    return (algo == "direct" and not direct_supports(case)) or (algo == "winograd" and not winograd_supports(case))

# (n, c, h, w, out_c, kh, kw, stride, padding)
CASES = [
    (1, 1, 7, 11, 2, 3, 5, 1, 0),
    (3, 3, 7, 11, 4, 3, 5, (2, 1), (1, 2)),
    (1, 3, 9, 6, 2, 1, 4, (1, 3), (0, 2)),
    (3, 1, 5, 5, 3, 5, 5, 1, 0),             # 1x1 output, no padding
    (2, 2, 4, 4, 1, 6, 6, 1, 1),             # 1x1 output, kernel > input, padding makes it fit
    (1, 1, 8, 8, 1, 1, 1, 1, 0),             # 1x1 kernel
    (2, 3, 10, 9, 5, 2, 3, 3, (2, 1)),
    (1, 2, 6, 13, 3, 4, 2, (3, 2), (1, 0)),
    (1, 1, 3, 3, 1, 3, 3, 3, 2),             # padding 2 on a tiny image, stride 3
    (1, 2, 11, 7, 3, 2, 2, 3, 0),            # stride > kernel: some inputs unused
    (3, 3, 12, 5, 2, 5, 1, (1, 2), (2, 0)),
    (1, 1, 1, 9, 2, 1, 3, 2, 0),             # 1-row image
    # shapes for the direct kernels: wide rows (several column blocks), kernel width 8,
    # output channels that leave register-block tails, many input channels
    (2, 2, 5, 70, 21, 3, 3, 1, 1),
    (1, 3, 9, 40, 5, 2, 8, 1, (1, 7)),
    (2, 17, 6, 9, 3, 3, 1, 1, (2, 0)),
    (3, 1, 13, 33, 37, 4, 4, 1, 3),
]
CASE_IDS = [f"n{n}c{c}_{h}x{w}_o{o}_k{kh}x{kw}_s{s}_p{p}".replace(" ", "")
            for n, c, h, w, o, kh, kw, s, p in CASES]

# LeNet-sized layers: (n, c, h, w, out_c, kh, kw, stride, padding)
LENET = [
    (2, 1, 28, 28, 6, 5, 5, 1, 2),
    (2, 6, 14, 14, 16, 5, 5, 1, 0),
    (2, 20, 12, 12, 50, 5, 5, 1, 0),
]
LENET_IDS = ["1x28x28-6@5x5p2", "6x14x14-16@5x5", "20x12x12-50@5x5"]


def make(rng, n, c, h, w, oc, kh, kw, stride, padding):
    x = f32(rng, n, c, h, w)
    wt = f32(rng, oc, c, kh, kw)
    b = f32(rng, oc)
    oh = R.out_size(h, kh, R.pair(stride)[0], R.pair(padding)[0])
    ow = R.out_size(w, kw, R.pair(stride)[1], R.pair(padding)[1])
    dy = f32(rng, n, oc, oh, ow)
    return x, wt, b, dy


def check_forward(F, rng, case, algo):
    n, c, h, w, oc, kh, kw, stride, padding = case
    x, wt, b, _ = make(rng, *case)
    if unsupported(algo, case):
        with pytest.raises(ValueError, match=algo):
            F.conv2d(x, wt, b, stride=stride, padding=padding, algo=algo)
        return
    x0, w0, b0 = x.copy(), wt.copy(), b.copy()
    y = F.conv2d(x, wt, b, stride=stride, padding=padding, algo=algo)
    rtol = tolerance(algo, case)
    assert_close(y, R.conv2d(x, wt, b, stride, padding), rtol=rtol, what="conv2d y")
    y_nb = F.conv2d(x, wt, stride=stride, padding=padding, algo=algo)
    assert_close(y_nb, R.conv2d(x, wt, None, stride, padding), rtol=rtol, what="conv2d y (no bias)")
    # inputs are not modified
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(wt, w0)
    np.testing.assert_array_equal(b, b0)


def check_backward(F, rng, case, algo):
    n, c, h, w, oc, kh, kw, stride, padding = case
    x, wt, _, dy = make(rng, *case)
    if unsupported(algo, case):
        with pytest.raises(ValueError, match=algo):
            F.conv2d_backward(dy, x, wt, stride=stride, padding=padding, algo=algo)
        return
    dx, dw, db = F.conv2d_backward(dy, x, wt, stride=stride, padding=padding, algo=algo)
    rdx, rdw, rdb = R.conv2d_backward(dy, x, wt, stride, padding)
    rtol = tolerance(algo, case)
    assert_close(dx, rdx, rtol=rtol, what="conv2d dx")
    assert_close(dw, rdw, rtol=rtol, what="conv2d dw")
    assert_close(db, rdb, what="conv2d db")


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_conv2d_forward(F, rng, case, algo):
    check_forward(F, rng, case, algo)


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_conv2d_backward(F, rng, case, algo):
    check_backward(F, rng, case, algo)


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", LENET, ids=LENET_IDS)
def test_conv2d_lenet_forward(F, nthreads, rng, case, algo):
    check_forward(F, rng, case, algo)


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", LENET, ids=LENET_IDS)
def test_conv2d_lenet_backward(F, nthreads, rng, case, algo):
    check_backward(F, rng, case, algo)


@pytest.mark.parametrize("case", CASES + LENET, ids=CASE_IDS + LENET_IDS)
def test_naive_and_im2col_agree(F, rng, case):
    n, c, h, w, oc, kh, kw, stride, padding = case
    x, wt, b, dy = make(rng, *case)
    kw_ = dict(stride=stride, padding=padding)
    y_n = F.conv2d(x, wt, b, algo="naive", **kw_)
    y_i = F.conv2d(x, wt, b, algo="im2col", **kw_)
    assert_close(y_i, y_n, what="im2col vs naive y")
    g_n = F.conv2d_backward(dy, x, wt, algo="naive", **kw_)
    g_i = F.conv2d_backward(dy, x, wt, algo="im2col", **kw_)
    for a, r, name in zip(g_i, g_n, ("dx", "dw", "db")):
        assert_close(a, r, what=f"im2col vs naive {name}")


def test_int_and_pair_arguments_agree(F, rng):
    x, wt, b, dy = make(rng, 2, 2, 9, 9, 3, 3, 3, 2, 1)
    assert_close(F.conv2d(x, wt, b, stride=2, padding=1),
                 F.conv2d(x, wt, b, stride=(2, 2), padding=(1, 1)), what="int vs pair")
    assert_close(F.conv2d(x, wt, b, stride=[2, 2], padding=[1, 1]),
                 F.conv2d(x, wt, b, stride=(2, 2), padding=(1, 1)), what="list vs pair")
    # positional arguments in the documented order
    assert_close(F.conv2d(x, wt, b, 2, 1, algo="naive"), R.conv2d(x, wt, b, 2, 1), what="positional")


def test_identity_kernel(F):
    # a 1x1 kernel with weight 1 and zero bias returns the input exactly
    x = np.arange(2 * 1 * 5 * 7, dtype=np.float32).reshape(2, 1, 5, 7)
    w = np.ones((1, 1, 1, 1), np.float32)
    for algo in ALGOS:
        if algo != "winograd":  # a 1x1 kernel is not its shape (3x3 and 5x5 only)
            np.testing.assert_array_equal(F.conv2d(x, w, algo=algo), x)


def test_hand_computed(F):
    # 1x1x3x3 input, 2x2 kernel, padding 1, stride 2 -> 2x2 output
    x = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
    w = np.array([[[[1, 2], [3, 4]]]], np.float32)
    # windows over the zero-padded 5x5 image: rows/cols {0,1} and {2,3}
    expect = np.array([[[[1 * 4, 2 * 3 + 3 * 4],
                         [4 * 2 + 7 * 4, 5 * 1 + 6 * 2 + 8 * 3 + 9 * 4]]]], np.float32)
    for algo in ALGOS:
        if algo in ("direct", "winograd"):  # stride 2: not their shape
            continue
        np.testing.assert_allclose(F.conv2d(x, w, stride=2, padding=1, algo=algo), expect, rtol=1e-6)
        dx, dw, db = F.conv2d_backward(np.ones((1, 1, 2, 2), np.float32), x, w, stride=2, padding=1, algo=algo)
        np.testing.assert_allclose(db, [4.0])
        np.testing.assert_allclose(dw, [[[[5, 10], [10, 20]]]])
        # every input pixel is covered by exactly one window tap
        np.testing.assert_allclose(dx, np.array([[[[4, 3, 4], [2, 1, 2], [4, 3, 4]]]], np.float32))


# --------------------------------------------------------------------------
# against torch, on random shapes picked by a seeded RNG
# --------------------------------------------------------------------------

def _random_cases(count, seed):
    g = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        n, c, oc = (int(v) for v in g.integers(1, 5, 3))
        kh, kw = (int(v) for v in g.integers(1, 6, 2))
        sh, sw = (int(v) for v in g.integers(1, 4, 2))
        ph, pw = (int(v) for v in g.integers(0, 3, 2))
        h, w = (int(v) for v in g.integers(1, 16, 2))
        if kh > h + 2 * ph or kw > w + 2 * pw:
            continue
        cases.append((n, c, h, w, oc, kh, kw, (sh, sw), (ph, pw)))
    return cases


TORCH_CASES = _random_cases(10, seed=20240611)


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("case", TORCH_CASES, ids=lambda c: "n{}c{}_{}x{}_o{}_k{}x{}_s{}_p{}".format(*c).replace(" ", ""))
def test_conv2d_vs_torch(F, rng, case, algo):
    torch = pytest.importorskip("torch")
    n, c, h, w, oc, kh, kw, stride, padding = case
    x, wt, b, dy = make(rng, *case)
    if unsupported(algo, case):
        pytest.skip(f"{algo}: not this shape (the ValueError is checked in test_conv2d_forward)")
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    wtt = torch.tensor(wt, dtype=torch.float64, requires_grad=True)
    bt = torch.tensor(b, dtype=torch.float64, requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, wtt, bt, stride=stride, padding=padding)
    yt.backward(torch.tensor(dy, dtype=torch.float64))
    y = F.conv2d(x, wt, b, stride=stride, padding=padding, algo=algo)
    rtol = tolerance(algo, case)
    assert_close(y, yt.detach().numpy(), rtol=rtol, what="conv2d y vs torch")
    dx, dw, db = F.conv2d_backward(dy, x, wt, stride=stride, padding=padding, algo=algo)
    assert_close(dx, xt.grad.numpy(), rtol=rtol, what="conv2d dx vs torch")
    assert_close(dw, wtt.grad.numpy(), rtol=rtol, what="conv2d dw vs torch")
    assert_close(db, bt.grad.numpy(), what="conv2d db vs torch")


# Stride-1 random shapes, so the direct algorithm meets torch on shapes nobody tuned for.
TORCH_CASES_S1 = [(n, c, h, w, oc, kh, kw, 1, (min(p[0], kh - 1), min(p[1], kw - 1)))
                  for (n, c, h, w, oc, kh, kw, s, p) in _random_cases(10, seed=7)]


@pytest.mark.parametrize("algo", ["direct", "winograd", "auto"])
@pytest.mark.parametrize("case", TORCH_CASES_S1, ids=lambda c: "n{}c{}_{}x{}_o{}_k{}x{}_s{}_p{}".format(*c).replace(" ", ""))
def test_conv2d_stride1_vs_torch(F, rng, case, algo):
    test_conv2d_vs_torch(F, rng, case, algo)


# Shapes that take the direct kernels' special paths on some SIMD level: output rows
# narrower than a vector with many channels (forward and filter with channels in the lanes,
# 1-4 vectors of them, ragged pixel blocks), several channel blocks in backward filter with
# a partial last column vector, padding rows skipped in backward data, and interior output
# rows in groups (several rows per weight broadcast), kernel rows of the filter gradient in
# uneven blocks.
DIRECT_PATHS = [
    (3, 6, 14, 14, 16, 5, 5, 1, 0),   # LeNet conv2: 10 columns, 16 channels
    (2, 3, 9, 13, 20, 3, 3, 1, 1),    # 13 columns, 20 channels (two vectors of them on AVX-512)
    (2, 2, 7, 5, 37, 3, 2, 1, (2, 1)),  # 37 channels, 6 columns, padding rows
    (2, 1, 28, 28, 6, 5, 5, 1, 2),    # LeNet conv1: 28 columns = 16 + a partial 12
    (2, 2, 6, 21, 7, 2, 4, 1, 1),     # 7 channels in uneven blocks
    (2, 20, 12, 12, 50, 5, 5, 1, 0),  # cudnn_lenet conv2: 8 columns fill 8 lanes (picked on Zen 4)
    (1, 2, 13, 8, 7, 3, 3, 1, 1),     # interior rows in groups of 4, 2, 1 (8 lanes), borders alone
    (2, 4, 17, 10, 13, 3, 3, 1, 1),   # rows grouped by 2 (8 lanes; 16 lanes: backward data by 4), 13 channels
    (1, 3, 30, 24, 20, 5, 5, 1, 2),   # cudnn-like conv1 rows of 24 columns with padding rows
    (9, 3, 12, 11, 16, 7, 4, 1, (3, 1)),  # filter with channels in the lanes: 7 kernel rows in blocks of 4 + 3
]


@pytest.mark.parametrize("case", DIRECT_PATHS, ids=lambda c: "x".join(map(str, c[:7])))
def test_direct_special_paths(F, rng, case):
    check_forward(F, rng, case, "direct")
    check_backward(F, rng, case, "direct")


# Shapes for the Winograd kernels' paths: channel counts that leave partial vectors of lanes
# (1, 17, 40; a single lane up to three 16-lane vectors), outputs that are not whole 4x4 tiles,
# every padding 0-2 and unequal ones, images whose padded width is the tiled width (one run of
# pixels in the transposes) and those that are not, batches of several 8-image chunks (backward
# filter's partial sums) and single images split into bands of tile rows (forward, 2 threads).
WINOGRAD_PATHS = [
    (2, 32, 26, 26, 64, 3, 3, 1, 0),  # mnist_net conv2: whole tiles, contiguous rows
    (9, 17, 13, 11, 40, 3, 3, 1, 1),  # partial tiles, channel tails, two filter chunks
    (17, 3, 7, 10, 5, 3, 3, 1, 2),    # three chunks, padding 2 (more padding than image at the corners)
    (1, 40, 30, 9, 3, 3, 3, 1, (2, 0)),  # one image, many tile rows: bands; unequal padding
    (2, 1, 5, 6, 33, 3, 3, 1, (0, 1)),   # one input channel, 33 output channels
    (3, 16, 3, 3, 16, 3, 3, 1, 0),    # a single output pixel per image
    (2, 8, 6, 18, 12, 3, 3, 1, (1, 2)),  # padded width = tiled width with padding on the columns
    # F(2x2, 5x5): the same 6x6 patches, 2x2 output tiles
    (3, 20, 12, 12, 50, 5, 5, 1, 0),  # cudnn_lenet conv2
    (9, 16, 14, 13, 17, 5, 5, 1, 2),  # odd output sizes, a channel tail, two filter chunks
    (1, 3, 6, 9, 4, 5, 5, 1, (4, 1)),  # padding 4 (more than the image at the corners), bands
    (2, 33, 5, 5, 2, 5, 5, 1, 0),     # one output pixel, 33 input channels
]


@pytest.mark.parametrize("case", WINOGRAD_PATHS, ids=lambda c: "x".join(map(str, c[:7])) + f"p{c[8]}".replace(" ", ""))
def test_winograd_paths(F, nthreads, rng, case):
    check_forward(F, rng, case, "winograd")
    check_backward(F, rng, case, "winograd")


@pytest.mark.parametrize("case", WINOGRAD_PATHS, ids=lambda c: "x".join(map(str, c[:7])) + f"p{c[8]}".replace(" ", ""))
def test_winograd_fused_backward_is_bit_identical_to_the_separate_passes(F, nthreads, rng, case):
    """F.conv2d_backward (and the executor's conv2d_backward instruction) makes dx, dw and db in
    one pass over dy on winograd layers; every bit equals the separate passes' (the bias's: the
    same sums as on any algorithm)."""
    import pylenet._C as C
    n, c, h, w, oc, kh, kw, stride, padding = case
    x, wt, _, dy = make(rng, *case)
    dx, dw, db = F.conv2d_backward(dy, x, wt, stride=stride, padding=padding, algo="winograd")
    hd, s, p = C.default_handle(), R.pair(stride), R.pair(padding)
    np.testing.assert_array_equal(dx, C.conv2d_backward_data(hd, wt, dy, x.shape, s, p, "winograd"))
    np.testing.assert_array_equal(dw, C.conv2d_backward_filter(hd, x, dy, wt.shape, s, p, "winograd"))
    np.testing.assert_array_equal(db, C.conv2d_backward_bias(hd, dy))


def test_winograd_is_deterministic_across_threads(pylenet_module, rng):
    """The same bits for 1, 2 and 3 threads in every pass (work splits never change a sum)."""
    F = pylenet_module.functional
    x, wt, b, dy = make(rng, 19, 20, 13, 14, 24, 3, 3, 1, 1)
    x1, wt1, _, dy1 = make(rng, 1, 20, 29, 14, 24, 3, 3, 1, 1)  # a single image: forward in bands
    previous = pylenet_module.get_num_threads()
    outs = []
    try:
        for t in (1, 2, 3):
            pylenet_module.set_num_threads(t)
            outs.append([F.conv2d(x, wt, b, padding=1, algo="winograd"), F.conv2d(x1, wt1, padding=1, algo="winograd"),
                         *F.conv2d_backward(dy, x, wt, padding=1, algo="winograd")])
    finally:
        pylenet_module.set_num_threads(previous)
    for other in outs[1:]:
        for a, r in zip(other, outs[0]):
            np.testing.assert_array_equal(a, r)


def test_winograd_refuses_other_shapes(F, rng):
    x, wt, b, dy = make(rng, 1, 2, 9, 9, 3, 4, 4, 1, 0)
    with pytest.raises(ValueError, match="winograd needs a 3x3 or 5x5 kernel, stride 1 and padding smaller than the kernel"):
        F.conv2d(x, wt, algo="winograd")
    x, wt, b, dy = make(rng, 1, 2, 9, 9, 3, 3, 5, 1, 0)  # 3x5: not square
    with pytest.raises(ValueError, match="winograd needs"):
        F.conv2d(x, wt, algo="winograd")
    x, wt, b, dy = make(rng, 1, 2, 9, 9, 3, 3, 3, 2, 1)
    with pytest.raises(ValueError, match="winograd needs"):
        F.conv2d_backward(dy, x, wt, stride=2, padding=1, algo="winograd")
    with pytest.raises(ValueError, match="winograd needs"):
        F.conv2d_workspace_size((1, 2, 9, 9), (3, 2, 3, 3), padding=3, algo="winograd")
    with pytest.raises(ValueError, match="winograd needs"):
        F.conv2d_workspace_size((1, 2, 9, 9), (3, 2, 5, 5), padding=5, algo="winograd")


def test_heuristic_picks_winograd_for_wide_layers(pylenet_module):
    """The fixed rule: 3x3 stride-1 layers with 16+ channels each side go to Winograd, 5x5 ones from 4 images."""
    F = pylenet_module.functional
    ws = F.conv2d_workspace_size
    for pass_ in ("forward", "backward_data", "backward_filter"):
        assert ws((32, 32, 26, 26), (64, 32, 3, 3), algo="heuristic", pass_=pass_) == \
            ws((32, 32, 26, 26), (64, 32, 3, 3), algo="winograd", pass_=pass_)
        assert ws((32, 20, 12, 12), (50, 20, 5, 5), algo="heuristic", pass_=pass_) == \
            ws((32, 20, 12, 12), (50, 20, 5, 5), algo="winograd", pass_=pass_)  # cudnn_lenet conv2
        # one image: 3x3 still on winograd, 5x5 back on direct (the filter transform does not pay)
        assert ws((1, 32, 26, 26), (64, 32, 3, 3), algo="heuristic", pass_=pass_) == \
            ws((1, 32, 26, 26), (64, 32, 3, 3), algo="winograd", pass_=pass_)
        other = "im2col" if pass_ == "backward_data" else "direct"  # the rule for C*R*S = 500, 8 columns
        assert ws((3, 20, 12, 12), (50, 20, 5, 5), algo="heuristic", pass_=pass_) == \
            ws((3, 20, 12, 12), (50, 20, 5, 5), algo=other, pass_=pass_)
        # one input channel (mnist_net conv1) and lenet5's conv2 (6 -> 16) stay direct
        assert ws((32, 1, 28, 28), (32, 1, 3, 3), algo="heuristic", pass_=pass_) == \
            ws((32, 1, 28, 28), (32, 1, 3, 3), algo="direct", pass_=pass_)
        assert ws((32, 6, 14, 14), (16, 6, 5, 5), algo="heuristic", pass_=pass_) == \
            ws((32, 6, 14, 14), (16, 6, 5, 5), algo="direct", pass_=pass_)
