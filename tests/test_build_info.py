"""pylenet.build_info(), `python -m pylenet info`, and the SIMD / thread switches."""

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import assert_close

KNOWN_SIMD = {"scalar", "avx2", "avx512"}


def test_build_info_keys_and_types(pylenet_module):
    info = pylenet_module.build_info()
    assert isinstance(info, dict)
    for key, typ in (("version", str), ("compiler", str), ("simd", dict), ("threads", int), ("cuda", bool)):
        assert key in info, f"build_info() lacks {key!r}: {sorted(info)}"
        assert isinstance(info[key], typ), f"build_info()[{key!r}] = {info[key]!r} is not {typ.__name__}"
    assert info["version"] and info["compiler"]
    assert info["threads"] >= 1
    simd = info["simd"]
    for key, typ in (("compiled", list), ("supported", list), ("active", str)):
        assert key in simd, f"build_info()['simd'] lacks {key!r}: {sorted(simd)}"
        assert isinstance(simd[key], typ), f"build_info()['simd'][{key!r}] = {simd[key]!r}"
    assert set(simd["compiled"]) <= KNOWN_SIMD
    assert set(simd["supported"]) <= KNOWN_SIMD
    assert "scalar" in simd["compiled"] and "scalar" in simd["supported"]
    assert simd["active"] in simd["supported"]
    assert simd["path"] == pylenet_module.get_simd()  # the level, or "avx512:8" / "avx512:16"
    assert simd["active"] == pylenet_module.get_simd().split(":")[0]
    assert info["threads"] == pylenet_module.get_num_threads()


def test_version_matches_package(pylenet_module):
    info = pylenet_module.build_info()
    if hasattr(pylenet_module, "__version__"):
        assert info["version"] == pylenet_module.__version__


def test_build_info_tracks_settings(pylenet_module):
    prev_simd, prev_threads = pylenet_module.get_simd(), pylenet_module.get_num_threads()
    try:
        pylenet_module.set_simd("scalar")
        pylenet_module.set_num_threads(2)
        info = pylenet_module.build_info()
        assert info["simd"]["active"] == "scalar"
        assert info["threads"] == 2
        pylenet_module.set_num_threads(1)
        assert pylenet_module.build_info()["threads"] == 1
    finally:
        pylenet_module.set_simd(prev_simd)
        pylenet_module.set_num_threads(prev_threads)


def test_python_m_pylenet_info(pylenet_module, tmp_path):
    # run in an empty folder, with the same pylenet this process imported
    # first on the path (a source checkout as cwd must not shadow it)
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(pylenet_module.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    proc = subprocess.run([sys.executable, "-m", "pylenet", "info"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    info = pylenet_module.build_info()
    assert info["version"] in out, out
    assert info["compiler"] in out, out
    for name in info["simd"]["supported"]:
        assert name in out, out


def test_available_simd(pylenet_module):
    avail = pylenet_module.available_simd()
    assert isinstance(avail, list)
    assert "scalar" in avail
    assert set(avail) <= KNOWN_SIMD
    assert len(set(avail)) == len(avail)
    assert pylenet_module.get_simd().split(":")[0] in avail  # a forced AVX-512 width adds ":8"/":16"
    assert avail == list(pylenet_module.build_info()["simd"]["supported"]) or \
        set(avail) == set(pylenet_module.build_info()["simd"]["supported"])


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def test_available_simd_matches_cpu(pylenet_module):
    flags = _cpu_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo")
    avail = set(pylenet_module.available_simd())
    compiled = set(pylenet_module.build_info()["simd"]["compiled"])
    if "avx2" in avail:
        assert "avx2" in flags
    if "avx512" in avail:
        assert "avx512f" in flags
    # a compiled path the CPU supports must be offered
    if "avx2" in compiled and {"avx2", "fma"} <= flags:
        assert "avx2" in avail
    if "avx512" in compiled and {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        assert "avx512" in avail


def test_set_simd_switches_and_results_agree(pylenet_module):
    import pylenet.functional as F

    g = np.random.default_rng(3)
    x, w, b = g.standard_normal((2, 3, 9, 9)), g.standard_normal((5, 3, 3, 3)), g.standard_normal(5)
    prev = pylenet_module.get_simd()
    try:
        outs = {}
        for name in pylenet_module.available_simd():
            pylenet_module.set_simd(name)
            assert pylenet_module.get_simd() == name
            outs[name] = F.conv2d(x, w, b, padding=1, algo="im2col")
        for name, y in outs.items():
            assert_close(y, outs["scalar"], what=f"{name} vs scalar")
    finally:
        pylenet_module.set_simd(prev)
    assert pylenet_module.get_simd() == prev


def test_set_simd_rejects_unsupported(pylenet_module):
    prev = pylenet_module.get_simd()
    for name in KNOWN_SIMD - set(pylenet_module.available_simd()):
        with pytest.raises(ValueError):
            pylenet_module.set_simd(name)
    with pytest.raises(ValueError):
        pylenet_module.set_simd("sse42")
    assert pylenet_module.get_simd() == prev


def test_threads_setter(pylenet_module):
    prev = pylenet_module.get_num_threads()
    try:
        for n in (1, 2, 3):
            pylenet_module.set_num_threads(n)
            assert pylenet_module.get_num_threads() == n
    finally:
        pylenet_module.set_num_threads(prev)


def test_avx512_lanes_paths(pylenet_module):
    # "avx512:8" / "avx512:16" force the lanes of the direct convolution's AVX-512 copy;
    # plain "avx512" picks per shape. Only avx512 takes a width, and only 8 or 16.
    import pylenet.functional as F

    prev = pylenet_module.get_simd()
    try:
        for bad in ("avx512:4", "avx512:", "avx2:8", "scalar:16", "avx512:8:8"):
            with pytest.raises(ValueError):
                pylenet_module.set_simd(bad)
            assert pylenet_module.get_simd() == prev
        if "avx512" not in pylenet_module.available_simd():
            with pytest.raises(ValueError):
                pylenet_module.set_simd("avx512:8")
            return
        g = np.random.default_rng(5)
        x, w = g.standard_normal((2, 20, 12, 12)), g.standard_normal((50, 20, 5, 5))
        outs = {}
        for name in ("avx512", "avx512:16", "avx512:8"):
            pylenet_module.set_simd(name)
            assert pylenet_module.get_simd() == name
            assert pylenet_module.build_info()["simd"]["path"] == name
            outs[name] = F.conv2d(x, w, algo="direct")
        for name, y in outs.items():
            assert_close(y, outs["avx512:16"], what=f"{name} vs avx512:16")
        assert isinstance(pylenet_module.build_info()["simd"]["split_fma512"], bool)
    finally:
        pylenet_module.set_simd(prev)
    assert pylenet_module.get_simd() == prev
