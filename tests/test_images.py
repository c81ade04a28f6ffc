"""pylenet.images: pictures read through Pillow, made into MNIST-like images (mnist_style), and
.npy arrays.

The PNGs here come from the small encoder below (zlib + struct only): every colour type, bit
depth, row filter and Adam7 interlacing, so Pillow's decoding and our conversion to grey are
checked against the exact samples written; other formats are written by Pillow itself.
"""
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFilter

import pylenet
from pylenet.images import load_image, load_images, mnist_style, read_picture

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
LUMA = np.array([0.299, 0.587, 0.114])


# ----------------------------------------------------------------------------- encoder
def _chunk(tag, data):
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _filter_row(ftype, line, prev, bpp):
    out = bytearray(len(line))
    for i in range(len(line)):
        a = line[i - bpp] if i >= bpp else 0
        b = prev[i]
        c = prev[i - bpp] if i >= bpp else 0
        pred = (0, a, b, (a + b) // 2, _paeth(a, b, c))[ftype]
        out[i] = (line[i] - pred) & 0xFF
    return bytes(out)


def pack_rows(values, depth):
    """(H, W, spp) integer samples -> list of H packed scanlines (bytes)."""
    h = values.shape[0]
    flat = values.reshape(h, -1).astype(np.int64)
    if depth == 16:
        return [row.astype(">u2").tobytes() for row in flat]
    if depth == 8:
        return [row.astype(np.uint8).tobytes() for row in flat]
    bits = (flat[..., None] >> np.arange(depth - 1, -1, -1)) & 1  # MSB first
    packed = np.packbits(bits.reshape(h, -1).astype(np.uint8), axis=1)  # zero-pads the last byte
    return [row.tobytes() for row in packed]


def encode_png(values, depth, colour, palette=None, filters=(0, 1, 2, 3, 4), idat_parts=1, interlace=0,
               extra_chunks=()):
    """A PNG (bytes) holding `values` (H, W, spp) with the given bit depth / colour type.
    Row y uses filter filters[y % len(filters)]."""
    h, w, spp = values.shape
    assert spp == CHANNELS[colour]
    bpp = max(1, spp * depth // 8)
    raw = bytearray()
    # Adam7 (interlace=1): seven reduced images, each filtered on its own, one after another.
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)] \
        if interlace else [(0, 0, 1, 1)]
    for x0, y0, dx, dy in passes:
        sub = values[y0::dy, x0::dx]
        if sub.size == 0:
            continue
        rows = pack_rows(sub, depth)
        prev = bytes(len(rows[0]))
        for y, line in enumerate(rows):
            f = filters[y % len(filters)]
            raw.append(f)
            raw += _filter_row(f, line, prev, bpp)
            prev = line
    z = zlib.compress(bytes(raw), 9)
    out = SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, interlace))
    for tag, data in extra_chunks:
        out += _chunk(tag, data)
    if palette is not None:
        out += _chunk(b"PLTE", np.asarray(palette, np.uint8).tobytes())
    step = -(-len(z) // idat_parts)
    for i in range(0, len(z), step):
        out += _chunk(b"IDAT", z[i:i + step])
    return out + _chunk(b"IEND", b"")


def write_png(path, values, depth, colour, **kw):
    path.write_bytes(encode_png(values, depth, colour, **kw))
    return path


def _samples(rng, h, w, spp, depth):
    return rng.integers(0, 2 ** depth, size=(h, w, spp))


def expected_grey(vals, depth, colour, palette=None):
    """What read_picture must give for these samples: grey in [0, 1], alpha over white."""
    if colour == 3:
        px = np.asarray(palette)[vals[..., 0]] / 255.0
    else:
        px = vals / (2 ** depth - 1)
    if colour in (4, 6):
        alpha = px[..., -1:]
        px = px[..., :-1] * alpha + (1 - alpha)
    return px[..., 0] if px.shape[-1] == 1 else px[..., :3] @ LUMA


# ----------------------------------------------------------------------------- decoding
# (colour type, bit depth, width): widths chosen so sub-byte rows need padding bits.
CASES = [
    (0, 8, 17), (2, 8, 9), (6, 8, 11), (4, 8, 7),    # grey, RGB, RGBA, grey+alpha
    (0, 16, 10), (6, 16, 5),                         # 16-bit (Pillow keeps 16 bits for grey only)
    (0, 1, 13), (0, 2, 11), (0, 4, 9),               # sub-byte grey
]


@pytest.mark.parametrize("interlace", [0, 1], ids=["plain", "adam7"])
@pytest.mark.parametrize("colour,depth,width", CASES, ids=[f"c{c}-d{d}-w{w}" for c, d, w in CASES])
def test_png_of_every_kind_reads_as_its_samples(tmp_path, rng, colour, depth, width, interlace):
    h = 15  # 3 rows of each of the 5 filter types
    vals = _samples(rng, h, width, CHANNELS[colour], depth)
    grey = read_picture(write_png(tmp_path / "x.png", vals, depth, colour, interlace=interlace))
    assert grey.shape == (h, width)
    # Exact up to the float arithmetic, except 16-bit RGBA, which Pillow reduces to 8 bits per
    # sample: within one 8-bit step there.
    tol = 1 / 255 if (depth == 16 and colour == 6) else 1e-9
    np.testing.assert_allclose(grey, expected_grey(vals, depth, colour), rtol=0, atol=tol)


@pytest.mark.parametrize("ftype", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("colour,depth", [(0, 8), (2, 8), (0, 16)])
def test_each_filter_type_alone(tmp_path, rng, ftype, colour, depth):
    # Extreme values (0 and max) make the modulo-256 wrap-around of every filter matter.
    vals = rng.choice([0, 1, 2 ** depth - 2, 2 ** depth - 1], size=(6, 8, CHANNELS[colour]))
    grey = read_picture(write_png(tmp_path / "f.png", vals, depth, colour, filters=(ftype,)))
    np.testing.assert_allclose(grey, expected_grey(vals, depth, colour), rtol=0, atol=1e-9)


@pytest.mark.parametrize("depth", [8, 4, 2, 1])
def test_palette(tmp_path, rng, depth):
    n = 2 ** depth
    palette = rng.integers(0, 256, size=(n, 3))
    idx = rng.integers(0, n, size=(10, 13, 1))
    grey = read_picture(write_png(tmp_path / "p.png", idx, depth, 3, palette=palette))
    np.testing.assert_allclose(grey, expected_grey(idx, depth, 3, palette), rtol=0, atol=1e-9)


def test_palette_with_transparency_is_composited_over_white(tmp_path):
    idx = np.array([[[0], [1]], [[1], [0]]])
    palette = [[0, 0, 0], [255, 0, 0]]
    trns = bytes([0, 255])  # entry 0 fully transparent, entry 1 opaque
    grey = read_picture(_png_with_trns(tmp_path / "t.png", idx, palette, trns))
    np.testing.assert_allclose(grey, [[1.0, 0.299], [0.299, 1.0]], atol=1e-9)


def _png_with_trns(path, idx, palette, trns):
    data = encode_png(idx, 8, 3, palette=palette)
    at = data.index(b"IDAT") - 4  # tRNS goes after PLTE, before the image data
    path.write_bytes(data[:at] + _chunk(b"tRNS", trns) + data[at:])
    return path


def test_multiple_idat_chunks_and_ancillary_chunks(tmp_path, rng):
    vals = _samples(rng, 20, 20, 1, 8)
    path = write_png(tmp_path / "m.png", vals, 8, 0, idat_parts=5,
                     extra_chunks=[(b"tEXt", b"Comment\x00hello"), (b"gAMA", struct.pack(">I", 45455))])
    np.testing.assert_allclose(read_picture(path), vals[..., 0] / 255.0, rtol=0, atol=1e-9)


@pytest.mark.parametrize("fmt,suffix,tol", [("JPEG", "jpg", 0.03), ("BMP", "bmp", 1e-9), ("GIF", "gif", 1e-9),
                                            ("TIFF", "tif", 1e-9), ("WEBP", "webp", 1e-9)])
def test_other_formats(tmp_path, fmt, suffix, tol):
    ramp = np.tile(np.linspace(0, 255, 32).astype(np.uint8), (24, 1))
    kw = {"quality": 95} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}
    Image.fromarray(ramp).save(tmp_path / f"r.{suffix}", fmt, **kw)
    grey = read_picture(tmp_path / f"r.{suffix}")
    np.testing.assert_allclose(grey, ramp / 255.0, rtol=0, atol=tol)


def test_camera_orientation_is_applied(tmp_path):
    a = np.zeros((20, 40), np.uint8)
    a[:, :5] = 255  # a white band on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(a).save(tmp_path / "o.jpg", exif=exif.tobytes(), quality=95)
    grey = read_picture(tmp_path / "o.jpg")
    assert grey.shape == (40, 20)  # as displayed: portrait, the band now on top
    assert grey[:5].mean() > 0.9 and grey[10:].mean() < 0.1


# ----------------------------------------------------------------------------- bad files
def _good_png(rng):
    return encode_png(_samples(rng, 8, 8, 1, 8), 8, 0)


def _bad_files(rng):
    good = _good_png(rng)
    idat = good.index(b"IDAT")
    (length,) = struct.unpack(">I", good[idat - 4:idat])
    return {
        "empty.png": b"",
        "gif-header.png": b"GIF89a" + bytes(100),
        "text.png": b"this is not an image",
        "cut-header.png": good[:20],
        "cut-data.png": good[:idat + 4 + length // 2],
        "bad-crc.png": good[:idat + 8] + bytes([good[idat + 8] ^ 0xFF]) + good[idat + 9:],
        "zlib-garbage.png": good[:idat - 4] + _chunk(b"IDAT", b"\x78\x9c" + bytes(range(40))) + _chunk(b"IEND", b""),
        "no-idat.png": good[:idat - 4] + _chunk(b"IEND", b""),
        "cut.jpg": _jpeg_bytes()[:200],
    }


def _jpeg_bytes():
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16), 128, np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_every_bad_file_is_one_value_error_naming_it(tmp_path, rng):
    for name, data in _bad_files(rng).items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=name.replace(".", r"\.")) as e:
            load_image(tmp_path / name)
        assert "Traceback" not in str(e.value)


