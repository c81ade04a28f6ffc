// Short-row copies shared by the convolution kernels (im2col / col2im in conv.cpp, the
// padded copies of conv_direct.cpp): one copy per SIMD level (im2col_kernel.inc).
#pragma once

#include <cstdint>

namespace pylenet::cpu {

#define PYL_DECLARE_ROWS(ns)                                                                      \
  namespace ns {                                                                                  \
  /* dst[i * dp + j] = src[i * sp + j] for i < rows, j < n */                                     \
  void copy_rows(int64_t rows, int64_t n, const float* src, int64_t sp, float* dst, int64_t dp);  \
  /* dst[i * dp + j] += src[i * sp + j] */                                                        \
  void add_rows(int64_t rows, int64_t n, const float* src, int64_t sp, float* dst, int64_t dp);   \
  }
PYL_DECLARE_ROWS(scalar)
PYL_DECLARE_ROWS(avx2)
PYL_DECLARE_ROWS(avx512)
#undef PYL_DECLARE_ROWS

}  // namespace pylenet::cpu
