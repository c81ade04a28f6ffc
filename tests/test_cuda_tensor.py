"""pylenet.cuda: device tensors, their exchange with CuPy / DLPack, memory statistics, and the
device path of pylenet.functional (dispatch, stream order, errors).

Tests marked by the ``device`` fixture need a usable GPU (pylenet.cuda.is_available()), and
those using ``gpu`` CuPy as well; both skip with the reason otherwise, like test_cuda.py. The
rest run everywhere: what pylenet.cuda says and raises without a GPU or without a CUDA
build, and that the host path of pylenet.functional is unchanged by the device dispatch.
"""

import gc
import threading
import weakref

import numpy as np
import pytest

import reference as R
from conftest import assert_close, cupy_on_a_gpu, f32

try:
    import cupy as cp
except Exception:  # not installed, or no usable CUDA runtime
    cp = None


@pytest.fixture
def plc(pylenet_module):
    """pylenet.cuda (available or not)."""
    import pylenet.cuda as plc
    return plc


@pytest.fixture
def device(plc):
    """pylenet.cuda when a GPU is usable; skips otherwise."""
    if not plc.is_available():
        pytest.skip(f"pylenet.cuda is not usable here: {plc.unavailable_reason()}")
    return plc


@pytest.fixture
def gpu(request):
    """(pylenet.cuda, pylenet.functional, cupy) when the CUDA path can run with CuPy here."""
    cp = cupy_on_a_gpu(request)
    import pylenet.cuda as plc
    import pylenet.functional as F
    return plc, F, cp


class FakeDeviceArray:
    """Speaks __cuda_array_interface__ without owning memory: for dispatch tests without a GPU."""

    def __init__(self, shape=(2, 3), ptr=0, typestr="<f4", strides=None):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (ptr, False),
                                         "strides": strides, "version": 3}


# ---------------------------------------------------------------------------- everywhere
def test_is_available_is_a_bool_and_agrees_with_device_count(plc, pylenet_module):
    available = plc.is_available()
    assert isinstance(available, bool)
    assert isinstance(plc.device_count(), int)
    assert available == (plc.device_count() > 0) == (plc.unavailable_reason() is None)
    if available:
        plc.require("test")
    else:
        with pytest.raises(RuntimeError, match="^test: "):
            plc.require("test")
    if not pylenet_module.build_info()["cuda"]:
        assert not available and plc.device_count() == 0


def test_unusable_cuda_raises_runtime_error_naming_the_cause(plc, pylenet_module):
    if plc.is_available():
        pytest.skip("a GPU is usable here")
    cause = "built without CUDA" if not pylenet_module.build_info()["cuda"] else "no CUDA GPU"
    for call in (lambda: plc.tensor(np.zeros(3, np.float32)), lambda: plc.empty((2, 2)),
                 lambda: plc.as_tensor(FakeDeviceArray()), plc.memory_stats, plc.empty_cache,
                 plc.synchronize, plc.get_device_name, plc.reset_peak_memory_stats):
        with pytest.raises(RuntimeError, match=cause):
            call()


def test_module_is_reachable_from_the_package(pylenet_module):
    assert pylenet_module.cuda.is_available() in (True, False)
    assert "cuda" in pylenet_module.__all__


def test_functional_on_numpy_is_unchanged(pylenet_module):
    import pylenet.functional as F
    g = np.random.default_rng(3)
    x, w, b = f32(g, 2, 3, 6, 5), f32(g, 4, 3, 3, 3), f32(g, 4)
    y = F.conv2d(x, w, b, padding=1)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    assert_close(y, R.conv2d(x, w, b, 1, 1), what="conv2d on numpy")
    assert isinstance(F.relu(x.tolist()), np.ndarray)
    loss, d = F.softmax_cross_entropy(f32(g, 4, 3), [0, 1, 2, 0])
    assert isinstance(loss, float) and isinstance(d, np.ndarray)


def test_conv_algos_name_both_backends(pylenet_module):
    import pylenet.functional as F
    assert set(F.CUDA_CONV_ALGOS) == {"naive", "im2col", "implicit_gemm", "auto", "heuristic"}
    assert set(F.CONV_ALGOS) == set(F.CUDA_CONV_ALGOS) | {"direct", "winograd"}
    g = np.random.default_rng(4)
    with pytest.raises(ValueError, match="implicit_gemm"):
        F.conv2d(f32(g, 1, 1, 5, 5), f32(g, 1, 1, 3, 3), algo="implicit_gemm")


