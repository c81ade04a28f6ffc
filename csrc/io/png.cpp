#include "io/png.h"

#include <cstdlib>

#include "core/error.h"

namespace pylenet::io {

namespace {
inline uint8_t paeth(int a, int b, int c) {
  const int p = a + b - c, pa = std::abs(p - a), pb = std::abs(p - b), pc = std::abs(p - c);
  return static_cast<uint8_t>(pa <= pb && pa <= pc ? a : pb <= pc ? b : c);
}
}  // namespace

void png_unfilter(const uint8_t* raw, int64_t height, int64_t stride, int64_t bpp, uint8_t* out) {
  PYL_CHECK_ARG(height >= 1 && stride >= 1 && bpp >= 1 && bpp <= 8, "png: bad row geometry");
  for (int64_t y = 0; y < height; ++y) {
    const uint8_t type = raw[y * (stride + 1)];
    const uint8_t* in = raw + y * (stride + 1) + 1;
    uint8_t* line = out + y * stride;
    const uint8_t* up = y ? line - stride : nullptr;  // the row above, already unfiltered
    switch (type) {
      case 0:
        for (int64_t i = 0; i < stride; ++i) line[i] = in[i];
        break;
      case 1:  // Sub
        for (int64_t i = 0; i < stride; ++i) line[i] = static_cast<uint8_t>(in[i] + (i >= bpp ? line[i - bpp] : 0));
        break;
      case 2:  // Up
        for (int64_t i = 0; i < stride; ++i) line[i] = static_cast<uint8_t>(in[i] + (up ? up[i] : 0));
        break;
      case 3:  // Average
        for (int64_t i = 0; i < stride; ++i) {
          const int a = i >= bpp ? line[i - bpp] : 0, b = up ? up[i] : 0;
          line[i] = static_cast<uint8_t>(in[i] + ((a + b) >> 1));
        }
        break;
      case 4:  // Paeth
        for (int64_t i = 0; i < stride; ++i) {
          const int a = i >= bpp ? line[i - bpp] : 0, b = up ? up[i] : 0, c = up && i >= bpp ? up[i - bpp] : 0;
          line[i] = static_cast<uint8_t>(in[i] + paeth(a, b, c));
        }
        break;
      default:
        fail(ErrorKind::InvalidArgument, "bad PNG filter type ", int(type), " in row ", y);
    }
  }
}

}  // namespace pylenet::io
