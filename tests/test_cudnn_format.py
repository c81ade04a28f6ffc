"""Tests for pylenet.cudnn_format (cudnn-training ``lenet.cu`` weight files).

The oracle for the file layout is ``lenet_cu_forward`` below: a NumPy float64
re-implementation of lenet.cu's inference pass (``TrainingContext::
ForwardPropagation`` of tbennun/cudnn-training) that reads the raw ``.bin``
files and applies the operations the way lenet.cu does -- NCHW/KCRS
cross-correlation as configured by ``SetFwdConvolutionTensors``, per-channel
``cudnnAddTensor`` bias, 2x2/2 max pooling, and the fully connected layers as
*column-major cuBLAS SGEMM calls* with lenet.cu's exact transpose flags,
m/n/k and leading dimensions on the flat buffers (``pool2`` is handed to the
fc1 GEMM as its raw NCHW buffer, which fixes the flatten order). The torch
model must agree with it on the exported files.

Only the torch tests need torch; they skip cleanly without it.
"""

import importlib
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _load_module():
    try:
        return importlib.import_module("pylenet.cudnn_format")
    except ImportError:
        # An installed pylenet predating this module, or a source tree whose native
        # extension is not built: the module is self-contained, load it by path.
        path = REPO / "pylenet" / "cudnn_format.py"
        spec = importlib.util.spec_from_file_location("_pylenet_cudnn_format", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod


cf = _load_module()

SHAPES = {
    "0.weight": (20, 1, 5, 5),
    "0.bias": (20,),
    "2.weight": (50, 20, 5, 5),
    "2.bias": (50,),
    "5.weight": (500, 800),
    "5.bias": (500,),
    "7.weight": (10, 500),
    "7.bias": (10,),
}


def random_state_dict(rng):
    sd = {}
    for key, shape in SHAPES.items():
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        sd[key] = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
    return sd


def images(rng, n):
    # lenet.cu feeds pixel/255 in [0, 1]
    return rng.random((n, 1, 28, 28)).astype(np.float32)


# ---------------------------------------------------------------------------
# lenet.cu inference, re-implemented in NumPy float64
# ---------------------------------------------------------------------------


def sgemm(transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc):
    """cublasSgemm semantics on flat buffers (column-major): C = alpha*op(A)@op(B) + beta*C.

    op(X)(r, c) is X[r + c*ld] for 'N' and X[c + r*ld] for 'T'. C is updated in place.
    """
    r = np.arange(m)[:, None]
    c = np.arange(k)[None, :]
    opA = A[r + c * lda] if transa == "N" else A[c + r * lda]  # (m, k)
    r = np.arange(k)[:, None]
    c = np.arange(n)[None, :]
    opB = B[r + c * ldb] if transb == "N" else B[c + r * ldb]  # (k, n)
    idx = np.arange(m)[:, None] + np.arange(n)[None, :] * ldc  # (m, n) positions in C
    prod = opA @ opB
    C[idx] = alpha * prod + (beta * C[idx] if beta != 0 else 0.0)


def read_bin(folder, name):
    return np.fromfile(os.path.join(folder, name), dtype="<f4").astype(np.float64)


def conv_forward(x, pconv, pbias, n, c, h, w, k, ks):
    """cudnnConvolutionForward (NCHW data, NCHW filter desc (k, c, ks, ks), pad 0, stride 1,
    dilation 1, CUDNN_CROSS_CORRELATION) + cudnnAddTensor with a (1, k, 1, 1) bias."""
    assert pconv.size == k * c * ks * ks and pbias.size == k and x.size == n * c * h * w
    X = x.reshape(n, c, h, w)
    Wt = pconv.reshape(k, c, ks, ks)  # filter descriptor CUDNN_TENSOR_NCHW: KCRS
    oh, ow = h - ks + 1, w - ks + 1
    y = np.zeros((n, k, oh, ow))
    for r in range(ks):
        for s in range(ks):
            # y[n,k,p,q] += sum_c x[n,c,p+r,q+s] * w[k,c,r,s]   (no kernel flip)
            y += np.einsum("ncpq,kc->nkpq", X[:, :, r : r + oh, s : s + ow], Wt[:, :, r, s])
    y += pbias.reshape(1, k, 1, 1)
    return y.reshape(-1), (n, k, oh, ow)


def maxpool_forward(x, dims, size=2, stride=2):
    """cudnnPoolingForward, CUDNN_POOLING_MAX, window size x size, padding 0, stride."""
    n, c, h, w = dims
    X = x.reshape(dims)
    oh, ow = (h - size) // stride + 1, (w - size) // stride + 1
    y = np.full((n, c, oh, ow), -np.inf)
    for r in range(size):
        for s in range(size):
            y = np.maximum(y, X[:, :, r : r + stride * oh : stride, s : s + stride * ow : stride])
    return y.reshape(-1), (n, c, oh, ow)


def lenet_cu_forward(folder, data):
    """lenet.cu TrainingContext::ForwardPropagation on the .bin files in ``folder``.

    ``data``: (N, 1, 28, 28). Returns (fc2 logits (N, 10), softmax result (N, 10)).
    """
    batch = data.shape[0]
    width = height = 28
    # main(): ConvBiasLayer conv1(1, 20, 5, 28, 28); conv2(20, 50, 5, 12, 12);
    # FullyConnectedLayer fc1(50*8*8 / (2*2), 500), fc2(500, 10)
    c1_in, c1_out, ks = 1, 20, 5
    c2_in, c2_out = c1_out, 50
    fc1_in, fc1_out = (c2_out * 8 * 8) // (2 * 2), 500
    fc2_in, fc2_out = fc1_out, 10

    pconv1, pconv1bias = read_bin(folder, "conv1.bin"), read_bin(folder, "conv1.bias.bin")
    pconv2, pconv2bias = read_bin(folder, "conv2.bin"), read_bin(folder, "conv2.bias.bin")
    pfc1, pfc1bias = read_bin(folder, "ip1.bin"), read_bin(folder, "ip1.bias.bin")
    pfc2, pfc2bias = read_bin(folder, "ip2.bin"), read_bin(folder, "ip2.bias.bin")
    assert pfc1.size == fc1_in * fc1_out and pfc2.size == fc2_in * fc2_out

    x = np.asarray(data, dtype=np.float64).reshape(-1)  # d_data, NCHW
    conv1, dims = conv_forward(x, pconv1, pconv1bias, batch, c1_in, height, width, c1_out, ks)
    pool1, dims = maxpool_forward(conv1, dims)
    assert dims[1] == c2_in and dims[2:] == (12, 12)
    conv2, dims = conv_forward(pool1, pconv2, pconv2bias, *dims, c2_out, ks)
    pool2, dims = maxpool_forward(conv2, dims)  # flat NCHW buffer, as on the GPU
    assert dims == (batch, 50, 4, 4) and pool2.size == batch * fc1_in

    onevec = np.ones(batch)
    # FC1: cublasSgemm(T, N, fc1.outputs, batch, fc1.inputs, 1, pfc1, fc1.inputs,
    #                  pool2, fc1.inputs, 0, fc1, fc1.outputs)
    fc1 = np.zeros(batch * fc1_out)
    sgemm("T", "N", fc1_out, batch, fc1_in, 1.0, pfc1, fc1_in, pool2, fc1_in, 0.0, fc1, fc1_out)
    # bias: cublasSgemm(N, N, fc1.outputs, batch, 1, 1, pfc1bias, fc1.outputs, onevec, 1, 1, fc1, fc1.outputs)
    sgemm("N", "N", fc1_out, batch, 1, 1.0, pfc1bias, fc1_out, onevec, 1, 1.0, fc1, fc1_out)
    fc1relu = np.maximum(fc1, 0.0)  # cudnnActivationForward, CUDNN_ACTIVATION_RELU
    # FC2: cublasSgemm(T, N, fc2.outputs, batch, fc2.inputs, 1, pfc2, fc2.inputs,
    #                  fc1relu, fc2.inputs, 0, fc2, fc2.outputs)
    fc2 = np.zeros(batch * fc2_out)
    sgemm("T", "N", fc2_out, batch, fc2_in, 1.0, pfc2, fc2_in, fc1relu, fc2_in, 0.0, fc2, fc2_out)
    sgemm("N", "N", fc2_out, batch, 1, 1.0, pfc2bias, fc2_out, onevec, 1, 1.0, fc2, fc2_out)
    # fc2Tensor is NCHW (batch, 10, 1, 1): fc2[b*10 + o]
    logits = fc2.reshape(batch, fc2_out)
    # cudnnSoftmaxForward(CUDNN_SOFTMAX_ACCURATE, CUDNN_SOFTMAX_MODE_CHANNEL): over the 10 channels
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return logits, e / e.sum(axis=1, keepdims=True)


def test_sgemm_helper_is_column_major_gemm():
    rng = np.random.default_rng(0)
    m, n, k = 3, 4, 5
    a = rng.standard_normal((m, k))
    b = rng.standard_normal((k, n))
    c0 = rng.standard_normal((m, n))
    for ta, tb in [("N", "N"), ("T", "N"), ("N", "T"), ("T", "T")]:
        A = (a if ta == "N" else a.T).reshape(-1, order="F")
        B = (b if tb == "N" else b.T).reshape(-1, order="F")
        lda = m if ta == "N" else k
        ldb = k if tb == "N" else n
        C = c0.reshape(-1, order="F").copy()
        sgemm(ta, tb, m, n, k, 2.0, A, lda, B, ldb, 0.5, C, m)
        np.testing.assert_allclose(C.reshape((m, n), order="F"), 2.0 * a @ b + 0.5 * c0, rtol=1e-12)


# ---------------------------------------------------------------------------
# table, round trip, byte layout
# ---------------------------------------------------------------------------


def test_cudnn_files_table():
    assert list(cf.CUDNN_FILES) == [
        "conv1.bin", "conv1.bias.bin", "conv2.bin", "conv2.bias.bin",
        "ip1.bin", "ip1.bias.bin", "ip2.bin", "ip2.bias.bin",
    ]
    assert {key for key, _ in cf.CUDNN_FILES.values()} == set(SHAPES)
    for name, (key, count) in cf.CUDNN_FILES.items():
        assert count == int(np.prod(SHAPES[key])), name
    assert cf.STATE_DICT_SHAPES == SHAPES
    assert sum(count for _, count in cf.CUDNN_FILES.values()) == 431080


def test_round_trip_is_exact(tmp_path, rng):
    sd = random_state_dict(rng)
    folder = tmp_path / "new" / "weights"  # created by export
    written = cf.export_cudnn_weights(sd, folder)
    assert [os.path.basename(p) for p in written] == list(cf.CUDNN_FILES)
    assert sorted(os.listdir(folder)) == sorted(cf.CUDNN_FILES)  # no temporaries left behind
    for name, (key, count) in cf.CUDNN_FILES.items():
        raw = (folder / name).read_bytes()
        assert len(raw) == 4 * count
        # headerless little-endian float32, C order of the PyTorch-shaped tensor
        assert raw == sd[key].astype("<f4").tobytes(order="C"), name
    back = cf.import_cudnn_weights(str(folder))
    assert list(back) == list(SHAPES)
    for key in SHAPES:
        assert back[key].dtype == np.float32 and back[key].shape == SHAPES[key]
        assert back[key].flags.c_contiguous and back[key].flags.writeable
        np.testing.assert_array_equal(back[key], sd[key])
    # accepts float64 input (cast to float32) and overwrites existing files
    sd64 = {k: v.astype(np.float64) for k, v in sd.items()}
    cf.export_cudnn_weights(sd64, folder)
    for key, arr in cf.import_cudnn_weights(folder).items():
        np.testing.assert_array_equal(arr, sd[key])


def test_lenet_cu_forward_reads_exported_files(tmp_path, rng):
    """Without torch: the re-implementation runs on exported files and its softmax is sane."""
    cf.export_cudnn_weights(random_state_dict(rng), tmp_path)
    logits, prob = lenet_cu_forward(tmp_path, images(rng, 3))
    assert logits.shape == prob.shape == (3, 10)
    np.testing.assert_allclose(prob.sum(axis=1), 1.0, rtol=1e-12)


# ---------------------------------------------------------------------------
# equivalence with the torch model (oracle)
# ---------------------------------------------------------------------------


def _torch_model(torch):
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 20, 5), nn.MaxPool2d(2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10),
    )