def test_cuda_workspace_sizes_need_no_gpu(pylenet_module):
    import pylenet.functional as F
    if not pylenet_module.build_info()["cuda"]:
        with pytest.raises(RuntimeError, match="without CUDA"):
            F.conv2d_workspace_size((2, 3, 8, 8), (4, 3, 3, 3), device="cuda")
        return
    args = ((8, 3, 28, 28), (6, 3, 5, 5))
    assert F.conv2d_workspace_size(*args, algo="naive", device="cuda") == 0
    im2col = F.conv2d_workspace_size(*args, algo="im2col", device="cuda")
    assert im2col >= 4 * 3 * 5 * 5 * 24 * 24  # at least one image's columns
    assert F.conv2d_workspace_size(*args, algo="auto", device="cuda") >= im2col
    assert F.conv2d_workspace_size(*args, algo="heuristic", device="cuda") == \
        F.conv2d_workspace_size(*args, algo="implicit_gemm", device="cuda")
    with pytest.raises(ValueError, match="direct"):
        F.conv2d_workspace_size(*args, algo="direct", device="cuda")
    with pytest.raises(ValueError, match="'winograd' does not run on CUDA"):
        F.conv2d_workspace_size(*args, algo="winograd", device="cuda")
    with pytest.raises(ValueError, match="device"):
        F.conv2d_workspace_size(*args, device="gpu")


def test_mixing_host_and_device_arrays_raises_type_error(pylenet_module):
    import pylenet.functional as F
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match=r"linear: .*device array .*FakeDeviceArray.*host array .*numpy\.ndarray"):
        F.linear(x, FakeDeviceArray((4, 3)))
    with pytest.raises(TypeError, match="sgd_step"):
        F.sgd_step(FakeDeviceArray((2, 3)), x, None, 0.1)
    with pytest.raises(TypeError, match="softmax_cross_entropy"):
        F.softmax_cross_entropy(FakeDeviceArray((2, 3)), [0, 1])


def test_device_arrays_without_a_usable_gpu_raise_runtime_error(plc, pylenet_module):
    if plc.is_available():
        pytest.skip("a GPU is usable here")
    import pylenet.functional as F
    with pytest.raises(RuntimeError, match="pylenet.cuda"):
        F.relu(FakeDeviceArray())


def test_placeholder_tensor_without_cuda_build(plc, pylenet_module):
    if pylenet_module.build_info()["cuda"]:
        pytest.skip("this build has CUDA: Tensor is the native class")
    with pytest.raises(RuntimeError, match="built without CUDA"):
        plc.Tensor()


# ---------------------------------------------------------------------------- tensors
@pytest.mark.parametrize("dtype", ["float32", "int64", "float64", "int32", "uint8"])
@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), (), (0, 3)], ids=str)
def test_round_trip(device, dtype, shape):
    a = np.asarray(np.arange(int(np.prod(shape))).reshape(shape) * 3 % 251, dtype=dtype)
    t = device.tensor(a)
    assert isinstance(t, device.Tensor)
    assert t.shape == shape and t.dtype == np.dtype(dtype) and t.device == 0
    assert t.ndim == len(shape) and t.size == a.size and t.nbytes == a.nbytes and t.owns_memory
    back = t.numpy()
    assert back.dtype == a.dtype and back.shape == a.shape
    np.testing.assert_array_equal(back, a)
    np.testing.assert_array_equal(device.from_numpy(a).numpy(), a)