def test_missing_file_and_folder_are_os_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "nothere.png")
    (tmp_path / "d.png").mkdir()
    with pytest.raises(IsADirectoryError):
        load_image(tmp_path / "d.png")


def test_huge_picture_refused_before_decoding(tmp_path):
    # A header claiming 6000 x 6000 pixels (36 M, above the limit) over a few bytes of data.
    ihdr = struct.pack(">IIBBBBB", 6000, 6000, 8, 0, 0, 0, 0)
    (tmp_path / "big.png").write_bytes(SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
                                       + _chunk(b"IEND", b""))
    with pytest.raises(ValueError, match="big.png.*6000x6000"):
        load_image(tmp_path / "big.png")


# ----------------------------------------------------------------------------- MNIST's way
@pytest.fixture(scope="module")
def digits():
    from pathlib import Path
    import os
    root = Path(os.environ.get("PYLENET_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    try:
        test = pylenet.datasets.mnist(root, train=False, normalize=False, download=False)
    except Exception:  # noqa: BLE001
        pytest.skip(f"MNIST not found under {root}")
    return test.images[:10, 0], test.labels[:10]


def _match(a, b):
    """Correlation of two images, allowing either to sit a pixel off."""
    best = -1.0
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            s = np.roll(np.roll(a, dy, 0), dx, 1) - a.mean()
            t = b - b.mean()
            best = max(best, float((s * t).sum() / np.sqrt((s * s).sum() * (t * t).sum())))
    return best


def _extent(img):
    rows, cols = np.nonzero(img.sum(1))[0], np.nonzero(img.sum(0))[0]
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def test_mnist_digits_come_back_as_they_are(digits):
    for d in digits[0]:
        out = mnist_style(d)
        assert out.shape == (28, 28) and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
        assert _match(out, d) > 0.99


def test_a_big_dark_digit_off_centre_on_white_becomes_the_mnist_digit(tmp_path, digits):
    for i, d in enumerate(digits[0]):
        canvas = np.ones((400, 300))
        canvas[30:198, 110:278] = 1.0 - np.kron(d, np.ones((6, 6)))  # 168 px, dark on white, top right
        Image.fromarray((canvas * 255).astype(np.uint8)).convert("RGB").save(tmp_path / f"d{i}.png")
        out = load_image(tmp_path / f"d{i}.png")
        assert _match(out, mnist_style(d)) > 0.9, i
        h, w = _extent(out)
        assert max(h, w) in (20, 21)  # fitted to the 20-pixel box (plus a pixel of anti-aliasing)
        ys, xs = np.indices(out.shape)
        cy, cx = (ys * out).sum() / out.sum(), (xs * out).sum() / out.sum()
        assert abs(cy - 13.5) < 0.75 and abs(cx - 13.5) < 0.75  # centred by mass


def test_a_photo_of_a_digit_on_paper(tmp_path, digits):
    """Uneven lighting (a gradient across the sheet), sensor noise, a blur and JPEG: the
    background goes, the digit stays."""
    for i, d in enumerate(digits[0]):
        yy, xx = np.mgrid[0:480, 360:0:-1]
        paper = 0.5 + 0.4 * xx / 360 + 0.08 * yy / 480
        ink = np.zeros((480, 360))
        ink[150:318, 80:248] = np.kron(d, np.ones((6, 6)))
        photo = paper * (1 - 0.75 * ink) + np.random.default_rng(i).normal(0, 0.03, paper.shape)
        im = Image.fromarray((np.clip(photo, 0, 1) * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(2))
        im.convert("RGB").save(tmp_path / f"p{i}.jpg", quality=80)
        out = load_image(tmp_path / f"p{i}.jpg")
        assert _match(out, mnist_style(d)) > 0.85, i
        corners = [out[:4, :4], out[:4, -4:], out[-4:, :4], out[-4:, -4:]]
        assert max(c.max() for c in corners) < 0.05, i  # no lighting or noise left in the frame


def test_other_model_sizes_scale_the_box(digits):
    out = mnist_style(digits[0][0], (32, 32))
    assert out.shape == (32, 32) and max(_extent(out)) in (23, 24)  # 20/28 of 32


def test_a_blank_picture_is_an_error(tmp_path):
    Image.fromarray(np.full((50, 60), 200, np.uint8)).save(tmp_path / "blank.png")
    with pytest.raises(ValueError, match="blank.png: no digit found"):
        load_image(tmp_path / "blank.png")


def test_load_images_of_a_picture_is_one_image(tmp_path, digits):
    Image.fromarray((digits[0][1] * 255).astype(np.uint8)).save(tmp_path / "one.png")
    (name, img), = load_images(tmp_path / "one.png")
    assert name == str(tmp_path / "one.png") and img.shape == (28, 28)


# ----------------------------------------------------------------------------- .npy arrays
def test_load_image_npy(tmp_path, rng):
    a = rng.integers(0, 100, size=(28, 28)).astype(np.uint8)
    np.save(tmp_path / "a.npy", a)
    np.testing.assert_allclose(load_image(tmp_path / "a.npy"), a / 255.0, atol=1e-6)  # taken as it is
    f = (rng.random((1, 28, 28)) * 0.4).astype(np.float32)  # already in [0, 1], extra unit axis
    np.save(tmp_path / "f.npy", f)
    np.testing.assert_allclose(load_image(tmp_path / "f.npy"), f[0], atol=1e-6)
    light = (rng.random((28, 28)) * 0.3 + 0.7).astype(np.float32)
    np.save(tmp_path / "light.npy", light)
    np.testing.assert_allclose(load_image(tmp_path / "light.npy"), 1 - light, atol=1e-6)


def test_load_image_npy_resizes_by_area_average(tmp_path, rng):
    small = rng.random((28, 28)) * 0.4
    np.save(tmp_path / "big.npy", np.kron(small, np.ones((3, 3))))  # 84x84, constant 3x3 blocks
    np.testing.assert_allclose(load_image(tmp_path / "big.npy"), small, rtol=0, atol=1e-6)


def test_load_image_npy_bad(tmp_path):
    np.save(tmp_path / "nan.npy", np.full((28, 28), np.nan))
    np.save(tmp_path / "5d.npy", np.zeros((2, 3, 2, 28, 28)))
    np.save(tmp_path / "batch.npy", np.zeros((2, 1, 28, 28)))
    for name, match in (("nan.npy", "NaN"), ("5d.npy", "not an image"), ("batch.npy", "holds 2 images")):
        with pytest.raises(ValueError, match=match):
            load_image(tmp_path / name)
