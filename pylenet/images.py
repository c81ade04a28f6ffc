"""Reading user images for predict: PNG (stdlib zlib only, no PIL) and .npy.

Any size and colour type becomes a 28x28 (or the model's H x W) grey image in [0, 1], white
digit on black like MNIST: a picture with a light background is inverted.
"""
import struct
import zlib

import numpy as np

__all__ = ["read_png", "load_image"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}  # allowed by the PNG spec


def read_png(path):
    """Decodes a non-interlaced PNG into a float array (H, W, channels) in [0, 1]."""
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(_PNG_SIGNATURE):
        raise ValueError(f"{path}: not a PNG file")
    pos, idat, header, palette = 8, [], None, None
    while pos + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if len(chunk) != length:
            raise ValueError(f"{path}: truncated PNG chunk {ctype!r}")
        pos += 12 + length
        if ctype == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif ctype == b"PLTE":
            palette = np.frombuffer(chunk, np.uint8).reshape(-1, 3)
        elif ctype == b"IDAT":
            idat.append(chunk)
        elif ctype == b"IEND":
            break
    if header is None or not idat:
        raise ValueError(f"{path}: PNG without image data")
    width, height, depth, colour, _, _, interlace = header
    if colour not in _CHANNELS or depth not in _DEPTHS[colour] or interlace:
        raise ValueError(f"{path}: unsupported PNG (colour type {colour}, bit depth {depth}, interlace {interlace})")
    if width * height > 50_000_000:
        raise ValueError(f"{path}: image of {width}x{height} pixels is too large")
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as e:
        raise ValueError(f"{path}: corrupt PNG data ({e})") from None
    spp = _CHANNELS[colour]
    bits_pp = spp * depth
    stride = (width * bits_pp + 7) // 8
    bpp = max(1, bits_pp // 8)
    if len(raw) < height * (stride + 1):
        raise ValueError(f"{path}: truncated PNG data")
    rows = np.zeros((height, stride), np.uint8)
    prev = np.zeros(stride, np.int32)
    for y in range(height):  # undo the per-row filters (PNG spec, section 9)
        ftype = raw[y * (stride + 1)]
        line = np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1).astype(np.int32)
        if ftype == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif ftype == 2:
            line = (line + prev) & 0xFF
        elif ftype == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif ftype == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = prev[i], prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        elif ftype != 0:
            raise ValueError(f"{path}: bad PNG filter type {ftype}")
        rows[y] = line
        prev = line
    if depth == 16:
        px = rows.view(">u2").astype(np.float64).reshape(height, width, spp) / 65535.0
    elif depth == 8:
        px = rows.astype(np.float64).reshape(height, width, spp) / 255.0
    else:
        bits = np.unpackbits(rows, axis=1).reshape(height, -1)[:, :width * depth]
        vals = bits.reshape(height, width, depth) @ (1 << np.arange(depth - 1, -1, -1))
        px = (vals.astype(np.float64) / ((1 << depth) - 1))[..., None]
        if colour == 3:
            px = vals[..., None]
    if colour == 3:  # palette indices
        if palette is None:
            raise ValueError(f"{path}: palette PNG without a palette")
        idx = px.astype(np.int64)[..., 0] if depth < 8 else (px[..., 0] * 255).round().astype(np.int64)
        px = palette[np.clip(idx, 0, len(palette) - 1)].astype(np.float64) / 255.0
    return px


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


def load_image(path, size=(28, 28)):
    """A grey (H, W) float32 image in [0, 1], white on black, from a PNG or .npy file."""
    path = str(path)
    if path.lower().endswith(".npy"):
        arr = np.load(path, allow_pickle=False).astype(np.float64)
        arr = np.squeeze(arr)
        if arr.ndim == 3 and arr.shape[-1] in (1, 2, 3, 4):
            arr = _to_grey(arr / (255.0 if arr.max() > 1.0 else 1.0))
        elif arr.ndim != 2:
            raise ValueError(f"{path}: expected a 2-D image array, got shape {arr.shape}")
        elif arr.max() > 1.0:
            arr = arr / 255.0
    else:
        arr = _to_grey(read_png(path))
    if not np.isfinite(arr).all():
        raise ValueError(f"{path}: image contains NaN or inf")
    if arr.shape != tuple(size):
        arr = _resize(arr, *size)
    if arr.mean() > 0.5:  # dark digit on a light background: MNIST is the other way round
        arr = 1.0 - arr
    return np.clip(arr, 0.0, 1.0).astype(np.float32)
