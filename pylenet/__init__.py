"""pylenet: a small-CNN training runtime with hand-written CPU (and CUDA) kernels.

The native core lives in ``pylenet._C`` (C++, bound with pybind11); this package is the thin
Python layer over it. ``pylenet.functional`` exposes every op on NumPy arrays (and, with
CUDA, on device arrays); ``pylenet.cuda`` holds device tensors and the GPU's state.
"""
def _installed_copy():
    """An installed pylenet folder (one holding the compiled _C) other than this one, if any."""
    import glob
    import os
    import sys
    here = os.path.realpath(os.path.dirname(__file__))
    for entry in sys.path:
        folder = os.path.join(entry or os.getcwd(), "pylenet")
        if os.path.realpath(folder) != here and glob.glob(os.path.join(folder, "_C*.so")):
            return folder
    return None


try:
    from . import _C
except ImportError as _e:
    # Usually: Python was started in the repository root, so `import pylenet` found the source
    # folder, which holds no compiled extension. Defer to the installed build (the package
    # imports its modules from there), or say what to do.
    _where = _installed_copy()
    if _where is None:
        raise ImportError(
            f"pylenet's native extension could not be imported ({_e}). This pylenet has no compiled "
            "extension (a source folder?): install it with `pip install .`.") from _e
    __path__[:] = [_where]
    from . import _C
# onnx and viz import the onnx package and matplotlib only when they are used
from . import cuda, functional, nn, models, optim, datasets, bench, onnx, viz
from .checkpoint import GraphModule, load, save
from .from_torch import from_torch  # torch is imported when it is called, not here
from .functional import cat, flatten
from .graph import Tensor, TraceError, trace
from .nn import Sequential
from .nn.init import manual_seed
from .runtime import compile
from .speedrun import speedrun
from .training import History, evaluate, train

__version__ = _C.build_info()["version"]


def build_info():
    """What was compiled in and what is used: version, compiler, SIMD levels, threads, CUDA."""
    return _C.build_info()


def available_simd():
    """SIMD levels this build and this processor can run, slowest first (``scalar`` always)."""
    return list(_C.simd_available())


def get_simd():
    """The SIMD path the kernels use now: a level, ``"avx512:8"`` or ``"avx512:16"`` when the
    lanes of the AVX-512 direct convolution are forced (see ``set_simd``)."""
    return _C.simd_get()


def set_simd(name):
    """Switch every kernel to one SIMD path: ``"scalar"``, ``"avx2"`` or ``"avx512"``.

    At ``"avx512"`` the direct convolution picks 16 or 8 lanes (AVX-512VL) per shape: 8 where
    they leave fewer lanes idle, on CPUs that split 512-bit FMAs into two halves (AMD Zen 4).
    ``"avx512:16"`` and ``"avx512:8"`` force one width. The environment variable
    ``PYLENET_SIMD`` takes the same names at import time. The direct convolution's last bits
    can differ between CPUs that pick different widths, as between SIMD levels.
    """
    if not isinstance(name, str):
        raise TypeError(f"set_simd: expected a path name (str), got {type(name).__name__}")
    _C.simd_set(name)


def get_num_threads():
    """Worker threads used by the kernels (default: all cores, or ``$PYLENET_NUM_THREADS``)."""
    return _C.default_threads()


def set_num_threads(n, *, adaptive=None):
    """Set the number of worker threads (results are identical for any count).

    ``n`` is the most a step uses. Compiled training steps and forward batches time
    themselves and use fewer workers while that measures clearly faster, as beside a process
    busy on one of the cores (a worker sharing its core is descheduled for longer than a
    LeNet step lasts); they go back up when it passes. ``adaptive=False`` pins every step
    to ``n`` workers, ``True`` turns the adjustment back on, ``None`` leaves it as it is.
    """
    if isinstance(n, bool) or not isinstance(n, int):
        try:
            import numpy as np
            if not isinstance(n, np.integer):
                raise TypeError
        except TypeError:
            raise TypeError(f"set_num_threads: expected an int, got {type(n).__name__}") from None
    if adaptive is not None and not isinstance(adaptive, bool):
        raise TypeError(f"set_num_threads: adaptive must be True, False or None, got {type(adaptive).__name__}")
    _C.set_default_threads(int(n))
    if adaptive is not None:
        _C.set_adaptive_threads(adaptive)


def host_memory_stats():
    """Bytes pylenet holds in host memory now, its peak, and allocation counts."""
    return dict(_C.host_memory_stats())


__all__ = [
    "cuda", "functional", "nn", "models", "optim", "datasets", "onnx", "viz", "from_torch", "speedrun", "Sequential", "load",
    "save", "GraphModule", "train",
    "evaluate", "compile", "History", "manual_seed", "trace", "Tensor", "TraceError", "cat", "flatten",
    "build_info", "available_simd", "get_simd", "set_simd", "get_num_threads", "set_num_threads",
    "host_memory_stats", "__version__",
]
