"""Fuzz targets: what a hostile or careless user can hand pylenet, and what must come back.

Shared by ``tests/test_fuzz.py`` (hypothesis draws a few hundred inputs per target in the
test suite, in the sanitizer job too) and ``tests/fuzz_campaign.py`` (a long run: millions of
inputs, each target in a child process so that a crash or a hang is caught and reported).

Each target is a ``Target``: a ``space`` (the choices an input is made of: a dict from
argument name to a list of values, or to an integer bound for a free index) and a
``run(inp)`` that feeds the input to pylenet and checks the contract:

* the call returns a result that is correct (shapes, dtypes, finite values, and where a
  reference exists, the reference's values), or
* it raises one of the exceptions the API documents (ValueError and its subclasses,
  TypeError where a type is wrong, RuntimeError for a diverging model), with a message.

Anything else (another exception, a wrong result, a crash, a hang, memory out of proportion
to the input) is a finding: ``run`` raises ``Finding`` (an AssertionError), and the campaign
records a crash or a hang of the child process.
"""
import io
import json
import math
import os
import struct
import sys
import tempfile
import zlib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pylenet  # noqa: E402
import pylenet.functional as F  # noqa: E402
import pylenet.nn as nn  # noqa: E402
import reference as R  # noqa: E402
from pylenet import cudnn_format, models, optim  # noqa: E402
from pylenet.datasets import DatasetError, read_idx  # noqa: E402
from pylenet.images import load_image, read_picture  # noqa: E402


class Finding(AssertionError):
    """A broken contract: what went in, what came out."""


def expect(cond, what):
    if not cond:
        raise Finding(what)


def allowed(exc, *kinds):
    """Re-raises ``exc`` as a Finding unless it is one of ``kinds`` and has a message."""
    if not isinstance(exc, kinds):
        raise Finding(f"{type(exc).__name__} escaped (allowed: {', '.join(k.__name__ for k in kinds)}): {exc}") \
            from exc
    if not str(exc).strip():
        raise Finding(f"{type(exc).__name__} without a message") from exc


