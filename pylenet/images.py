"""Reading the images users have, for predict: pictures through Pillow, arrays from .npy.

A picture (PNG of any depth, palette, alpha or interlacing; JPEG, BMP, GIF, TIFF, WebP: what
Pillow reads) becomes what MNIST's own images are, the way MNIST was made: grey, a light
digit on black (a light background is inverted, and the uneven background of a photo is
removed), the digit scaled to fit a 20x20 box (anti-aliased) and placed in the 28x28 frame so
that its centre of mass is at the centre. For a model of another input size the box scales
with it. An .npy array is taken as an image already prepared (grey, possibly a batch): it is
only scaled to [0, 1], resized when its size differs, and inverted when light.
"""
import warnings

import numpy as np

__all__ = ["read_picture", "mnist_style", "load_image", "load_images"]

_MAX_PIXELS = 25_000_000  # a 5000x5000 photo; its grey float copy takes 200 MB
_WORK_SIDE = 280          # pictures are first reduced to at most 280 px a side (10x MNIST's)
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601, as Pillow's convert("L") and MNIST's scans


def _pil():
    try:
        from PIL import Image, ImageOps
    except ImportError:  # a dependency of pylenet; only a broken environment lacks it
        raise ImportError("reading pictures needs Pillow: pip install Pillow") from None
    return Image, ImageOps


def read_picture(path):
    """A picture file as a grey (H, W) float64 array in [0, 1] (alpha composited over white,
    the camera's EXIF orientation applied). Any file Pillow cannot decode completely (not a
    picture, corrupt, truncated, too large) is a ValueError naming the file."""
    Image, ImageOps = _pil()
    path = str(path)
    try:
        with open(path, "rb") as f:  # missing files and folders: the OSError open() gives
            with warnings.catch_warnings():  # Pillow's notes on odd metadata: not the user's concern
                warnings.simplefilter("ignore")
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = Image.open(f)
                w, h = im.size
                if w * h > _MAX_PIXELS:
                    raise ValueError(f"{w}x{h} pixels, more than the {_MAX_PIXELS:,} pylenet reads")
                im.load()
                im = ImageOps.exif_transpose(im)
                return _grey(im)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as e:  # noqa: BLE001 - a decoder of untrusted files raises many kinds
        detail = str(e) if str(e) else type(e).__name__
        if type(e).__name__ == "UnidentifiedImageError":
            detail = "not a picture Pillow can read"
        raise ValueError(f"{path}: cannot read this image ({detail})") from None


def _grey(im):
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(im, np.float64) / 65535.0
    if mode == "I":  # 16-bit PNGs open as 32-bit integers holding 0..65535
        return np.clip(np.asarray(im, np.float64) / 65535.0, 0.0, 1.0)
    if mode == "F":
        a = np.asarray(im, np.float64)
        if not np.isfinite(a).all():
            raise ValueError("float image contains NaN or inf")
        return np.clip(a, 0.0, 1.0)
    if mode not in ("L", "RGB"):  # 1-bit, palette, alpha, CMYK, YCbCr, ...: through L or RGBA
        im = im.convert("L" if mode == "1" else "RGBA")
    return _to_grey(np.asarray(im, np.float64) / 255.0)  # RGBA composited over white there


def _resample(arr, h, w, box=False):
    """`arr` (float) at h x w through Pillow: area average (BOX) to reduce, Lanczos otherwise."""
    Image, _ = _pil()
    im = Image.fromarray(np.ascontiguousarray(arr, np.float32))
    return np.asarray(im.resize((w, h), Image.Resampling.BOX if box else Image.Resampling.LANCZOS), np.float64)


def _lighting(x):
    """The smooth background of a picture (a photo's uneven lighting): a quadratic surface in
    (row, column) fitted by least squares to the pixels that are not ink, found in a few
    rounds (ink, lighter than its surroundings here, is what lies well above the last fit)."""
    h, w = x.shape
    ys, xs = np.mgrid[0:h, 0:w]
    ys, xs = ys.ravel() / h - 0.5, xs.ravel() / w - 0.5
    basis = np.stack([np.ones_like(ys), ys, xs, ys * ys, ys * xs, xs * xs], axis=1)
    v = x.ravel()
    keep = np.ones(v.shape, bool)
    for _ in range(4):
        coef = np.linalg.lstsq(basis[keep], v[keep], rcond=None)[0]
        resid = v - basis @ coef
        spread = 1.4826 * np.median(np.abs(resid[keep] - np.median(resid[keep]))) + 1e-6
        keep = resid < 2.5 * spread
    return (basis @ coef).reshape(h, w)


def _remove_background(x):
    """A light digit on a background that may be uneven (a photo's lighting) and noisy -> the
    digit on 0: the background (_lighting for a picture, a flat level for a small image) is
    subtracted, the noise floor (median + 4 robust deviations of what is left, i.e. of the
    background pixels, which are most of them) cut, and the strokes stretched to 1."""
    if min(x.shape) >= 56:  # a picture, not a ready-made small image
        x = x - _lighting(x)
    med = np.median(x)
    floor = med + 4 * 1.4826 * np.median(np.abs(x - med))
    top = np.percentile(x, 99.5)
    if top - floor <= 1e-6:
        return np.zeros_like(x)
    return np.clip((x - floor) / (top - floor), 0.0, 1.0)


