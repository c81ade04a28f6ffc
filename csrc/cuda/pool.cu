// CUDA pooling kernels: the window walks of csrc/cpu/pool.cpp, one thread per output
// element (forward) or per input element (backward). Backward gathers instead of
// scattering: each dx element visits the windows that contain it in the CPU's (oh, ow)
// order and adds the same terms, so the result is bit-identical to the CPU's, with no
// atomics. Products that feed a sum are rounded on their own (mul_rn), as on the CPU.
// Each kernel is a grid-stride loop around a __host__ __device__ `*_at` function.
// A ReLU the executor folds into the pooling (Executor::fuse_relu): forward applies it to
// each pooled value, backward takes each window's gradient through it first, from the ReLU's
// output `ry` (math::relu_backward, the separate kernels' arithmetic: the same bits).
#include <algorithm>

#include "cuda/check.h"
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace pylenet::cuda {
namespace {

using detail::imax;
using detail::imin;

struct Geom {
  int h, w, oh, ow, kh, kw, sh, sw, ph, pw;
};

Geom geom_of(const char* op, const PoolShape& s) {
  detail::check_int32(op, s.n * s.c * s.h * s.w, "input elements");
  detail::check_int32(op, s.n * s.c * s.oh * s.ow, "output elements");
  for (int64_t v : {s.kh, s.kw, s.sh, s.sw, s.ph, s.pw}) detail::check_int32(op, v, "window size");
  auto i = [](int64_t v) { return static_cast<int>(v); };
  return Geom{i(s.h), i(s.w), i(s.oh), i(s.ow), i(s.kh), i(s.kw), i(s.sh), i(s.sw), i(s.ph), i(s.pw)};
}

// Index within the plane of the window's first maximum (NaN counts as the maximum): the
// rule of cpu::argmax_in_window, cell for cell.
PYL_HD inline int argmax_in_window(const Geom& g, const float* plane, int oh, int ow) {
  const int h0 = oh * g.sh - g.ph, w0 = ow * g.sw - g.pw;
  int best = -1;
  float best_v = 0.0f;
  for (int i = imax(h0, 0); i < imin(h0 + g.kh, g.h); ++i)
    for (int j = imax(w0, 0); j < imin(w0 + g.kw, g.w); ++j) {
      const float v = plane[i * g.w + j];
      if (best < 0 || v > best_v || (detail::is_nan(v) && !detail::is_nan(best_v))) {
        best = i * g.w + j;
        best_v = v;
      }
    }
  return best;  // >= 0: padding <= kernel/2 leaves every window at least one real cell
}

// The outputs along one axis whose windows contain input position i: [lo, hi).
// Window o covers [o*stride - pad, o*stride - pad + k).
PYL_HD inline void covering(int i, int pad, int k, int stride, int out, int& lo, int& hi) {
  const int t = i + pad - k + 1;  // o*stride >= t
  lo = t <= 0 ? 0 : (t + stride - 1) / stride;
  hi = imin((i + pad) / stride + 1, out);
}

// idx runs over (plane, oh, ow) for the forward functions, (plane, ih, iw) for backward.
PYL_HD inline float max_pool_forward_at(const Geom& g, const float* x, int64_t idx) {
  const int o = static_cast<int>(idx % (g.oh * g.ow));
  const float* plane = x + (idx / (g.oh * g.ow)) * g.h * g.w;
  return plane[argmax_in_window(g, plane, o / g.ow, o % g.ow)];
}

// Output o's gradient, through the folded ReLU when ry (its output) is given.
PYL_HD inline float window_grad(const float* grad, const float* ry, int o) {
  return ry ? math::relu_backward(ry[o], grad[o]) : grad[o];
}

PYL_HD inline float max_pool_backward_at(const Geom& g, const float* x, const float* dy, const float* ry,
                                         int64_t idx) {
  const int cell = static_cast<int>(idx % (g.h * g.w));
  const int64_t p = idx / (g.h * g.w);
  const float* plane = x + p * g.h * g.w;
  const float* grad = dy + p * g.oh * g.ow;
  const float* rplane = ry ? ry + p * g.oh * g.ow : nullptr;
  int oh0, oh1, ow0, ow1;
  covering(cell / g.w, g.ph, g.kh, g.sh, g.oh, oh0, oh1);
  covering(cell % g.w, g.pw, g.kw, g.sw, g.ow, ow0, ow1);
  float acc = 0.0f;
  for (int oh = oh0; oh < oh1; ++oh)
    for (int ow = ow0; ow < ow1; ++ow)
      if (argmax_in_window(g, plane, oh, ow) == cell) acc += window_grad(grad, rplane, oh * g.ow + ow);
  return acc;
}

// Padded cells count as zeros (count_include_pad): divisor kh*kw, the sum skips them.
PYL_HD inline float avg_pool_forward_at(const Geom& g, const float* x, int64_t idx) {
  const float scale = 1.0f / static_cast<float>(g.kh * g.kw);
  const int o = static_cast<int>(idx % (g.oh * g.ow));
  const float* plane = x + (idx / (g.oh * g.ow)) * g.h * g.w;
  const int h0 = (o / g.ow) * g.sh - g.ph, w0 = (o % g.ow) * g.sw - g.pw;
  float acc = 0.0f;
  for (int i = imax(h0, 0); i < imin(h0 + g.kh, g.h); ++i)
    for (int j = imax(w0, 0); j < imin(w0 + g.kw, g.w); ++j) acc += plane[i * g.w + j];
  return acc * scale;
}

PYL_HD inline float avg_pool_backward_at(const Geom& g, const float* dy, const float* ry, int64_t idx) {
  const float scale = 1.0f / static_cast<float>(g.kh * g.kw);
  const int cell = static_cast<int>(idx % (g.h * g.w));
  const int64_t p = idx / (g.h * g.w);
  const float* grad = dy + p * g.oh * g.ow;
  const float* rplane = ry ? ry + p * g.oh * g.ow : nullptr;
  int oh0, oh1, ow0, ow1;
  covering(cell / g.w, g.ph, g.kh, g.sh, g.oh, oh0, oh1);
  covering(cell % g.w, g.pw, g.kw, g.sw, g.ow, ow0, ow1);
  float acc = 0.0f;
  for (int oh = oh0; oh < oh1; ++oh)
    for (int ow = ow0; ow < ow1; ++ow) acc += detail::mul_rn(window_grad(grad, rplane, oh * g.ow + ow), scale);
  return acc;
}

// The forward value through the folded ReLU.
PYL_HD inline float epilogue(float v, bool relu) { return relu ? math::relu(v) : v; }

__global__ void max_pool_forward_kernel(Geom g, int64_t planes, const float* x, float* y, bool relu) {
  PYL_GRID_STRIDE(i, planes * g.oh * g.ow) y[i] = epilogue(max_pool_forward_at(g, x, i), relu);
}
__global__ void max_pool_backward_kernel(Geom g, int64_t planes, const float* x, const float* dy, const float* ry,
                                         float* dx) {
  PYL_GRID_STRIDE(i, planes * g.h * g.w) dx[i] = max_pool_backward_at(g, x, dy, ry, i);
}
__global__ void avg_pool_forward_kernel(Geom g, int64_t planes, const float* x, float* y, bool relu) {
  PYL_GRID_STRIDE(i, planes * g.oh * g.ow) y[i] = epilogue(avg_pool_forward_at(g, x, i), relu);
}
__global__ void avg_pool_backward_kernel(Geom g, int64_t planes, const float* dy, const float* ry, float* dx) {
  PYL_GRID_STRIDE(i, planes * g.h * g.w) dx[i] = avg_pool_backward_at(g, dy, ry, i);
}

}  // namespace

void max_pool_forward(const PoolShape& s, const float* x, float* y, cudaStream_t stream, bool relu) {
  const Geom g = geom_of("max_pool2d (cuda)", s);
  const int64_t planes = s.n * s.c;
  max_pool_forward_kernel<<<detail::grid_for(planes * s.oh * s.ow), detail::kBlock, 0, stream>>>(g, planes, x, y,
                                                                                                 relu);
  PYL_CUDA_LAUNCH_CHECK();
}

void max_pool_backward(const PoolShape& s, const float* x, const float* dy, float* dx, cudaStream_t stream,
                       const float* relu_y) {
  const Geom g = geom_of("max_pool2d_backward (cuda)", s);
  const int64_t planes = s.n * s.c;
  max_pool_backward_kernel<<<detail::grid_for(planes * s.h * s.w), detail::kBlock, 0, stream>>>(g, planes, x, dy,
                                                                                                 relu_y, dx);
  PYL_CUDA_LAUNCH_CHECK();
}

void avg_pool_forward(const PoolShape& s, const float* x, float* y, cudaStream_t stream, bool relu) {
  const Geom g = geom_of("avg_pool2d (cuda)", s);
  const int64_t planes = s.n * s.c;
  avg_pool_forward_kernel<<<detail::grid_for(planes * s.oh * s.ow), detail::kBlock, 0, stream>>>(g, planes, x, y,
                                                                                                 relu);
  PYL_CUDA_LAUNCH_CHECK();
}

void avg_pool_backward(const PoolShape& s, const float* dy, float* dx, cudaStream_t stream, const float* relu_y) {
  const Geom g = geom_of("avg_pool2d_backward (cuda)", s);
  const int64_t planes = s.n * s.c;
  avg_pool_backward_kernel<<<detail::grid_for(planes * s.h * s.w), detail::kBlock, 0, stream>>>(g, planes, dy,
                                                                                                 relu_y, dx);
  PYL_CUDA_LAUNCH_CHECK();
}

}  // namespace pylenet::cuda