def test_torch_model_matches_lenet_cu_on_exported_files(tmp_path, rng):
    torch = pytest.importorskip("torch")
    model = _torch_model(torch)
    sd_np = random_state_dict(rng)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in sd_np.items()}, strict=True)
    x = images(rng, 8)

    # export straight from the torch state_dict (tensors accepted)
    cf.export_cudnn_weights(model.state_dict(), tmp_path)
    ref_logits, ref_prob = lenet_cu_forward(tmp_path, x)

    with torch.no_grad():
        out32 = model(torch.from_numpy(x)).numpy()
        out64 = model.double()(torch.from_numpy(x).double()).numpy()
    np.testing.assert_allclose(out64, ref_logits, rtol=1e-5, atol=1e-9)
    # float32 torch vs float64 reference: norm-wise relative error
    assert np.max(np.abs(out32 - ref_logits)) <= 1e-5 * np.max(np.abs(ref_logits))
    assert np.array_equal(out64.argmax(axis=1), ref_prob.argmax(axis=1))

    # import -> fresh torch model (strict) -> identical outputs
    model2 = _torch_model(torch)
    model2.load_state_dict({k: torch.from_numpy(v) for k, v in cf.import_cudnn_weights(tmp_path).items()})
    with torch.no_grad():
        np.testing.assert_array_equal(model2(torch.from_numpy(x)).numpy(), out32)