_SCRATCH = tempfile.mkdtemp(prefix="pylenet-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)


def remove_scratch():
    import shutil
    shutil.rmtree(_SCRATCH, ignore_errors=True)


import atexit  # noqa: E402 - beside the folder it cleans up (campaign workers call it themselves)
atexit.register(remove_scratch)


def scratch(name):
    return os.path.join(_SCRATCH, f"{os.getpid()}-{name}")


# ----------------------------------------------------------------------------- byte mutations
INTERESTING_U32 = [0, 1, 2, 3, 4, 7, 8, 13, 28, 255, 256, 784, 0x7FFF, 0xFFFF, 0x10000, 60000, 0x7FFFFFFF,
                   0x80000000, 0xFFFFFFFE, 0xFFFFFFFF]
MUTATION_KINDS = 8
MAX_MUTATIONS = 4


def mutate(data, ops):
    """Applies byte-level mutations, each (kind, position, value) with free integers, to data."""
    b = bytearray(data)
    for kind, pos, value in ops:
        n = len(b)
        if kind == 0 and n:                        # flip one bit
            b[pos % n] ^= 1 << (value % 8)
        elif kind == 1 and n:                      # set one byte
            b[pos % n] = value % 256
        elif kind == 2 and n >= 4:                 # an interesting big-endian u32 (sizes, dims)
            i = pos % (n - 3)
            b[i:i + 4] = struct.pack(">I", INTERESTING_U32[value % len(INTERESTING_U32)])
        elif kind == 3:                            # insert a run of one byte
            i = pos % (n + 1)
            b[i:i] = bytes([value % 256]) * (1 + value % 17)
        elif kind == 4 and n:                      # delete a range
            i = pos % n
            del b[i:i + 1 + value % 64]
        elif kind == 5:                            # truncate
            del b[pos % (n + 1):]
        elif kind == 6 and n:                      # duplicate a range elsewhere
            i, j = pos % n, value % n
            b[i:i] = b[j:j + 1 + value % 48]
        elif kind == 7 and n >= 4:                 # small signed delta on a u32 (off-by-one sizes)
            i = pos % (n - 3)
            (v,) = struct.unpack(">I", bytes(b[i:i + 4]))
            b[i:i + 4] = struct.pack(">I", (v + (value % 9) - 4) % 2**32)
    return bytes(b)


MUTATIONS = {"ops": ("mutations",)}  # marker: a list of (kind, pos, value)


def random_ops(rng, n=None):
    n = int(rng.integers(1, MAX_MUTATIONS + 1)) if n is None else n
    return [(int(rng.integers(MUTATION_KINDS)), int(rng.integers(1 << 30)), int(rng.integers(1 << 30)))
            for _ in range(n)]


class Target:
    name = ""
    space = {}

    def seeds(self):
        return []

    def run(self, inp):
        raise NotImplementedError

    def draw(self, rng):
        """One input from a NumPy generator (the campaign's way)."""
        inp = {}
        for k, choices in self.space.items():
            if choices is MUTATIONS:
                inp[k] = random_ops(rng)
            elif isinstance(choices, int):
                inp[k] = int(rng.integers(choices))
            else:
                inp[k] = choices[int(rng.integers(len(choices)))]
        return inp

    def strategy(self):
        """The same inputs as a hypothesis strategy (the test suite's way)."""
        from hypothesis import strategies as st
        parts = {}
        for k, choices in self.space.items():
            if choices is MUTATIONS:
                op = st.tuples(st.integers(0, MUTATION_KINDS - 1), st.integers(0, 1 << 30), st.integers(0, 1 << 30))
                parts[k] = st.lists(op, min_size=0, max_size=MAX_MUTATIONS)
            elif isinstance(choices, int):
                parts[k] = st.integers(0, choices - 1)
            else:
                parts[k] = st.sampled_from(choices)
        return st.fixed_dictionaries(parts)


# ----------------------------------------------------------------------------- IDX reader
def _idx(arr):
    arr = np.asarray(arr, np.uint8)
    return bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


class IdxTarget(Target):
    """read_idx on mutated IDX files, raw and gzip (mutated before or after compression)."""
    name = "idx"

    def __init__(self):
        rng = np.random.default_rng(0)
        self._seeds = [_idx(rng.integers(0, 256, (3, 5, 4))), _idx(rng.integers(0, 10, 17)),
                       _idx(rng.integers(0, 256, (2, 28, 28))), _idx(np.zeros((1, 1, 1, 3)))]
        self.space = {"seed": len(self._seeds), "container": ["raw", "gzip-then-mutate", "mutate-then-gzip"],
                      "ops": MUTATIONS}

    def run(self, inp):
        import gzip
        data = self._seeds[inp["seed"]]
        if inp["container"] == "raw":
            data = mutate(data, inp["ops"])
        elif inp["container"] == "gzip-then-mutate":
            data = mutate(gzip.compress(data, mtime=0), inp["ops"])
        else:
            data = gzip.compress(mutate(data, inp["ops"]), mtime=0)
        path = scratch("x.idx")
        with open(path, "wb") as f:
            f.write(data)
        try:
            out = read_idx(path)
        except Exception as e:  # noqa: BLE001 - the contract is checked here
            allowed(e, DatasetError)
            return
        expect(isinstance(out, np.ndarray) and out.dtype == np.uint8 and 1 <= out.ndim <= 4,
               f"read_idx returned {type(out).__name__} {getattr(out, 'dtype', '')} {getattr(out, 'shape', '')}")
        raw = data if inp["container"] == "raw" else gzip.decompress(data)
        expect(raw[:4] == bytes([0, 0, 8, out.ndim]), "read_idx accepted a header it should refuse")
        dims = struct.unpack(f">{out.ndim}I", raw[4:4 + 4 * out.ndim])
        expect(out.shape == dims, f"shape {out.shape}, header {dims}")
        body = raw[4 + 4 * out.ndim:]
        expect(len(body) == out.size and out.tobytes() == body, "read_idx returned other bytes than the file's")


# ----------------------------------------------------------------------------- pictures
def _chunk(tag, data):
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def _png_seeds():
    from test_images import encode_png
    rng = np.random.default_rng(1)
    seeds = []
    for colour, depth, w, h in [(0, 8, 9, 5), (2, 8, 4, 3), (6, 16, 3, 3), (4, 8, 5, 2), (0, 1, 13, 3),
                                (0, 4, 7, 2), (2, 16, 2, 2)]:
        spp = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
        seeds.append(encode_png(rng.integers(0, 2 ** depth, (h, w, spp)), depth, colour))
    seeds.append(encode_png(rng.integers(0, 4, (3, 6, 1)), 2, 3, palette=rng.integers(0, 256, (4, 3))))
    seeds.append(encode_png(rng.integers(0, 7, (4, 4, 1)), 8, 3, palette=rng.integers(0, 256, (7, 3))))
    seeds.append(encode_png(rng.integers(0, 256, (9, 11, 1)), 8, 0, interlace=1))
    return seeds


def _other_seeds():
    """Small JPEG, BMP, GIF and TIFF files, written by Pillow."""
    import io
    from PIL import Image
    rng = np.random.default_rng(2)
    out = []
    for fmt in ("JPEG", "BMP", "GIF", "TIFF"):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (12, 10), dtype=np.uint8)).save(buf, fmt)
        out.append(buf.getvalue())
    return out


