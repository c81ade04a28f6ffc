// 2-D convolution (cross-correlation, as in PyTorch and cuDNN), NCHW, float32.
//
//   y[n,k,oh,ow] = b[k] + sum_{c,r,s} x[n, c, oh*sh - ph + r, ow*sw - pw + s] * w[k,c,r,s]
//   OH = (H + 2*ph - R) / sh + 1,   OW = (W + 2*pw - S) / sw + 1   (zero padding)
//
// Entry points follow cuDNN: forward, backward-data (dx), backward-filter (dw) and
// backward-bias (db), each taking descriptors, pointers and drawing scratch space from the
// handle's workspace. All backward functions OVERWRITE their outputs (=, never +=).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/handle.h"
#include "ops/tensor.h"

namespace pylenet {

enum class ConvAlgo {
  Naive = 0,   // the seven nested loops: the reference a reader compares against
  Im2col = 1,  // unfold the input into columns, then one GEMM per image
  Direct = 2,  // SIMD over output rows, no unfolding: small channel counts, stride 1 (CPU only)
  ImplicitGemm = 3,  // the GEMM with the unfolding done while tiles load (CUDA only)
  Winograd = 4,  // F(4x4, 3x3) and F(2x2, 5x5) at stride 1: 4x / 2.8x fewer multiplications (CPU only)
  Auto = -1,   // measure each applicable algorithm once per shape and keep the fastest
  Heuristic = -2,  // pick by a fixed rule from the shape (deterministic, no timing)
};
// The concrete algorithms of each backend, in the order Auto tries them.
constexpr ConvAlgo kConvAlgos[] = {ConvAlgo::Naive, ConvAlgo::Im2col, ConvAlgo::Direct, ConvAlgo::Winograd};
constexpr ConvAlgo kCudaConvAlgos[] = {ConvAlgo::Naive, ConvAlgo::Im2col, ConvAlgo::ImplicitGemm};
const char* conv_algo_name(ConvAlgo algo);
ConvAlgo conv_algo_from_name(const std::string& name);  // "naive", "im2col", "direct", "winograd", "implicit_gemm", "auto", "heuristic"

enum class ConvPass { Forward = 0, BackwardData = 1, BackwardFilter = 2 };

struct ConvDesc {
  Pair stride{1, 1};
  Pair pad{0, 0};
};

// Everything a kernel needs, resolved and checked once. Plain data, so the CUDA kernels
// can take it by value.
struct ConvShape {
  int64_t n, c, h, w;  // input  (N, C, H, W)
  int64_t k, r, s;     // filter (K, C, R, S)
  int64_t oh, ow;      // output (N, K, OH, OW)
  int64_t ph, pw, sh, sw;