def test_tensor_conversions_and_attributes(device):
    t = device.tensor([[1, 2, 3], [4, 5, 6]], dtype=np.float32)
    assert len(t) == 2 and "shape=(2, 3)" in repr(t) and "float32" in repr(t) and "cuda:0" in repr(t)
    assert device.tensor(np.arange(4, dtype=">f4")).numpy().tolist() == [0, 1, 2, 3]  # big-endian source
    fortran = np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(device.tensor(fortran).numpy(), fortran)
    c = t.copy()
    assert c.data_ptr != t.data_ptr
    np.testing.assert_array_equal(c.numpy(), t.numpy())
    with pytest.raises(TypeError, match="float16"):
        device.tensor(np.zeros(3, np.float16))
    with pytest.raises(TypeError, match="bool"):
        device.empty((2,), dtype=bool)
    with pytest.raises(TypeError):
        len(device.empty(()))
    e = device.empty((3, 4), "int64")
    assert e.shape == (3, 4) and e.dtype == np.int64
    with pytest.raises(ValueError, match="negative"):
        device.empty((2, -1))


def test_bad_device_id_raises_value_error(device):
    n = device.device_count()
    for bad in (n, -1, 1000):
        with pytest.raises(ValueError, match="device"):
            device.tensor(np.zeros(3, np.float32), device=bad)
        with pytest.raises(ValueError, match="device"):
            device.memory_stats(bad)
    with pytest.raises(ValueError, match="device"):
        device.empty((2,), device="gpu:0")
    assert device.tensor(np.zeros(1, np.float32), device="cuda:0").device == 0


def test_out_of_memory_raises_memory_error_naming_the_bytes(device):
    before = device.memory_stats()
    with pytest.raises(MemoryError, match=str((1 << 46) * 4)):
        device.empty((1 << 46,), "float32")  # 256 TiB
    after = device.memory_stats()
    assert after["bytes_in_use"] == before["bytes_in_use"]
    np.testing.assert_array_equal(device.tensor(np.ones(3, np.float32)).numpy(), 1.0)  # still usable


def test_device_queries(device):
    assert device.device_count() >= 1
    name = device.get_device_name()
    assert isinstance(name, str) and name
    device.synchronize()
    device.synchronize("cuda:0")


def test_memory_stats_return_to_baseline(device):
    import pylenet.functional as F
    warm = device.tensor(np.ones((4, 3, 8, 8), np.float32))
    F.conv2d(warm, device.tensor(np.ones((2, 3, 3, 3), np.float32)), algo="im2col")  # creates the context
    del warm
    gc.collect()
    device.empty_cache()
    base = device.memory_stats()
    assert set(base) == {"bytes_in_use", "peak_bytes", "num_allocs", "num_frees", "bytes_reserved",
                         "bytes_cached", "num_device_mallocs"}
    assert base["bytes_cached"] == 0
    device.reset_peak_memory_stats()

    x = device.tensor(np.ones((8, 3, 16, 16), np.float32))
    w = device.tensor(np.ones((6, 3, 5, 5), np.float32))
    y = F.conv2d(x, w, algo="im2col")  # uses the context's workspace too
    ys = [F.relu(y) for _ in range(3)]
    mid = device.memory_stats()
    assert mid["bytes_in_use"] >= base["bytes_in_use"] + x.nbytes + w.nbytes + 4 * y.nbytes
    assert mid["peak_bytes"] >= mid["bytes_in_use"]
    assert mid["num_allocs"] - base["num_allocs"] >= 6
    del x, w, y, ys
    gc.collect()
    freed = device.memory_stats()
    assert freed["bytes_cached"] > 0, freed  # kept for reuse
    device.empty_cache()
    end = device.memory_stats()
    assert end["bytes_in_use"] == base["bytes_in_use"], (base, mid, freed, end)
    assert end["num_allocs"] - base["num_allocs"] == end["num_frees"] - base["num_frees"], (base, end)
    assert end["bytes_reserved"] == base["bytes_reserved"], (base, end)
    assert end["bytes_cached"] == 0
    assert end["peak_bytes"] >= mid["bytes_in_use"]
    device.reset_peak_memory_stats()
    assert device.memory_stats()["peak_bytes"] == base["bytes_in_use"]


def test_cuda_array_interface(device):
    t = device.tensor(np.arange(12, dtype=np.float32).reshape(3, 4))
    cai = t.__cuda_array_interface__
    assert cai["version"] == 3
    assert cai["shape"] == (3, 4) and cai["typestr"] == "<f4" and cai["strides"] is None
    assert cai["data"] == (t.data_ptr, False) and t.data_ptr != 0
    assert cai["stream"] == device._native.default_stream(0) and cai["stream"] not in (0, None)
    assert device.tensor(np.zeros(2, np.int64)).__cuda_array_interface__["typestr"] == "<i8"
    assert t.__dlpack_device__() == (2, 0)