def _fix_crcs(data):
    """Recomputes every chunk's CRC that the (mutated) lengths still frame, so that mutations
    reach the parser behind the CRC check."""
    b = bytearray(data)
    pos = 8
    while pos + 12 <= len(b):
        (length,) = struct.unpack(">I", bytes(b[pos:pos + 4]))
        end = pos + 8 + length
        if end + 4 > len(b):
            break
        b[end:end + 4] = struct.pack(">I", zlib.crc32(bytes(b[pos + 4:end])))
        pos = end + 4
    return bytes(b)


def _reinflate(data, ops):
    """Mutates the inflated image data of the first IDAT and deflates it again (header,
    filters and pixel bytes then reach the decoder intact but wrong)."""
    pos = 8
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        if data[pos + 4:pos + 8] == b"IDAT":
            try:
                raw = zlib.decompress(data[pos + 8:pos + 8 + length])
            except zlib.error:
                return data
            return data[:pos] + _chunk(b"IDAT", zlib.compress(mutate(raw, ops))) + data[pos + 12 + length:]
        pos += 12 + length
    return data


class ImageTarget(Target):
    """read_picture and load_image (Pillow, then MNIST's preprocessing) on mutated pictures:
    PNG bytes, PNG bytes with CRCs fixed, PNG image data, PNG headers; JPEG/BMP/GIF/TIFF bytes."""
    name = "image"

    def __init__(self):
        self._seeds = _png_seeds()
        self._others = _other_seeds()
        self.space = {"seed": len(self._seeds), "other": len(self._others),
                      "how": ["bytes", "bytes+crc", "pixels", "ihdr", "other"], "ops": MUTATIONS,
                      "load_image": [False, True]}

    def run(self, inp):
        data = self._seeds[inp["seed"]]
        if inp["how"] == "bytes":
            data = mutate(data, inp["ops"])
        elif inp["how"] == "bytes+crc":
            data = _fix_crcs(mutate(data, inp["ops"]))
        elif inp["how"] == "pixels":
            data = _reinflate(data, inp["ops"])
        elif inp["how"] == "ihdr":  # the 13 header bytes only, CRC fixed
            ihdr = mutate(data[16:29], inp["ops"])[:13].ljust(13, b"\0")
            data = _fix_crcs(data[:16] + ihdr + data[29:])
        else:
            data = mutate(self._others[inp["other"]], inp["ops"])
        path = scratch("x.img")
        with open(path, "wb") as f:
            f.write(data)
        try:
            if inp["load_image"]:
                out = load_image(path)
                expect(out.shape == (28, 28) and out.dtype == np.float32, f"load_image gave {out.shape} {out.dtype}")
            else:
                out = read_picture(path)
                expect(out.ndim == 2 and out.dtype == np.float64, f"read_picture gave {out.dtype} {out.shape}")
        except Exception as e:  # noqa: BLE001
            allowed(e, ValueError)
            return
        expect(np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1, "pixels outside [0, 1] or not finite")


# ----------------------------------------------------------------------------- checkpoints
JSON_VALUES = [None, True, False, 0, 1, -1, 2, 3, 28, 2**31, 2**63, -2**63, 10**30, 0.5, -0.0, 1e308, float("nan"),
               float("inf"), "", "x", "conv2d", "Linear", "sgd", [], [1], [1, 28, 28], [0.5, 0.5], [1, 2, 3, 4, 5],
               {}, {"kind": "sgd"}, {"a": 1}, [[1]], "param/0.weight"]


