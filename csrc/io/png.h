// PNG row filters (PNG spec, section 9), undone natively: the filters chain every byte to the
// one before it and to the row above, so a per-byte Python loop took 12 s for a 2000x2000
// image. Decoding the container (chunks, CRCs, zlib) stays in pylenet/images.py.
#pragma once

#include <cstdint>

namespace pylenet::io {

// raw: height rows of (1 filter-type byte + stride bytes); out: height * stride bytes.
// bpp: bytes per complete pixel, at least 1. Throws InvalidArgument for an unknown filter type.
void png_unfilter(const uint8_t* raw, int64_t height, int64_t stride, int64_t bpp, uint8_t* out);

}  // namespace pylenet::io
