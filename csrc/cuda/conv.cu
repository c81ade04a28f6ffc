// CUDA convolution kernels: the algorithms of csrc/cpu/conv.cpp, plus implicit GEMM.
//  - naive: one thread per output element running the CPU's loops;
//  - im2col: unfold a group of images into columns, then one batched SGEMM (gemm.cu);
//  - implicit_gemm: the tiled SGEMM kernel itself (gemm_tile.cuh), whose operand loaders
//    compute the unfolded matrix on the fly from x / w / dy while filling shared memory.
// Index arithmetic is 32-bit (Dims, checked once per call): 64-bit division costs several
// times more on a GPU, and these kernels divide in their innermost loads.
#include <algorithm>

#include "cuda/check.h"
#include "cuda/common.cuh"
#include "cuda/gemm_tile.cuh"
#include "cuda/kernels.h"

namespace pylenet::cuda {
namespace {

using detail::inside;

// Images per partial dw of the implicit-GEMM backward filter. A constant, not a function
// of the GPU, so dw is summed in the same order on every device.
constexpr int kFilterChunk = 8;
// Floats of column buffer per im2col group (32 MiB): bounds the workspace while giving
// each batched GEMM launch enough images to fill the GPU.
constexpr int64_t kIm2colGroupFloats = int64_t(1) << 23;

struct Dims {
  int n, c, h, w;   // x (N, C, H, W)
  int k, r, s;      // w (K, C, R, S)
  int oh, ow;       // y (N, K, OH, OW)
  int ph, pw, sh, sw;
  PYL_HD int hw() const { return h * w; }
  PYL_HD int ohw() const { return oh * ow; }
  PYL_HD int rs() const { return r * s; }
  PYL_HD int crs() const { return c * r * s; }
};

Dims dims_of(const char* op, const ConvShape& s) {
  detail::check_int32(op, s.n * s.c * s.h * s.w, "input elements");
  detail::check_int32(op, s.n * s.k * s.oh * s.ow, "output elements");
  detail::check_int32(op, s.k * s.c * s.r * s.s, "filter elements");
  detail::check_int32(op, s.ph, "padding");
  detail::check_int32(op, s.pw, "padding");
  detail::check_int32(op, s.sh, "stride");
  detail::check_int32(op, s.sw, "stride");
  auto i = [](int64_t v) { return static_cast<int>(v); };
  return Dims{i(s.n), i(s.c), i(s.h), i(s.w), i(s.k), i(s.r), i(s.s), i(s.oh), i(s.ow),
              i(s.ph), i(s.pw), i(s.sh), i(s.sw)};
}

// Each kernel below is a grid-stride loop around one `*_at` function that computes a single
// output element. The `*_at` functions are __host__ __device__ (PYL_HD, ops/math.h) so the
// index arithmetic can be exercised on a machine without a GPU.

// ======================================================================= naive
// y[n,k,oh,ow] = b[k] + sum_{c,r,q} x[n,c,oh*sh-ph+r, ow*sw-pw+q] * w[k,c,r,q]
PYL_HD inline float conv_forward_naive_at(const Dims& d, const float* x, const float* w, const float* b, int i) {
  const int ow = i % d.ow; i /= d.ow;
  const int oh = i % d.oh; i /= d.oh;
  const int k = i % d.k, n = i / d.k;
  float acc = b ? b[k] : 0.0f;
  for (int c = 0; c < d.c; ++c)
    for (int r = 0; r < d.r; ++r)
      for (int q = 0; q < d.s; ++q) {
        const int ih = oh * d.sh - d.ph + r, iw = ow * d.sw - d.pw + q;
        if (inside(ih, d.h) && inside(iw, d.w))
          acc += x[((n * d.c + c) * d.h + ih) * d.w + iw] * w[((k * d.c + c) * d.r + r) * d.s + q];
      }
  return acc;
}

// dx[n,c,ih,iw] = sum over the (k, oh, ow, r, q) whose window put x[n,c,ih,iw] at tap (r, q):
// ih = oh*sh - ph + r, so oh = (ih + ph - r) / sh when that divides exactly.
PYL_HD inline float conv_backward_data_naive_at(const Dims& d, const float* w, const float* dy, int i) {
  const int iw = i % d.w; i /= d.w;
  const int ih = i % d.h; i /= d.h;
  const int c = i % d.c, n = i / d.c;
  float acc = 0.0f;
  for (int k = 0; k < d.k; ++k)
    for (int r = 0; r < d.r; ++r) {
      const int th = ih + d.ph - r;
      if (th < 0 || th % d.sh != 0 || th / d.sh >= d.oh) continue;
      const int oh = th / d.sh;
      for (int q = 0; q < d.s; ++q) {
        const int tw = iw + d.pw - q;
        if (tw < 0 || tw % d.sw != 0 || tw / d.sw >= d.ow) continue;
        acc += dy[((n * d.k + k) * d.oh + oh) * d.ow + tw / d.sw] * w[((k * d.c + c) * d.r + r) * d.s + q];
      }
    }
  return acc;
}

// dw[k,c,r,q] = sum_{n,oh,ow} dy[n,k,oh,ow] * x[n,c,oh*sh-ph+r, ow*sw-pw+q], in the CPU's order
PYL_HD inline float conv_backward_filter_naive_at(const Dims& d, const float* x, const float* dy, int i) {
  const int q = i % d.s; i /= d.s;
  const int r = i % d.r; i /= d.r;
  const int c = i % d.c, k = i / d.c;
  float acc = 0.0f;
  for (int n = 0; n < d.n; ++n)
    for (int oh = 0; oh < d.oh; ++oh)
      for (int ow = 0; ow < d.ow; ++ow) {
        const int ih = oh * d.sh - d.ph + r, iw = ow * d.sw - d.pw + q;
        if (inside(ih, d.h) && inside(iw, d.w))
          acc += dy[((n * d.k + k) * d.oh + oh) * d.ow + ow] * x[((n * d.c + c) * d.h + ih) * d.w + iw];
      }
  return acc;
}

__global__ void conv_forward_naive_kernel(Dims d, const float* x, const float* w, const float* b, float* y,
                                          bool relu) {
  PYL_GRID_STRIDE(i, int64_t(d.n) * d.k * d.ohw()) {
    const float v = conv_forward_naive_at(d, x, w, b, static_cast<int>(i));
    y[i] = relu ? math::relu(v) : v;
  }
}
__global__ void conv_backward_data_naive_kernel(Dims d, const float* w, const float* dy, float* dx) {
  PYL_GRID_STRIDE(i, int64_t(d.n) * d.c * d.hw()) dx[i] = conv_backward_data_naive_at(d, w, dy, static_cast<int>(i));
}
__global__ void conv_backward_filter_naive_kernel(Dims d, const float* x, const float* dy, float* dw) {
  PYL_GRID_STRIDE(i, int64_t(d.k) * d.crs()) dw[i] = conv_backward_filter_naive_at(d, x, dy, static_cast<int>(i));
}

// ======================================================================= im2col
// cols (G, C*R*S, OH*OW) <- patches of the G images at x; zeros over the padding.
PYL_HD inline float im2col_at(const Dims& d, const float* x, int i) {
  const int ow = i % d.ow; i /= d.ow;
  const int oh = i % d.oh; i /= d.oh;
  const int q = i % d.s; i /= d.s;
  const int r = i % d.r; i /= d.r;
  const int c = i % d.c, n = i / d.c;
  const int ih = oh * d.sh - d.ph + r, iw = ow * d.sw - d.pw + q;
  return inside(ih, d.h) && inside(iw, d.w) ? x[((n * d.c + c) * d.h + ih) * d.w + iw] : 0.0f;
}

// The adjoint of im2col as a gather: dx (G, C, H, W) = the column entries that came from
// each pixel, summed over (r, q) in order. Overwrites (the CPU zero-fills, then scatters).
PYL_HD inline float col2im_at(const Dims& d, const float* cols, int i) {
  const int iw = i % d.w; i /= d.w;
  const int ih = i % d.h; i /= d.h;
  const int c = i % d.c, n = i / d.c;
  const float* img = cols + int64_t(n) * d.crs() * d.ohw();
  float acc = 0.0f;
  for (int r = 0; r < d.r; ++r) {
    const int th = ih + d.ph - r;
    if (th < 0 || th % d.sh != 0 || th / d.sh >= d.oh) continue;
    for (int q = 0; q < d.s; ++q) {
      const int tw = iw + d.pw - q;
      if (tw < 0 || tw % d.sw != 0 || tw / d.sw >= d.ow) continue;
      acc += img[((c * d.r + r) * d.s + q) * d.ohw() + (th / d.sh) * d.ow + tw / d.sw];
    }
  }
  return acc;
}

__global__ void im2col_kernel(Dims d, const float* x, int g, float* cols) {
  PYL_GRID_STRIDE(i, int64_t(g) * d.crs() * d.ohw()) cols[i] = im2col_at(d, x, static_cast<int>(i));
}
__global__ void col2im_kernel(Dims d, const float* cols, int g, float* dx) {
  PYL_GRID_STRIDE(i, int64_t(g) * d.c * d.hw()) dx[i] = col2im_at(d, cols, static_cast<int>(i));
}

// out[i] = (accumulate ? out[i] : 0) + sum_z partials[z][i], z ascending: the batch
// reduction of backward filter, in a fixed order (no atomics).
__global__ void sum_partials_kernel(const float* partials, int count, int parts, bool accumulate, float* out) {
  PYL_GRID_STRIDE(i, count) {
    float acc = accumulate ? out[i] : 0.0f;
    for (int z = 0; z < parts; ++z) acc += partials[int64_t(z) * count + i];
    out[i] = acc;
  }
}

// Floats per image of an im2col group, and the group size.
int64_t im2col_floats_per_image(ConvPass pass, const ConvShape& s) {
  const int64_t cols = s.col_rows() * s.col_cols();
  return pass == ConvPass::BackwardFilter ? cols + s.k * s.col_rows() : cols;
}
int64_t im2col_group(ConvPass pass, const ConvShape& s) {
  const int64_t g = kIm2colGroupFloats / im2col_floats_per_image(pass, s);
  return std::clamp<int64_t>(g, 1, std::min<int64_t>(s.n, 65535));
}

// ======================================================================= implicit GEMM
// Operands of gemm_tile.cuh reading the unfolded matrices straight from the tensors.

// Forward: y (K, N*OH*OW) = w (K, C*R*S) . patches (C*R*S, N*OH*OW)
struct FwdFilter {
  const float* w;
  int crs;
  static constexpr bool kColsContiguous = true;
  PYL_HD float operator()(int, int k, int j) const { return w[k * crs + j]; }
};
struct FwdPatches {
  Dims d;
  const float* x;
  static constexpr bool kColsContiguous = true;  // adjacent columns are adjacent ow
  PYL_HD float operator()(int, int crs, int j) const {
    const int q = crs % d.s, r = (crs / d.s) % d.r, c = crs / d.rs();
    const int ow = j % d.ow, oh = (j / d.ow) % d.oh, n = j / d.ohw();
    const int ih = oh * d.sh - d.ph + r, iw = ow * d.sw - d.pw + q;
    return inside(ih, d.h) && inside(iw, d.w) ? x[((n * d.c + c) * d.h + ih) * d.w + iw] : 0.0f;
  }
};
struct FwdStore {
  Dims d;
  const float* b;
  float* y;
  bool relu;  // a ReLU folded into the epilogue
  PYL_HD void operator()(int, int k, int j, float acc) const {
    const int n = j / d.ohw(), p = j % d.ohw();
    const float v = acc + (b ? b[k] : 0.0f);
    y[(n * d.k + k) * d.ohw() + p] = relu ? math::relu(v) : v;
  }
};

// Backward data: dx (C, N*H*W) = w^T (C, K*R*S) . spread dy (K*R*S, N*H*W), where the
// second operand holds dy[n,k,oh,ow] at the tap (r, q) that links (oh, ow) to (ih, iw), and
// zero where no window does (with stride s, all but about 1/s^2 of its entries).
struct BwdDataFilter {
  const float* w;
  int c_count, rs;
  static constexpr bool kColsContiguous = true;  // within one k, (r, q) are adjacent
  PYL_HD float operator()(int, int c, int krs) const {
    const int k = krs / rs, t = krs % rs;
    return w[(k * c_count + c) * rs + t];
  }
};
struct BwdDataGrad {
  Dims d;
  const float* dy;
  static constexpr bool kColsContiguous = true;
  PYL_HD float operator()(int, int krs, int j) const {
    const int q = krs % d.s, r = (krs / d.s) % d.r, k = krs / d.rs();
    const int iw = j % d.w, ih = (j / d.w) % d.h, n = j / d.hw();
    const int th = ih + d.ph - r, tw = iw + d.pw - q;
    if (th < 0 || tw < 0 || th % d.sh != 0 || tw % d.sw != 0) return 0.0f;
    const int oh = th / d.sh, ow = tw / d.sw;
    return oh < d.oh && ow < d.ow ? dy[((n * d.k + k) * d.oh + oh) * d.ow + ow] : 0.0f;
  }
};
struct BwdDataStore {
  Dims d;
  float* dx;
  PYL_HD void operator()(int, int c, int j, float acc) const {
    const int n = j / d.hw(), p = j % d.hw();
    dx[(n * d.c + c) * d.hw() + p] = acc;
  }
};

// Backward filter, chunk z of kFilterChunk images:
//   partial[z] (K, C*R*S) = dy_z (K, chunk*OH*OW) . patches_z (chunk*OH*OW, C*R*S)
struct BwdFilterGrad {
  Dims d;
  const float* dy;
  static constexpr bool kColsContiguous = true;
  PYL_HD float operator()(int z, int k, int t) const {
    const int n = z * kFilterChunk + t / d.ohw(), p = t % d.ohw();
    return n < d.n ? dy[(n * d.k + k) * d.ohw() + p] : 0.0f;
  }
};
struct BwdFilterPatches {
  Dims d;
  const float* x;
  static constexpr bool kColsContiguous = false;  // adjacent rows are adjacent ow
  PYL_HD float operator()(int z, int t, int crs) const {
    const int n = z * kFilterChunk + t / d.ohw(), p = t % d.ohw();
    if (n >= d.n) return 0.0f;
    const int ow = p % d.ow, oh = p / d.ow;
    const int q = crs % d.s, r = (crs / d.s) % d.r, c = crs / d.rs();
    const int ih = oh * d.sh - d.ph + r, iw = ow * d.sw - d.pw + q;
    return inside(ih, d.h) && inside(iw, d.w) ? x[((n * d.c + c) * d.h + ih) * d.w + iw] : 0.0f;
  }
};
struct BwdFilterStore {
  float* out;
  int crs;
  int64_t chunk_stride;
  PYL_HD void operator()(int z, int k, int j, float acc) const { out[z * chunk_stride + k * crs + j] = acc; }
};

int filter_chunks(const ConvShape& s) { return static_cast<int>((s.n + kFilterChunk - 1) / kFilterChunk); }

template <class A, class B, class E>
void launch_implicit(const char* op, int64_t m, int64_t n, int64_t k, int batch, const A& a, const B& b,
                     const E& e, cudaStream_t stream) {
  detail::check_int32(op, m, "GEMM rows");
  detail::check_int32(op, n, "GEMM columns");
  detail::check_int32(op, k, "GEMM depth");
  PYL_CHECK_ARG((m + tile::kM - 1) / tile::kM <= 65535 && batch <= 65535, op, ": ", m, " channels or ", batch,
                " image chunks exceed the launch grid");
  if (m == 0 || n == 0) return;
  tile::gemm_kernel<<<tile::grid(static_cast<int>(m), static_cast<int>(n), batch), tile::kThreads, 0, stream>>>(
      static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), a, b, e);
  PYL_CUDA_LAUNCH_CHECK();
}

// db[k] = sum over (n, p) of dy[n,k,p], in double, one block per channel, fixed tree.
constexpr int kBiasThreads = 256;
__global__ void __launch_bounds__(kBiasThreads) conv_backward_bias_kernel(Dims d, const float* dy, float* db) {
  const int k = blockIdx.x;
  const int total = d.n * d.ohw();
  double acc = 0.0;
  for (int i = threadIdx.x; i < total; i += kBiasThreads) {
    const int n = i / d.ohw(), p = i % d.ohw();
    acc += dy[(n * d.k + k) * d.ohw() + p];
  }
  acc = detail::block_sum<kBiasThreads>(acc);
  if (threadIdx.x == 0) db[k] = static_cast<float>(acc);
}

}  // namespace

