"""Tests for pylenet.datasets: IDX parsing, Dataset, file lookup, downloads.

Real MNIST / Fashion-MNIST are read from $PYLENET_DATA or <repo>/../shared/data
when present (those tests skip otherwise).  Everything else uses small
synthetic IDX files, and downloads go to a local http.server: the internet is
never contacted (a guard below refuses any non-loopback host).
"""

import gzip
import hashlib
import http.server
import os
import socket
import struct
import threading
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest

import pylenet.datasets
from pylenet import datasets
from pylenet.datasets import Dataset, DatasetError, read_idx

REPO = Path(__file__).resolve().parents[1]


def _real_data_root():
    env = os.environ.get("PYLENET_DATA")
    candidates = ([Path(env).expanduser().resolve()] if env else []) + [
        REPO.parent / "shared" / "data"
    ]
    for c in candidates:
        if (c / "mnist").is_dir():
            return c
    return None


REAL = _real_data_root()  # computed before the isolation fixture clears the env
needs_real = pytest.mark.skipif(REAL is None, reason="real MNIST data not available")
needs_fashion = pytest.mark.skipif(
    REAL is None or not (REAL / "fashion-mnist").is_dir(),
    reason="real Fashion-MNIST data not available",
)

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _closed_port_url():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there any more: connections are refused
    return f"http://127.0.0.1:{port}/"