def test_dlpack_capsules(device):
    t = device.tensor(np.arange(6, dtype=np.float32))
    before = device.memory_stats()["bytes_in_use"]
    cap = t.__dlpack__()
    assert type(cap).__name__ == "PyCapsule" and "dltensor" in repr(cap) and "versioned" not in repr(cap)
    assert "dltensor_versioned" in repr(t.__dlpack__(max_version=(1, 0), stream=-1))
    assert "dltensor" in repr(t.__dlpack__(stream=1)) and "dltensor" in repr(t.__dlpack__(stream=2))
    del cap, t
    gc.collect()  # unconsumed capsules free their export, so the tensor's memory goes too
    assert device.memory_stats()["bytes_in_use"] == before - 6 * 4
    t = device.tensor(np.arange(6, dtype=np.float32))
    with pytest.raises(ValueError, match="stream=0"):
        t.__dlpack__(stream=0)
    with pytest.raises(BufferError):
        t.__dlpack__(dl_device=(1, 0))
    copied = t.__dlpack__(copy=True, max_version=(1, 0))
    assert "dltensor_versioned" in repr(copied)


# ---------------------------------------------------------------------------- with CuPy
def test_cupy_views_share_memory_both_ways(gpu):
    plc, _, cp = gpu
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    t = plc.tensor(a)
    via_dlpack = cp.from_dlpack(t)
    via_cai = cp.asarray(t)
    assert via_dlpack.data.ptr == t.data_ptr == via_cai.data.ptr
    np.testing.assert_array_equal(cp.asnumpy(via_dlpack), a)
    via_dlpack *= 2  # written through CuPy, read through pylenet
    np.testing.assert_array_equal(t.numpy(), 2 * a)
    np.testing.assert_array_equal(cp.asnumpy(via_cai), 2 * a)

    c = cp.arange(10, dtype=cp.int64)
    for back in (plc.as_tensor(c), plc._native.from_dlpack(c)):
        assert back.data_ptr == c.data.ptr and back.dtype == np.int64 and not back.owns_memory
        np.testing.assert_array_equal(back.numpy(), np.arange(10))
    assert plc.as_tensor(t) is t


def test_borrowed_views_keep_their_owner_alive(gpu):
    plc, _, cp = gpu

    class Owner:  # a CAI exporter we can watch die
        def __init__(self, arr):
            self.arr = arr
            self.__cuda_array_interface__ = arr.__cuda_array_interface__

    owner = Owner(cp.arange(5, dtype=cp.float32))
    alive = weakref.ref(owner)
    t = plc.as_tensor(owner)
    del owner
    gc.collect()
    assert alive() is not None
    np.testing.assert_array_equal(t.numpy(), np.arange(5))
    del t
    gc.collect()
    assert alive() is None

    # a DLPack export keeps a pylenet tensor's memory alive after the tensor is gone
    before = plc.memory_stats()["bytes_in_use"]
    t = plc.tensor(np.arange(1000, dtype=np.float32))
    view = cp.from_dlpack(t)
    del t
    gc.collect()
    assert plc.memory_stats()["bytes_in_use"] == before + 4000
    np.testing.assert_array_equal(cp.asnumpy(view), np.arange(1000))
    del view
    gc.collect()
    assert plc.memory_stats()["bytes_in_use"] == before


def test_borrowing_rejects_what_it_cannot_view(gpu):
    plc, _, cp = gpu
    with pytest.raises(ValueError, match="not C-contiguous"):
        plc.as_tensor(cp.zeros((4, 6), cp.float32)[:, ::2])
    with pytest.raises(TypeError, match="dtype"):
        plc.as_tensor(cp.zeros(3, cp.complex64))
    host = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="not CUDA"):
        plc.as_tensor(FakeDeviceArray((4,), ptr=host.ctypes.data))
    with pytest.raises(TypeError, match="tensor\\(\\)"):
        plc.as_tensor(host)
    # strides that describe a contiguous array are fine (e.g. from PyTorch)
    c = cp.zeros((2, 3), cp.float32)
    fake = FakeDeviceArray((2, 3), ptr=c.data.ptr, strides=(12, 4))
    assert plc.as_tensor(fake).shape == (2, 3)