int64_t conv_im2col_workspace_floats(ConvPass pass, const ConvShape& s) {
  return im2col_group(pass, s) * im2col_floats_per_image(pass, s);
}

int64_t conv_implicit_gemm_workspace_floats(ConvPass pass, const ConvShape& s) {
  if (pass != ConvPass::BackwardFilter) return 0;
  const int chunks = filter_chunks(s);
  return chunks > 1 ? chunks * s.k * s.col_rows() : 0;
}

// ---------------------------------------------------------------- forward
void conv_forward_naive(const ConvShape& s, const float* x, const float* w, const float* b, float* y,
                        cudaStream_t stream, bool relu) {
  const Dims d = dims_of("conv2d (cuda, naive)", s);
  const int64_t total = s.n * s.k * s.oh * s.ow;
  conv_forward_naive_kernel<<<detail::grid_for(total), detail::kBlock, 0, stream>>>(d, x, w, b, y, relu);
  PYL_CUDA_LAUNCH_CHECK();
}

void conv_forward_im2col(const ConvShape& s, const float* x, const float* w, const float* b, float* y, float* ws,
                         cudaStream_t stream, bool relu) {
  const char* op = "conv2d (cuda, im2col)";
  const Dims d = dims_of(op, s);
  const int64_t crs = s.col_rows(), ohw = s.col_cols(), group = im2col_group(ConvPass::Forward, s);
  detail::check_int32(op, group * crs * ohw, "column buffer elements");
  for (int64_t n0 = 0; n0 < s.n; n0 += group) {
    const int g = static_cast<int>(std::min(group, s.n - n0));
    im2col_kernel<<<detail::grid_for(g * crs * ohw), detail::kBlock, 0, stream>>>(d, x + n0 * s.c * s.h * s.w, g, ws);
    PYL_CUDA_LAUNCH_CHECK();
    // y[n] (K, OHW) = w (K, CRS) . cols[n] (CRS, OHW) + b, for the g images at once
    sgemm_strided_batched(false, false, s.k, ohw, crs, 1.0f, w, crs, 0, ws, ohw, crs * ohw, 0.0f,
                          y + n0 * s.k * ohw, ohw, s.k * ohw, g, stream, b, nullptr, relu);
  }
}