  // Checks ranks, channel agreement, stride >= 1, padding >= 0 and that the kernel fits
  // in the padded input; names `op` and the shapes in any error.
  static ConvShape make(const char* op, const TensorDesc& x, const TensorDesc& w, const ConvDesc& conv);
  TensorDesc x_desc() const { return TensorDesc{n, c, h, w}; }
  TensorDesc w_desc() const { return TensorDesc{k, c, r, s}; }
  TensorDesc y_desc() const { return TensorDesc{n, k, oh, ow}; }
  int64_t col_rows() const { return c * r * s; }  // rows of the unfolded input
  int64_t col_cols() const { return oh * ow; }
  double forward_flops() const { return 2.0 * n * k * oh * ow * c * r * s; }  // each backward pass costs the same
};

// The rule behind Heuristic (like cudnnGetConvolution*Algorithm, where Auto is Find). On the
// CPU, winograd for stride-1 filters with at least 16 channels on each side: 3x3 ones always
// (mnist_net conv2, 32 -> 64, one thread: 2.6-3.2x faster than im2col at 32 images, 2.3x at
// one), 5x5 ones from 4 images per call (cudnn_lenet conv2, 20 -> 50: 1.4-1.5x faster than the
// best of direct and im2col at 32 images; at one image the filter transform does not pay, 40 us
// against direct's 30). lenet5's conv2 (6 input channels) stays direct, 1.6x faster. Otherwise
// direct for small channel counts (C*R*S <= 256) where it applies, else im2col, except that
// forward and backward filter stay direct for output rows under 16 columns. Measured on LeNet
// shapes: direct is 1.5-4x faster at C*R*S = 25 and 150; at 500 (8 columns) direct wins forward
// and filter by ~1.4x and ties backward data. On CUDA: implicit_gemm (no column buffer, one
// launch per pass). The executor applies the rule per call, to the images of the chunk,
// except where an inference executor keeps the filter prepared (conv_prepare_filter): then
// the transform is paid once, and every call runs the chunk's choice.
ConvAlgo conv_heuristic_algo(Device dev, ConvPass pass, const ConvShape& s);
// Whether `algo` can run this shape on `dev` (direct, CPU only: stride 1, padding < kernel,
// kernel width <= 8; winograd, CPU only: 3x3 or 5x5, stride 1, padding < kernel; implicit_gemm:
// CUDA only).
bool conv_algo_supported(Device dev, ConvAlgo algo, const ConvShape& s);

// Bytes of workspace `algo` needs for this pass (Auto: the most of any algorithm; Heuristic:
// that of its choice) on the handle's device, for its thread count.
size_t conv_workspace_size(Handle& h, ConvAlgo algo, ConvPass pass, const ConvShape& s);
// The same for a device and thread count (sizes depend on the shapes only: no GPU needed).
size_t conv_workspace_size(Device dev, ConvAlgo algo, ConvPass pass, const ConvShape& s, int threads);

void conv_forward(Handle& h, ConvAlgo algo, const TensorDesc& xd, const float* x, const TensorDesc& wd,
                  const float* w, const TensorDesc& bd, const float* bias /* (K,) or null */,
                  const ConvDesc& conv, const TensorDesc& yd, float* y);
void conv_backward_data(Handle& h, ConvAlgo algo, const TensorDesc& wd, const float* w, const TensorDesc& dyd,
                        const float* dy, const ConvDesc& conv, const TensorDesc& dxd, float* dx);
void conv_backward_filter(Handle& h, ConvAlgo algo, const TensorDesc& xd, const float* x, const TensorDesc& dyd,
                          const float* dy, const ConvDesc& conv, const TensorDesc& dwd, float* dw);
void conv_backward_bias(Handle& h, const TensorDesc& dyd, const float* dy, const TensorDesc& dbd, float* db);
// dx (xd, or null), dw (wd) and db ((K,), or null) at once: conv_run_backward with each pass's
// algorithm resolved as conv_backward_data and conv_backward_filter resolve them.
void conv_backward(Handle& h, ConvAlgo algo, const TensorDesc& xd, const float* x, const TensorDesc& wd,
                   const float* w, const TensorDesc& dyd, const float* dy, const ConvDesc& conv, float* dx, float* dw,
                   float* db);

// Prepared-shape fast path for callers that checked the shapes once (the executor): no
// descriptors, no allocation beyond the handle's workspace. `algo` must be concrete;
// conv_resolve_algo turns Auto and Heuristic into one (Auto measures on the given buffers,
// cached per shape in the handle). `out` is y, dx or dw; `bias` is used by the forward pass,
// and so is `relu`: a ReLU folded in (CUDA: the kernel's epilogue; the CPU: a second pass).
// `prepared`, forward only: the filter as conv_prepare_filter left it (then w and bias are
// read only where the algorithm has nothing prepared).
void conv_run(Handle& h, ConvAlgo algo, ConvPass pass, const ConvShape& s, const float* x, const float* w,
              const float* bias, const float* dy, float* out, bool relu = false, const float* prepared = nullptr);
// The CPU's winograd forward followed by a 2 x 2, stride 2 max pooling, in one pass: pooled
// (n, k, oh / 2, ow / 2), the bits of conv_run then pool_run_forward, from the prepared filter
// (bias: whether it holds one) or, where prepared is null, from w and bias. Unless index is
// null, also each window's winner, 0.0 (top left) to 3.0 (bottom right), shaped as pooled:
// what pool_run_max_backward_from_indices reads, so training keeps it instead of the
// convolution's output.
bool conv_max_pool_fusable(Device dev, ConvAlgo algo);
void conv_run_max_pool(Handle& h, const ConvShape& s, const float* x, const float* w, const float* bias,
                       const float* prepared, float* pooled, float* index);
// Filters prepared once for many forward passes, as inference engines prepack weights: the
// CPU's winograd transform G w G^T (half of a single image's convolution) and direct's
// transposed filter for narrow rows. 0 floats: the algorithm reads the filter as it is (and
// nothing on CUDA; preparing then does nothing). What is prepared depends on the SIMD path
// (simd::path_name()) and on w and bias: the caller prepares again when any of them changes,
// into a buffer of the size conv_prepared_filter_floats gave (the same for every path).
int64_t conv_prepared_filter_floats(Device dev, ConvAlgo algo, const ConvShape& s);
void conv_prepare_filter(Handle& h, ConvAlgo algo, const ConvShape& s, const float* w, const float* bias,
                         float* prepared);
ConvAlgo conv_resolve_algo(Handle& h, ConvAlgo algo, ConvPass pass, const ConvShape& s, const float* x,
                           const float* w, const float* dy, float* out);
void conv_run_backward_bias(Handle& h, const ConvShape& s, const float* dy, float* db);
// All backward passes of a layer in one call: dw, and dx and db unless null (the executor's
// conv2d_backward instruction, F.conv2d's backward). With winograd for backward filter (and
// for backward data, when dx is wanted) on the CPU they run as one pass over dy: each image's
// dy is transposed and transformed once instead of twice, and db comes from that copy; the
// bits are those of the separate passes (cpu::conv_backward_winograd). Otherwise it runs the
// passes one after the other. Algorithms must be concrete.
// winners (only where conv_backward_unpools): dy is then the gradient of a 2 x 2, stride 2 max
// pooling of this convolution's output and winners its windows' winners (conv_run_max_pool);
// the one pass scatters it into the tiles itself, with the bits of
// pool_run_max_backward_from_indices followed by this call.
bool conv_backward_unpools(Device dev, ConvAlgo data_algo, ConvAlgo filter_algo, bool with_dx);
void conv_run_backward(Handle& h, ConvAlgo data_algo, ConvAlgo filter_algo, const ConvShape& s, const float* x,
                       const float* w, const float* dy, float* dx, float* dw, float* db,
                       const float* winners = nullptr);
size_t conv_backward_workspace_size(Handle& h, ConvAlgo data_algo, ConvAlgo filter_algo, const ConvShape& s);

// Like cudnnFindConvolution*Algorithm: runs every algorithm of the handle's device for this
// pass on the given buffers (whose outputs are overwritten) and returns them fastest first.
struct ConvAlgoPerf {
  ConvAlgo algo;
  double seconds;
  size_t workspace_bytes;
};
std::vector<ConvAlgoPerf> conv_find_algorithms(Handle& h, ConvPass pass, const ConvShape& s, const float* x,
                                               const float* w, const float* dy, float* out);

// ---- backend kernels (csrc/cpu/conv.cpp; csrc/cuda/conv.cu mirrors these names) ----
namespace cpu {
// y (N,K,OH,OW) = conv(x (N,C,H,W), w (K,C,R,S)) + b (K,) [b may be null]
void conv_forward_naive(const ConvShape& s, const float* x, const float* w, const float* b, float* y, int threads);
void conv_forward_im2col(const ConvShape& s, const float* x, const float* w, const float* b, float* y,
                         float* ws, int threads);
// dx (N,C,H,W) = conv_transpose(dy (N,K,OH,OW), w)
void conv_backward_data_naive(const ConvShape& s, const float* w, const float* dy, float* dx, int threads);
void conv_backward_data_im2col(const ConvShape& s, const float* w, const float* dy, float* dx, float* ws,
                               int threads);
// dw (K,C,R,S) = sum over the batch of dy (x) x
void conv_backward_filter_naive(const ConvShape& s, const float* x, const float* dy, float* dw, int threads);
void conv_backward_filter_im2col(const ConvShape& s, const float* x, const float* dy, float* dw, float* ws,
                                 int threads);
// db (K,) = dy summed over N, OH, OW
void conv_backward_bias(const ConvShape& s, const float* dy, float* db, int threads);
// Floats of workspace the im2col kernels need.
int64_t conv_im2col_workspace_floats(ConvPass pass, const ConvShape& s, int threads);
}  // namespace cpu

}  // namespace pylenet
