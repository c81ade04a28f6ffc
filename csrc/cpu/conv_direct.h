// Direct convolution for small channel counts (stride 1): no unfolded matrix, no GEMM.
// The output row is the vector dimension: each (c, r, s) tap multiplies a row of the
// zero-padded input by one weight and adds it into a block of output channels held in
// registers. Backward-data is the same kernel run on the padded output gradient with the
// filter flipped and its channel axes swapped; backward-filter accumulates
// dy-row x input-row products in registers, one image at a time.
// Compiled once per SIMD level (conv_direct_kernel.inc), like the GEMM.
#pragma once

#include <cstdint>

#include "ops/conv.h"

namespace pylenet::cpu {

// Whether the direct kernels handle this shape (stride 1, padding < kernel, kernel width <= 8).
bool conv_direct_supported(const ConvShape& s);
// Floats of workspace for one worker processing one image of this pass.
int64_t conv_direct_worker_floats(ConvPass pass, const ConvShape& s);
int64_t conv_direct_workspace_floats(ConvPass pass, const ConvShape& s, int threads);

void conv_forward_direct(const ConvShape& s, const float* x, const float* w, const float* b, float* y, float* ws,
                         int threads);
// The forward pass in two steps, for callers that keep the prepared filter between calls (an
// inference executor): rows narrower than a vector take the filter transposed to (C, R, S, KP)
// with the bias padded to KP; other shapes read w and b as they are (0 floats). The layout
// depends on the SIMD level: prepare again when it changes. ws: the forward workspace.
int64_t conv_direct_prepared_floats(const ConvShape& s);
void conv_direct_prepare(const ConvShape& s, const float* w, const float* b, float* prepared);
void conv_forward_direct_prepared(const ConvShape& s, const float* x, const float* w, const float* b,
                                  const float* prepared, float* y, float* ws, int threads);
void conv_backward_data_direct(const ConvShape& s, const float* w, const float* dy, float* dx, float* ws,
                               int threads);
void conv_backward_filter_direct(const ConvShape& s, const float* x, const float* dy, float* dw, float* ws,
                                 int threads);

// Per-SIMD-level image kernels (conv_direct_{scalar,avx2,avx512,avx512_ymm}.cpp).
#define PYL_DECLARE_DIRECT(ns)                                                                            \
  namespace ns {                                                                                          \
  int vector_width();                                                                                     \
  /* the share of the lanes the kernels of `pass` fill on this shape (picks the AVX-512 copy) */         \
  double direct_lane_use(ConvPass pass, const ConvShape& s);                                              \
  /* y (K, OH, OW) = conv(xp, w) + b for one image; xp is padded (C, HP, WP) */                            \
  void direct_forward_image(const ConvShape& s, int64_t hp, int64_t wp, const float* xp, const float* w,  \
                            const float* b, float* y);                                                    \
  /* the same with output channels in the lanes; wt (C, R, S, KP) and bp (KP,) zero past K */          \
  bool forward_uses_klanes(const ConvShape& s);                                                           \
  void direct_forward_klanes_image(const ConvShape& s, int64_t hp, int64_t wp, const float* xp,           \
                                   const float* wt, int64_t kp, const float* bp, float* y);               \
  /* dw (K, C, R, S) += sum over nimg images of dy (x) xp; xp (nimg, C, HP, WP), dyp (nimg, K, OH, WD) */    \
  void direct_filter_images(const ConvShape& s, int64_t nimg, int64_t hp, int64_t wp, const float* xp,    \
                            int64_t wd, const float* dyp, float* dw);                                     \
  /* the same, KB channels per pass, reading dy (nimg, K, OH, OW) in place; tail (nimg, K, OH, width)  */ \
  /* holds the last partial vector of columns, zero-filled (unused when OW is a multiple of the width) */ \
  bool filter_uses_kblocks(const ConvShape& s);                                                           \
  void direct_filter_kblocks(const ConvShape& s, int64_t nimg, int64_t hp, int64_t wp, const float* xp,   \
                             const float* dy, const float* tail, float* dw);                              \
  /* the same with output channels in the lanes; dyt (nimg, OH*OW, KP), KP a multiple of the width */    \
  bool filter_uses_klanes(const ConvShape& s);                                                            \
  void direct_filter_klanes(const ConvShape& s, int64_t nimg, int64_t hp, int64_t wp, const float* xp,    \
                            int64_t kp, const float* dyt, float* dw);                                     \
  /* dyt (pixels, KP) = dy (K, pixels) transposed, lanes past K zero (KP a multiple of the width) */      \
  void direct_dy_to_klanes(const float* dy, int64_t k, int64_t pixels, int64_t kp, float* dyt);          \
  }
PYL_DECLARE_DIRECT(scalar)
PYL_DECLARE_DIRECT(avx2)
PYL_DECLARE_DIRECT(avx512)
PYL_DECLARE_DIRECT(avx512_ymm)  // the AVX-512 build at 8 lanes (conv_direct.cpp picks it per shape)
#undef PYL_DECLARE_DIRECT

}  // namespace pylenet::cpu
