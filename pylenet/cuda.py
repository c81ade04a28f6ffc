"""Device arrays and the state of the CUDA backend.

``pylenet.cuda.Tensor`` is a contiguous array in GPU memory. pylenet owns it (made by
:func:`tensor`, :func:`empty` or an op of ``pylenet.functional``) or borrows it from another
library's array (:func:`as_tensor`), which it then keeps alive. Other libraries read a
Tensor without a copy through ``__cuda_array_interface__`` (version 3) and DLPack::

    import cupy, pylenet.cuda as plc
    t = plc.tensor(numpy_array)          # host -> device copy
    c = cupy.from_dlpack(t)              # CuPy view of the same memory
    back = plc.as_tensor(c)              # pylenet view of CuPy's memory
    t.numpy()                            # device -> host copy

Streams: each device has one stream that pylenet's ops and copies run on. Exports tell
their consumer about it (CAI 'stream'; ``__dlpack__(stream=...)`` makes the consumer's
stream wait for it), and ``pylenet.functional`` orders its ops with CuPy's current stream.
Memory freed by pylenet is reused in that stream's order, as CuPy's and PyTorch's caching
allocators reuse theirs: an array used on yet another stream must be synchronised before
its last reference goes.

This module imports on any build and any machine; :func:`is_available` says whether CUDA
can be used, and everything that needs a GPU raises ``RuntimeError`` naming what is missing.
"""
import numbers

import numpy as np

from . import _C

__all__ = [
    "is_available", "unavailable_reason", "require", "device_count", "Tensor", "tensor",
    "from_numpy", "empty", "as_tensor", "memory_stats", "reset_peak_memory_stats", "empty_cache",
    "synchronize", "get_device_name",
]

_native = getattr(_C, "cuda", None)  # absent when the build has no CUDA kernels

DTYPES = ("float32", "float64", "int32", "int64", "uint8")

if _native is not None:
    Tensor = _native.Tensor
else:
    class Tensor:
        """Placeholder: this pylenet was built without CUDA, so no device tensor can exist."""

        def __init__(self, *args, **kwargs):
            require("pylenet.cuda.Tensor")


def unavailable_reason():
    """Why CUDA cannot be used here, or None when it can."""
    if _native is None:
        return ("this pylenet was built without CUDA kernels (no nvcc at build time, or "
                "PYLENET_CUDA=OFF); reinstall it on a machine with the CUDA toolkit")
    try:
        n = _native.device_count()
    except Exception as exc:  # a driver that fails to initialise
        return f"the CUDA driver could not be initialised ({exc})"
    if n == 0:
        return ("no CUDA GPU is visible (no NVIDIA device, or no driver); this pylenet has its CUDA "
                "kernels but must run on the CPU here")
    return None


def require(what="pylenet.cuda"):
    """Raise RuntimeError naming ``what`` and the reason unless CUDA is usable here."""
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"{what}: CUDA cannot be used: {reason}")


def _backend():
    """The native CUDA module, or RuntimeError saying why CUDA cannot be used."""
    require()
    return _native


def is_available():
    """True when this build has CUDA kernels and a GPU is usable. Never raises."""
    try:
        return unavailable_reason() is None
    except Exception:
        return False


def device_count():
    """Number of visible CUDA devices; 0 without a GPU, a driver or a CUDA build."""
    if _native is None:
        return 0
    try:
        return int(_native.device_count())
    except Exception:
        return 0


def _device_index(device):
    """An int, or 'cuda' / 'cuda:N', as a device id."""
    if isinstance(device, str):
        if device == "cuda":
            return 0
        if device.startswith("cuda:") and device[5:].isdigit():
            return int(device[5:])
        raise ValueError(f"pylenet.cuda: unknown device {device!r} (expected an int, 'cuda' or 'cuda:N')")
    if isinstance(device, bool) or not isinstance(device, numbers.Integral):
        raise TypeError(f"pylenet.cuda: device must be an int, got {type(device).__name__}")
    return int(device)


def _dtype_name(dtype):
    name = np.dtype(dtype).name
    if name not in DTYPES:
        raise TypeError(f"pylenet.cuda: unsupported dtype {name} (supported: {', '.join(DTYPES)})")
    return name


