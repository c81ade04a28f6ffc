// CUDA pooling kernels: the window walks of csrc/cpu/pool.cpp, one thread per output
// element (forward) or per input element (backward). Backward gathers instead of
// scattering: each dx element visits the windows that contain it in the CPU's (oh, ow)
// order and adds the same terms, so the result is bit-identical to the CPU's, with no
// atomics. Products that feed a sum use __fmul_rn, which nvcc never fuses into an FMA.
#include <algorithm>

#include "cuda/check.h"
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace pylenet::cuda {
namespace {

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
__device__ int argmax_in_window(const Geom& g, const float* plane, int oh, int ow) {
  const int h0 = oh * g.sh - g.ph, w0 = ow * g.sw - g.pw;
  int best = -1;
  float best_v = 0.0f;
  for (int i = max(h0, 0); i < min(h0 + g.kh, g.h); ++i)
    for (int j = max(w0, 0); j < min(w0 + g.kw, g.w); ++j) {
      const float v = plane[i * g.w + j];
      if (best < 0 || v > best_v || (isnan(v) && !isnan(best_v))) {
        best = i * g.w + j;
        best_v = v;
      }
    }
  return best;  // >= 0: padding <= kernel/2 leaves every window at least one real cell
}

// The output rows (or columns) whose windows contain input row i: [lo, hi).
__device__ __forceinline__ void covering(int i, int pad, int k, int stride, int out, int& lo, int& hi) {
  // oh*stride - pad <= i  and  i < oh*stride - pad + k
  const int t = i + pad - k + 1;
  lo = t <= 0 ? 0 : (t + stride - 1) / stride;
  hi = min((i + pad) / stride + 1, out);
}

__global__ void max_pool_forward_kernel(Geom g, int64_t planes, const float* x, float* y) {
  PYL_GRID_STRIDE(idx, planes * g.oh * g.ow) {
    const int o = static_cast<int>(idx % (g.oh * g.ow));
    const int64_t p = idx / (g.oh * g.ow);
    const float* plane = x + p * g.h * g.w;
    y[idx] = plane[argmax_in_window(g, plane, o / g.ow, o % g.ow)];
  }
}

__global__ void max_pool_backward_kernel(Geom g, int64_t planes, const float* x, const float* dy, float* dx) {
  PYL_GRID_STRIDE(idx, planes * g.h * g.w) {
    const int cell = static_cast<int>(idx % (g.h * g.w));
    const int64_t p = idx / (g.h * g.w);
    const int ih = cell / g.w, iw = cell % g.w;
    const float* plane = x + p * g.h * g.w;
    const float* grad = dy + p * g.oh * g.ow;
    int oh0, oh1, ow0, ow1;
    covering(ih, g.ph, g.kh, g.sh, g.oh, oh0, oh1);
    covering(iw, g.pw, g.kw, g.sw, g.ow, ow0, ow1);
    float acc = 0.0f;
    for (int oh = oh0; oh < oh1; ++oh)
      for (int ow = ow0; ow < ow1; ++ow)
        if (argmax_in_window(g, plane, oh, ow) == cell) acc += grad[oh * g.ow + ow];
    dx[idx] = acc;
  }
}

// Padded cells count as zeros (count_include_pad): divisor kh*kw, the sum skips them.
__global__ void avg_pool_forward_kernel(Geom g, int64_t planes, const float* x, float* y) {
  const float scale = 1.0f / static_cast<float>(g.kh * g.kw);
  PYL_GRID_STRIDE(idx, planes * g.oh * g.ow) {
    const int o = static_cast<int>(idx % (g.oh * g.ow));
    const float* plane = x + (idx / (g.oh * g.ow)) * g.h * g.w;
    const int h0 = (o / g.ow) * g.sh - g.ph, w0 = (o % g.ow) * g.sw - g.pw;
    float acc = 0.0f;
    for (int i = max(h0, 0); i < min(h0 + g.kh, g.h); ++i)
      for (int j = max(w0, 0); j < min(w0 + g.kw, g.w); ++j) acc += plane[i * g.w + j];
    y[idx] = acc * scale;
  }
}

__global__ void avg_pool_backward_kernel(Geom g, int64_t planes, const float* dy, float* dx) {
  const float scale = 1.0f / static_cast<float>(g.kh * g.kw);
  PYL_GRID_STRIDE(idx, planes * g.h * g.w) {
    const int cell = static_cast<int>(idx % (g.h * g.w));
    const float* grad = dy + (idx / (g.h * g.w)) * g.oh * g.ow;
    int oh0, oh1, ow0, ow1;
    covering(cell / g.w, g.ph, g.kh, g.sh, g.oh, oh0, oh1);
    covering(cell % g.w, g.pw, g.kw, g.sw, g.ow, ow0, ow1);
    float acc = 0.0f;
    for (int oh = oh0; oh < oh1; ++oh)
      for (int ow = ow0; ow < ow1; ++ow) acc += __fmul_rn(grad[oh * g.ow + ow], scale);
    dx[idx] = acc;
  }
}

}  // namespace

void max_pool_forward(const PoolShape& s, const float* x, float* y, cudaStream_t stream) {
  const Geom g = geom_of("max_pool2d (cuda)", s);
  const int64_t planes = s.n * s.c;
  max_pool_forward_kernel<<<detail::grid_for(planes * s.oh * s.ow), detail::kBlock, 0, stream>>>(g, planes, x, y);
  PYL_CUDA_LAUNCH_CHECK();
}

void max_pool_backward(const PoolShape& s, const float* x, const float* dy, float* dx, cudaStream_t stream) {
  const Geom g = geom_of("max_pool2d_backward (cuda)", s);
  const int64_t planes = s.n * s.c;
  max_pool_backward_kernel<<<detail::grid_for(planes * s.h * s.w), detail::kBlock, 0, stream>>>(g, planes, x, dy,
                                                                                                 dx);
  PYL_CUDA_LAUNCH_CHECK();
}

void avg_pool_forward(const PoolShape& s, const float* x, float* y, cudaStream_t stream) {
  const Geom g = geom_of("avg_pool2d (cuda)", s);
  const int64_t planes = s.n * s.c;
  avg_pool_forward_kernel<<<detail::grid_for(planes * s.oh * s.ow), detail::kBlock, 0, stream>>>(g, planes, x, y);
  PYL_CUDA_LAUNCH_CHECK();
}

void avg_pool_backward(const PoolShape& s, const float* dy, float* dx, cudaStream_t stream) {
  const Geom g = geom_of("avg_pool2d_backward (cuda)", s);
  const int64_t planes = s.n * s.c;
  avg_pool_backward_kernel<<<detail::grid_for(planes * s.h * s.w), detail::kBlock, 0, stream>>>(g, planes, dy, dx);
  PYL_CUDA_LAUNCH_CHECK();
}

}  // namespace pylenet::cuda
