"""Reading user images for predict: PNG (stdlib zlib, the row filters undone natively; no PIL)
and .npy.

Any size and colour type becomes a 28x28 (or the model's H x W) grey image in [0, 1], white
digit on black like MNIST: a picture with a light background is inverted.
"""
import struct
import zlib

import numpy as np

__all__ = ["read_png", "load_image", "load_images"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}  # allowed by the PNG spec


_MAX_PIXELS = 25_000_000  # a 5000x5000 photo; decoding it takes up to 400 MB as float32


def _chunks(data, path):
    """(type, payload) of each chunk, CRC-checked, up to IEND."""
    pos = 8
    while True:
        if pos + 12 > len(data):
            raise ValueError(f"{path}: truncated PNG (no IEND chunk)")
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        if length > 2**31 - 1 or pos + 12 + length > len(data):
            raise ValueError(f"{path}: truncated PNG chunk {ctype!r}")
        payload = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        if zlib.crc32(ctype + payload) != crc:
            raise ValueError(f"{path}: corrupt PNG (CRC mismatch in chunk {ctype!r})")
        pos += 12 + length
        yield ctype, payload
        if ctype == b"IEND":
            return


def read_png(path):
    """Decodes a non-interlaced PNG into a float32 array (H, W, channels) in [0, 1].

    Everything the header declares is checked before it sizes anything, and the image data
    is inflated only up to the size the header allows (a small file cannot expand to
    gigabytes). Every malformed file raises ValueError naming the problem."""
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(_PNG_SIGNATURE):
        raise ValueError(f"{path}: not a PNG file")
    header, palette, idat = None, None, []
    for ctype, chunk in _chunks(data, path):
        if header is None and ctype != b"IHDR":
            raise ValueError(f"{path}: PNG does not start with an IHDR chunk")
        if ctype == b"IHDR":
            if header is not None or len(chunk) != 13:
                raise ValueError(f"{path}: bad PNG header (IHDR of {len(chunk)} bytes, expected 13)")
            header = struct.unpack(">IIBBBBB", chunk)
        elif ctype == b"PLTE":
            if not chunk or len(chunk) % 3 or len(chunk) > 768:
                raise ValueError(f"{path}: bad PNG palette of {len(chunk)} bytes (1 to 256 RGB entries expected)")
            palette = np.frombuffer(chunk, np.uint8).reshape(-1, 3)
        elif ctype == b"IDAT":
            idat.append(chunk)
    if not idat:
        raise ValueError(f"{path}: PNG without image data")
    width, height, depth, colour, compression, filtering, interlace = header
    if not (1 <= width <= 2**31 - 1 and 1 <= height <= 2**31 - 1):
        raise ValueError(f"{path}: PNG of {width}x{height} pixels (both sides must be at least 1)")
    if colour not in _CHANNELS or depth not in _DEPTHS[colour] or compression or filtering or interlace:
        raise ValueError(f"{path}: unsupported PNG (colour type {colour}, bit depth {depth}, interlace {interlace})")
    if width * height > _MAX_PIXELS:
        raise ValueError(f"{path}: image of {width}x{height} pixels is too large (at most {_MAX_PIXELS:,} pixels; "
                         "resize it first)")
    if colour == 3 and palette is None:
        raise ValueError(f"{path}: palette PNG without a palette")
    spp = _CHANNELS[colour]
    bits_pp = spp * depth
    stride = (width * bits_pp + 7) // 8
    bpp = max(1, bits_pp // 8)
    expected = height * (stride + 1)
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(b"".join(idat), expected)
        extra = inflater.decompress(inflater.unconsumed_tail, 1) if inflater.unconsumed_tail else b""
    except zlib.error as e:
        raise ValueError(f"{path}: corrupt PNG data ({e})") from None
    if len(raw) < expected:
        raise ValueError(f"{path}: truncated PNG data ({len(raw):,} of {expected:,} bytes)")
    if extra:
        raise ValueError(f"{path}: PNG holds more image data than its {width}x{height} header allows")
    from . import _C
    try:
        rows = _C.png_unfilter(raw, height, stride, bpp)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    if depth == 16:
        return (rows.view(">u2").astype(np.float32) / 65535.0).reshape(height, width, spp)
    if depth == 8:
        vals = rows.reshape(height, width, spp)
    else:
        bits = np.unpackbits(rows, axis=1)[:, :width * depth].reshape(height, width, depth)
        vals = (bits @ (1 << np.arange(depth - 1, -1, -1)).astype(np.uint8))[..., None]
    if colour == 3:  # palette indices
        idx = vals[..., 0]
        if idx.max() >= len(palette):
            raise ValueError(f"{path}: PNG pixel uses palette entry {int(idx.max())} of {len(palette)}")
        return palette[idx].astype(np.float32) / 255.0
    return vals.astype(np.float32) / np.float32((1 << depth) - 1)


def _to_grey(px):
    if px.ndim == 2:
        return px
    c = px.shape[2]
    if c in (2, 4):  # composite over white, then drop alpha
        alpha = px[..., -1:]
        px = px[..., :-1] * alpha + (1 - alpha)
        c -= 1
    return px[..., 0] if c == 1 else px[..., :3] @ np.array([0.299, 0.587, 0.114])


def _resize(img, h, w):
    """Area-average resize (box filter) to h x w."""
    H, W = img.shape
    ys = np.linspace(0, H, h + 1)
    xs = np.linspace(0, W, w + 1)
    out = np.empty((h, w))
    for i in range(h):
        y0, y1 = int(ys[i]), max(int(np.ceil(ys[i + 1])), int(ys[i]) + 1)
        for j in range(w):
            x0, x1 = int(xs[j]), max(int(np.ceil(xs[j + 1])), int(xs[j]) + 1)
            out[i, j] = img[y0:y1, x0:x1].mean()
    return out


def _read_npy(path):
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{path}: not a readable .npy image ({e})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf" or arr.size == 0:
        raise ValueError(f"{path}: expected an image array of real numbers, got dtype {arr.dtype}, "
                         f"shape {arr.shape}")
    return arr.astype(np.float64)


_NPY_SHAPES = ("(H, W), (H, W, C), (1, H, W) for one image; (N, H, W), (N, C, H, W), (N, H, W, C) for N images; "
               "C = 1, 3 or 4")


def _npy_images(arr, path):
    """The grey (H, W) images in [0, 1] an .npy array holds, by its shape (see _NPY_SHAPES)."""
    shape = arr.shape
    scale = 255.0 if arr.max() > 1.0 else 1.0  # one rule for the whole array: uint8-like or [0, 1]
    arr = arr / scale
    if arr.ndim == 2:
        return [arr]
    if arr.ndim == 3 and shape[-1] in (1, 2, 3, 4):  # one (H, W, C) picture
        return [_to_grey(arr)]
    if arr.ndim == 3:
        return list(arr)
    if arr.ndim == 4 and shape[1] in (1, 3, 4):  # (N, C, H, W), as the model takes them
        return [_to_grey(np.moveaxis(a, 0, -1)) for a in arr]
    if arr.ndim == 4 and shape[-1] in (1, 3, 4):
        return [_to_grey(a) for a in arr]
    raise ValueError(f"{path}: an .npy of shape {shape} is not an image or a batch of images; expected "
                     + _NPY_SHAPES)


def _prepare(arr, name, size):
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: image contains NaN or inf")
    if arr.shape != tuple(size):
        arr = _resize(arr, *size)
    if arr.mean() > 0.5:  # dark digit on a light background: MNIST is the other way round
        arr = 1.0 - arr
    return np.clip(arr, 0.0, 1.0).astype(np.float32)


def load_images(path, size=(28, 28)):
    """[(name, image)] of a file: one image for a PNG or a single-image .npy (named `path`), N
    for an .npy batch (named `path[i]`); each a grey (H, W) float32 image in [0, 1], white on black."""
    path = str(path)
    if path.lower().endswith(".npy"):
        imgs = _npy_images(_read_npy(path), path)
    else:
        imgs = [_to_grey(read_png(path))]
    if len(imgs) == 1:
        return [(path, _prepare(imgs[0], path, size))]
    return [(f"{path}[{i}]", _prepare(a, f"{path}[{i}]", size)) for i, a in enumerate(imgs)]


def load_image(path, size=(28, 28)):
    """A grey (H, W) float32 image in [0, 1], white on black, from a PNG or a one-image .npy file."""
    imgs = load_images(path, size)
    if len(imgs) != 1:
        raise ValueError(f"{path}: holds {len(imgs)} images; load_images reads a batch")
    return imgs[0][1]
