// Drivers of the direct convolution: zero-padded copies, the flipped filter for
// backward-data, threading over images, and the fixed-order reduction of dw.
#include "cpu/conv_direct.h"

#include <algorithm>
#include <cstring>

#include "core/parallel.h"
#include "core/simd.h"
#include "cpu/rows.h"

namespace pylenet::cpu {
namespace {

constexpr int64_t kFilterChunk = 8;  // images per partial dw (fixed: results do not depend on threads)

// Which compiled copy of the image kernels a pass runs: the active level's, except at the
// AVX-512 level, where the 8-lane copy (avx512_ymm: AVX-512VL, 32 ymm registers) runs when
// forced ("avx512:8") or, by default, when it fills more of its lanes on this shape than the
// 16-lane copy on a CPU that splits 512-bit FMAs in two (simd.h): cudnn_lenet's conv2 output
// rows are 8 columns, its conv1 rows 24.
enum class Copy { Scalar, AVX2, AVX512, AVX512Ymm };

constexpr simd::Level level_of(Copy copy) {
  return copy == Copy::Scalar ? simd::Level::Scalar : copy == Copy::AVX2 ? simd::Level::AVX2 : simd::Level::AVX512;
}

// PYL_SIMD_DISPATCH, plus the 8-lane copy where the AVX-512 copies are built.
#ifdef PYLENET_HAVE_AVX512
#define PYL_DIRECT_DISPATCH(copy, fn, ...) \
  ((copy) == Copy::AVX512Ymm ? avx512_ymm::fn(__VA_ARGS__) : PYL_SIMD_DISPATCH(level_of(copy), fn, __VA_ARGS__))
#else
#define PYL_DIRECT_DISPATCH(copy, fn, ...) PYL_SIMD_DISPATCH(level_of(copy), fn, __VA_ARGS__)
#endif

Copy pick_copy(ConvPass pass, const ConvShape& s) {
  switch (simd::active()) {
    case simd::Level::Scalar: return Copy::Scalar;
    case simd::Level::AVX2: return Copy::AVX2;
    case simd::Level::AVX512: break;
  }
  const int lanes = simd::lanes512();
  if (lanes != 0) return lanes == 8 ? Copy::AVX512Ymm : Copy::AVX512;
  if (!simd::split_fma512()) return Copy::AVX512;
  const double ymm = PYL_DIRECT_DISPATCH(Copy::AVX512Ymm, direct_lane_use, pass, s);
  const double zmm = PYL_DIRECT_DISPATCH(Copy::AVX512, direct_lane_use, pass, s);
  return ymm > zmm ? Copy::AVX512Ymm : Copy::AVX512;
}

// Buffers are laid out for the widest vector (16 floats), whatever copy runs, so the
// workspace a caller sized earlier stays valid if the level changes; each driver call picks
// the copy once and uses it for every kernel it runs.
constexpr int64_t kMaxWidth = 16;

int vector_width(Copy copy) { return PYL_DIRECT_DISPATCH(copy, vector_width); }

void forward_image(Copy copy, const ConvShape& s, int64_t hp, int64_t wp, const float* xp, const float* w,
                   const float* b, float* y) {
  PYL_DIRECT_DISPATCH(copy, direct_forward_image, s, hp, wp, xp, w, b, y);
}

bool forward_uses_klanes(Copy copy, const ConvShape& s) { return PYL_DIRECT_DISPATCH(copy, forward_uses_klanes, s); }

void forward_klanes_image(Copy copy, const ConvShape& s, int64_t hp, int64_t wp, const float* xp, const float* wt,
                          int64_t kp, const float* bp, float* y) {
  PYL_DIRECT_DISPATCH(copy, direct_forward_klanes_image, s, hp, wp, xp, wt, kp, bp, y);
}

void filter_images(Copy copy, const ConvShape& s, int64_t nimg, int64_t hp, int64_t wp, const float* xp, int64_t wd,
                   const float* dyp, float* dw) {
  PYL_DIRECT_DISPATCH(copy, direct_filter_images, s, nimg, hp, wp, xp, wd, dyp, dw);
}

bool filter_uses_kblocks(Copy copy, const ConvShape& s) { return PYL_DIRECT_DISPATCH(copy, filter_uses_kblocks, s); }

void filter_kblocks(Copy copy, const ConvShape& s, int64_t nimg, int64_t hp, int64_t wp, const float* xp,
                    const float* dy, const float* tail, float* dw) {
  PYL_DIRECT_DISPATCH(copy, direct_filter_kblocks, s, nimg, hp, wp, xp, dy, tail, dw);
}

bool filter_uses_klanes(Copy copy, const ConvShape& s) { return PYL_DIRECT_DISPATCH(copy, filter_uses_klanes, s); }

void filter_klanes(Copy copy, const ConvShape& s, int64_t nimg, int64_t hp, int64_t wp, const float* xp, int64_t kp,
                   const float* dyt, float* dw) {
  PYL_DIRECT_DISPATCH(copy, direct_filter_klanes, s, nimg, hp, wp, xp, kp, dyt, dw);
}

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }
inline int64_t round16(int64_t v) { return round_up(v, 16); }

// The padded input of the forward kernel: (C, HP, WP) with the image at (ph, pw) and zeros
// around it, wide enough for the kernel's whole-vector loads past the last output column.
struct Padded {
  int64_t hp, wp;
};
Padded padded(const ConvShape& s) {
  return {s.h + 2 * s.ph, round_up(s.ow, 4 * kMaxWidth) + s.s - 1 + kMaxWidth};
}
int64_t dy_width(const ConvShape& s) { return round_up(s.ow, 4 * kMaxWidth); }
int64_t k_lanes(const ConvShape& s, Copy copy) { return round_up(s.k, vector_width(copy)); }
// Floats per image of the dy copy the filter kernel reads: padded rows, or (pixels, KP); room
// for either layout at any level.
int64_t dy_image_floats(const ConvShape& s) {
  return std::max(s.oh * s.ow * round_up(s.k, kMaxWidth), s.k * s.oh * dy_width(s));
}

// The image's rows into a padded buffer whose padding is already zero. A worker's buffer is
// zeroed once per call (zero_buffers; backward filter zeroes its image part itself) and holds
// image after image: only the image's cells
// change, so per image this is a row copy, not a fill of the whole padded buffer too
// (LeNet's conv2 backward data: 24k floats per image, most of a 9 us pass).
void pad_image(const float* x, int64_t c, int64_t h, int64_t w, int64_t ph, int64_t pw, Padded d, float* xp) {
  const simd::Level level = simd::active();
  for (int64_t ci = 0; ci < c; ++ci)
    PYL_SIMD_DISPATCH(level, copy_rows, h, w, x + ci * h * w, w, xp + (ci * d.hp + ph) * d.wp + pw, d.wp);
}
void zero_buffers(float* ws, int workers, int64_t per) { std::fill(ws, ws + workers * per, 0.0f); }

// Backward-data is a forward convolution of dy (K channels, OH x OW) with the filter flipped
// in space and its channel axes swapped, padded by (R-1-ph, S-1-pw); its output is (C, H, W).
ConvShape transposed(const ConvShape& s) {
  ConvShape t{};
  t.n = 1; t.c = s.k; t.h = s.oh; t.w = s.ow;
  t.k = s.c; t.r = s.r; t.s = s.s;
  t.ph = s.r - 1 - s.ph; t.pw = s.s - 1 - s.pw; t.sh = 1; t.sw = 1;
  t.oh = s.h; t.ow = s.w;
  return t;
}

}  // namespace