void conv_forward_implicit_gemm(const ConvShape& s, const float* x, const float* w, const float* b, float* y,
                                cudaStream_t stream, bool relu) {
  const char* op = "conv2d (cuda, implicit_gemm)";
  const Dims d = dims_of(op, s);
  launch_implicit(op, s.k, s.n * s.oh * s.ow, s.col_rows(), 1, FwdFilter{w, d.crs()}, FwdPatches{d, x},
                  FwdStore{d, b, y, relu}, stream);
}

// ---------------------------------------------------------------- backward data
void conv_backward_data_naive(const ConvShape& s, const float* w, const float* dy, float* dx, cudaStream_t stream) {
  const Dims d = dims_of("conv2d_backward_data (cuda, naive)", s);
  const int64_t total = s.n * s.c * s.h * s.w;
  conv_backward_data_naive_kernel<<<detail::grid_for(total), detail::kBlock, 0, stream>>>(d, w, dy, dx);
  PYL_CUDA_LAUNCH_CHECK();
}

void conv_backward_data_im2col(const ConvShape& s, const float* w, const float* dy, float* dx, float* ws,
                               cudaStream_t stream) {
  const char* op = "conv2d_backward_data (cuda, im2col)";
  const Dims d = dims_of(op, s);
  const int64_t crs = s.col_rows(), ohw = s.col_cols(), group = im2col_group(ConvPass::BackwardData, s);
  const int64_t chw = s.c * s.h * s.w;
  detail::check_int32(op, group * crs * ohw, "column buffer elements");
  for (int64_t n0 = 0; n0 < s.n; n0 += group) {
    const int g = static_cast<int>(std::min(group, s.n - n0));
    // dcols[n] (CRS, OHW) = w^T (CRS, K) . dy[n] (K, OHW)
    sgemm_strided_batched(true, false, crs, ohw, s.k, 1.0f, w, crs, 0, dy + n0 * s.k * ohw, ohw, s.k * ohw, 0.0f,
                          ws, ohw, crs * ohw, g, stream);
    col2im_kernel<<<detail::grid_for(g * chw), detail::kBlock, 0, stream>>>(d, ws, g, dx + n0 * chw);
    PYL_CUDA_LAUNCH_CHECK();
  }
}

