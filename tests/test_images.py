"""pylenet.images: the PNG decoder (stdlib zlib, native row filters) and load_image.

Every PNG here is written by the small encoder below (zlib + struct only), which
applies the five PNG row filters (None, Sub, Up, Average, Paeth) so that the
decoder's un-filtering is exercised for every filter type and pixel width.
"""
import struct
import zlib

import numpy as np
import pytest

from pylenet.images import load_image, read_png

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


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
    rows = pack_rows(values, depth)
    bpp = max(1, spp * depth // 8)
    prev = bytes(len(rows[0]))
    raw = bytearray()
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


# ----------------------------------------------------------------------------- decoding
# (colour type, bit depth, width): widths chosen so sub-byte rows need padding bits.
CASES = [
    (0, 8, 17), (2, 8, 9), (6, 8, 11), (4, 8, 7),    # grey, RGB, RGBA, grey+alpha
    (0, 16, 10), (2, 16, 6), (6, 16, 5),             # 16-bit
    (0, 1, 13), (0, 2, 11), (0, 4, 9),               # sub-byte grey
]


@pytest.mark.parametrize("colour,depth,width", CASES, ids=[f"c{c}-d{d}-w{w}" for c, d, w in CASES])
def test_read_png_matches_pixels(tmp_path, rng, colour, depth, width):
    h = 15  # 3 rows of each of the 5 filter types
    vals = _samples(rng, h, width, CHANNELS[colour], depth)
    path = write_png(tmp_path / "x.png", vals, depth, colour)
    px = read_png(path)
    assert px.shape == (h, width, CHANNELS[colour])
    np.testing.assert_allclose(px, vals / (2 ** depth - 1), rtol=0, atol=6e-8)  # float32 samples


@pytest.mark.parametrize("ftype", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("colour,depth", [(0, 8), (2, 8), (6, 8), (0, 16)])
def test_each_filter_type_alone(tmp_path, rng, ftype, colour, depth):
    # Extreme values (0 and max) make the modulo-256 wrap-around of every filter matter.
    vals = rng.choice([0, 1, 2 ** depth - 2, 2 ** depth - 1], size=(6, 8, CHANNELS[colour]))
    path = write_png(tmp_path / "f.png", vals, depth, colour, filters=(ftype,))
    np.testing.assert_allclose(read_png(path), vals / (2 ** depth - 1), rtol=0, atol=6e-8)  # float32 samples


@pytest.mark.parametrize("depth", [8, 4, 2, 1])
def test_palette(tmp_path, rng, depth):
    n = 2 ** depth
    palette = rng.integers(0, 256, size=(n, 3))
    idx = rng.integers(0, n, size=(10, 13, 1))
    path = write_png(tmp_path / "p.png", idx, depth, 3, palette=palette)
    px = read_png(path)
    np.testing.assert_allclose(px, palette[idx[..., 0]] / 255.0, rtol=0, atol=6e-8)  # float32 samples


def test_multiple_idat_chunks_and_ancillary_chunks(tmp_path, rng):
    vals = _samples(rng, 20, 20, 1, 8)
    path = write_png(tmp_path / "m.png", vals, 8, 0, idat_parts=5,
                     extra_chunks=[(b"tEXt", b"Comment\x00hello"), (b"gAMA", struct.pack(">I", 45455))])
    np.testing.assert_allclose(read_png(path), vals / 255.0, rtol=0, atol=6e-8)  # float32 samples


# ----------------------------------------------------------------------------- bad files
def _good_png(rng):
    return encode_png(_samples(rng, 8, 8, 1, 8), 8, 0)


def test_not_a_png(tmp_path):
    p = tmp_path / "a.png"
    p.write_bytes(b"GIF89a" + bytes(100))
    with pytest.raises(ValueError):
        read_png(p)


def test_empty_file(tmp_path):
    p = tmp_path / "a.png"
    p.write_bytes(b"")
    with pytest.raises(ValueError):
        read_png(p)


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.9])
def test_truncated_file(tmp_path, rng, cut):
    data = _good_png(rng)
    idat = data.index(b"IDAT")
    end = len(data) - 12  # before IEND
    cut_at = idat + 4 + int((end - idat - 4) * cut)  # inside the IDAT payload
    p = tmp_path / "t.png"
    p.write_bytes(data[:cut_at])
    with pytest.raises(ValueError):
        read_png(p)


def test_truncated_zlib_stream(tmp_path, rng):
    vals = _samples(rng, 8, 8, 1, 8)
    raw = b"".join(b"\x00" + r for r in pack_rows(vals, 8))
    z = zlib.compress(raw)[:-10]  # a consistent chunk holding an incomplete stream
    data = SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0)) + _chunk(b"IDAT", z) \
        + _chunk(b"IEND", b"")
    p = tmp_path / "z.png"
    p.write_bytes(data)
    with pytest.raises(ValueError):
        read_png(p)