bool conv_direct_supported(const ConvShape& s) {
  return s.sh == 1 && s.sw == 1 && s.ph < s.r && s.pw < s.s && s.s <= 8;
}

int64_t conv_direct_worker_floats(ConvPass pass, const ConvShape& s) {
  switch (pass) {
    case ConvPass::Forward: {
      const Padded d = padded(s);
      return round16(s.c * d.hp * d.wp);
    }
    case ConvPass::BackwardData: {
      const ConvShape t = transposed(s);
      const Padded d = padded(t);
      return round16(t.c * d.hp * d.wp);
    }
    case ConvPass::BackwardFilter: {  // a whole chunk of images, padded
      const Padded d = padded(s);
      return round16(kFilterChunk * (s.c * d.hp * d.wp + dy_image_floats(s)));
    }
  }
  return 0;
}

// Floats of the transposed filter and padded bias the k-lanes forward kernel reads.
int64_t forward_klanes_floats(const ConvShape& s) {
  const int64_t kp = round_up(s.k, kMaxWidth);
  return round16(s.c * s.r * s.s * kp) + kp;
}

int64_t conv_direct_workspace_floats(ConvPass pass, const ConvShape& s, int threads) {
  const int64_t kcrs = s.k * s.c * s.r * s.s;
  if (pass == ConvPass::BackwardData)
    return round16(kcrs) + workers_for(threads, s.n) * conv_direct_worker_floats(pass, s);
  if (pass == ConvPass::BackwardFilter) {
    const int64_t chunks = (s.n + kFilterChunk - 1) / kFilterChunk;
    return round16(chunks * kcrs) + workers_for(threads, chunks) * conv_direct_worker_floats(pass, s);
  }
  return workers_for(threads, s.n) * conv_direct_worker_floats(pass, s) + forward_klanes_floats(s);
}

