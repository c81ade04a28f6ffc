// CPU convolution kernels. Two algorithms, the same math:
//  - naive: the seven nested loops, one output element at a time;
//  - im2col: unfold each image into a (C*R*S, OH*OW) matrix of input patches, then one GEMM
//    with the (K, C*R*S) filter matrix gives the (K, OH*OW) output.
// Work is split over images (forward, backward-data), output channels (naive
// backward-filter) or fixed-size chunks of the batch (im2col backward-filter), so every
// output element is summed in the same order whatever the thread count.
#include <algorithm>
#include <cstring>

#include "core/parallel.h"
#include "core/simd.h"
#include "cpu/gemm.h"
#include "cpu/rows.h"
#include "ops/conv.h"

namespace pylenet::cpu {


namespace {

// Images per partial sum in the im2col backward-filter: fixed, so the summation order of
// dw does not depend on the thread count.
constexpr int64_t kFilterChunk = 8;

inline bool inside(int64_t i, int64_t n) { return i >= 0 && i < n; }

// The rows of kernel tap (r, q) that read inside the image, for stride-1 columns: output
// rows [oh0, oh1) and, within each, output columns [lo, hi). Computed once per tap so the
// copy loops below are plain 2-D blocks.
struct TapBlock {
  int64_t oh0, oh1, lo, hi;
};
TapBlock tap_block(const ConvShape& s, int64_t r, int64_t q) {
  TapBlock b;
  // ih = oh * sh - ph + r must be in [0, h): oh in [ceil((ph - r) / sh), ceil((h + ph - r) / sh)).
  // (An integer division costs ~30 cycles, as much as copying a LeNet row: none for stride 1.)
  const int64_t top = s.ph - r, bottom = s.h + s.ph - r;
  b.oh0 = std::clamp<int64_t>(s.sh == 1 ? top : (top + s.sh - 1) / s.sh, 0, s.oh);
  b.oh1 = std::clamp<int64_t>(s.sh == 1 ? bottom : (bottom + s.sh - 1) / s.sh, b.oh0, s.oh);
  b.lo = std::clamp<int64_t>(s.pw - q, 0, s.ow);
  b.hi = std::clamp<int64_t>(s.w + s.pw - q, b.lo, s.ow);
  return b;
}

// dst rows [oh0, oh1) of width ow (zero outside [lo, hi)) <- src rows with pitch sp.
void copy_block(const TapBlock& b, int64_t ow, const float* src, int64_t sp, float* dst) {
  if (b.lo > 0 || b.hi < ow)  // columns over the padding
    for (int64_t oh = b.oh0; oh < b.oh1; ++oh) {
      std::fill(dst + oh * ow, dst + oh * ow + b.lo, 0.0f);
      std::fill(dst + oh * ow + b.hi, dst + (oh + 1) * ow, 0.0f);
    }
  PYL_SIMD_DISPATCH(simd::active(), copy_rows, b.oh1 - b.oh0, b.hi - b.lo, src + b.oh0 * sp + b.lo, sp,
                    dst + b.oh0 * ow + b.lo, ow);
}

// dst rows (pitch dp) += src rows [oh0, oh1), columns [lo, hi), of width ow.
void add_block(const TapBlock& b, int64_t ow, const float* src, float* dst, int64_t dp) {
  PYL_SIMD_DISPATCH(simd::active(), add_rows, b.oh1 - b.oh0, b.hi - b.lo, src + b.oh0 * ow + b.lo, ow,
                    dst + b.oh0 * dp + b.lo, dp);
}

// cols (C*R*S, OH*OW) <- patches of one image x (C, H, W); zeros where the window hangs
// over the padding.
void im2col(const ConvShape& s, const float* x, float* cols) {
  const int64_t ohw = s.oh * s.ow;
  for (int64_t c = 0; c < s.c; ++c)
    for (int64_t r = 0; r < s.r; ++r)
      for (int64_t q = 0; q < s.s; ++q) {
        float* dst = cols + ((c * s.r + r) * s.s + q) * ohw;
        if (s.sw == 1) {
          const TapBlock b = tap_block(s, r, q);
          std::fill(dst, dst + b.oh0 * s.ow, 0.0f);
          std::fill(dst + b.oh1 * s.ow, dst + ohw, 0.0f);
          // Output (oh, j) reads input row oh*sh - ph + r, column j - pw + q.
          copy_block(b, s.ow, x + (c * s.h - s.ph + r) * s.w - s.pw + q, s.sh * s.w, dst);
          continue;
        }
        for (int64_t oh = 0; oh < s.oh; ++oh) {
          const int64_t ih = oh * s.sh - s.ph + r;
          float* row = dst + oh * s.ow;
          for (int64_t ow = 0; ow < s.ow; ++ow) {
            const int64_t iw = ow * s.sw - s.pw + q;
            row[ow] = inside(ih, s.h) && inside(iw, s.w) ? x[(c * s.h + ih) * s.w + iw] : 0.0f;
          }
        }
      }
}

// The adjoint of im2col: dx (C, H, W) += cols scattered back to the pixels they came from.
void col2im(const ConvShape& s, const float* cols, float* dx) {
  const int64_t ohw = s.oh * s.ow;
  for (int64_t c = 0; c < s.c; ++c)
    for (int64_t r = 0; r < s.r; ++r)
      for (int64_t q = 0; q < s.s; ++q) {
        const float* src = cols + ((c * s.r + r) * s.s + q) * ohw;
        if (s.sw == 1) {  // the same block as in im2col, added back
          add_block(tap_block(s, r, q), s.ow, src, dx + (c * s.h - s.ph + r) * s.w - s.pw + q, s.sh * s.w);
          continue;
        }
        for (int64_t oh = 0; oh < s.oh; ++oh)
          for (int64_t ow = 0; ow < s.ow; ++ow) {
            const int64_t ih = oh * s.sh - s.ph + r, iw = ow * s.sw - s.pw + q;
            if (inside(ih, s.h) && inside(iw, s.w)) dx[(c * s.h + ih) * s.w + iw] += src[oh * s.ow + ow];
          }
      }
}

// Per-worker scratch of the im2col kernels: one column matrix plus the GEMM's packing space.
int64_t im2col_worker_floats(ConvPass pass, const ConvShape& s) {
  const int64_t crs = s.col_rows(), ohw = s.col_cols();
  int64_t gemm = 0;
  switch (pass) {
    case ConvPass::Forward: gemm = sgemm_workspace_floats(s.k, ohw, crs); break;
    case ConvPass::BackwardData: gemm = sgemm_workspace_floats(crs, ohw, s.k); break;
    case ConvPass::BackwardFilter: gemm = sgemm_workspace_floats(s.k, crs, ohw); break;
  }
  // Round to 16 floats so every worker's slice stays 64-byte aligned.
  return (crs * ohw + gemm + 15) / 16 * 16;
}

int64_t filter_chunks(const ConvShape& s) { return (s.n + kFilterChunk - 1) / kFilterChunk; }

}  // namespace

int64_t conv_im2col_workspace_floats(ConvPass pass, const ConvShape& s, int threads) {
  if (pass == ConvPass::BackwardFilter) {
    const int64_t chunks = filter_chunks(s);
    const int64_t partials = chunks > 1 ? chunks * s.k * s.col_rows() : 0;
    return (partials + 15) / 16 * 16 + workers_for(threads, chunks) * im2col_worker_floats(pass, s);
  }
  return workers_for(threads, s.n) * im2col_worker_floats(pass, s);
}

// ---------------------------------------------------------------- forward
void conv_forward_naive(const ConvShape& s, const float* x, const float* w, const float* b, float* y,
                        int threads) {
  parallel_for(threads, s.n * s.k, [&](int64_t nk, int) {
    const int64_t n = nk / s.k, k = nk % s.k;
    for (int64_t oh = 0; oh < s.oh; ++oh)
      for (int64_t ow = 0; ow < s.ow; ++ow) {
        float acc = b ? b[k] : 0.0f;
        for (int64_t c = 0; c < s.c; ++c)
          for (int64_t r = 0; r < s.r; ++r)
            for (int64_t q = 0; q < s.s; ++q) {
              const int64_t ih = oh * s.sh - s.ph + r, iw = ow * s.sw - s.pw + q;
              if (inside(ih, s.h) && inside(iw, s.w))
                acc += x[((n * s.c + c) * s.h + ih) * s.w + iw] * w[((k * s.c + c) * s.r + r) * s.s + q];
            }
        y[((n * s.k + k) * s.oh + oh) * s.ow + ow] = acc;
      }
  });
}

void conv_forward_im2col(const ConvShape& s, const float* x, const float* w, const float* b, float* y,
                         float* ws, int threads) {
  const int64_t crs = s.col_rows(), ohw = s.col_cols();
  const int64_t per = im2col_worker_floats(ConvPass::Forward, s);
  // With fewer images than threads, the threads go into the GEMM instead.
  const int gemm_threads = workers_for(threads, s.n) == 1 ? threads : 1;
  parallel_for(threads, s.n, [&](int64_t n, int tid) {
    float* cols = ws + tid * per;
    float* yn = y + n * s.k * ohw;
    im2col(s, x + n * s.c * s.h * s.w, cols);
    sgemm(false, false, s.k, ohw, crs, 1.0f, w, crs, cols, ohw, 0.0f, yn, ohw, cols + crs * ohw, gemm_threads);
    if (b)
      for (int64_t k = 0; k < s.k; ++k)
        for (int64_t i = 0; i < ohw; ++i) yn[k * ohw + i] += b[k];
  });
}

// ---------------------------------------------------------------- backward data
void conv_backward_data_naive(const ConvShape& s, const float* w, const float* dy, float* dx, int threads) {
  parallel_for(threads, s.n, [&](int64_t n, int) {
    float* dxn = dx + n * s.c * s.h * s.w;
    std::fill(dxn, dxn + s.c * s.h * s.w, 0.0f);
    // Each output gradient flows back to every input pixel its window touched.
    for (int64_t k = 0; k < s.k; ++k)
      for (int64_t oh = 0; oh < s.oh; ++oh)
        for (int64_t ow = 0; ow < s.ow; ++ow) {
          const float g = dy[((n * s.k + k) * s.oh + oh) * s.ow + ow];
          for (int64_t c = 0; c < s.c; ++c)
            for (int64_t r = 0; r < s.r; ++r)
              for (int64_t q = 0; q < s.s; ++q) {
                const int64_t ih = oh * s.sh - s.ph + r, iw = ow * s.sw - s.pw + q;
                if (inside(ih, s.h) && inside(iw, s.w))
                  dxn[(c * s.h + ih) * s.w + iw] += g * w[((k * s.c + c) * s.r + r) * s.s + q];
              }
        }
  });
}

void conv_backward_data_im2col(const ConvShape& s, const float* w, const float* dy, float* dx, float* ws,
                               int threads) {
  const int64_t crs = s.col_rows(), ohw = s.col_cols();
  const int64_t per = im2col_worker_floats(ConvPass::BackwardData, s);
  const int gemm_threads = workers_for(threads, s.n) == 1 ? threads : 1;
  parallel_for(threads, s.n, [&](int64_t n, int tid) {
    float* dcols = ws + tid * per;
    float* dxn = dx + n * s.c * s.h * s.w;
    // dcols (CRS, OHW) = w^T (CRS, K) . dy[n] (K, OHW)
    sgemm(true, false, crs, ohw, s.k, 1.0f, w, crs, dy + n * s.k * ohw, ohw, 0.0f, dcols, ohw,
          dcols + crs * ohw, gemm_threads);
    std::fill(dxn, dxn + s.c * s.h * s.w, 0.0f);
    col2im(s, dcols, dxn);
  });
}

// ---------------------------------------------------------------- backward filter
void conv_backward_filter_naive(const ConvShape& s, const float* x, const float* dy, float* dw, int threads) {
  parallel_for(threads, s.k, [&](int64_t k, int) {
    for (int64_t c = 0; c < s.c; ++c)
      for (int64_t r = 0; r < s.r; ++r)
        for (int64_t q = 0; q < s.s; ++q) {
          float acc = 0.0f;
          for (int64_t n = 0; n < s.n; ++n)
            for (int64_t oh = 0; oh < s.oh; ++oh)
              for (int64_t ow = 0; ow < s.ow; ++ow) {
                const int64_t ih = oh * s.sh - s.ph + r, iw = ow * s.sw - s.pw + q;
                if (inside(ih, s.h) && inside(iw, s.w))
                  acc += dy[((n * s.k + k) * s.oh + oh) * s.ow + ow] * x[((n * s.c + c) * s.h + ih) * s.w + iw];
              }
          dw[((k * s.c + c) * s.r + r) * s.s + q] = acc;
        }
  });
}

void conv_backward_filter_im2col(const ConvShape& s, const float* x, const float* dy, float* dw, float* ws,
                                 int threads) {
  const int64_t crs = s.col_rows(), ohw = s.col_cols();
  const int64_t chunks = filter_chunks(s);
  // One partial dw per chunk of kFilterChunk images, summed in chunk order at the end.
  float* partials = ws;
  float* scratch = ws + (chunks > 1 ? (chunks * s.k * crs + 15) / 16 * 16 : 0);
  const int64_t per = im2col_worker_floats(ConvPass::BackwardFilter, s);
  const int gemm_threads = workers_for(threads, chunks) == 1 ? threads : 1;
  parallel_for(threads, chunks, [&](int64_t chunk, int tid) {
    float* cols = scratch + tid * per;
    float* out = chunks > 1 ? partials + chunk * s.k * crs : dw;
    const int64_t n0 = chunk * kFilterChunk, n1 = std::min(s.n, n0 + kFilterChunk);
    for (int64_t n = n0; n < n1; ++n) {
      im2col(s, x + n * s.c * s.h * s.w, cols);
      // out (K, CRS) += dy[n] (K, OHW) . cols^T (OHW, CRS)
      sgemm(false, true, s.k, crs, ohw, 1.0f, dy + n * s.k * ohw, ohw, cols, ohw, n == n0 ? 0.0f : 1.0f, out,
            crs, cols + crs * ohw, gemm_threads);
    }
  });
  if (chunks > 1)
    parallel_for(threads, s.k, [&](int64_t k, int) {
      for (int64_t i = k * crs; i < (k + 1) * crs; ++i) {
        float acc = 0.0f;
        for (int64_t chunk = 0; chunk < chunks; ++chunk) acc += partials[chunk * s.k * crs + i];
        dw[i] = acc;
      }
    });
}

// ---------------------------------------------------------------- backward bias
void conv_backward_bias(const ConvShape& s, const float* dy, float* db, int threads) {
  const int64_t ohw = s.oh * s.ow;
  parallel_for(threads, s.k, [&](int64_t k, int) {
    double acc = 0.0;  // long sums over the batch: double keeps them exact enough
    for (int64_t n = 0; n < s.n; ++n) {
      // 16 running sums in a fixed order, so the compiler can keep them in vector registers
      // (one serial sum waits on the add latency: 3.7 us per LeNet sample before this).
      const float* p = dy + (n * s.k + k) * ohw;
      constexpr int kLanes = 16;
      float lanes[kLanes] = {};
      int64_t i = 0;
      for (; i + kLanes <= ohw; i += kLanes)
        for (int l = 0; l < kLanes; ++l) lanes[l] += p[i + l];
      float plane = 0.0f;
      for (int l = 0; l < kLanes; ++l) plane += lanes[l];
      for (; i < ohw; ++i) plane += p[i];
      acc += plane;
    }
    db[k] = static_cast<float>(acc);
  });
}

}  // namespace pylenet::cpu