@pytest.mark.parametrize("wrong", ["ip1_in_out", "ip2_in_out", "ip1_nhwc_inputs", "conv1_flipped"])
def test_wrong_layouts_are_detected(tmp_path, rng, wrong):
    """The oracle is discriminating: plausible wrong layouts give different logits."""
    torch = pytest.importorskip("torch")
    sd = random_state_dict(rng)
    model = _torch_model(torch)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    x = images(rng, 4)
    with torch.no_grad():
        out = model.double()(torch.from_numpy(x).double()).numpy()
    bad = dict(sd)
    if wrong == "ip1_in_out":
        bad["5.weight"] = np.ascontiguousarray(sd["5.weight"].T).reshape(500, 800)
    elif wrong == "ip2_in_out":
        bad["7.weight"] = np.ascontiguousarray(sd["7.weight"].T).reshape(10, 500)
    elif wrong == "ip1_nhwc_inputs":
        bad["5.weight"] = np.ascontiguousarray(
            sd["5.weight"].reshape(500, 50, 4, 4).transpose(0, 2, 3, 1)).reshape(500, 800)
    else:
        bad["0.weight"] = np.ascontiguousarray(sd["0.weight"][:, :, ::-1, ::-1])
    cf.export_cudnn_weights(bad, tmp_path)
    logits, _ = lenet_cu_forward(tmp_path, x)
    assert not np.allclose(logits, out, rtol=1e-3, atol=1e-6)


