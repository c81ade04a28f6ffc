// Drivers of the Winograd convolution (conv_winograd.h): the workspace layout, the dispatch
// to the SIMD level's kernels and the fixed-order sum of backward filter's chunks.
#include "cpu/conv_winograd.h"

#include <algorithm>

#include "core/parallel.h"
#include "core/simd.h"

namespace pylenet::cpu {
namespace winograd {
namespace {

Geometry forward_geometry(const ConvShape& s) {
  return Geometry::make(s.n, s.c, s.h, s.w, s.k, s.oh, s.ow, s.ph, s.pw, s.r);
}
void run_forward(const Geometry& g, const float* x, const float* u, const float* bias, float* y, float* ws,
                 int threads, bool max_pool = false, float* index = nullptr) {
  PYL_SIMD_DISPATCH(simd::active(), forward, g, x, u, bias, y, ws, threads, max_pool, index);
}
void run_backward_data(const Geometry& g, const float* dy, const float* ut, float* dx, float* ws, int threads) {
  PYL_SIMD_DISPATCH(simd::active(), backward_data, g, dy, ut, dx, ws, threads);
}
void run_filter_sums(const Geometry& g, const float* x, const float* dy, float* sums, float* ws, int threads) {
  PYL_SIMD_DISPATCH(simd::active(), filter_sums, g, x, dy, sums, ws, threads);
}
void run_backward(const Geometry& g, const float* x, const float* dy, const float* ut, float* dx, float* sums,
                  float* planes, float* ws, int threads, const float* winners = nullptr) {
  PYL_SIMD_DISPATCH(simd::active(), backward, g, x, dy, ut, dx, sums, planes, ws, threads, winners);
}
// U (36, C, K) of the forward pass, or transposed (36, K, C) for backward data.
void run_filter_transform(const ConvShape& s, const float* w, bool transposed, const Geometry& g, float* u,
                          int threads) {
  PYL_SIMD_DISPATCH(simd::active(), filter_transform, w, s.k, s.c, transposed, g, u, threads);
}
void run_filter_adjoint(const float* sums, const Geometry& g, float* dw, int threads) {
  PYL_SIMD_DISPATCH(simd::active(), filter_adjoint, sums, g, dw, threads);
}
int64_t items(const Geometry& g, int threads) { return g.n * g.bands(threads); }
int64_t chunks(const Geometry& g) { return (g.n + kFilterChunk - 1) / kFilterChunk; }

// dw = G^T S G from the chunks' S (nchunks planes at sums), summed in chunk order into the first.
void filter_from_sums(const ConvShape& s, const Geometry& g, float* sums, float* dw, int threads) {
  const int64_t nchunks = chunks(g), plane = kPoints * g.cinp * g.coutp;
  if (nchunks > 1)
    parallel_for(threads, kPoints, [&](int64_t xi, int) {
      float* dst = sums + xi * g.cinp * g.coutp;  // rows past C are never written: not read
      for (int64_t ch = 1; ch < nchunks; ++ch) {
        const float* src = dst + ch * plane;
        for (int64_t i = 0; i < s.c * g.coutp; ++i) dst[i] += src[i];
      }
    });
  run_filter_adjoint(sums, g, dw, threads);
}

}  // namespace

Geometry Geometry::make(int64_t n, int64_t cin, int64_t h, int64_t w, int64_t cout, int64_t oh, int64_t ow,
                        int64_t ph, int64_t pw, int64_t r) {
  const int64_t m = kPatch + 1 - r;
  Geometry g{n, cin, h, w, cout, oh, ow, ph, pw, r, m, (oh + m - 1) / m, (ow + m - 1) / m,
             pad_lanes(cin), pad_lanes(cout), 0};
  // V and M of a block within ~512 KB (L2), in multiples of 12 rows (the products' row blocks).
  const int64_t fit = 512 * 1024 / (4 * kPoints * (g.cinp + g.coutp));
  g.block = fit >= 12 ? std::min<int64_t>(fit, 60) / 12 * 12 : std::max<int64_t>(fit, 4);
  return g;
}

int64_t Geometry::bands(int threads) const {
  const int64_t want = 2 * std::max(threads, 1);  // items per thread, for balance
  return n >= want ? 1 : std::min(th, (want + n - 1) / n);
}

int64_t Geometry::worker_floats() const {
  return round16(xt_rows() * xt_cols() * cinp) + round16(kPoints * block * cinp) +
         round16(kPoints * block * coutp) + round16(m * th * m * tw * coutp);
}

int64_t Geometry::backward_worker_floats() const { return worker_floats() + round16(xt_rows() * xt_cols() * cinp); }

}  // namespace winograd

using winograd::Geometry;
using winograd::kPoints;
using winograd::round16;

bool conv_winograd_supported(const ConvShape& s) {
  return (s.r == 3 || s.r == 5) && s.s == s.r && s.sh == 1 && s.sw == 1 && s.ph < s.r && s.pw < s.s;
}

int64_t conv_winograd_workspace_floats(ConvPass pass, const ConvShape& s, int threads) {
  switch (pass) {
    case ConvPass::Forward: {
      const Geometry g = winograd::forward_geometry(s);
      return round16(kPoints * g.cinp * g.coutp) + round16(g.coutp) +
             workers_for(threads, winograd::items(g, threads)) * g.worker_floats();
    }
    case ConvPass::BackwardData: {
      const Geometry g = winograd::forward_geometry(s);
      return round16(kPoints * g.cinp * g.coutp) + workers_for(threads, g.n) * g.worker_floats();
    }
    case ConvPass::BackwardFilter: {
      const Geometry g = winograd::forward_geometry(s);
      const int64_t chunks = winograd::chunks(g);
      return chunks * kPoints * g.cinp * g.coutp + workers_for(threads, chunks) * g.worker_floats();
    }
  }
  return 0;
}

int64_t conv_winograd_prepared_floats(const ConvShape& s) {
  const Geometry g = winograd::forward_geometry(s);
  return round16(kPoints * g.cinp * g.coutp) + round16(g.coutp);
}

void conv_winograd_prepare(const ConvShape& s, const float* w, const float* b, float* prepared, int threads) {
  const Geometry g = winograd::forward_geometry(s);
  float* bias = prepared + round16(kPoints * g.cinp * g.coutp);
  winograd::run_filter_transform(s, w, false, g, prepared, threads);
  std::fill(bias, bias + g.coutp, 0.0f);
  if (b) std::copy(b, b + s.k, bias);
}

void conv_forward_winograd_prepared(const ConvShape& s, const float* x, const float* prepared, bool bias, float* y,
                                    float* ws, int threads) {
  const Geometry g = winograd::forward_geometry(s);
  winograd::run_forward(g, x, prepared, bias ? prepared + round16(kPoints * g.cinp * g.coutp) : nullptr, y, ws,
                        threads);
}

void conv_forward_winograd_prepared_max_pool(const ConvShape& s, const float* x, const float* prepared, bool bias,
                                             float* y, float* index, float* ws, int threads) {
  const Geometry g = winograd::forward_geometry(s);
  winograd::run_forward(g, x, prepared, bias ? prepared + round16(kPoints * g.cinp * g.coutp) : nullptr, y, ws,
                        threads, true, index);
}

void conv_forward_winograd_max_pool(const ConvShape& s, const float* x, const float* w, const float* b, float* y,
                                    float* index, float* ws, int threads) {
  conv_winograd_prepare(s, w, b, ws, threads);
  conv_forward_winograd_prepared_max_pool(s, x, ws, b != nullptr, y, index, ws + conv_winograd_prepared_floats(s),
                                          threads);
}

void conv_forward_winograd(const ConvShape& s, const float* x, const float* w, const float* b, float* y, float* ws,
                           int threads) {
  conv_winograd_prepare(s, w, b, ws, threads);
  conv_forward_winograd_prepared(s, x, ws, b != nullptr, y, ws + conv_winograd_prepared_floats(s), threads);
}

void conv_backward_data_winograd(const ConvShape& s, const float* w, const float* dy, float* dx, float* ws,
                                 int threads) {
  const Geometry g = winograd::forward_geometry(s);
  float* ut = ws;
  winograd::run_filter_transform(s, w, true, g, ut, threads);
  winograd::run_backward_data(g, dy, ut, dx, ws + round16(kPoints * g.cinp * g.coutp), threads);
}

void conv_backward_filter_winograd(const ConvShape& s, const float* x, const float* dy, float* dw, float* ws,
                                   int threads) {
  const Geometry g = winograd::forward_geometry(s);
  float* sums = ws;
  winograd::run_filter_sums(g, x, dy, sums, sums + winograd::chunks(g) * kPoints * g.cinp * g.coutp, threads);
  winograd::filter_from_sums(s, g, sums, dw, threads);
}

int64_t conv_winograd_backward_workspace_floats(const ConvShape& s, int threads) {
  const Geometry g = winograd::forward_geometry(s);
  const int64_t chunks = winograd::chunks(g), plane = kPoints * g.cinp * g.coutp;
  return round16(plane) + chunks * plane + round16(g.n * g.coutp) +
         workers_for(threads, chunks) * g.backward_worker_floats();
}

void conv_backward_winograd(const ConvShape& s, const float* x, const float* w, const float* dy, float* dx, float* dw,
                            float* db, float* ws, int threads, const float* winners) {
  const Geometry g = winograd::forward_geometry(s);
  const int64_t plane = kPoints * g.cinp * g.coutp;
  float* ut = ws;
  float* sums = ut + round16(plane);
  float* planes = sums + winograd::chunks(g) * plane;
  float* scratch = planes + round16(g.n * g.coutp);
  if (dx) winograd::run_filter_transform(s, w, true, g, ut, threads);
  winograd::run_backward(g, x, dy, ut, dx, sums, db ? planes : nullptr, scratch, threads, winners);
  winograd::filter_from_sums(s, g, sums, dw, threads);
  if (db)
    for (int64_t k = 0; k < s.k; ++k) {
      double acc = 0.0;  // as cpu::conv_backward_bias: the images' sums in order, in double
      for (int64_t n = 0; n < s.n; ++n) acc += planes[n * g.coutp + k];
      db[k] = static_cast<float>(acc);
    }
}

}  // namespace pylenet::cpu
