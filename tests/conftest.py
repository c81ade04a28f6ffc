"""Shared fixtures and the single tolerance rule of the pylenet test-suite.

* ``assert_close`` is the ONE comparison used everywhere:
  ``max|actual - ref| <= atol + rtol * max|ref|`` (a norm-wise relative
  error), printing the worst element on failure.
* ``F`` is how tests get ``pylenet.functional``; it is parametrized over
  every SIMD path this machine supports (``pylenet.available_simd()``, and
  at AVX-512 also ``avx512:16`` and ``avx512:8``, forcing the lanes of the
  direct convolution),
  selects that path with ``pylenet.set_simd`` and restores the previous one
  afterwards, so every op test runs on every path.
* ``nthreads`` parametrizes over thread counts 1 and 2 (restoring after).
* ``rng`` is a seeded NumPy generator (seed derived from the test id, so
  every test is reproducible on its own).
"""

import os
import sys
import zlib

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

try:
    import pylenet
    import pylenet.functional as _functional

    _IMPORT_ERROR = None
    SIMD_PATHS = list(pylenet.available_simd())
    if "avx512" in SIMD_PATHS:  # the direct convolution's 16- and 8-lane AVX-512 copies, each forced
        SIMD_PATHS += ["avx512:16", "avx512:8"]
except Exception as exc:  # pragma: no cover - reported by the F fixture
    pylenet = None
    _functional = None
    _IMPORT_ERROR = exc
    SIMD_PATHS = ["<pylenet not importable>"]

RTOL = 1e-5
ATOL = 1e-6


def assert_close(actual, ref, rtol=RTOL, atol=ATOL, dtype=np.float32, what=""):
    """Assert max|actual - ref| <= atol + rtol * max|ref|.

    ``dtype``: when not None, ``actual`` must be a numpy array of that dtype
    (pylenet outputs are float32 arrays).  Shapes must match exactly.
    """
    if dtype is not None:
        assert isinstance(actual, np.ndarray), f"{what}: expected numpy array, got {type(actual)}"
        assert actual.dtype == dtype, f"{what}: expected dtype {np.dtype(dtype)}, got {actual.dtype}"
    a = np.asarray(actual, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    assert a.shape == r.shape, f"{what}: shape {a.shape} != reference shape {r.shape}"
    if a.size == 0:
        return
    assert np.all(np.isfinite(a)), (
        f"{what}: non-finite value at {np.unravel_index(np.argmin(np.isfinite(a)), a.shape)}"
    )
    err = np.abs(a - r)
    scale = float(np.max(np.abs(r)))
    bound = atol + rtol * scale
    worst = float(np.max(err))
    if not worst <= bound:
        idx = np.unravel_index(int(np.argmax(err)), a.shape)
        pytest.fail(
            f"{what}: max|actual-ref| = {worst:.3e} > atol + rtol*max|ref| = {bound:.3e} "
            f"(rtol={rtol}, atol={atol}, max|ref|={scale:.3e}); worst element at index {idx}: "
            f"actual={a[idx]!r} ref={r[idx]!r}; "
            f"{int(np.sum(err > bound))} of {a.size} elements out of bound",
            pytrace=False,
        )


def pytest_generate_tests(metafunc):
    if "simd" in metafunc.fixturenames:
        metafunc.parametrize("simd", SIMD_PATHS, scope="function")


@pytest.fixture
def simd(request):
    """Select the SIMD path under test; restore the previous one after."""
    if _IMPORT_ERROR is not None:
        pytest.fail(f"cannot import pylenet: {_IMPORT_ERROR!r}", pytrace=False)
    name = request.param
    previous = pylenet.get_simd()
    pylenet.set_simd(name)
    assert pylenet.get_simd() == name
    yield name
    pylenet.set_simd(previous)


@pytest.fixture
def F(simd):
    """``pylenet.functional``, with the SIMD path under test active."""
    return _functional


@pytest.fixture
def pl(simd):
    """The ``pylenet`` module itself (SIMD-parametrized like ``F``)."""
    return pylenet


@pytest.fixture
def pylenet_module():
    """The ``pylenet`` module, not parametrized (for module-level API tests)."""
    if _IMPORT_ERROR is not None:
        pytest.fail(f"cannot import pylenet: {_IMPORT_ERROR!r}", pytrace=False)
    return pylenet


@pytest.fixture(params=[1, 2], ids=lambda n: f"threads{n}")
def nthreads(request, pylenet_module):
    """Run with 1 and with 2 worker threads; restore the previous count."""
    previous = pylenet_module.get_num_threads()
    pylenet_module.set_num_threads(request.param)
    assert pylenet_module.get_num_threads() == request.param
    yield request.param
    pylenet_module.set_num_threads(previous)


@pytest.fixture
def rng(request):
    """NumPy Generator seeded from the test's node id (reproducible)."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def f32(rng, *shape, scale=1.0):
    """Standard-normal float32 array of the given shape."""
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def cupy_on_a_gpu(request):
    """CuPy, when it imports, sees a GPU and this pylenet was built with CUDA; skips (saying
    which is missing) otherwise. For the fixtures of the CUDA test files."""
    try:
        import cupy as cp
    except Exception:  # not installed, or no usable CUDA runtime
        pytest.skip("cupy is not installed")
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver
        pytest.skip(f"no CUDA device ({exc})")
    if count == 0:
        pytest.skip("no CUDA device")
    if not request.getfixturevalue("pylenet_module").build_info()["cuda"]:
        pytest.skip("pylenet was built without CUDA kernels")
    return cp
