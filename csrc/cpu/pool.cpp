// CPU pooling kernels: one (n, c) plane per work item.
#include <algorithm>
#include <cmath>

#include "core/parallel.h"
#include "ops/pool.h"

namespace pylenet::cpu {
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

// "b beats a" under the rules above: greater, or the first NaN. Branch-free, so the 2x2
// loops below vectorise.
inline bool beats(float b, float a) { return b > a || (b != b && a == a); }

// The common LeNet case, 2x2 windows with stride 2 and no padding: windows tile the plane,
// so every input pixel belongs to at most one window.
inline bool is_2x2_tiling(const PoolShape& s) {
  return s.kh == 2 && s.kw == 2 && s.sh == 2 && s.sw == 2 && s.ph == 0 && s.pw == 0;
}

}  // namespace

void max_pool_forward(const PoolShape& s, const float* x, float* y, int threads) {
  const bool tiling = is_2x2_tiling(s);
  parallel_for(threads, s.n * s.c, [&](int64_t p, int) {
    const float* plane = x + p * s.h * s.w;
    float* out = y + p * s.oh * s.ow;
    if (tiling) {
      for (int64_t oh = 0; oh < s.oh; ++oh) {
        const float* r0 = plane + 2 * oh * s.w;
        const float* r1 = r0 + s.w;
        for (int64_t ow = 0; ow < s.ow; ++ow) {
          float m = r0[2 * ow];
          m = beats(r0[2 * ow + 1], m) ? r0[2 * ow + 1] : m;
          m = beats(r1[2 * ow], m) ? r1[2 * ow] : m;
          m = beats(r1[2 * ow + 1], m) ? r1[2 * ow + 1] : m;
          out[oh * s.ow + ow] = m;
        }
      }
      return;
    }
    for (int64_t oh = 0; oh < s.oh; ++oh)
      for (int64_t ow = 0; ow < s.ow; ++ow) out[oh * s.ow + ow] = plane[argmax_in_window(s, plane, oh, ow)];
  });
}

void max_pool_backward(const PoolShape& s, const float* x, const float* dy, float* dx, int threads) {
  const bool tiling = is_2x2_tiling(s);
  parallel_for(threads, s.n * s.c, [&](int64_t p, int) {
    const float* plane = x + p * s.h * s.w;
    const float* g = dy + p * s.oh * s.ow;
    float* d = dx + p * s.h * s.w;
    if (tiling) {
      // Each window writes its four cells: the gradient into its first maximum, zeros elsewhere.
      // Rows/columns left over by an odd size belong to no window.
      if (s.h > 2 * s.oh) std::fill(d + 2 * s.oh * s.w, d + s.h * s.w, 0.0f);
      for (int64_t oh = 0; oh < s.oh; ++oh) {
        const float* r0 = plane + 2 * oh * s.w;
        const float* r1 = r0 + s.w;
        float* d0 = d + 2 * oh * s.w;
        float* d1 = d0 + s.w;
        for (int64_t ow = 0; ow < s.ow; ++ow) {
          // Selects rather than branches, so this loop vectorises too.
          float m = r0[2 * ow];
          int at = 0;
          const bool b1 = beats(r0[2 * ow + 1], m);
          m = b1 ? r0[2 * ow + 1] : m;
          at = b1 ? 1 : at;
          const bool b2 = beats(r1[2 * ow], m);
          m = b2 ? r1[2 * ow] : m;
          at = b2 ? 2 : at;
          at = beats(r1[2 * ow + 1], m) ? 3 : at;
          const float v = g[oh * s.ow + ow];
          d0[2 * ow] = at == 0 ? v : 0.0f;
          d0[2 * ow + 1] = at == 1 ? v : 0.0f;
          d1[2 * ow] = at == 2 ? v : 0.0f;
          d1[2 * ow + 1] = at == 3 ? v : 0.0f;
        }
        if (s.w > 2 * s.ow) {
          d0[s.w - 1] = 0.0f;
          d1[s.w - 1] = 0.0f;
        }
      }
      return;
    }
    std::fill(d, d + s.h * s.w, 0.0f);
    for (int64_t oh = 0; oh < s.oh; ++oh)
      for (int64_t ow = 0; ow < s.ow; ++ow) d[argmax_in_window(s, plane, oh, ow)] += g[oh * s.ow + ow];
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
