// CPU pooling kernels: one (n, c) plane per work item.
#include <algorithm>
#include <cmath>

#include "core/parallel.h"
#include "core/simd.h"
#include "ops/pool.h"

namespace pylenet::cpu {

// Per-SIMD-level 2x2/stride-2 max pooling over consecutive planes (pool_kernel.inc).
#define PYL_DECLARE_POOL(ns)                                                                                   \
  namespace ns {                                                                                               \
  void max_pool2x2_forward_planes(int64_t planes, int64_t h, int64_t w, int64_t oh, int64_t ow, const float* x, \
                                  float* y, float* winners);                                                   \
  void max_pool2x2_backward_planes(int64_t planes, int64_t h, int64_t w, int64_t oh, int64_t ow, const float* x, \
                                   const float* dy, float* dx);                                                \
  void max_pool2x2_backward_from_indices_planes(int64_t planes, int64_t h, int64_t w, int64_t oh, int64_t ow,    \
                                                const float* index, const float* dy, float* dx);               \
  }
PYL_DECLARE_POOL(scalar)
PYL_DECLARE_POOL(avx2)
PYL_DECLARE_POOL(avx512)
#undef PYL_DECLARE_POOL

namespace {

// Index within the plane of the window's first maximum (NaN counts as the maximum).
inline int64_t argmax_in_window(const PoolShape& s, const float* plane, int64_t oh, int64_t ow) {
  const int64_t h0 = oh * s.sh - s.ph, w0 = ow * s.sw - s.pw;
  int64_t best = -1;
  float best_v = 0.0f;
  for (int64_t i = std::max<int64_t>(h0, 0); i < std::min(h0 + s.kh, s.h); ++i)
    for (int64_t j = std::max<int64_t>(w0, 0); j < std::min(w0 + s.kw, s.w); ++j) {
      const float v = plane[i * s.w + j];
      if (best < 0 || v > best_v || (std::isnan(v) && !std::isnan(best_v))) {
        best = i * s.w + j;
        best_v = v;
      }
    }
  return best;  // >= 0: padding <= kernel/2 leaves every window at least one real cell
}

// The common LeNet case, 2x2 windows with stride 2 and no padding: windows tile the plane,
// so every input pixel belongs to at most one window.
inline bool is_2x2_tiling(const PoolShape& s) {
  return s.kh == 2 && s.kw == 2 && s.sh == 2 && s.sw == 2 && s.ph == 0 && s.pw == 0;
}

constexpr int64_t kPlaneBlock = 8;  // planes per work item of the 2x2 kernels

}  // namespace

void max_pool_forward(const PoolShape& s, const float* x, float* y, int threads) {
  if (is_2x2_tiling(s)) {
    const simd::Level level = simd::active();
    const int64_t planes = s.n * s.c;
    parallel_for(threads, (planes + kPlaneBlock - 1) / kPlaneBlock, [&](int64_t b, int) {
      const int64_t p0 = b * kPlaneBlock, np = std::min(kPlaneBlock, planes - p0);
      PYL_SIMD_DISPATCH(level, max_pool2x2_forward_planes, np, s.h, s.w, s.oh, s.ow, x + p0 * s.h * s.w,
                        y + p0 * s.oh * s.ow, nullptr);
    });
    return;
  }
  parallel_for(threads, s.n * s.c, [&](int64_t p, int) {
    const float* plane = x + p * s.h * s.w;
    float* out = y + p * s.oh * s.ow;
    for (int64_t oh = 0; oh < s.oh; ++oh)
      for (int64_t ow = 0; ow < s.ow; ++ow) out[oh * s.ow + ow] = plane[argmax_in_window(s, plane, oh, ow)];
  });
}

void max_pool_backward(const PoolShape& s, const float* x, const float* dy, float* dx, int threads) {
  if (is_2x2_tiling(s)) {  // every cell written once: dy at its window's first maximum, else 0
    const simd::Level level = simd::active();
    const int64_t planes = s.n * s.c;
    parallel_for(threads, (planes + kPlaneBlock - 1) / kPlaneBlock, [&](int64_t b, int) {
      const int64_t p0 = b * kPlaneBlock, np = std::min(kPlaneBlock, planes - p0);
      PYL_SIMD_DISPATCH(level, max_pool2x2_backward_planes, np, s.h, s.w, s.oh, s.ow, x + p0 * s.h * s.w,
                        dy + p0 * s.oh * s.ow, dx + p0 * s.h * s.w);
    });
    return;
  }
  parallel_for(threads, s.n * s.c, [&](int64_t p, int) {
    const float* plane = x + p * s.h * s.w;
    const float* g = dy + p * s.oh * s.ow;
    float* d = dx + p * s.h * s.w;
    std::fill(d, d + s.h * s.w, 0.0f);
    for (int64_t oh = 0; oh < s.oh; ++oh)
      for (int64_t ow = 0; ow < s.ow; ++ow) d[argmax_in_window(s, plane, oh, ow)] += g[oh * s.ow + ow];
  });
}

bool max_pool_from_indices_supported(const PoolShape& s) { return is_2x2_tiling(s); }

void max_pool_forward_with_winners(const PoolShape& s, float* x, float* y) {
  // One pass over the planes in order: the winners overwrite x behind the reads (pool_kernel.inc).
  PYL_SIMD_DISPATCH(simd::active(), max_pool2x2_forward_planes, s.n * s.c, s.h, s.w, s.oh, s.ow, x, y, x);
}

void max_pool_backward_from_indices(const PoolShape& s, const float* index, const float* dy, float* dx, int threads) {
  const simd::Level level = simd::active();
  const int64_t planes = s.n * s.c;
  parallel_for(threads, (planes + kPlaneBlock - 1) / kPlaneBlock, [&](int64_t b, int) {
    const int64_t p0 = b * kPlaneBlock, np = std::min(kPlaneBlock, planes - p0);
    PYL_SIMD_DISPATCH(level, max_pool2x2_backward_from_indices_planes, np, s.h, s.w, s.oh, s.ow,
                      index + p0 * s.oh * s.ow, dy + p0 * s.oh * s.ow, dx + p0 * s.h * s.w);
  });
}

void avg_pool_forward(const PoolShape& s, const float* x, float* y, int threads) {
  const float scale = 1.0f / static_cast<float>(s.kh * s.kw);
  parallel_for(threads, s.n * s.c, [&](int64_t p, int) {
    const float* plane = x + p * s.h * s.w;
    float* out = y + p * s.oh * s.ow;
    for (int64_t oh = 0; oh < s.oh; ++oh)
      for (int64_t ow = 0; ow < s.ow; ++ow) {
        const int64_t h0 = oh * s.sh - s.ph, w0 = ow * s.sw - s.pw;
        float acc = 0.0f;
        for (int64_t i = std::max<int64_t>(h0, 0); i < std::min(h0 + s.kh, s.h); ++i)
          for (int64_t j = std::max<int64_t>(w0, 0); j < std::min(w0 + s.kw, s.w); ++j) acc += plane[i * s.w + j];
        out[oh * s.ow + ow] = acc * scale;
      }
  });
}

void avg_pool_backward(const PoolShape& s, const float* dy, float* dx, int threads) {
  const float scale = 1.0f / static_cast<float>(s.kh * s.kw);
  parallel_for(threads, s.n * s.c, [&](int64_t p, int) {
    const float* g = dy + p * s.oh * s.ow;
    float* d = dx + p * s.h * s.w;
    std::fill(d, d + s.h * s.w, 0.0f);
    for (int64_t oh = 0; oh < s.oh; ++oh)
      for (int64_t ow = 0; ow < s.ow; ++ow) {
        const int64_t h0 = oh * s.sh - s.ph, w0 = ow * s.sw - s.pw;
        const float v = g[oh * s.ow + ow] * scale;
        for (int64_t i = std::max<int64_t>(h0, 0); i < std::min(h0 + s.kh, s.h); ++i)
          for (int64_t j = std::max<int64_t>(w0, 0); j < std::min(w0 + s.kw, s.w); ++j) d[i * s.w + j] += v;
      }
  });
}

}  // namespace pylenet::cpu