@pytest.fixture(autouse=True)
def _isolate(monkeypatch, tmp_path):
    """No test sees the user's data/cache folders, proxies, or the internet."""
    monkeypatch.delenv("PYLENET_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PYLENET_MIRRORS", _closed_port_url())
    for var in ("http_proxy", "https_proxy", "all_proxy",
                "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)

    real_getaddrinfo = socket.getaddrinfo

    def loopback_only(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise OSError(f"test guard: refusing to resolve {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)


# ---------------------------------------------------------------------------
# Helpers for synthetic IDX files
# ---------------------------------------------------------------------------

def idx_bytes(arr, type_code=0x08, dims=None):
    arr = np.asarray(arr, dtype=np.uint8)
    dims = arr.shape if dims is None else dims
    header = bytes([0, 0, type_code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)
    return header + arr.tobytes()


def write(path, data, gz=False):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def make_split(folder, split="train", n=12, seed=0, gz=True, dot=False,
               labels=None, images=None):
    """Write a small synthetic split into folder; return (images_u8, labels)."""
    rng = np.random.default_rng(seed)
    if images is None:
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    if labels is None:
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    img_name, lbl_name = SPLIT_FILES[split]
    if dot:
        img_name = img_name.replace("-idx3", ".idx3")
        lbl_name = lbl_name.replace("-idx1", ".idx1")
    suffix = ".gz" if gz else ""
    write(Path(folder) / (img_name + suffix), idx_bytes(images), gz)
    write(Path(folder) / (lbl_name + suffix), idx_bytes(labels), gz)
    return images, np.asarray(labels)


def expect_error(path, *fragments):
    """Run read_idx(path), expecting a DatasetError naming the file."""
    with pytest.raises(DatasetError) as info:
        read_idx(path)
    msg = str(info.value)
    assert str(path) in msg
    for frag in fragments:
        assert frag in msg, msg
    return msg


# ---------------------------------------------------------------------------
# read_idx: valid input
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("shape", [(7,), (3, 5), (4, 28, 28), (2, 3, 4, 5)])
def test_read_idx_roundtrip(tmp_path, gz, shape):
    arr = np.random.default_rng(1).integers(0, 256, size=shape, dtype=np.uint8)
    p = write(tmp_path / "f", idx_bytes(arr), gz)
    out = read_idx(p)
    assert out.dtype == np.uint8 and out.shape == shape
    np.testing.assert_array_equal(out, arr)


def test_read_idx_detects_gzip_by_content_not_name(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    gz_named_raw = write(tmp_path / "a-idx3-ubyte", idx_bytes(arr), gz=True)
    raw_named_gz = write(tmp_path / "b-idx3-ubyte.gz", idx_bytes(arr), gz=False)
    np.testing.assert_array_equal(read_idx(gz_named_raw), arr)
    np.testing.assert_array_equal(read_idx(raw_named_gz), arr)


def test_read_idx_multimember_gzip(tmp_path):
    # `cat a.gz b.gz` is a valid gzip file; some re-compressors produce it.
    data = idx_bytes(np.arange(100, dtype=np.uint8))
    p = tmp_path / "multi.gz"
    p.write_bytes(gzip.compress(data[:37]) + gzip.compress(data[37:]))
    np.testing.assert_array_equal(read_idx(p), np.arange(100))


# ---------------------------------------------------------------------------
# read_idx: corrupt input
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True])
def test_bad_magic(tmp_path, gz):
    p = write(tmp_path / "f", b"\x01\x00\x08\x01" + struct.pack(">I", 3) + b"abc", gz)
    expect_error(p, "not an IDX file")


@pytest.mark.parametrize("gz", [False, True])
def test_unsupported_type_code(tmp_path, gz):
    p = write(tmp_path / "f", idx_bytes(np.zeros(4), type_code=0x0D), gz)
    expect_error(p, "unsupported", "0x0d", "float32")


def test_invalid_type_code(tmp_path):
    p = write(tmp_path / "f", idx_bytes(np.zeros(4), type_code=0x07))
    expect_error(p, "0x07")


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("ndim", [0, 5])
def test_bad_dimension_count(tmp_path, gz, ndim):
    dims = (2,) * ndim
    p = write(tmp_path / "f", idx_bytes(np.zeros(2 ** ndim), dims=dims), gz)
    expect_error(p, f"{ndim} dimensions")


@pytest.mark.parametrize("gz", [False, True])
def test_zero_sized_dimension(tmp_path, gz):
    p = write(tmp_path / "f", idx_bytes(np.zeros(0), dims=(10, 0, 28)), gz)
    expect_error(p, "zero-sized")


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("data", [b"", b"\x00\x00", b"\x00\x00\x08\x03\x00\x00\x00\x05"])
def test_short_header(tmp_path, gz, data):
    p = write(tmp_path / "f", data, gz)
    expect_error(p)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_payload(tmp_path, gz):
    data = idx_bytes(np.zeros((5, 28, 28)))
    p = write(tmp_path / "f", data[:-100], gz)
    expect_error(p, "truncated")


@pytest.mark.parametrize("gz", [False, True])
def test_trailing_garbage(tmp_path, gz):
    data = idx_bytes(np.zeros((5, 28, 28))) + b"garbage"
    p = write(tmp_path / "f", data, gz)
    expect_error(p, "trailing garbage")


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dims", [(60000, 10000, 10000), (1000, 1000, 1000)])
def test_huge_declared_size_fails_fast_without_allocating(tmp_path, gz, dims):
    # 6e12 bytes is over the hard cap; 1e9 is under it but the file cannot
    # back it.  Either way: an error, quickly, without allocating the size.
    p = write(tmp_path / "f", idx_bytes(np.zeros(16), dims=dims), gz)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        msg = expect_error(p)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 2.0
    assert peak < 16 << 20, f"peak traced allocation {peak} bytes"
    # Under the cap, a gzip file is refused from its size alone (it cannot hold 1e9 bytes).
    assert ("limit" in msg) if dims[1] == 10000 else (("ratio above" if gz else "truncated") in msg)


def _peak_of_refusal(path, *fragments):
    """The peak traced allocation of read_idx(path) refusing it with a message holding fragments."""
    tracemalloc.start()
    try:
        expect_error(path, *fragments)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_gzip_longer_than_declared_stops_early(tmp_path):
    # A small header followed by 64 MiB of zeros (a ~64 KiB gzip "bomb"):
    # reading must stop right after the declared size, not inflate it all.
    header = idx_bytes(np.zeros(10), dims=(10,))
    comp = zlib.compressobj(9, 8, 31)  # wbits=31: gzip container
    blob = comp.compress(header)
    zeros = bytes(1 << 20)
    for _ in range(64):
        blob += comp.compress(zeros)
    blob += comp.flush()
    p = tmp_path / "bomb.gz"
    p.write_bytes(blob)
    peak = _peak_of_refusal(p, "trailing garbage")
    assert peak < 16 << 20, f"peak traced allocation {peak} bytes"


def test_gzip_declaring_far_more_than_it_can_hold_is_refused_from_the_header(tmp_path):
    """issue 13: a 382 KB gzip file declaring 2 GB of zeros allocated 2 GB. The header may not
    declare more than MAX_GZIP_RATIO times the compressed size: refused before inflating."""
    dims = (20000, 300, 300)  # 1.8 GB declared
    header = struct.pack(">BBBB", 0, 0, 8, 3) + struct.pack(">3I", *dims)
    comp = zlib.compressobj(9, 8, 31)
    blob = comp.compress(header) + comp.compress(bytes(16 << 20)) + comp.flush()
    p = tmp_path / "bomb.gz"
    p.write_bytes(blob)
    assert p.stat().st_size < 64 << 10
    peak = _peak_of_refusal(p, "ratio above")
    assert peak < 4 << 20, f"peak traced allocation {peak} bytes"


def test_real_gzip_ratios_are_far_below_the_bound(tmp_path):
    """Random-ish images (like real ones) deflate a few times at most; even an all-black set
    of MNIST's size stays readable when it is below the bound."""
    rng = np.random.default_rng(0)
    imgs = (rng.random((500, 28, 28)) < 0.2) * rng.integers(0, 256, (500, 28, 28))
    p = tmp_path / "imgs.gz"
    p.write_bytes(gzip.compress(idx_bytes(imgs.astype(np.uint8))))
    np.testing.assert_array_equal(read_idx(p), imgs)


def test_corrupt_gzip_stream(tmp_path):
    arr = np.random.default_rng(2).integers(0, 256, size=(20, 28, 28), dtype=np.uint8)
    blob = bytearray(gzip.compress(idx_bytes(arr)))
    for i in range(40, 60):  # scribble over the deflate data
        blob[i] ^= 0xFF
    p = tmp_path / "corrupt.gz"
    p.write_bytes(bytes(blob))
    expect_error(p, "gzip")


def test_truncated_gzip_stream(tmp_path):
    arr = np.random.default_rng(3).integers(0, 256, size=(20, 28, 28), dtype=np.uint8)
    blob = gzip.compress(idx_bytes(arr))
    p = tmp_path / "cut.gz"
    p.write_bytes(blob[: len(blob) // 2])
    expect_error(p, "gzip")


def test_gzip_bad_crc(tmp_path):
    blob = bytearray(gzip.compress(idx_bytes(np.arange(50, dtype=np.uint8))))
    blob[-8] ^= 0xFF  # CRC32 in the gzip trailer
    p = tmp_path / "crc.gz"
    p.write_bytes(bytes(blob))
    expect_error(p, "gzip")


def test_missing_file_is_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope")


# ---------------------------------------------------------------------------
# Dataset container
# ---------------------------------------------------------------------------

def small_dataset(n=10):
    images = np.arange(n * 4 * 4, dtype=np.float32).reshape(n, 1, 4, 4)
    labels = np.arange(n) % 3
    return Dataset(images, labels, name="toy", classes=["a", "b", "c"], mean=0.5, std=2.0)


def test_dataset_basics():
    ds = small_dataset()
    assert len(ds) == 10
    assert ds.images.dtype == np.float32 and ds.images.shape == (10, 1, 4, 4)
    assert ds.labels.dtype == np.int64
    img, lbl = ds[4]
    assert img.shape == (1, 4, 4) and lbl == 1 and isinstance(lbl, int)
    np.testing.assert_array_equal(ds[-1][0], ds.images[9])
    assert ds[np.int64(2)][1] == 2
    with pytest.raises(IndexError):
        ds[10]
    with pytest.raises(IndexError):
        ds[-11]
    r = repr(ds)
    assert "toy" in r and "n=10" in r and "(1, 4, 4)" in r
    assert [lbl for _, lbl in ds] == list(ds.labels)


def test_dataset_slicing_and_subsets():
    ds = small_dataset()
    for sub, expect in [
        (ds[2:5], [2, 3, 4]),
        (ds[::3], [0, 3, 6, 9]),
        (ds[[7, 1, 1]], [7, 1, 1]),
        (ds[np.array([0, 9])], [0, 9]),
        (ds[np.arange(10) % 2 == 0], [0, 2, 4, 6, 8]),
        (ds[[]], []),
        (ds.subset(3), [0, 1, 2]),
        (ds.subset([5, 6]), [5, 6]),
        (ds.subset(np.array([8])), [8]),
    ]:
        assert isinstance(sub, Dataset)
        assert len(sub) == len(expect)
        np.testing.assert_array_equal(sub.images, ds.images[expect].reshape(-1, 1, 4, 4))
        np.testing.assert_array_equal(sub.labels, ds.labels[expect])
        assert (sub.name, sub.classes, sub.mean, sub.std) == ("toy", ["a", "b", "c"], 0.5, 2.0)
        assert sub.images.flags["C_CONTIGUOUS"]
    with pytest.raises(ValueError):
        ds.subset(11)
    with pytest.raises(IndexError):
        ds[[0, 10]]
    with pytest.raises(IndexError):
        ds[np.ones(3, dtype=bool)]
    with pytest.raises(TypeError):
        ds["x"]


def test_dataset_validation():
    with pytest.raises(DatasetError, match="3 images but 2 labels"):
        Dataset(np.zeros((3, 1, 2, 2)), [0, 1], classes=["a", "b"])
    with pytest.raises(DatasetError, match="out of range"):
        Dataset(np.zeros((2, 1, 2, 2)), [0, 2], classes=["a", "b"])
    with pytest.raises(DatasetError, match="out of range"):
        Dataset(np.zeros((2, 1, 2, 2)), [0, -1], classes=["a", "b"])
    with pytest.raises(DatasetError):
        Dataset(np.zeros((2, 4)), [0, 1])
    with pytest.raises(DatasetError):
        Dataset(np.zeros((2, 1, 2, 2)), [0.5, 1.0])
    # (N, H, W) gets a channel axis; classes default to "0".."max".
    ds = Dataset(np.zeros((2, 3, 3), dtype=np.uint8), [0, 4])
    assert ds.images.shape == (2, 1, 3, 3) and ds.images.dtype == np.float32
    assert ds.classes == ["0", "1", "2", "3", "4"]


# ---------------------------------------------------------------------------
# Loader on synthetic files: normalisation, lookup order, errors
# ---------------------------------------------------------------------------

def test_loader_normalisation(tmp_path):
    images, labels = make_split(tmp_path, "t10k")
    ds = datasets.mnist(tmp_path, train=False, download=False)
    assert ds.name == "mnist-test" and ds.classes == [str(d) for d in range(10)]
    assert (ds.mean, ds.std) == (pytest.approx(0.1307), pytest.approx(0.3081))
    expect = (images.astype(np.float64) / 255 - 0.1307) / 0.3081
    np.testing.assert_allclose(ds.images[:, 0], expect, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(ds.labels, labels)

    raw = datasets.mnist(tmp_path, train=False, normalize=False, download=False)
    assert (raw.mean, raw.std) == (0.0, 1.0)
    np.testing.assert_allclose(raw.images[:, 0], images / 255.0, rtol=1e-6)
    assert raw.images.min() >= 0.0 and raw.images.max() <= 1.0

    custom = datasets.fashion_mnist(tmp_path, train=False, mean=0.5, std=0.25, download=False)
    assert custom.name == "fashion-mnist-test" and custom.classes[0] == "T-shirt/top"
    np.testing.assert_allclose(custom.images[:, 0], (images / 255.0 - 0.5) / 0.25,
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(DatasetError):
        datasets.mnist(tmp_path, train=False, std=0.0, download=False)


def test_load_by_name(tmp_path):
    make_split(tmp_path / "fashion-mnist", "t10k")
    ds = datasets.load("fashion-mnist", tmp_path, train=False, download=False)
    assert ds.name == "fashion-mnist-test"
    with pytest.raises(ValueError):
        datasets.load("cifar10")


def test_lookup_order(tmp_path, monkeypatch):
    # Different sizes in each folder tell which one was used.
    root = tmp_path / "root"
    env = tmp_path / "env"
    cache = Path(os.environ["XDG_CACHE_HOME"]) / "pylenet"
    make_split(root, n=3)                    # root holding the files directly
    make_split(tmp_path / "nested" / "mnist", n=4)   # root holding mnist/
    make_split(env / "mnist", n=5)
    make_split(cache / "mnist", n=6)
    make_split(cache / "fashion-mnist", n=7)
    monkeypatch.setenv("PYLENET_DATA", str(env))

    assert len(datasets.mnist(root, download=False)) == 3
    assert len(datasets.mnist(tmp_path / "nested", download=False)) == 4
    assert len(datasets.mnist(download=False)) == 5
    assert len(datasets.mnist(tmp_path / "empty", download=False)) == 5  # falls through
    monkeypatch.delenv("PYLENET_DATA")
    assert len(datasets.mnist(download=False)) == 6
    assert len(datasets.fashion_mnist(download=False)) == 7


def test_cache_defaults_to_home_without_xdg(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_CACHE_HOME")
    make_split(tmp_path / "home" / ".cache" / "pylenet" / "mnist", "t10k", n=4)
    assert len(datasets.mnist(train=False, download=False)) == 4


def test_incomplete_folder_is_skipped(tmp_path):
    # Images without labels: not usable, and the error says what is missing.
    make_split(tmp_path, "t10k")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match="missing labels"):
        datasets.mnist(tmp_path, train=False, download=False)


def test_not_found_error_lists_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("PYLENET_DATA", str(tmp_path / "envdir"))
    with pytest.raises(DatasetError) as info:
        datasets.fashion_mnist(tmp_path / "given", download=False)
    msg = str(info.value)
    for part in ["Fashion-MNIST", "train", str(tmp_path / "given"),
                 str(tmp_path / "given" / "fashion-mnist"),
                 str(tmp_path / "envdir" / "fashion-mnist"),
                 str(tmp_path / "xdg-cache" / "pylenet" / "fashion-mnist"),
                 "train-images-idx3-ubyte.gz", "$PYLENET_DATA", "download=False"]:
        assert part in msg, msg


def test_loader_count_mismatch(tmp_path):
    make_split(tmp_path, "t10k", n=10, labels=np.zeros(9, dtype=np.uint8))
    with pytest.raises(DatasetError, match="10 images but .* 9 labels"):
        datasets.mnist(tmp_path, train=False, download=False)


def test_loader_label_out_of_range(tmp_path):
    make_split(tmp_path, "t10k", n=4, labels=np.array([0, 3, 10, 1], dtype=np.uint8))
    with pytest.raises(DatasetError, match="label 10 out of range") as info:
        datasets.mnist(tmp_path, train=False, download=False)
    assert "t10k-labels" in str(info.value)


def test_loader_wrong_image_shape(tmp_path):
    make_split(tmp_path, "t10k", images=np.zeros((4, 27, 27), dtype=np.uint8),
               labels=np.zeros(4, dtype=np.uint8))
    with pytest.raises(DatasetError, match="28, 28"):
        datasets.mnist(tmp_path, train=False, download=False)


def test_loader_propagates_corrupt_file(tmp_path):
    make_split(tmp_path, "t10k")
    p = tmp_path / "t10k-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:50])
    with pytest.raises(DatasetError, match="gzip"):
        datasets.mnist(tmp_path, train=False, download=False)


# ---------------------------------------------------------------------------
# Downloads from a local HTTP server
# ---------------------------------------------------------------------------

@pytest.fixture
def server():
    """(base_url, files, requests): serve files[path] bytes; 404 otherwise."""
    files, requests = {}, []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}", files, requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def publish(files, prefix, monkeypatch, n=8, seed=5, md5_of=None):
    """Serve a synthetic MNIST train split under prefix; register md5s."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    table = {}
    for name, arr in [("train-images-idx3-ubyte.gz", images),
                      ("train-labels-idx1-ubyte.gz", labels)]:
        blob = gzip.compress(idx_bytes(arr), mtime=0)
        files[f"{prefix}{name}"] = blob
        table[name] = (hashlib.md5((md5_of or {}).get(name, blob)).hexdigest(),)
    monkeypatch.setitem(datasets.MD5, "mnist", table)
    return images, labels


def cache_dir(name="mnist"):
    return Path(os.environ["XDG_CACHE_HOME"]) / "pylenet" / name


def test_download_success_is_atomic(server, monkeypatch):
    base, files, requests = server
    images, labels = publish(files, "/m/", monkeypatch)
    monkeypatch.setenv("PYLENET_MIRRORS", f"{base}/m/")

    replaced = []
    real_replace = os.replace

    def spy_replace(src, dst):
        src, dst = Path(src), Path(dst)
        # Temp file in the target folder, hidden, and the target not yet there.
        assert src.parent == dst.parent == cache_dir()
        assert src.name.startswith(".") and src.is_file() and not dst.exists()
        replaced.append(dst.name)
        return real_replace(src, dst)

    monkeypatch.setattr(datasets.os, "replace", spy_replace)
    ds = datasets.mnist(normalize=False)
    assert sorted(replaced) == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    assert sorted(os.listdir(cache_dir())) == sorted(replaced)  # no temp files left
    for name in replaced:
        assert (cache_dir() / name).read_bytes() == files[f"/m/{name}"]
    np.testing.assert_allclose(ds.images[:, 0], images / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.labels, labels)

    # Second load comes from the cache: no new requests.
    n_requests = len(requests)
    assert len(datasets.mnist()) == len(labels)
    assert len(requests) == n_requests


def test_download_uses_mirrors_dict(server, monkeypatch):
    base, files, _ = server
    publish(files, "/d/", monkeypatch)
    monkeypatch.delenv("PYLENET_MIRRORS")
    monkeypatch.setitem(datasets.MIRRORS, "mnist", [f"{base}/d"])  # no trailing slash
    assert len(datasets.mnist()) == 8


def test_download_md5_mismatch_leaves_nothing(server, monkeypatch):
    base, files, _ = server
    publish(files, "/m/", monkeypatch, md5_of={"train-images-idx3-ubyte.gz": b"other"})
    monkeypatch.setenv("PYLENET_MIRRORS", f"{base}/m/")
    with pytest.raises(DatasetError) as info:
        datasets.mnist()
    msg = str(info.value)
    assert "md5 mismatch" in msg and "Put train-images-idx3-ubyte.gz" in msg
    assert list(cache_dir().iterdir()) == []


def test_download_md5_mismatch_tries_next_mirror(server, monkeypatch):
    base, files, requests = server
    publish(files, "/good/", monkeypatch)
    files["/bad/train-images-idx3-ubyte.gz"] = b"not the real file"
    files["/bad/train-labels-idx1-ubyte.gz"] = b"not the real file"
    monkeypatch.setenv("PYLENET_MIRRORS", f"{base}/bad/,{base}/good/")
    assert len(datasets.mnist()) == 8
    assert requests[:2] == ["/bad/train-images-idx3-ubyte.gz",
                            "/good/train-images-idx3-ubyte.gz"]
    assert sorted(os.listdir(cache_dir())) == ["train-images-idx3-ubyte.gz",
                                               "train-labels-idx1-ubyte.gz"]


def test_download_404_falls_through_to_next_mirror(server, monkeypatch):
    base, files, requests = server
    images, _ = publish(files, "/ok/", monkeypatch)
    monkeypatch.setenv("PYLENET_MIRRORS", f"{base}/missing/, {base}/ok/")
    ds = datasets.mnist(normalize=False)
    np.testing.assert_allclose(ds.images[:, 0], images / 255.0, rtol=1e-6)
    assert requests[0] == "/missing/train-images-idx3-ubyte.gz"
    assert "/ok/train-images-idx3-ubyte.gz" in requests


def test_download_only_fetches_missing_files(server, monkeypatch):
    base, files, requests = server
    publish(files, "/m/", monkeypatch)
    monkeypatch.setenv("PYLENET_MIRRORS", f"{base}/m/")
    cache_dir().mkdir(parents=True)
    (cache_dir() / "train-images-idx3-ubyte.gz").write_bytes(
        files["/m/train-images-idx3-ubyte.gz"])
    assert len(datasets.mnist()) == 8
    assert requests == ["/m/train-labels-idx1-ubyte.gz"]


def test_no_reachable_mirror(monkeypatch):
    # The isolation fixture points PYLENET_MIRRORS at a closed port.
    with pytest.raises(DatasetError) as info:
        datasets.mnist(train=False)
    msg = str(info.value)
    for part in ["MNIST (test split) not found", "Looked in", str(cache_dir()),
                 "Download failed", "127.0.0.1", "Put t10k-images-idx3-ubyte.gz",
                 "$PYLENET_DATA"]:
        assert part in msg, msg
    assert not cache_dir().exists() or list(cache_dir().iterdir()) == []


def test_download_false_does_not_touch_network(server, monkeypatch):
    base, files, requests = server
    publish(files, "/m/", monkeypatch)
    monkeypatch.setenv("PYLENET_MIRRORS", f"{base}/m/")
    with pytest.raises(DatasetError, match="download=False"):
        datasets.mnist(download=False)
    assert requests == []


# ---------------------------------------------------------------------------
# Real data
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mnist_train():
    if REAL is None:
        pytest.skip("real MNIST data not available")
    return datasets.mnist(REAL, train=True, download=False)


@needs_real
def test_real_mnist_train(mnist_train):
    ds = mnist_train
    assert isinstance(ds, pylenet.datasets.Dataset)
    assert ds.name == "mnist-train" and ds.classes == [str(d) for d in range(10)]
    assert ds.images.shape == (60000, 1, 28, 28) and ds.images.dtype == np.float32
    assert ds.labels.shape == (60000,) and ds.labels.dtype == np.int64
    assert ds.labels.min() == 0 and ds.labels.max() == 9
    counts = np.bincount(ds.labels, minlength=10)
    assert counts.sum() == 60000 and counts.min() > 5000 and counts.max() < 7000
    assert abs(float(ds.images.mean(dtype=np.float64))) < 0.01
    assert abs(float(ds.images.std(dtype=np.float64)) - 1.0) < 0.01


@needs_real
def test_real_mnist_test_split():
    ds = datasets.mnist(REAL, train=False, download=False)
    assert ds.name == "mnist-test"
    assert ds.images.shape == (10000, 1, 28, 28) and ds.labels.shape == (10000,)
    counts = np.bincount(ds.labels, minlength=10)
    assert counts.sum() == 10000 and counts.min() > 800 and counts.max() < 1200
    raw = datasets.mnist(REAL, train=False, normalize=False, download=False)
    assert raw.images.min() == 0.0 and raw.images.max() == 1.0
    np.testing.assert_allclose(ds.images * 0.3081 + 0.1307, raw.images, atol=1e-5)


@needs_real
def test_real_read_idx_matches_official_uncompressed_md5():
    arr = read_idx(REAL / "mnist" / "train-images-idx3-ubyte.gz")
    header = bytes([0, 0, 8, 3]) + struct.pack(">3I", *arr.shape)
    md5 = hashlib.md5(header + arr.tobytes()).hexdigest()
    assert md5 == "6bbc9ace898e44ae57da46a324031adb"


@needs_real
def test_real_data_via_env_and_direct_folder(monkeypatch):
    monkeypatch.setenv("PYLENET_DATA", str(REAL))
    assert len(datasets.mnist(train=False, download=False)) == 10000
    assert len(datasets.mnist(REAL / "mnist", train=False, download=False)) == 10000


@needs_real
def test_real_both_spellings(tmp_path, mnist_train):
    # Dot spelling for the test split, mixed spellings for the train split.
    src = REAL / "mnist"
    (tmp_path / "t10k-images.idx3-ubyte.gz").symlink_to(src / "t10k-images-idx3-ubyte.gz")
    (tmp_path / "t10k-labels.idx1-ubyte.gz").symlink_to(src / "t10k-labels-idx1-ubyte.gz")
    (tmp_path / "train-images.idx3-ubyte.gz").symlink_to(src / "train-images-idx3-ubyte.gz")
    (tmp_path / "train-labels-idx1-ubyte.gz").symlink_to(src / "train-labels-idx1-ubyte.gz")
    ref = datasets.mnist(REAL, train=False, download=False)
    dot = datasets.mnist(tmp_path, train=False, download=False)
    np.testing.assert_array_equal(dot.images, ref.images)
    np.testing.assert_array_equal(dot.labels, ref.labels)
    mixed = datasets.mnist(tmp_path, train=True, download=False)
    np.testing.assert_array_equal(mixed.labels, mnist_train.labels)
    np.testing.assert_array_equal(mixed.images[::997], mnist_train.images[::997])


@needs_real
def test_real_raw_files(tmp_path):
    src = REAL / "mnist"
    for name, out in [("t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte"),
                      ("t10k-labels-idx1-ubyte.gz", "t10k-labels.idx1-ubyte")]:
        (tmp_path / out).write_bytes(gzip.decompress((src / name).read_bytes()))
    ref = datasets.mnist(REAL, train=False, download=False)
    raw = datasets.mnist(tmp_path, train=False, download=False)
    np.testing.assert_array_equal(raw.images, ref.images)
    np.testing.assert_array_equal(raw.labels, ref.labels)


@needs_fashion
def test_real_fashion_mnist():
    train = datasets.fashion_mnist(REAL, train=True, download=False)
    test = datasets.fashion_mnist(REAL, train=False, download=False)
    assert train.name == "fashion-mnist-train" and test.name == "fashion-mnist-test"
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.classes == datasets.FASHION_MNIST_CLASSES and len(train.classes) == 10
    assert train.classes[0] == "T-shirt/top" and train.classes[9] == "Ankle boot"
    # Fashion-MNIST is exactly balanced.
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert abs(float(train.images.mean(dtype=np.float64))) < 0.01
    assert abs(float(train.images.std(dtype=np.float64)) - 1.0) < 0.01


@needs_fashion
def test_shared_files_match_md5_table():
    # The shared copies must be accepted by the md5 table used for downloads.
    for name in ("mnist", "fashion-mnist"):
        for fname, md5s in datasets.MD5[name].items():
            digest = hashlib.md5((REAL / name / fname).read_bytes()).hexdigest()
            assert digest in md5s, (name, fname)