def test_functional_returns_the_callers_kind(gpu, rng):
    plc, F, cp = gpu
    x = f32(rng, 2, 3, 8, 8)
    y_cupy = F.relu(cp.asarray(x))
    assert isinstance(y_cupy, cp.ndarray)
    y_tensor = F.relu(plc.tensor(x))
    assert isinstance(y_tensor, plc.Tensor)
    np.testing.assert_array_equal(cp.asnumpy(y_cupy), y_tensor.numpy())
    np.testing.assert_array_equal(y_tensor.numpy(), np.maximum(x, 0))
    # CuPy inputs of other dtypes and layouts are converted like NumPy ones
    xi = np.arange(24).reshape(2, 3, 4)
    np.testing.assert_array_equal(cp.asnumpy(F.relu(cp.asarray(xi - 10)[:, ::-1])), np.maximum(xi - 10, 0)[:, ::-1])
    dx, dw, db = F.linear_backward(plc.tensor(f32(rng, 4, 5)), plc.tensor(f32(rng, 4, 3)), plc.tensor(f32(rng, 5, 3)))
    assert all(isinstance(g, plc.Tensor) for g in (dx, dw, db))


def test_functional_type_errors_on_device(gpu, rng):
    plc, F, cp = gpu
    x = cp.asarray(f32(rng, 3, 4))
    with pytest.raises(TypeError, match="relu_backward: .*device array.*host array"):
        F.relu_backward(x, cp.asnumpy(x))
    with pytest.raises(TypeError, match="float32"):
        F.relu(plc.tensor(np.zeros(3, np.int64)))
    with pytest.raises(TypeError, match="real numbers"):
        F.relu(cp.zeros(3, cp.complex64))
    with pytest.raises(TypeError, match="integers"):
        F.softmax_cross_entropy(x, cp.zeros(3, cp.float32))
    with pytest.raises(TypeError, match="int64"):
        F.softmax_cross_entropy(plc.tensor(f32(rng, 3, 4)), plc.tensor(np.zeros(3, np.int32)))
    with pytest.raises(TypeError, match="in place"):
        F.sgd_step(cp.zeros(3, cp.float64), cp.zeros(3, cp.float32), None, 0.1)
    with pytest.raises(ValueError, match="direct"):
        F.conv2d(cp.zeros((1, 1, 5, 5), cp.float32), cp.zeros((1, 1, 3, 3), cp.float32), algo="direct")
    with pytest.raises(ValueError, match="winograd"):
        F.conv2d(cp.zeros((1, 1, 5, 5), cp.float32), cp.zeros((1, 1, 3, 3), cp.float32), algo="winograd")


def _to_cupy_args(value):
    if isinstance(value, (np.ndarray, list)):
        a = np.asarray(value)
        if a.dtype.kind in "biuf":
            return cp.asarray(a)
    return value


class _CupyF:
    """pylenet.functional with every numeric array argument moved to the GPU first."""

    def __init__(self, F):
        self.F = F

    def __getattr__(self, name):
        fn = getattr(self.F, name)
        return lambda *a, **k: fn(*[_to_cupy_args(v) for v in a], **{n: _to_cupy_args(v) for n, v in k.items()})


def _device_bad_calls():
    import test_validation as V
    return [p for p in V._bad_call_params() if p.values[1] is ValueError]


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("call,exc,match", _device_bad_calls())
def test_device_ops_raise_the_cpu_value_errors(gpu, call, exc, match):
    _, F, _ = gpu
    with pytest.raises(exc, match=match):
        call(_CupyF(F))