def _is_device_array(obj):
    """Whether obj is GPU memory pylenet can borrow (a Tensor, CAI or CUDA DLPack object)."""
    if obj is None or isinstance(obj, (np.ndarray, np.generic, numbers.Number, str, bytes, list, tuple)):
        return False
    if _native is not None and isinstance(obj, _native.Tensor):
        return True
    try:  # a property may raise for host data (e.g. a CPU torch.Tensor)
        if hasattr(obj, "__cuda_array_interface__"):
            return True
        dev = getattr(obj, "__dlpack_device__", None)
        return dev is not None and hasattr(obj, "__dlpack__") and tuple(dev())[0] == 2  # kDLCUDA
    except Exception:
        return False


def tensor(array, device=0, dtype=None):
    """A new Tensor on ``device`` holding a copy of ``array``.

    ``array``: anything ``numpy.asarray`` takes (float32, float64, int32, int64 or uint8
    after an optional ``dtype`` conversion), or a device array, which is copied on the device.
    """
    native = _backend()
    dev = _device_index(device)
    if _is_device_array(array):
        src = as_tensor(array)
        if src.device != dev:
            raise ValueError(f"pylenet.cuda.tensor: the array is on cuda:{src.device}, not cuda:{dev} "
                             "(copies between devices are not supported)")
        if dtype is not None and np.dtype(dtype) != src.dtype:
            raise TypeError(f"pylenet.cuda.tensor: cannot convert a device array from {src.dtype} to "
                            f"{np.dtype(dtype)}; convert it with its own library first")
        return native.clone(src)
    a = np.asarray(array, dtype=dtype)
    if a.dtype.name not in DTYPES:
        raise TypeError(f"pylenet.cuda.tensor: unsupported dtype {a.dtype} "
                        f"(supported: {', '.join(DTYPES)}; pass dtype= to convert)")
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    return native.to_device(a, dev)  # makes it C-contiguous (np.ascontiguousarray would make 0-d 1-d)


def from_numpy(array, device=0):
    """A new Tensor on ``device`` holding a copy of the NumPy array."""
    if not isinstance(array, (np.ndarray, np.generic)):
        raise TypeError(f"pylenet.cuda.from_numpy: expected a numpy.ndarray, got {type(array).__name__}")
    return tensor(array, device)


def empty(shape, dtype="float32", device=0):
    """A new uninitialised Tensor."""
    native = _backend()
    if isinstance(shape, numbers.Integral):
        shape = (shape,)
    return native.empty([int(s) for s in shape], _dtype_name(dtype), _device_index(device))


def as_tensor(obj):
    """A Tensor viewing ``obj``'s GPU memory, without a copy.

    ``obj``: a Tensor (returned as is), or any C-contiguous device array speaking
    ``__cuda_array_interface__`` (CuPy, PyTorch, Numba, ...) or DLPack with a CUDA device.
    The Tensor keeps ``obj`` alive, and work the exporter queued on its stream is ordered
    before pylenet's. Host arrays raise TypeError: copy them with :func:`tensor`.
    """
    native = _backend()
    if isinstance(obj, native.Tensor):
        return obj
    if hasattr(obj, "__cuda_array_interface__"):
        return native.from_cuda_array(obj)
    if hasattr(obj, "__dlpack__") and hasattr(obj, "__dlpack_device__"):
        if tuple(obj.__dlpack_device__())[0] == 2:
            return native.from_dlpack(obj)
    raise TypeError(f"pylenet.cuda.as_tensor: {type(obj).__name__} is not a CUDA device array; "
                    "use pylenet.cuda.tensor() to copy a host array to the device")


def memory_stats(device=0):
    """pylenet's device memory on ``device``: bytes_in_use, peak_bytes, num_allocs, num_frees,
    bytes_reserved (held from the driver), bytes_cached (free, kept for reuse),
    num_device_mallocs (real cudaMalloc calls)."""
    return dict(_backend().memory_stats(_device_index(device)))


def reset_peak_memory_stats(device=0):
    """Restart peak_bytes from the bytes in use now."""
    _backend().reset_peak_memory_stats(_device_index(device))


def empty_cache(device=0):
    """Return the cached free blocks (and the ops' scratch workspace) to the driver."""
    _backend().empty_cache(_device_index(device))


def synchronize(device=0):
    """Wait until all work queued on ``device`` (by pylenet or anyone else) has finished."""
    _backend().synchronize(_device_index(device))


def get_device_name(device=0):
    """The GPU's name, e.g. 'NVIDIA H100 80GB HBM3'."""
    return _backend().device_name(_device_index(device))