int64_t conv_direct_prepared_floats(const ConvShape& s) {
  return forward_uses_klanes(pick_copy(ConvPass::Forward, s), s) ? forward_klanes_floats(s) : 0;
}

void conv_direct_prepare(const ConvShape& s, const float* w, const float* b, float* prepared) {
  const Copy copy = pick_copy(ConvPass::Forward, s);
  if (!forward_uses_klanes(copy, s)) return;
  const int64_t kp = k_lanes(s, copy), crs = s.c * s.r * s.s;
  float* wt = prepared;  // (C, R, S, KP), then the bias (KP,)
  float* bp = wt + round16(crs * kp);
  std::fill(wt, bp + kp, 0.0f);
  // Blocks of taps, so that the rows of wt being written stay in L1 (a plain loop over k
  // then i writes one float per cache line: 70 of cudnn_lenet conv2's 130 us at one image).
  constexpr int64_t kTaps = 32;
  for (int64_t i0 = 0; i0 < crs; i0 += kTaps) {
    const int64_t i1 = std::min(crs, i0 + kTaps);
    for (int64_t k = 0; k < s.k; ++k)
      for (int64_t i = i0; i < i1; ++i) wt[i * kp + k] = w[k * crs + i];
  }
  if (b) std::copy(b, b + s.k, bp);
}

void conv_forward_direct_prepared(const ConvShape& s, const float* x, const float* w, const float* b,
                                  const float* prepared, float* y, float* ws, int threads) {
  const Copy copy = pick_copy(ConvPass::Forward, s);
  const Padded d = padded(s);
  const int64_t per = conv_direct_worker_floats(ConvPass::Forward, s);
  const bool klanes = forward_uses_klanes(copy, s);
  const int64_t kp = k_lanes(s, copy), crs = s.c * s.r * s.s;
  zero_buffers(ws, workers_for(threads, s.n), per);
  parallel_for(threads, s.n, [&](int64_t n, int tid) {
    float* xp = ws + tid * per;
    pad_image(x + n * s.c * s.h * s.w, s.c, s.h, s.w, s.ph, s.pw, d, xp);
    float* yn = y + n * s.k * s.oh * s.ow;
    if (klanes) forward_klanes_image(copy, s, d.hp, d.wp, xp, prepared, kp, prepared + round16(crs * kp), yn);
    else forward_image(copy, s, d.hp, d.wp, xp, w, b, yn);
  });
}

void conv_forward_direct(const ConvShape& s, const float* x, const float* w, const float* b, float* y, float* ws,
                         int threads) {
  // The transposed filter after the workers' buffers (conv_direct_workspace_floats).
  float* prepared = ws + workers_for(threads, s.n) * conv_direct_worker_floats(ConvPass::Forward, s);
  conv_direct_prepare(s, w, b, prepared);
  conv_forward_direct_prepared(s, x, w, b, prepared, y, ws, threads);
}

void conv_backward_data_direct(const ConvShape& s, const float* w, const float* dy, float* dx, float* ws,
                               int threads) {
  const Copy copy = pick_copy(ConvPass::BackwardData, s);
  const ConvShape t = transposed(s);
  const Padded d = padded(t);
  // wf (C, K, R, S): wf[c][k][r][q] = w[k][c][R-1-r][S-1-q]
  float* wf = ws;
  for (int64_t k = 0; k < s.k; ++k)
    for (int64_t c = 0; c < s.c; ++c)
      for (int64_t r = 0; r < s.r; ++r)
        for (int64_t q = 0; q < s.s; ++q)
          wf[((c * s.k + k) * s.r + r) * s.s + q] = w[((k * s.c + c) * s.r + (s.r - 1 - r)) * s.s + (s.s - 1 - q)];
  float* scratch = ws + round16(s.k * s.c * s.r * s.s);
  const int64_t per = conv_direct_worker_floats(ConvPass::BackwardData, s);
  zero_buffers(scratch, workers_for(threads, s.n), per);
  parallel_for(threads, s.n, [&](int64_t n, int tid) {
    float* dyp = scratch + tid * per;
    pad_image(dy + n * s.k * s.oh * s.ow, s.k, s.oh, s.ow, t.ph, t.pw, d, dyp);
    forward_image(copy, t, d.hp, d.wp, dyp, wf, nullptr, dx + n * s.c * s.h * s.w);
  });
}