def _ink_span(mass, tail):
    """First and last index of `mass` (ink per row or column) once `tail` of it is left out at
    each end (0: the exact extent of the nonzero ink)."""
    nz = np.nonzero(mass > 0)[0]
    if tail == 0:
        return int(nz[0]), int(nz[-1])
    cum = np.cumsum(mass) / mass.sum()
    lo = int(np.searchsorted(cum, tail, side="right"))
    hi = int(np.searchsorted(cum, 1.0 - tail, side="left"))
    return lo, max(lo, min(hi, len(mass) - 1))


def mnist_style(grey, size=(28, 28)):
    """A grey picture (H, W) in [0, 1], either polarity -> an MNIST-like image of `size`: a
    light digit on black, fitted into a box of 20/28 of the frame, centred by mass."""
    H, W = (int(s) for s in size)
    x = np.asarray(grey, np.float64)
    if not np.isfinite(x).all():
        raise ValueError("image contains NaN or inf")
    h, w = x.shape
    if max(h, w) > _WORK_SIDE:  # a photo: reduced first (area average) so the filters stay cheap
        s = _WORK_SIDE / max(h, w)
        x = _resample(x, max(1, round(h * s)), max(1, round(w * s)), box=True)
    border = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])
    if np.median(border) > 0.5:  # dark digit on light paper: MNIST is the other way round
        x = 1.0 - x
    x = _remove_background(x)
    if not (x > 0.1).any():
        raise ValueError("no digit found: the picture is blank once its background is removed")
    # The digit's box. In a picture, specks the background removal left (paper grain, an edge)
    # must not stretch it: the box leaves out the outermost 0.3 % of the ink on each side.
    tail = 0.003 if min(x.shape) >= 56 else 0.0
    (r0, r1), (c0, c1) = (_ink_span(x.sum(axis=a), tail) for a in (1, 0))
    x = x[r0:r1 + 1, c0:c1 + 1]
    box = max(1, round(20 * min(H, W) / 28))
    s = box / max(x.shape)
    dh, dw = max(1, round(x.shape[0] * s)), max(1, round(x.shape[1] * s))
    digit = np.clip(_resample(x, dh, dw), 0.0, 1.0)
    # placed so that its centre of mass lands on the frame's centre (clipped at the edges)
    ys, xs = np.indices(digit.shape)
    mass = digit.sum()
    cy, cx = (ys * digit).sum() / mass, (xs * digit).sum() / mass
    top = int(np.clip(round(H / 2 - 0.5 - cy), 0, H - dh)) if dh <= H else 0
    left = int(np.clip(round(W / 2 - 0.5 - cx), 0, W - dw)) if dw <= W else 0
    out = np.zeros((H, W))
    out[top:top + dh, left:left + dw] = digit[:H, :W]
    return out.astype(np.float32)


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


def _prepare_array(arr, name, size):
    """An .npy image: as it is, but for its size and polarity."""
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: image contains NaN or inf")
    if arr.shape != tuple(size):
        arr = _resample(arr, *size, box=arr.shape[0] >= size[0] and arr.shape[1] >= size[1])
    if arr.mean() > 0.5:  # dark digit on a light background: MNIST is the other way round
        arr = 1.0 - arr
    return np.clip(arr, 0.0, 1.0).astype(np.float32)


def _to_grey(px):
    if px.ndim == 2:
        return px
    c = px.shape[2]
    if c in (2, 4):  # composite over white, then drop alpha
        alpha = px[..., -1:]
        px = px[..., :-1] * alpha + (1 - alpha)
        c -= 1
    return px[..., 0] if c == 1 else px[..., :3] @ _LUMA


def load_images(path, size=(28, 28)):
    """[(name, image)] of a file: one image for a picture or a single-image .npy (named `path`),
    N for an .npy batch (named `path[i]`); each a grey (H, W) float32 image in [0, 1], a light
    digit on black, of `size`."""
    path = str(path)
    if path.lower().endswith(".npy"):
        imgs = _npy_images(_read_npy(path), path)
        if len(imgs) == 1:
            return [(path, _prepare_array(imgs[0], path, size))]
        return [(f"{path}[{i}]", _prepare_array(a, f"{path}[{i}]", size)) for i, a in enumerate(imgs)]
    grey = read_picture(path)
    try:
        return [(path, mnist_style(grey, size))]
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def load_image(path, size=(28, 28)):
    """A grey (H, W) float32 image in [0, 1], a light digit on black, from a picture or a
    one-image .npy file."""
    imgs = load_images(path, size)
    if len(imgs) != 1:
        raise ValueError(f"{path}: holds {len(imgs)} images; load_images reads a batch")
    return imgs[0][1]