void conv_backward_data_implicit_gemm(const ConvShape& s, const float* w, const float* dy, float* dx,
                                      cudaStream_t stream) {
  const char* op = "conv2d_backward_data (cuda, implicit_gemm)";
  const Dims d = dims_of(op, s);
  launch_implicit(op, s.c, s.n * s.h * s.w, s.k * s.r * s.s, 1, BwdDataFilter{w, d.c, d.rs()},
                  BwdDataGrad{d, dy}, BwdDataStore{d, dx}, stream);
}

// ---------------------------------------------------------------- backward filter
void conv_backward_filter_naive(const ConvShape& s, const float* x, const float* dy, float* dw,
                                cudaStream_t stream) {
  const Dims d = dims_of("conv2d_backward_filter (cuda, naive)", s);
  const int64_t total = s.k * s.col_rows();
  conv_backward_filter_naive_kernel<<<detail::grid_for(total), detail::kBlock, 0, stream>>>(d, x, dy, dw);
  PYL_CUDA_LAUNCH_CHECK();
}

void conv_backward_filter_im2col(const ConvShape& s, const float* x, const float* dy, float* dw, float* ws,
                                 cudaStream_t stream) {
  const char* op = "conv2d_backward_filter (cuda, im2col)";
  const Dims d = dims_of(op, s);
  const int64_t crs = s.col_rows(), ohw = s.col_cols(), kcrs = s.k * crs;
  const int64_t group = im2col_group(ConvPass::BackwardFilter, s);
  detail::check_int32(op, group * crs * ohw, "column buffer elements");
  detail::check_int32(op, group * kcrs, "partial filter gradient elements");
  float* cols = ws;                             // (G, CRS, OHW)
  float* partials = ws + group * crs * ohw;     // (G, K, CRS): one dw per image
  for (int64_t n0 = 0; n0 < s.n; n0 += group) {
    const int g = static_cast<int>(std::min(group, s.n - n0));
    im2col_kernel<<<detail::grid_for(g * crs * ohw), detail::kBlock, 0, stream>>>(d, x + n0 * s.c * s.h * s.w, g,
                                                                                  cols);
    PYL_CUDA_LAUNCH_CHECK();
    // partials[n] (K, CRS) = dy[n] (K, OHW) . cols[n]^T (OHW, CRS)
    sgemm_strided_batched(false, true, s.k, crs, ohw, 1.0f, dy + n0 * s.k * ohw, ohw, s.k * ohw, cols, ohw,
                          crs * ohw, 0.0f, partials, crs, kcrs, g, stream);
    // dw (+)= the g partials in image order: the same sum for any group size
    sum_partials_kernel<<<detail::grid_for(kcrs), detail::kBlock, 0, stream>>>(partials, static_cast<int>(kcrs), g,
                                                                               n0 > 0, dw);
    PYL_CUDA_LAUNCH_CHECK();
  }
}