def _json_nodes(obj, path=()):
    """Every (path, value) of a JSON tree, in pre-order (the root included)."""
    out = [(path, obj)]
    if isinstance(obj, dict):
        for k in obj:
            out += _json_nodes(obj[k], path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _json_nodes(v, path + (i,))
    return out


def _json_set(obj, path, value, delete=False):
    value = json.loads(json.dumps(value))  # a fresh copy: JSON_VALUES' lists and dicts stay as they are
    if not path:
        return value
    parent = obj
    for p in path[:-1]:
        parent = parent[p]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return obj


class _UserNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.f = nn.Linear(3 * 14 * 14, 4)

    def forward(self, x):
        y = F.max_pool2d(F.relu(self.bn(self.c(x))), 2)
        return F.log_softmax(self.f(y.flatten(1)), 1)


def _checkpoint_seeds():
    rng = np.random.default_rng(2)
    x = rng.random((16, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 4, 16)
    seeds = []
    for make, opt in [(models.lenet5, optim.SGD(0.01, momentum=0.9)), (_UserNet, optim.Adam(1e-3)),
                      (lambda: nn.Sequential(nn.Conv2d(1, 2, 5), nn.BatchNorm2d(2), nn.ReLU(), nn.Dropout(0.3),
                                             nn.Flatten(), nn.Linear(2 * 24 * 24, 4), input_shape=(1, 28, 28)), None)]:
        m = make()
        if opt is not None:
            pylenet.train(m, (x, y), epochs=1, batch_size=8, optimizer=opt, progress=False,
                          loss=F.nll_loss if isinstance(m, _UserNet) else None)
        path = scratch("seed.npz")
        pylenet.save(m, path, optimizer=opt)
        with np.load(path) as z:
            files = {k: z[k] for k in z.files}
        seeds.append((json.loads(str(files.pop("meta"))), files))
    return seeds


class CheckpointTarget(Target):
    """pylenet.load on checkpoints with mutated metadata, arrays, or bytes; a loaded model
    must then predict (or refuse with ValueError/RuntimeError)."""
    name = "checkpoint"

    def __init__(self):
        self._seeds = _checkpoint_seeds()
        self.space = {"seed": len(self._seeds), "node": 1 << 16, "value": list(range(len(JSON_VALUES))),
                      "edit": ["replace", "delete", "replace", "array", "bytes", "replace-twice"],
                      "array": 1 << 16, "array_edit": ["nan", "shape", "dtype", "drop", "scalar", "huge"],
                      "ops": MUTATIONS, "node2": 1 << 16, "value2": list(range(len(JSON_VALUES)))}

    def _file(self, inp):
        meta, files = self._seeds[inp["seed"]]
        meta, files = json.loads(json.dumps(meta)), dict(files)
        edit = inp["edit"]
        if edit in ("replace", "delete", "replace-twice"):
            nodes = _json_nodes(meta)
            path, _ = nodes[inp["node"] % len(nodes)]
            if edit == "delete" and path:
                meta = _json_set(meta, path, None, delete=True)
            else:
                meta = _json_set(meta, path, JSON_VALUES[inp["value"]])
            if edit == "replace-twice":
                nodes = _json_nodes(meta)
                path, _ = nodes[inp["node2"] % len(nodes)]
                meta = _json_set(meta, path, JSON_VALUES[inp["value2"]])
        elif edit == "array":
            keys = sorted(files)
            k = keys[inp["array"] % len(keys)]
            a = files[k]
            e = inp["array_edit"]
            if e == "nan" and a.dtype.kind == "f" and a.size:
                a = a.copy()
                a.flat[inp["array"] % a.size] = np.nan
            elif e == "shape":
                a = np.zeros(a.size + 1, a.dtype)
            elif e == "dtype":
                a = a.astype(np.float64 if a.dtype.kind == "f" else np.float32)
            elif e == "drop":
                files.pop(k)
                a = None
            elif e == "scalar":
                a = np.array(3, a.dtype)
            else:
                a = np.full(a.shape, 3e38, np.float32) if a.dtype.kind == "f" else np.array(2**62, np.int64)
            if a is not None:
                files[k] = a
        buf = io.BytesIO()
        np.savez(buf, meta=np.array(json.dumps(meta)), **files)
        data = buf.getvalue()
        return mutate(data, inp["ops"]) if edit == "bytes" else data

    def run(self, inp):
        path = scratch("x.npz")
        with open(path, "wb") as f:
            f.write(self._file(inp))
        try:
            model, opt = pylenet.load(path, return_optimizer=True)
        except Exception as e:  # noqa: BLE001
            allowed(e, ValueError)
            return
        for name, p in model.state_dict().items():
            expect(p.dtype.kind != "f" or np.isfinite(p).all(), f"load accepted non-finite {name}")
        if opt is not None:
            expect(0 <= opt.state["steps"] <= 2**53, f"load accepted optimizer steps {opt.state['steps']}")
            for b in opt.state.get("buffers") or []:
                expect(np.isfinite(b).all(), "load accepted non-finite optimizer state")
        shape = getattr(model, "input_shape", None)
        if shape:
            try:
                ids = model.predict(np.zeros((2, *shape), np.float32))
            except Exception as e:  # noqa: BLE001
                allowed(e, ValueError, RuntimeError)
                return
            expect(ids.shape == (2,), f"predict gave shape {ids.shape}")


# ----------------------------------------------------------------------------- cudnn-training importer
class CudnnTarget(Target):
    """import_cudnn_weights on folders whose files are missing, resized, corrupted or odd."""
    name = "cudnn"

    def __init__(self):
        rng = np.random.default_rng(3)
        self._files = {name: rng.standard_normal(count).astype("<f4").tobytes()
                       for name, (_, count) in cudnn_format.CUDNN_FILES.items()}
        self.space = {"file": len(self._files), "edit": ["bytes", "missing", "directory", "nan", "inf", "empty",
                                                         "none", "extra-file", "two-files"],
                      "ops": MUTATIONS, "file2": len(self._files)}

    def run(self, inp):
        import shutil
        folder = scratch("cudnn")
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        names = list(self._files)
        targets = {names[inp["file"]]} | ({names[inp["file2"]]} if inp["edit"] == "two-files" else set())
        for name, data in self._files.items():
            path = os.path.join(folder, name)
            edit = inp["edit"] if name in targets else "none"
            if edit == "missing":
                continue
            if edit == "directory":
                os.makedirs(path)
                continue
            if edit in ("bytes", "two-files"):
                data = mutate(data, inp["ops"])
            elif edit in ("nan", "inf"):
                a = np.frombuffer(data, "<f4").copy()
                a[inp["ops"][0][1] % a.size if inp["ops"] else 0] = np.nan if edit == "nan" else np.inf
                data = a.tobytes()
            elif edit == "empty":
                data = b""
            with open(path, "wb") as f:
                f.write(data)
        if inp["edit"] == "extra-file":
            with open(os.path.join(folder, "notes.txt"), "w") as f:
                f.write("x")
        try:
            sd = cudnn_format.import_cudnn_weights(folder)
        except Exception as e:  # noqa: BLE001
            allowed(e, ValueError)
            return
        expect(set(sd) == set(cudnn_format.STATE_DICT_SHAPES), "wrong keys")
        for k, v in sd.items():
            expect(v.shape == cudnn_format.STATE_DICT_SHAPES[k] and v.dtype == np.float32 and np.isfinite(v).all(),
                   f"{k}: {v.shape} {v.dtype}")
        models.cudnn_lenet().load_state_dict(sd)


# ----------------------------------------------------------------------------- functional ops
SIZES = [1, 2, 3, 5, 8]
ODD_SIZES = [0, -1, 2**31, 2**62, 2.0, True, None, "2", (2, 2, 2), (1, -1), (0, 3), (2**31 - 1, 1), (3, 1)]
DTYPES = ["float32", "float64", "int32", "uint8", "bool", "complex64", "object", "float16"]


def _array(rng, shape, dtype, special):
    a = rng.standard_normal(shape)
    if special == "nan" and a.size:
        a.flat[0] = np.nan
    elif special == "inf" and a.size:
        a.flat[-1] = np.inf
    elif special == "huge":
        a *= 1e38
    elif special == "non-contiguous" and a.ndim >= 2:
        a = np.swapaxes(np.swapaxes(a, 0, 1).copy(), 0, 1)
    if dtype == "object":
        return a.astype(object)
    return a.astype(dtype)


class OpsTarget(Target):
    """pylenet.functional's ops on odd arguments; valid calls are checked against the NumPy
    reference (tests/reference.py)."""
    name = "ops"

    OPS = ["conv2d", "conv2d_backward", "max_pool2d", "avg_pool2d", "max_pool2d_backward", "avg_pool2d_backward",
           "linear", "softmax", "log_softmax", "cross_entropy", "nll_loss", "batch_norm", "dropout", "flatten",
           "reshape", "add", "cat", "relu", "leaky_relu", "sgd_step"]

    def __init__(self):
        self.space = {"op": self.OPS, "n": SIZES, "c": SIZES, "h": [1, 3, 5, 8, 13], "w": [1, 2, 4, 7],
                      "k": [1, 2, 3, 5] * 3 + ODD_SIZES, "s": [1, 2, 3] * 4 + ODD_SIZES,
                      "p": [0, 1, 2] * 4 + ODD_SIZES, "oc": [1, 2, 4], "dtype": ["float32"] * 8 + DTYPES,
                      "special": ["none"] * 6 + ["nan", "inf", "huge", "non-contiguous"],
                      "algo": ["auto", "im2col", "direct", "naive", "heuristic", "implicit_gemm", "nope", 3],
                      "rank": [4, 4, 4, 2, 3, 1, 5, 0], "label": [0, 1, -1, 3, 10**12, -100, "x", 1.5],
                      "seed": 1 << 16, "extra": [None, 0, 1, -1, 2, 0.5, 1.0, float("nan"), -2, 5]}

    def run(self, inp):
        rng = np.random.default_rng(inp["seed"])
        n, c, h, w = inp["n"], inp["c"], inp["h"], inp["w"]
        shape = (n, c, h, w)[:inp["rank"]] if inp["rank"] <= 4 else (n, c, h, w, 2)
        x = _array(rng, shape, inp["dtype"], inp["special"])
        op, k, s, p = inp["op"], inp["k"], inp["s"], inp["p"]
        ref = None
        try:
            if op == "conv2d":
                kk = (k, k) if isinstance(k, int) and not isinstance(k, bool) and 0 < k < 9 else (3, 3)
                wt = rng.standard_normal((inp["oc"], c, *kk))
                wt = wt.astype(np.float32)
                out = F.conv2d(x, wt, None, s, p, algo=inp["algo"])
                ref = lambda: R.conv2d(x, wt, None, s, p)  # noqa: E731
            elif op == "conv2d_backward":
                wt = rng.standard_normal((inp["oc"], c, 3, 3)).astype(np.float32)
                y = F.conv2d(x, wt, None, s, p)
                out = F.conv2d_backward(rng.standard_normal(y.shape).astype(np.float32), x, wt, s, p,
                                        algo=inp["algo"])
                expect(out[0].shape == np.shape(x) and out[1].shape == wt.shape, "conv2d_backward shapes")
                return
            elif op in ("max_pool2d", "avg_pool2d"):
                out = getattr(F, op)(x, k, s, p)
                ref = lambda: getattr(R, op)(x, k, s, p)  # noqa: E731
            elif op in ("max_pool2d_backward", "avg_pool2d_backward"):
                fwd = getattr(F, op[:-9])(x, k, s, p)
                out = getattr(F, op)(np.ones_like(fwd), x, k, s, p)
                expect(out.shape == np.shape(x), f"{op} shape {out.shape}")
            elif op == "linear":
                x2 = x.reshape(len(x), -1) if x.ndim > 1 and inp["extra"] == 1 else x
                wt = rng.standard_normal((inp["oc"], x2.shape[-1] if x2.ndim else 1)).astype(np.float32)
                out = F.linear(x2, wt)
                ref = lambda: R.linear(x2, wt)  # noqa: E731
            elif op in ("softmax", "log_softmax"):
                out = getattr(F, op)(x, inp["extra"] if isinstance(inp["extra"], int) else 1)
            elif op in ("cross_entropy", "nll_loss"):
                labels = np.full(len(x) if np.ndim(x) else 1, inp["label"], dtype=object)
                try:
                    labels = labels.astype(np.int64)
                except (ValueError, TypeError, OverflowError):
                    pass
                out = getattr(F, op)(x, labels)
                # NaN in, NaN out, as in PyTorch: eager ops do not hide what they were given.
                expect(isinstance(out, float) and (math.isfinite(out) or inp["special"] != "none"
                                                   or op == "nll_loss"), f"{op} gave {out!r}")
                return
            elif op == "batch_norm":
                rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
                out = F.batch_norm(x, rm, rv, training=bool(inp["extra"]), momentum=0.1,
                                   eps=inp["extra"] if isinstance(inp["extra"], float) else 1e-5)
                expect(inp["special"] != "none" or (np.isfinite(rm).all() and np.isfinite(rv).all()),
                       "batch_norm left non-finite statistics from finite input")
            elif op == "dropout":
                out = F.dropout(x, inp["extra"] if inp["extra"] is not None else 0.5)
            elif op == "flatten":
                out = F.flatten(x, inp["extra"] if inp["extra"] is not None else 1)
            elif op == "reshape":
                out = F.reshape(x, inp["extra"], -1) if inp["extra"] is not None else F.reshape(x, k, s)
                expect(out.size == np.size(x), "reshape changed the size")
            elif op == "add":
                out = F.add(x, x if inp["extra"] != 2 or np.ndim(x) == 0 else x[..., :1])
                ref = lambda: x.astype(np.float64) + x  # noqa: E731
            elif op == "cat":
                out = F.cat([x, x], inp["extra"] if isinstance(inp["extra"], int) else 1)
            elif op in ("relu", "leaky_relu"):
                out = getattr(F, op)(x)
                ref = lambda: np.maximum(x.astype(np.float64), 0) if op == "relu" else None  # noqa: E731
            else:  # sgd_step
                param = np.ascontiguousarray(x, np.float32) if inp["dtype"] != "object" else x
                grad = rng.standard_normal(np.shape(x)).astype(np.float32)
                before = np.array(param, copy=True)
                try:
                    F.sgd_step(param, grad, None, inp["extra"] if inp["extra"] is not None else 0.1)
                except Exception:
                    expect(np.array_equal(np.asarray(param), before, equal_nan=True), "a refused sgd_step changed param")
                    raise
                return
        except Exception as e:  # noqa: BLE001 - MemoryError: a valid call whose output exceeds the memory
            allowed(e, ValueError, TypeError, MemoryError)
            return
        # flatten and reshape are views (any dtype, as NumPy's); every other op computes in float32.
        expect(isinstance(out, np.ndarray) and (out.dtype == np.float32 or op in ("flatten", "reshape")),
               f"{op} returned {type(out).__name__} {getattr(out, 'dtype', '')}")
        if ref is None or inp["special"] != "none" or inp["dtype"] in ("float16", "complex64", "object"):
            return
        try:
            want = ref()
        except MemoryError:  # the reference pads in memory: a stride near 2^31 is exact in pylenet only
            return
        except Exception as e:  # noqa: BLE001 - pylenet accepted what the reference cannot compute
            raise Finding(f"{op} returned {out.shape} for arguments the reference refuses ({type(e).__name__}: {e})")
        if want is None:
            return
        want = np.asarray(want, np.float64)
        expect(out.shape == want.shape, f"{op}: shape {out.shape}, reference {want.shape}")
        tol = 1e-4 * max(1.0, float(np.abs(want).max(initial=0)))
        expect(np.abs(out - want).max(initial=0) <= tol, f"{op}: max error {np.abs(out - want).max()} > {tol}")


# ----------------------------------------------------------------------------- the training API
def _tiny_model():
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 3 * 3, 3))