void conv_backward_filter_direct(const ConvShape& s, const float* x, const float* dy, float* dw, float* ws,
                                 int threads) {
  const Padded d = padded(s);
  const int64_t wd = dy_width(s), kcrs = s.k * s.c * s.r * s.s;
  const int64_t chunks = (s.n + kFilterChunk - 1) / kFilterChunk;
  float* partials = ws;
  float* scratch = ws + round16(chunks * kcrs);
  const int64_t per = conv_direct_worker_floats(ConvPass::BackwardFilter, s);
  const simd::Level level = simd::active();  // of the row copies
  const Copy copy = pick_copy(ConvPass::BackwardFilter, s);
  const bool klanes = filter_uses_klanes(copy, s);
  const bool kblocks = !klanes && filter_uses_kblocks(copy, s);
  const int64_t kp = k_lanes(s, copy), vw = vector_width(copy);
  // The kernels' image strides (the workspace holds the largest of the dy layouts).
  const int64_t ximg = s.c * d.hp * d.wp;
  const int64_t dyimg = klanes ? s.oh * s.ow * kp : kblocks ? s.k * s.oh * vw : s.k * s.oh * wd;
  const int64_t tail0 = s.ow / vw * vw;  // first column of the partial vector (kblocks)
  for (int t = 0; t < workers_for(threads, chunks); ++t)  // the padded images (the dy copy is filled below)
    std::fill(scratch + t * per, scratch + t * per + kFilterChunk * ximg, 0.0f);
  parallel_for(threads, chunks, [&](int64_t chunk, int tid) {
    float* xp = scratch + tid * per;              // (kFilterChunk, C, HP, WP)
    float* dyp = xp + kFilterChunk * ximg;        // the dy copy the kernel reads (layout above)
    float* out = chunks > 1 ? partials + chunk * kcrs : dw;
    std::fill(out, out + kcrs, 0.0f);
    const int64_t n0 = chunk * kFilterChunk, n1 = std::min(s.n, n0 + kFilterChunk);
    // (the k-lanes copy writes every lane itself)
    if (!klanes && (!kblocks || tail0 < s.ow)) std::fill(dyp, dyp + (n1 - n0) * dyimg, 0.0f);
    for (int64_t n = n0; n < n1; ++n) {
      pad_image(x + n * s.c * s.h * s.w, s.c, s.h, s.w, s.ph, s.pw, d, xp + (n - n0) * ximg);
      const float* g = dy + n * s.k * s.oh * s.ow;
      float* out_n = dyp + (n - n0) * dyimg;
      if (klanes) {  // (pixels, KP): dy transposed, channels contiguous
        PYL_DIRECT_DISPATCH(copy, direct_dy_to_klanes, g, s.k, s.oh * s.ow, kp, out_n);
      } else if (kblocks) {  // only the last partial vector of each row, zero-padded
        if (tail0 < s.ow)
          PYL_SIMD_DISPATCH(level, copy_rows, s.k * s.oh, s.ow - tail0, g + tail0, s.ow, out_n, vw);
      } else {
        PYL_SIMD_DISPATCH(level, copy_rows, s.k * s.oh, s.ow, g, s.ow, out_n, wd);
      }
    }
    if (klanes) filter_klanes(copy, s, n1 - n0, d.hp, d.wp, xp, kp, dyp, out);
    else if (kblocks) filter_kblocks(copy, s, n1 - n0, d.hp, d.wp, xp, dy + n0 * s.k * s.oh * s.ow, dyp, out);
    else filter_images(copy, s, n1 - n0, d.hp, d.wp, xp, wd, dyp, out);
  });
  if (chunks > 1)
    parallel_for(threads, (kcrs + 1023) / 1024, [&](int64_t blk, int) {
      for (int64_t i = blk * 1024; i < std::min(kcrs, (blk + 1) * 1024); ++i) {
        float acc = partials[i];
        for (int64_t c = 1; c < chunks; ++c) acc += partials[c * kcrs + i];
        dw[i] = acc;
      }
    });
}

}  // namespace pylenet::cpu