void conv_backward_filter_implicit_gemm(const ConvShape& s, const float* x, const float* dy, float* dw, float* ws,
                                        cudaStream_t stream) {
  const char* op = "conv2d_backward_filter (cuda, implicit_gemm)";
  const Dims d = dims_of(op, s);
  const int chunks = filter_chunks(s);
  const int64_t kcrs = s.k * s.col_rows();
  float* out = chunks > 1 ? ws : dw;  // (chunks, K, CRS) partials, or dw itself
  launch_implicit(op, s.k, s.col_rows(), std::min<int64_t>(s.n, kFilterChunk) * s.oh * s.ow, chunks,
                  BwdFilterGrad{d, dy}, BwdFilterPatches{d, x}, BwdFilterStore{out, d.crs(), kcrs}, stream);
  if (chunks > 1) {
    sum_partials_kernel<<<detail::grid_for(kcrs), detail::kBlock, 0, stream>>>(ws, static_cast<int>(kcrs), chunks,
                                                                               false, dw);
    PYL_CUDA_LAUNCH_CHECK();
  }
}

// ---------------------------------------------------------------- backward bias
void conv_backward_bias(const ConvShape& s, const float* dy, float* db, cudaStream_t stream) {
  const Dims d = dims_of("conv2d_backward_bias (cuda)", s);
  PYL_CHECK_ARG(s.k <= INT_MAX, "conv2d_backward_bias (cuda): too many channels");
  conv_backward_bias_kernel<<<static_cast<unsigned>(s.k), kBiasThreads, 0, stream>>>(d, dy, db);
  PYL_CUDA_LAUNCH_CHECK();
}

}  // namespace pylenet::cuda