def test_corrupt_zlib_data(tmp_path):
    data = SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0)) \
        + _chunk(b"IDAT", b"\x78\x9c" + b"\xff" * 40) + _chunk(b"IEND", b"")
    p = tmp_path / "c.png"
    p.write_bytes(data)
    with pytest.raises(ValueError):
        read_png(p)


def test_too_little_pixel_data(tmp_path):
    raw = b"\x00" + bytes(8)  # one row for an 8-row image
    data = SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0)) \
        + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")
    p = tmp_path / "s.png"
    p.write_bytes(data)
    with pytest.raises(ValueError):
        read_png(p)


def test_bad_filter_type(tmp_path):
    raw = b"".join(bytes([7]) + bytes(8) for _ in range(8))
    data = SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0)) \
        + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")
    p = tmp_path / "b.png"
    p.write_bytes(data)
    with pytest.raises(ValueError, match="filter"):
        read_png(p)


def test_no_ihdr_or_no_idat(tmp_path, rng):
    data = _good_png(rng)
    no_idat = SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0)) + _chunk(b"IEND", b"")
    i = data.index(b"IHDR") - 4
    no_ihdr = data[:i] + data[i + 25:]
    for k, blob in enumerate([no_idat, no_ihdr]):
        p = tmp_path / f"n{k}.png"
        p.write_bytes(blob)
        with pytest.raises(ValueError):
            read_png(p)


def test_interlaced_rejected(tmp_path, rng):
    p = write_png(tmp_path / "i.png", _samples(rng, 8, 8, 1, 8), 8, 0, interlace=1)
    with pytest.raises(ValueError, match="interlace"):
        read_png(p)


def test_palette_png_without_palette(tmp_path, rng):
    p = write_png(tmp_path / "np.png", rng.integers(0, 4, size=(4, 4, 1)), 8, 3)
    with pytest.raises(ValueError, match="palette"):
        read_png(p)


@pytest.mark.parametrize("colour,depth", [(0, 3), (5, 8), (2, 1), (2, 4), (6, 2), (4, 4), (3, 16)])
def test_invalid_colour_depth_combination(tmp_path, colour, depth):
    # The PNG spec allows sub-byte depths only for grey (0) and palette (3) images, and
    # 16 bits for every type but palette; anything else is not a PNG.
    w, h = 8, 4
    spp = CHANNELS.get(colour, 1)
    stride = (w * spp * depth + 7) // 8
    raw = b"".join(b"\x00" + bytes(stride) for _ in range(h))
    data = SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)) \
        + (_chunk(b"PLTE", bytes(3 * 4)) if colour == 3 else b"") \
        + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")
    p = tmp_path / "bad.png"
    p.write_bytes(data)
    with pytest.raises(ValueError):
        read_png(p)


def _png(ihdr, *chunks):
    return SIGNATURE + _chunk(b"IHDR", ihdr) + b"".join(_chunk(t, d) for t, d in chunks) + _chunk(b"IEND", b"")


def _grey_ihdr(w, h, depth=8, colour=0):
    return struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)


@pytest.mark.parametrize("blob,match", [
    (_png(b"\x00\x00\x00\x08", (b"IDAT", zlib.compress(bytes(9)))), "IHDR of 4 bytes"),       # short IHDR
    (_png(_grey_ihdr(8, 1, 8, 3), (b"PLTE", b""), (b"IDAT", zlib.compress(bytes(9)))), "palette"),  # empty palette
    (_png(_grey_ihdr(8, 1, 8, 3), (b"PLTE", bytes(7)), (b"IDAT", zlib.compress(bytes(9)))), "palette"),
    (_png(_grey_ihdr(0, 8), (b"IDAT", zlib.compress(b""))), "0x8"),                                # width 0
    (_png(_grey_ihdr(8, 0), (b"IDAT", zlib.compress(b""))), "8x0"),                                # height 0
    (_png(_grey_ihdr(2**31, 1), (b"IDAT", zlib.compress(b""))), "pixels"),
    (_png(_grey_ihdr(4, 1, 8, 3), (b"PLTE", bytes(6)), (b"IDAT", zlib.compress(b"\x00\x00\x01\x02\x01"))),
     "palette entry 2 of 2"),
    (SIGNATURE + _chunk(b"IDAT", zlib.compress(bytes(9))) + _chunk(b"IEND", b""), "IHDR"),
    (SIGNATURE + _chunk(b"IHDR", _grey_ihdr(8, 1))[:-4] + b"\0\0\0\0" + _chunk(b"IEND", b""), "CRC"),
], ids=["short-ihdr", "empty-palette", "palette-not-rgb", "width-0", "height-0", "width-2^31", "index-past-palette",
        "idat-before-ihdr", "bad-crc"])
def test_malformed_headers_raise_value_errors(tmp_path, blob, match):
    """issue 13: these were struct.error, IndexError, or an all-NaN image."""
    p = tmp_path / "m.png"
    p.write_bytes(blob)
    with pytest.raises(ValueError, match=match):
        read_png(p)