class TrainTarget(Target):
    """train / compile / evaluate / predict with odd data and settings: a History (or a
    result) with finite parameters, or a clear error that leaves the parameters finite."""
    name = "train"

    def __init__(self):
        self.space = {"n": [1, 2, 3, 8, 17], "hw": [8, 8, 8, 7, 28], "labels": ["ok", "ok", "negative", "large",
                                                                                 "float", "short", "2d"],
                      "data": ["ok", "ok", "ok", "nan", "inf", "huge", "int", "bool", "3d", "empty", "list"],
                      "epochs": [1, 1, 2, 0, -1, 1.5, True, "2", 3],
                      "batch": [1, 4, 8, 64, 0, -1, 2**40, 2.5],
                      "opt": ["sgd", "adam", "adadelta", "sgd-huge", "sgd-zero", "adam-tiny-eps", "name-bad", None],
                      "sched": [None, "constant", "cosine", "step", "inv", "step-overflow", "inv-big", "bad"],
                      "api": ["train", "train", "compile", "evaluate", "predict"], "seed": 1 << 16,
                      "loss": [None, "cross_entropy", "nll_loss", "lambda", "bad"]}

    def run(self, inp):
        from pylenet.nn.init import seeded
        rng = np.random.default_rng(inp["seed"])
        n, hw = inp["n"], inp["hw"]
        with seeded(inp["seed"]):  # the same weights whatever ran before: a finding replays
            m = _tiny_model()
        x = rng.standard_normal((n, 1, hw, hw)).astype(np.float32)
        d = inp["data"]
        if d == "nan":
            x[0, 0, 0, 0] = np.nan
        elif d == "inf":
            x[-1, 0, 0, 0] = -np.inf
        elif d == "huge":
            x *= 3e38
        elif d == "int":
            x = (x * 10).astype(np.int32)
        elif d == "bool":
            x = x > 0
        elif d == "3d":
            x = x[:, 0]
        elif d == "empty":
            x = x[:0]
        elif d == "list":
            x = x.tolist()
        y = rng.integers(0, 3, n)
        lab = inp["labels"]
        if lab == "negative":
            y[0] = -1
        elif lab == "large":
            y[-1] = 3
        elif lab == "float":
            y = y.astype(np.float32)
        elif lab == "short":
            y = y[:-1]
        elif lab == "2d":
            y = y[:, None]
        opts = {"sgd": lambda: optim.SGD(0.05, momentum=0.9), "adam": lambda: optim.Adam(1e-3),
                "adadelta": lambda: optim.Adadelta(), "sgd-huge": lambda: optim.SGD(3e38),
                "sgd-zero": lambda: optim.SGD(0.0), "adam-tiny-eps": lambda: optim.Adam(10.0, eps=1e-30),
                "name-bad": lambda: "rmsprop", None: lambda: None}
        scheds = {None: lambda: None, "constant": lambda: "constant", "cosine": lambda: optim.CosineLR(),
                  "step": lambda: optim.StepLR(1, 0.5), "inv": lambda: optim.InvLR(),
                  "step-overflow": lambda: optim.StepLR(1, 1e300), "inv-big": lambda: optim.InvLR(1e30, 0.75),
                  "bad": lambda: "exponential"}
        losses = {None: None, "cross_entropy": F.cross_entropy, "nll_loss": F.nll_loss,
                  "lambda": lambda out, t: F.cross_entropy(out, t), "bad": lambda out, t: out}
        try:
            api = inp["api"]
            if api == "train":
                h = pylenet.train(m, (x, y), epochs=inp["epochs"], batch_size=inp["batch"], optimizer=opts[inp["opt"]](),
                                  schedule=scheds[inp["sched"]](), loss=losses[inp["loss"]], progress=False,
                                  seed=inp["seed"])
                expect(len(h) >= 1 and all(math.isfinite(r["loss"]) for r in h.epochs), f"history {h}")
            elif api == "compile":
                step = pylenet.compile(m, opts[inp["opt"]](), loss=losses[inp["loss"]], batch_size=inp["batch"])
                loss = step(x, y)
                expect(math.isfinite(loss), f"step loss {loss}")
            elif api == "evaluate":
                r = pylenet.evaluate(m, (x, y), batch_size=inp["batch"])
                expect(0 <= r["accuracy"] <= 1 and math.isfinite(r["loss"]), f"evaluate {r}")
            else:
                ids, probs = m.predict(x, return_probs=True)
                expect(ids.shape == (len(probs),) and np.isfinite(probs).all()
                       and np.allclose(probs.sum(1), 1, atol=1e-4), "predict gave bad probabilities")
        except Exception as e:  # noqa: BLE001
            allowed(e, ValueError, TypeError, RuntimeError)
            # A compiled step whose update overflows says so; it keeps no copy to go back to
            # (train() does: it rolls back to the end of the last finished epoch).
            if inp["api"] == "compile" and "made parameters NaN or inf" in str(e):
                return
        for name, p in m.named_parameters():
            expect(np.isfinite(p).all(), f"{name} is not finite after {inp}")


TARGETS = [IdxTarget, ImageTarget, CheckpointTarget, CudnnTarget, OpsTarget, TrainTarget]