def test_sgd_step_in_place_on_cupy_and_tensor(gpu, rng):
    plc, F, cp = gpu
    p, g, v = f32(rng, 50), f32(rng, 50), f32(rng, 50)
    p_cp, v_cp = cp.asarray(p), cp.asarray(v)
    p_t, v_t = plc.tensor(p), plc.tensor(v)
    F.sgd_step(p_cp, cp.asarray(g), v_cp, 0.1, 0.9)
    F.sgd_step(p_t, plc.tensor(g), v_t, 0.1, 0.9)
    F.sgd_step(p, g, v, 0.1, 0.9)
    np.testing.assert_array_equal(cp.asnumpy(p_cp), p)
    np.testing.assert_array_equal(p_t.numpy(), p)
    np.testing.assert_array_equal(v_t.numpy(), v)
    bad = g.copy()
    bad[7] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        F.sgd_step(p_cp, cp.asarray(bad), v_cp, 0.1, 0.9)
    np.testing.assert_array_equal(cp.asnumpy(p_cp), p)  # untouched
    with pytest.raises(ValueError, match="velocity"):
        F.sgd_step(p_cp, cp.asarray(g), None, 0.1, 0.9)


def test_ops_follow_cupy_stream_order(gpu, rng):
    """A chain of ops on a non-blocking CuPy stream, with CuPy kernels in between: each op
    must see the previous CuPy result, and CuPy must see each op's output."""
    plc, F, cp = gpu
    x, w = f32(rng, 16, 3, 32, 32), f32(rng, 8, 3, 5, 5)
    ref = np.maximum(R.conv2d(x, w, None, 1, 2) * 2.0, 0).sum()
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        for _ in range(5):
            xc = cp.asarray(x)  # allocated and filled on `stream`
            y = F.conv2d(xc, cp.asarray(w), None, 1, 2, algo="naive")
            y = F.relu(y * 2.0)  # a CuPy kernel between two pylenet ops
            total = float(y.sum())
            assert abs(total - ref) <= 1e-3 * abs(ref)
    stream.synchronize()


def test_find_algorithms_on_device(gpu, rng):
    _, F, cp = gpu
    x, w = cp.asarray(f32(rng, 4, 3, 12, 12)), cp.asarray(f32(rng, 5, 3, 3, 3))
    for pass_ in ("forward", "backward_data", "backward_filter"):
        perf = F.conv2d_find_algorithms(x, w, pass_=pass_)
        assert sorted(name for name, _, _ in perf) == ["im2col", "implicit_gemm", "naive"]
        assert all(sec > 0 and ws >= 0 for _, sec, ws in perf)
        assert [sec for _, sec, _ in perf] == sorted(sec for _, sec, _ in perf)


def test_ops_from_two_threads(device, rng):
    import pylenet.functional as F
    x, w = f32(rng, 8, 3, 16, 16), f32(rng, 4, 3, 3, 3)
    ref = F.conv2d(device.tensor(x), device.tensor(w), algo="auto").numpy()
    errors = []

    def work():
        try:
            xt, wt = device.tensor(x), device.tensor(w)
            for algo in ("auto", "im2col", "implicit_gemm", "naive") * 5:
                np.testing.assert_allclose(F.conv2d(xt, wt, algo=algo).numpy(), ref, rtol=1e-5, atol=1e-5)
        except Exception as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_torch_interop(gpu, rng):
    plc, F, _ = gpu
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA")
    x = f32(rng, 3, 5)
    tt = torch.from_dlpack(plc.tensor(x))
    assert tt.is_cuda and tt.dtype == torch.float32
    np.testing.assert_array_equal(tt.cpu().numpy(), x)
    src = torch.arange(6, dtype=torch.float32, device="cuda").reshape(2, 3)
    for view in (plc.as_tensor(src), plc._native.from_dlpack(src)):
        assert view.data_ptr == src.data_ptr()
        np.testing.assert_array_equal(view.numpy(), src.cpu().numpy())
    out = F.relu(src - 2)  # torch in: a pylenet Tensor out, viewable by torch
    np.testing.assert_array_equal(torch.from_dlpack(out).cpu().numpy(), np.maximum(np.arange(6) - 2, 0).reshape(2, 3))
    side = torch.cuda.Stream()  # ordered with torch's current stream, as with CuPy's
    with torch.cuda.stream(side):
        for _ in range(5):
            a = torch.randn(64, 3, 32, 32, device="cuda") * 3
            r = torch.from_dlpack(F.relu(a))
            assert torch.equal(r, torch.relu(a))
    side.synchronize()