def test_inflate_is_bounded_by_the_header(tmp_path, monkeypatch):
    """A small file whose data inflates far past what its header allows is refused after
    inflating no more than the header's size (issue 13: 1 MB inflated to 2 GB)."""
    import tracemalloc
    bomb = zlib.compress(bytes(200 << 20), 9)  # 200 MiB of zeros in ~200 KB
    p = tmp_path / "bomb.png"
    p.write_bytes(_png(_grey_ihdr(64, 64), (b"IDAT", bomb)))
    assert p.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="more image data"):
            read_png(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak


def test_large_image_with_every_filter_decodes_exactly(tmp_path, rng):
    """The row filters run natively: a 1000x1000 RGB image of Sub/Up/Average/Paeth rows (a
    per-byte Python loop once took 12 s for 2000x2000)."""
    vals = _samples(rng, 1000, 1000, 3, 8)
    # The encoder above filters byte by byte in Python (slow at this size): filter here, a row at a time.
    raw = bytearray()
    rows = vals.reshape(1000, -1).astype(np.int64)
    prev = np.zeros(rows.shape[1], np.int64)
    for y, line in enumerate(rows):
        f = (1, 2, 3, 4)[y % 4]
        left = np.concatenate([np.zeros(3, np.int64), line[:-3]])
        upleft = np.concatenate([np.zeros(3, np.int64), prev[:-3]])
        if f == 1:
            pred = left
        elif f == 2:
            pred = prev
        elif f == 3:
            pred = (left + prev) // 2
        else:
            pa, pb, pc = np.abs(prev - upleft), np.abs(left - upleft), np.abs(left + prev - 2 * upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
        raw.append(f)
        raw += ((line - pred) & 0xFF).astype(np.uint8).tobytes()
        prev = line
    p = tmp_path / "big.png"
    p.write_bytes(_png(_grey_ihdr(1000, 1000, 8, 2), (b"IDAT", zlib.compress(bytes(raw), 1))))
    np.testing.assert_array_equal(np.rint(read_png(p) * 255).astype(np.int64), vals)


# ----------------------------------------------------------------------------- load_image
def test_load_image_grey_28x28_unchanged(tmp_path, rng):
    vals = rng.integers(0, 100, size=(28, 28, 1))  # dark background (mean < 0.5): no inversion
    img = load_image(write_png(tmp_path / "g.png", vals, 8, 0))
    assert img.shape == (28, 28) and img.dtype == np.float32
    np.testing.assert_allclose(img, vals[..., 0] / 255.0, rtol=0, atol=1e-6)


def test_load_image_light_background_inverted(tmp_path, rng):
    vals = rng.integers(180, 256, size=(28, 28, 1))
    img = load_image(write_png(tmp_path / "w.png", vals, 8, 0))
    np.testing.assert_allclose(img, 1.0 - vals[..., 0] / 255.0, rtol=0, atol=1e-6)


def test_load_image_resizes_by_area_average(tmp_path, rng):
    small = rng.integers(0, 120, size=(28, 28))
    big = np.kron(small, np.ones((3, 3), np.int64))[..., None]  # 84x84, constant 3x3 blocks
    img = load_image(write_png(tmp_path / "big.png", big, 8, 0))
    np.testing.assert_allclose(img, small / 255.0, rtol=0, atol=1e-6)


def test_load_image_rgb_any_size(tmp_path, rng):
    rgb = np.zeros((100, 80, 3), np.int64)
    rgb[30:70, 35:45] = [255, 255, 255]  # a white bar on black
    img = load_image(write_png(tmp_path / "rgb.png", rgb, 8, 2))
    assert img.shape == (28, 28) and img.dtype == np.float32
    assert 0.0 <= img.min() and img.max() <= 1.0
    assert img[14, 14] == pytest.approx(1.0) and img[2, 2] == 0.0


def test_load_image_rgba_composited_over_white(tmp_path):
    rgba = np.zeros((28, 28, 4), np.int64)  # fully transparent -> white -> inverted to black
    img = load_image(write_png(tmp_path / "t.png", rgba, 8, 6))
    np.testing.assert_allclose(img, 0.0, atol=1e-6)


def test_load_image_npy(tmp_path, rng):
    a = rng.integers(0, 100, size=(28, 28)).astype(np.uint8)
    np.save(tmp_path / "a.npy", a)
    np.testing.assert_allclose(load_image(tmp_path / "a.npy"), a / 255.0, atol=1e-6)
    f = (rng.random((1, 28, 28)) * 0.4).astype(np.float32)  # already in [0, 1], extra unit axis
    np.save(tmp_path / "f.npy", f)
    np.testing.assert_allclose(load_image(tmp_path / "f.npy"), f[0], atol=1e-6)


def test_load_image_npy_bad(tmp_path):
    np.save(tmp_path / "nan.npy", np.full((28, 28), np.nan))
    np.save(tmp_path / "4d.npy", np.zeros((2, 3, 28, 28)))
    for name in ("nan.npy", "4d.npy"):
        with pytest.raises(ValueError):
            load_image(tmp_path / name)
