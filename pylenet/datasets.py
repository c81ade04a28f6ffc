"""MNIST and Fashion-MNIST loading for pylenet.

This module depends only on the standard library and NumPy, and imports no
other pylenet module, so it works before the native extension is built.

Files are looked up in this order (the first folder holding both files of the
requested split wins):

1. the ``root`` argument: the folder holding the files directly, or a folder
   holding ``<name>/`` with them (``<name>`` is ``mnist`` or ``fashion-mnist``);
2. ``$PYLENET_DATA/<name>``;
3. the cache folder ``$XDG_CACHE_HOME/pylenet/<name>`` (default
   ``~/.cache/pylenet/<name>``);
4. a download into that cache folder from the mirrors in :data:`MIRRORS`
   (or ``$PYLENET_MIRRORS``, comma-separated base URLs), md5-verified.

Both file spellings in circulation (``train-images-idx3-ubyte`` and
``train-images.idx3-ubyte``) are accepted, gzipped or not.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import operator
import os
import struct
import sys
import urllib.error
import urllib.request
import zlib
from http.client import HTTPException
from pathlib import Path

import numpy as np

from . import atomic

__all__ = [
    "DatasetError",
    "Dataset",
    "read_idx",
    "mnist",
    "fashion_mnist",
    "load",
    "MIRRORS",
    "MD5",
    "MNIST_CLASSES",
    "FASHION_MNIST_CLASSES",
]


class DatasetError(ValueError):
    """A data file is missing, malformed, or inconsistent."""


# ---------------------------------------------------------------------------
# IDX reader
# ---------------------------------------------------------------------------

# Refuse anything larger: the real files are < 50 MB, so a bigger declared
# size means a corrupt or hostile header, and we must not try to allocate it.
MAX_IDX_BYTES = 2 << 30  # 2 GiB

# Decompress in bounded pieces so a gzip bomb can never make us hold more than
# the header declares (which is itself capped by MAX_IDX_BYTES).
_CHUNK = 1 << 20
# And the header may not declare more than this many times the compressed file:
# real image sets deflate 2-5x (MNIST's train images 9.9 MB -> 47 MB), while a
# bomb of zeros reaches 1000x, so a 382 KB file once allocated 2 GB.
MAX_GZIP_RATIO = 100

_IDX_TYPES = {
    0x08: "unsigned byte",
    0x09: "signed byte",
    0x0B: "int16",
    0x0C: "int32",
    0x0D: "float32",
    0x0E: "float64",
}


def _read_upto(stream, n: int) -> bytes:
    """Read up to n bytes, looping because file-like reads may return short."""
    parts = []
    while n > 0:
        part = stream.read(n)
        if not part:
            break
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


def read_idx(path) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) into a uint8 array.

    Compression is detected from the content (gzip magic ``1f 8b``), not the
    file name.  Only the unsigned-byte type (0x08) is supported, which is what
    MNIST-style data sets use.  Any malformation raises :class:`DatasetError`
    naming the file.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        is_gzip = f.read(2) == b"\x1f\x8b"
        f.seek(0)
        if not is_gzip:
            return _read_idx_stream(f, path, raw_size=file_size)
        try:
            with gzip.GzipFile(fileobj=f, mode="rb") as gz:
                return _read_idx_stream(gz, path, raw_size=None, gzip_size=file_size)
        except (gzip.BadGzipFile, zlib.error, EOFError) as e:
            # EOFError is what gzip raises for a stream cut off mid-way.
            raise DatasetError(
                f"{path}: corrupt or truncated gzip data ({type(e).__name__}: {e})"
            ) from None


def _read_idx_stream(stream, path: str, raw_size: int | None, gzip_size: int | None = None) -> np.ndarray:
    """Parse and validate an IDX stream.

    ``raw_size`` is the on-disk size for an uncompressed file (so the payload
    size can be checked before anything is read), or None for a decompressing
    stream whose length is unknown up front; then ``gzip_size`` is the size of
    the compressed file, which bounds what the header may declare.
    """
    header = _read_upto(stream, 4)
    if len(header) < 4:
        raise DatasetError(
            f"{path}: too short to be an IDX file ({len(header)} bytes, "
            "need at least a 4-byte magic)"
        )
    zero0, zero1, type_code, ndim = header
    if zero0 != 0 or zero1 != 0:
        raise DatasetError(
            f"{path}: not an IDX file (magic bytes {header.hex(' ')}; "
            "expected 00 00 <type> <ndim>)"
        )
    if type_code != 0x08:
        if type_code in _IDX_TYPES:
            raise DatasetError(
                f"{path}: unsupported IDX element type 0x{type_code:02x} "
                f"({_IDX_TYPES[type_code]}); only 0x08 (unsigned byte) is supported"
            )
        raise DatasetError(f"{path}: invalid IDX element type code 0x{type_code:02x}")
    if not 1 <= ndim <= 4:
        raise DatasetError(
            f"{path}: IDX header declares {ndim} dimensions; expected 1 to 4"
        )

    raw_dims = _read_upto(stream, 4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise DatasetError(
            f"{path}: truncated IDX header (expected {4 * ndim} bytes of "
            f"dimension sizes, got {len(raw_dims)})"
        )
    dims = struct.unpack(f">{ndim}I", raw_dims)
    if any(d == 0 for d in dims):
        raise DatasetError(f"{path}: IDX header declares a zero-sized dimension {dims}")
    size = math.prod(dims)  # Python int: cannot overflow
    if size > MAX_IDX_BYTES:
        raise DatasetError(
            f"{path}: IDX header declares shape {dims} = {size} bytes, over the "
            f"{MAX_IDX_BYTES}-byte limit (corrupt header?)"
        )
    if gzip_size is not None and size > MAX_GZIP_RATIO * gzip_size + _CHUNK:
        raise DatasetError(
            f"{path}: IDX header declares shape {dims} = {size} bytes from a "
            f"{gzip_size}-byte gzip file, a ratio above {MAX_GZIP_RATIO}:1 that no "
            "real image set reaches (corrupt header or a gzip bomb)"
        )

    if raw_size is not None:
        # Raw file: the file size tells us up front whether the payload is
        # right, so check it before allocating anything.
        payload = raw_size - (4 + 4 * ndim)
        if payload < size:
            raise DatasetError(
                f"{path}: truncated IDX file: header declares shape {dims} "
                f"({size} bytes) but only {payload} bytes of data follow"
            )
        if payload > size:
            raise DatasetError(
                f"{path}: {payload - size} bytes of trailing garbage after the "
                f"IDX data (shape {dims})"
            )
        out = np.empty(size, dtype=np.uint8)
        view = memoryview(out)
        got = 0
        while got < size:
            n = stream.readinto(view[got:])
            if not n:  # the file shrank after we looked at its size
                raise DatasetError(
                    f"{path}: truncated IDX file: expected {size} bytes of data, "
                    f"read {got}"
                )
            got += n
        return out.reshape(dims)

    # Decompressing stream: the real length is only known by reading it, so
    # grow the buffer chunk by chunk and never past the declared size.
    buf = bytearray()
    while len(buf) < size:
        chunk = stream.read(min(_CHUNK, size - len(buf)))
        if not chunk:
            raise DatasetError(
                f"{path}: truncated IDX file: header declares shape {dims} "
                f"({size} bytes) but the decompressed data holds only {len(buf)}"
            )
        buf += chunk
    # One more byte tells us whether there is data past the declared payload
    # (and makes gzip verify its CRC/length trailer).
    if stream.read(1):
        raise DatasetError(
            f"{path}: trailing garbage after the IDX data (shape {dims}): "
            "the decompressed stream is longer than the header declares"
        )
    return np.frombuffer(buf, dtype=np.uint8).reshape(dims)


# ---------------------------------------------------------------------------
# Dataset container
# ---------------------------------------------------------------------------

MNIST_CLASSES = [str(d) for d in range(10)]
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


def _pixel_table(mean, std):
    """The float32 value of each uint8 pixel once normalised: a 256-entry lookup table maps
    images in one pass, with the same value for the same pixel everywhere."""
    return ((np.arange(256, dtype=np.float64) / 255.0 - mean) / std).astype(np.float32)


class Dataset:
    """Images and labels of one split, in memory.

    ``images`` is float32 (N, C, H, W), C-contiguous (what the kernels want);
    ``labels`` is int64 (N,).  ``mean``/``std`` record the normalisation that
    was applied: ``pixel / 255 == images * std + mean``. Images given as uint8
    are pixels, normalised here with that mean and std (the same lookup table
    the IDX loader uses); float images are taken as already normalised.
    """

    def __init__(self, images, labels, *, name: str = "dataset", classes=None,
                 mean: float = 0.0, std: float = 1.0):
        images = np.asarray(images)
        if images.dtype == np.uint8:
            if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
                raise DatasetError(f"{name}: need a finite mean and a positive std, got {mean}, {std}")
            images = _pixel_table(mean, std)[images]
        images = np.ascontiguousarray(images, dtype=np.float32)
        if images.ndim == 3:  # (N, H, W): single-channel images
            images = images[:, None, :, :]
        if images.ndim != 4:
            raise DatasetError(
                f"{name}: images must have shape (N, C, H, W) or (N, H, W), "
                f"got {images.shape}"
            )
        labels = np.asarray(labels)
        if labels.ndim != 1:
            raise DatasetError(f"{name}: labels must be 1-D, got shape {labels.shape}")
        if labels.size and labels.dtype.kind not in "iu":
            raise DatasetError(f"{name}: labels must be integers, got {labels.dtype}")
        labels = labels.astype(np.int64, copy=False)
        if len(images) != len(labels):
            raise DatasetError(
                f"{name}: {len(images)} images but {len(labels)} labels"
            )
        if classes is None:
            classes = [str(i) for i in range(int(labels.max()) + 1 if labels.size else 0)]
        classes = [str(c) for c in classes]
        if labels.size:
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi >= len(classes):
                bad = lo if lo < 0 else hi
                raise DatasetError(
                    f"{name}: label {bad} out of range for {len(classes)} classes "
                    f"(valid: 0..{len(classes) - 1})"
                )
        if not (math.isfinite(std) and std > 0):
            raise DatasetError(f"{name}: std must be a positive number, got {std}")

        self.images = images
        self.labels = labels
        self.name = name
        self.classes = classes
        self.mean = float(mean)
        self.std = float(std)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        """``ds[i]`` -> (image, label); ``ds[slice]`` or ``ds[indices]`` -> Dataset."""
        if isinstance(index, (int, np.integer)) and not isinstance(index, (bool, np.bool_)):
            i = operator.index(index)
            n = len(self)
            if not -n <= i < n:
                raise IndexError(f"index {i} out of range for {self.name} of length {n}")
            return self.images[i], int(self.labels[i])
        if isinstance(index, slice):
            return self._derive(self.images[index], self.labels[index])
        idx = np.asarray(index)
        if idx.size == 0:
            idx = idx.astype(np.intp)  # [] comes out as float64
        if idx.ndim != 1 or idx.dtype.kind not in "iub":
            raise TypeError(
                f"{self.name}: index must be an int, a slice, or a 1-D array of "
                f"ints or bools, got {type(index).__name__}"
            )
        if idx.dtype.kind == "b" and len(idx) != len(self):
            raise IndexError(
                f"boolean mask of length {len(idx)} for {self.name} of length {len(self)}"
            )
        return self._derive(self.images[idx], self.labels[idx])

    def __iter__(self):
        for i in range(len(self)):
            yield self.images[i], int(self.labels[i])

    def subset(self, n_or_indices) -> "Dataset":
        """The first ``n`` samples (an int), or the samples at the given indices."""
        if isinstance(n_or_indices, (int, np.integer)) and not isinstance(n_or_indices, bool):
            n = operator.index(n_or_indices)
            if not 0 <= n <= len(self):
                raise ValueError(
                    f"subset({n}): {self.name} has {len(self)} samples"
                )
            return self[:n]
        return self[n_or_indices]

    def _derive(self, images, labels) -> "Dataset":
        return Dataset(images, labels, name=self.name, classes=self.classes,
                       mean=self.mean, std=self.std)

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, n={len(self)}, "
            f"image_shape={tuple(self.images.shape[1:])}, "
            f"classes={len(self.classes)}, mean={self.mean:g}, std={self.std:g})"
        )


# ---------------------------------------------------------------------------
# Locating, downloading, loading
# ---------------------------------------------------------------------------

# Base URLs tried in order.  Overridable: edit this dict, or set
# $PYLENET_MIRRORS to comma-separated base URLs (used for every data set).
MIRRORS = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ],
    "fashion-mnist": [
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ],
}

# Accepted md5s of the .gz files.  Fashion-MNIST also circulates as a Debian
# re-compression (identical content, different gzip header), so accept both.
MD5 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": ("f68b3c2dcbeaaa9fbdd348bbdeb94873",),
        "train-labels-idx1-ubyte.gz": ("d53e105ee54ea40749a09fcbcd1e9432",),
        "t10k-images-idx3-ubyte.gz": ("9fb629c4189551a2d022fa330f9573f3",),
        "t10k-labels-idx1-ubyte.gz": ("ec29112dd5afa0611ce80d1b7f02629c",),
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                                       "cf8536b0aa1a6ac5fa3f23001093305c"),
        "train-labels-idx1-ubyte.gz": ("25c81989df183df01b3e8a0aad5dffbe",
                                       "10bea18fdb374794d4bb42e356e600c9"),
        "t10k-images-idx3-ubyte.gz": ("bef4ecab320f06d8554ea6380940ec79",
                                      "f78720b4224f21cce2f2ccf2d7a94c9a"),
        "t10k-labels-idx1-ubyte.gz": ("bb300cfdad3c16e7a12a480ee83cd310",
                                      "0d30e22e447f3c33dab9ed536400ac01"),
    },
}

DOWNLOAD_TIMEOUT = 30.0  # seconds per connect/read, not for the whole file
MAX_DOWNLOAD_BYTES = 128 << 20  # the largest real file is ~26 MB

_TITLES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}


def _candidates(split: str, kind: str) -> list[str]:
    """File names accepted for e.g. ('train', 'images'), canonical first."""
    idx = "idx3" if kind == "images" else "idx1"
    names = []
    for base in (f"{split}-{kind}-{idx}-ubyte", f"{split}-{kind}.{idx}-ubyte"):
        names += [base + ".gz", base]
    return names


def _find(folder: Path, split: str):
    """({'images': path, 'labels': path} or None, list of missing kinds)."""
    found, missing = {}, []
    for kind in ("images", "labels"):
        for fname in _candidates(split, kind):
            p = folder / fname
            if p.is_file():
                found[kind] = p
                break
        else:
            missing.append(kind)
    return (found if not missing else None), missing


def _cache_dir(name: str) -> Path:
    # The XDG spec says relative values must be ignored.
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "pylenet" / name


def _mirrors(name: str) -> list[str]:
    env = os.environ.get("PYLENET_MIRRORS", "")
    urls = [u.strip() for u in env.split(",") if u.strip()]
    return urls or list(MIRRORS.get(name, ()))


class _BadDownload(Exception):
    pass


def _download_one(url: str, dest: Path, md5s) -> None:
    """Fetch url into dest atomically: temp file in the same folder, md5 check,
    then os.replace.  On any failure the temp file is removed and dest is
    untouched."""
    atomic.sweep_stale(dest)
    fd, tmp = atomic.open_temp(dest)
    try:
        # A fresh opener per call so proxy settings are read from the current
        # environment (urlopen caches its opener on first use).
        opener = urllib.request.build_opener()
        req = urllib.request.Request(url, headers={"User-Agent": "pylenet"})
        digest = hashlib.md5(usedforsecurity=False)
        total = 0
        with os.fdopen(fd, "wb") as out, opener.open(req, timeout=DOWNLOAD_TIMEOUT) as resp:
            while True:
                chunk = resp.read(1 << 16)
                if not chunk:
                    break
                total += len(chunk)
                if total > MAX_DOWNLOAD_BYTES:
                    raise _BadDownload(f"larger than {MAX_DOWNLOAD_BYTES} bytes")
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        got = digest.hexdigest()
        if got not in md5s:
            raise _BadDownload(f"md5 mismatch: got {got}, expected {' or '.join(md5s)}")
        atomic.commit([(tmp, dest)])
    except BaseException:
        atomic.discard([tmp])
        raise


def _download(name: str, split: str, kinds, cache: Path, errors: list[str]) -> bool:
    """Download the missing files of a split into cache; True on success.
    Failure reasons are appended to ``errors``."""
    mirrors = _mirrors(name)
    if not mirrors:
        errors.append("no download mirrors configured")
        return False
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        errors.append(f"cannot create cache folder {cache}: {e}")
        return False
    for kind in kinds:
        fname = _candidates(split, kind)[0]
        md5s = MD5.get(name, {}).get(fname)
        if not md5s:
            errors.append(f"no known md5 for {name}/{fname}; refusing to download it")
            return False
        for base in mirrors:
            url = base.rstrip("/") + "/" + fname
            print(f"pylenet: downloading {url}", file=sys.stderr)
            try:
                _download_one(url, cache / fname, md5s)
                break
            except (OSError, HTTPException, ValueError, _BadDownload) as e:
                # OSError covers URLError/HTTPError, timeouts, refused connections.
                errors.append(f"{url}: {e}")
        else:
            return False
    return True


def _not_found(name: str, split: str, looked: list[str], cache: Path,
               download: bool, errors: list[str]) -> DatasetError:
    title = _TITLES.get(name, name)
    which = "train" if split == "train" else "test"
    img, lbl = _candidates(split, "images")[0], _candidates(split, "labels")[0]
    lines = [f"{title} ({which} split) not found. Looked in:"]
    lines += [f"  {entry}" for entry in looked]
    if not download:
        lines.append("Download disabled (download=False).")
    else:
        lines.append("Download failed:")
        lines += [f"  {e}" for e in errors] or ["  (no mirror tried)"]
    lines.append(
        f"Put {img} and {lbl} (gzipped or not; the '.idx3-ubyte'/'.idx1-ubyte' "
        f"spelling works too) into {cache}, or pass root=<folder holding them>, "
        f"or set $PYLENET_DATA to a folder that holds a '{name}/' folder with them."
    )
    return DatasetError("\n".join(lines))


def _load(name: str, classes, root, train: bool, normalize: bool,
          mean: float, std: float, download: bool) -> Dataset:
    split = "train" if train else "t10k"

    # Candidate folders in priority order, each with where it came from.
    folders = []
    if root is not None:
        r = Path(os.fspath(root)).expanduser()
        folders += [(r, "root argument"), (r / name, "root argument")]
    env = os.environ.get("PYLENET_DATA", "")
    if env:
        folders.append((Path(env).expanduser() / name, "$PYLENET_DATA"))
    cache = _cache_dir(name)
    folders.append((cache, "cache"))

    looked, seen = [], set()
    files = None
    for folder, origin in folders:
        if folder in seen:
            continue
        seen.add(folder)
        files, missing = _find(folder, split)
        if files:
            break
        status = ("does not exist" if not folder.is_dir()
                  else "missing " + " and ".join(missing))
        looked.append(f"{folder} ({origin}: {status})")

    if files is None:
        errors: list[str] = []
        _, missing = _find(cache, split)
        if download and _download(name, split, missing, cache, errors):
            files, _ = _find(cache, split)
        if files is None:
            raise _not_found(name, split, looked, cache, download, errors)

    images = read_idx(files["images"])
    labels = read_idx(files["labels"])
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DatasetError(
            f"{files['images']}: expected images of shape (N, 28, 28), got {images.shape}"
        )
    if labels.ndim != 1:
        raise DatasetError(f"{files['labels']}: expected 1-D labels, got shape {labels.shape}")
    if len(images) != len(labels):
        raise DatasetError(
            f"{files['images']} holds {len(images)} images but "
            f"{files['labels']} holds {len(labels)} labels"
        )
    if labels.size and int(labels.max()) >= len(classes):
        raise DatasetError(
            f"{files['labels']}: label {int(labels.max())} out of range for "
            f"{len(classes)} classes"
        )

    if not normalize:
        mean, std = 0.0, 1.0
    mean, std = float(mean), float(std)
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise DatasetError(f"{name}: need a finite mean and a positive std, got {mean}, {std}")
    x = _pixel_table(mean, std)[images].reshape(len(images), 1, 28, 28)
    return Dataset(x, labels, name=f"{name}-{'train' if train else 'test'}",
                   classes=classes, mean=mean, std=std)


def mnist(root=None, train: bool = True, *, normalize: bool = True,
          mean: float = 0.1307, std: float = 0.3081, download: bool = True) -> Dataset:
    """Load the MNIST train (60000) or test (10000) split.

    ``normalize=True`` gives ``(pixel/255 - mean) / std``; ``normalize=False``
    gives ``pixel/255`` in [0, 1].  See the module docstring for where files
    are looked up.
    """
    return _load("mnist", MNIST_CLASSES, root, train, normalize, mean, std, download)


def fashion_mnist(root=None, train: bool = True, *, normalize: bool = True,
                  mean: float = 0.2860, std: float = 0.3530,
                  download: bool = True) -> Dataset:
    """Load the Fashion-MNIST train (60000) or test (10000) split; as :func:`mnist`."""
    return _load("fashion-mnist", FASHION_MNIST_CLASSES, root, train, normalize,
                 mean, std, download)


def load(name: str, root=None, train: bool = True, **kwargs) -> Dataset:
    """Load a data set by name: ``'mnist'`` or ``'fashion-mnist'``."""
    loaders = {"mnist": mnist, "fashion-mnist": fashion_mnist,
               "fashion_mnist": fashion_mnist}
    try:
        loader = loaders[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown data set {name!r}; expected 'mnist' or 'fashion-mnist'"
        ) from None
    return loader(root, train, **kwargs)