# ---------------------------------------------------------------------------
# import errors
# ---------------------------------------------------------------------------


@pytest.fixture
def exported(tmp_path, rng):
    sd = random_state_dict(rng)
    cf.export_cudnn_weights(sd, tmp_path)
    return tmp_path, sd


def test_import_missing_files_listed_together(exported):
    folder, _ = exported
    (folder / "conv2.bias.bin").unlink()
    (folder / "ip2.bin").unlink()
    with pytest.raises(ValueError) as info:
        cf.import_cudnn_weights(folder)
    msg = str(info.value)
    assert "missing" in msg and "conv2.bias.bin" in msg and "ip2.bin" in msg
    assert "conv1.bin" not in msg


def test_import_folder_not_a_directory(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        cf.import_cudnn_weights(tmp_path / "nope")


@pytest.mark.parametrize("name", ["conv1.bin", "conv2.bias.bin", "ip1.bin", "ip2.bias.bin"])
@pytest.mark.parametrize("delta", [-4, +4, +1], ids=["one_float_short", "one_float_extra", "one_byte_extra"])
def test_import_wrong_size(exported, name, delta):
    folder, _ = exported
    path = folder / name
    raw = path.read_bytes()
    path.write_bytes(raw[:delta] if delta < 0 else raw + b"\0" * delta)
    expected = 4 * cf.CUDNN_FILES[name][1]
    with pytest.raises(ValueError) as info:
        cf.import_cudnn_weights(folder)
    msg = str(info.value)
    assert name in msg
    assert f"expected {expected} bytes" in msg and f"{expected + delta} bytes" in msg


def test_import_wrong_sizes_and_missing_reported_together(exported):
    folder, _ = exported
    (folder / "ip1.bin").write_bytes(b"\0" * 8)
    (folder / "conv1.bias.bin").unlink()
    with pytest.raises(ValueError) as info:
        cf.import_cudnn_weights(folder)
    msg = str(info.value)
    assert "conv1.bias.bin" in msg and "ip1.bin" in msg and "1600000" in msg and " 8 bytes" in msg


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_import_rejects_non_finite(exported, value):
    folder, _ = exported
    arr = np.fromfile(folder / "ip1.bin", dtype="<f4")
    arr[1234] = value
    arr.tofile(folder / "ip1.bin")
    with pytest.raises(ValueError) as info:
        cf.import_cudnn_weights(folder)
    msg = str(info.value)
    assert "ip1.bin" in msg and "non-finite" in msg and "1234" in msg
    assert ("NaN" in msg) if np.isnan(value) else ("inf" in msg)


def test_import_directory_in_place_of_file(exported):
    folder, _ = exported
    (folder / "ip2.bias.bin").unlink()
    (folder / "ip2.bias.bin").mkdir()
    with pytest.raises(ValueError, match="ip2.bias.bin: not a regular file"):
        cf.import_cudnn_weights(folder)


# ---------------------------------------------------------------------------
# export errors and atomicity
# ---------------------------------------------------------------------------


def test_export_wrong_shape(tmp_path, rng):
    sd = random_state_dict(rng)
    sd["5.weight"] = np.ascontiguousarray(sd["5.weight"].T)  # (800, 500): the classic mistake
    with pytest.raises(ValueError, match=r"'5\.weight': shape \(800, 500\), expected \(500, 800\)"):
        cf.export_cudnn_weights(sd, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_missing_key(tmp_path, rng):
    sd = random_state_dict(rng)
    del sd["7.bias"]
    with pytest.raises(ValueError, match=r"missing key\(s\): '7\.bias'"):
        cf.export_cudnn_weights(sd, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_reports_every_problem_at_once(tmp_path, rng):
    sd = random_state_dict(rng)
    del sd["0.bias"]
    sd["2.weight"] = sd["2.weight"][:, :, :4]
    sd["5.bias"][7] = np.nan
    sd["7.weight"] = sd["7.weight"].astype(np.int32)
    sd["extra.weight"] = np.zeros(3, np.float32)
    sd["7.bias"] = np.full(10, 1e39)  # overflows float32
    with pytest.raises(ValueError) as info:
        cf.export_cudnn_weights(sd, tmp_path / "out")
    msg = str(info.value)
    for part in ["'0.bias'", "'2.weight': shape (50, 20, 4, 5)", "'5.bias'", "NaN",
                 "'7.weight': dtype int32", "'extra.weight'", "'7.bias'", "float64 to float32"]:
        assert part in msg, part
    assert not (tmp_path / "out").exists()


def test_export_rejects_non_mapping(tmp_path):
    with pytest.raises(ValueError, match="mapping"):
        cf.export_cudnn_weights([("0.weight", 1)], tmp_path)


def test_export_failure_leaves_previous_files_intact(tmp_path, rng, monkeypatch):
    old = random_state_dict(rng)
    cf.export_cudnn_weights(old, tmp_path)
    before = {n: (tmp_path / n).read_bytes() for n in cf.CUDNN_FILES}

    calls = {"n": 0}
    real_fsync = os.fsync

    def failing_fsync(fd):
        calls["n"] += 1
        if calls["n"] == 5:  # while writing the 5th temporary (ip1.bin)
            raise OSError(28, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(cf.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space"):
        cf.export_cudnn_weights(random_state_dict(rng), tmp_path)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == sorted(cf.CUDNN_FILES)  # temporaries removed
    assert {n: (tmp_path / n).read_bytes() for n in cf.CUDNN_FILES} == before
