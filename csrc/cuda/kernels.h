// CUDA kernels, the twins of the cpu:: declarations in csrc/ops/*.h: same names, same
// argument order, float32 NCHW device pointers; a cudaStream_t takes the place of the CPU's
// `threads`. Every function only queues work on `stream` (nothing synchronises unless its
// comment says so) and checks every launch (PYL_CUDA_LAUNCH_CHECK). Shapes were checked by
// the op layer (ConvShape::make, ...); these functions only check that extents fit the
// kernels' 32-bit indexing.
//
// Every backward function OVERWRITES its output (=, never +=), as on the CPU.
// Determinism: no atomics on float results anywhere; each output element is summed by one
// thread (or one fixed reduction tree) in a fixed order, so results are bit-identical run
// after run on the same GPU. Sums whose order differs from the CPU's (GEMM tiles, gathers
// instead of scatters) agree with it to rounding, not bit for bit. Pooling, the column sum
// of linear_backward_bias, relu, the activation gradients and the optimizer updates do the
// CPU's operations in the CPU's order, unfused, so they should match the CPU kernels bit for
// bit on x86-64 (tanh forward uses CUDA's tanhf and may differ in the last bit).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/gemm.h"
#include "ops/activation.h"
#include "ops/batchnorm.h"
#include "ops/conv.h"
#include "ops/dropout.h"
#include "ops/linear.h"
#include "ops/loss.h"
#include "ops/optim.h"
#include "ops/pool.h"

namespace pylenet::cuda {

// ---------------------------------------------------------------- convolution (conv.cu)
// Three algorithms per pass:
//  - naive: one thread per output element running the loops of cpu::*_naive; backward
//    data gathers (one thread per dx element) where the CPU scatters, because a scatter on
//    a GPU needs float atomics;
//  - im2col: unfold a group of images into columns (G, C*R*S, OH*OW) in the workspace, then
//    one batched launch of our SGEMM (col2im gathers for backward data);
//  - implicit_gemm: the same GEMM with the unfolded matrix computed on the fly while the
//    tiles are loaded into shared memory: no column buffer, one launch per pass. This is
//    the fast algorithm (ConvAlgo needs an ImplicitGemm entry in ops/conv.h to reach it).
// Backward filter reduces over the batch: im2col computes one (K, C*R*S) partial per
// image and adds them in image order; implicit_gemm one partial per chunk of
// kFilterChunk images (a constant, so the result does not depend on the GPU), added in
// chunk order by a second kernel.

// y (N,K,OH,OW) = conv(x (N,C,H,W), w (K,C,R,S)) + b (K,) [b may be null], then with relu a
// ReLU in the epilogue (one the executor folded in).
void conv_forward_naive(const ConvShape& s, const float* x, const float* w, const float* b, float* y,
                        cudaStream_t stream, bool relu = false);
void conv_forward_im2col(const ConvShape& s, const float* x, const float* w, const float* b, float* y, float* ws,
                         cudaStream_t stream, bool relu = false);
void conv_forward_implicit_gemm(const ConvShape& s, const float* x, const float* w, const float* b, float* y,
                                cudaStream_t stream, bool relu = false);
// dx (N,C,H,W) = conv_transpose(dy (N,K,OH,OW), w (K,C,R,S))
void conv_backward_data_naive(const ConvShape& s, const float* w, const float* dy, float* dx, cudaStream_t stream);
void conv_backward_data_im2col(const ConvShape& s, const float* w, const float* dy, float* dx, float* ws,
                               cudaStream_t stream);
void conv_backward_data_implicit_gemm(const ConvShape& s, const float* w, const float* dy, float* dx,
                                      cudaStream_t stream);
// dw (K,C,R,S) = sum over the batch of dy (N,K,OH,OW) (x) x (N,C,H,W)
void conv_backward_filter_naive(const ConvShape& s, const float* x, const float* dy, float* dw,
                                cudaStream_t stream);
void conv_backward_filter_im2col(const ConvShape& s, const float* x, const float* dy, float* dw, float* ws,
                                 cudaStream_t stream);
void conv_backward_filter_implicit_gemm(const ConvShape& s, const float* x, const float* dy, float* dw, float* ws,
                                        cudaStream_t stream);
// db (K,) = dy (N,K,OH,OW) summed over N, OH, OW (in double, one block per channel)
void conv_backward_bias(const ConvShape& s, const float* dy, float* db, cudaStream_t stream);
// Floats of device workspace each algorithm needs (naive and the implicit-GEMM forward and
// backward-data passes need none).
int64_t conv_im2col_workspace_floats(ConvPass pass, const ConvShape& s);
int64_t conv_implicit_gemm_workspace_floats(ConvPass pass, const ConvShape& s);

// ---------------------------------------------------------------- pooling (pool.cu)
// y (N,C,OH,OW) from x (N,C,H,W). The same window walk, tie rule (first maximum) and NaN
// rule (a NaN wins) as cpu::; backward gathers (one thread per dx element, windows visited
// in the CPU's order), so the results are bit-identical to the CPU's.
// relu: a ReLU applied to the pooled values; relu_y (that ReLU's output, the shape of dy): the
// gradient taken through it before the pooling's (a ReLU folded in, one launch less each way).
void max_pool_forward(const PoolShape& s, const float* x, float* y, cudaStream_t stream, bool relu = false);
void max_pool_backward(const PoolShape& s, const float* x, const float* dy, float* dx, cudaStream_t stream,
                       const float* relu_y = nullptr);
void avg_pool_forward(const PoolShape& s, const float* x, float* y, cudaStream_t stream, bool relu = false);
void avg_pool_backward(const PoolShape& s, const float* dy, float* dx, cudaStream_t stream,
                       const float* relu_y = nullptr);

// ---------------------------------------------------------------- linear (linear.cu)
// x (N,in), w (out,in), b (out,), y (N,out). Three SGEMMs and a column sum; unlike the CPU
// the GEMM needs no workspace, so there is no `ws` argument.
void linear_forward(const LinearShape& s, const float* x, const float* w, const float* b, float* y,
                    cudaStream_t stream, bool relu = false);  // relu: a ReLU folded into the epilogue
void linear_backward_data(const LinearShape& s, const float* dy, const float* w, float* dx, cudaStream_t stream);
void linear_backward_weight(const LinearShape& s, const float* dy, const float* x, float* dw, cudaStream_t stream);
void linear_backward_bias(const LinearShape& s, const float* dy, float* db, cudaStream_t stream);

// ---------------------------------------------------------------- activations (activation.cu)
// `count` elements of any shape; in place (y == x, dx == dy) is fine. `slope`: leaky_relu's.
void activation_forward(Activation a, int64_t count, const float* x, float* y, float slope, cudaStream_t stream);
void activation_backward(Activation a, int64_t count, const float* y, const float* dy, float* dx, float slope,
                         cudaStream_t stream);

// ---------------------------------------------------------------- element-wise (elementwise.cu)
// y = a + b; dst[i * dst_ld + j] = src[i * src_ld + j] (one cudaMemcpy2DAsync); dropout with the
// counter-based mask of ops/math.h (the CPU's mask, bit for bit).
void add(int64_t count, const float* a, const float* b, float* y, cudaStream_t stream);
void copy_blocks(int64_t rows, int64_t cols, const float* src, int64_t src_ld, float* dst, int64_t dst_ld,
                 cudaStream_t stream);
void dropout(const DropoutDesc& d, int64_t first, int64_t count, const float* x, float* y, cudaStream_t stream);

// ---------------------------------------------------------------- batch norm (batchnorm.cu)
// The three steps of ops/batchnorm.h. Per-channel sums are one block per channel in a fixed
// tree order, in double; finalize is one thread per channel; the rest is element-wise.
void batch_norm_stats_partial(const BatchNormShape& s, const float* x, double* partial, cudaStream_t stream);
void batch_norm_stats_finalize(int64_t c, int64_t chunks, const double* partials, int64_t count, double eps,
                               float* mean, float* invstd, float* var_unbiased, cudaStream_t stream);
// `skip` (device int, may be null): non-zero leaves the running statistics alone.
void batch_norm_update_running(int64_t c, const float* mean, const float* var_unbiased, double momentum,
                               float* running_mean, float* running_var, int64_t* num_batches_tracked, const int* skip,
                               cudaStream_t stream);
void batch_norm_apply(const BatchNormShape& s, const float* x, const float* mean, const float* invstd,
                      const float* gamma, const float* beta, float* y, cudaStream_t stream);
void batch_norm_inference(const BatchNormShape& s, const float* x, const float* running_mean,
                          const float* running_var, double eps, const float* gamma, const float* beta, float* y,
                          cudaStream_t stream);
void batch_norm_backward_partial(const BatchNormShape& s, const float* x, const float* dy, const float* mean,
                                 const float* invstd, double* partial, cudaStream_t stream);
void batch_norm_backward_finalize(int64_t c, int64_t chunks, const double* partials, int64_t count, float* dgamma,
                                  float* dbeta, float* coef, cudaStream_t stream);
void batch_norm_backward_apply(const BatchNormShape& s, const float* x, const float* dy, const float* mean,
                               const float* invstd, const float* gamma, const float* coef, float* dx,
                               cudaStream_t stream);
void batch_norm_inference_backward(const BatchNormShape& s, const float* x, const float* dy,
                                   const float* running_mean, const float* running_var, double eps,
                                   const float* gamma, float* dx, float* dgamma, float* dbeta, cudaStream_t stream);

// ---------------------------------------------------------------- softmax (softmax.cu)
// One warp per row, sums in double, as the CPU.
void softmax_forward(bool log, int64_t n, int64_t c, const float* x, float* y, cudaStream_t stream);
void softmax_backward(bool log, int64_t n, int64_t c, const float* y, const float* dy, float* dx,
                      cudaStream_t stream);

// ---------------------------------------------------------------- loss (loss.cu)
// Written by the device; "none" is UINT64_MAX (all bits set).
struct LossResult {
  double loss;                     // mean over the batch; NaN when the input was rejected
  unsigned long long bad_label;    // first row whose label is outside [0, C), or none
  unsigned long long nonfinite;    // first flat index of a NaN/inf logit, or none
};
constexpr unsigned long long kNone = ~0ull;

// Device workspace bytes softmax_cross_entropy needs: one double per row.
int64_t softmax_cross_entropy_workspace_bytes(int64_t n);

// The eager op (F.softmax_cross_entropy on a GPU). Queues the whole loss on `stream` without
// synchronising: validates labels and logits, and only if both are good writes
// dlogits (N, C) = (softmax - onehot) * grad_scale (OVERWRITES; skipped when null;
// grad_scale = 1/N for the mean, as in cpu::) and result->loss (the mean over these N rows,
// reduced in a fixed order, in double).
// logits (N, C), labels (N,) int64, result: device memory (e.g. CudaContext::scratch()).
void softmax_cross_entropy_async(int64_t n, int64_t c, const float* logits, const int64_t* labels, float* dlogits,
                                 float grad_scale, LossResult* result, void* ws, cudaStream_t stream);
// The form the op layer calls: queues the above, SYNCHRONISES the stream and returns the mean loss, or
// throws InvalidArgument naming the bad label or non-finite logit (nothing was written).
double softmax_cross_entropy(int64_t n, int64_t c, const float* logits, const int64_t* labels, float* dlogits,
                             float grad_scale, LossResult* result, void* ws, cudaStream_t stream);

// The executor's losses (ops/loss.h): labels already checked. The forward functions write the
// sum over the n rows to *loss_sum (device memory): one block, a warp per row, the warps'
// sums added in a fixed order. The gradient of the true class is -(the other classes' share).
void cross_entropy_forward(int64_t n, int64_t c, const float* logits, const int64_t* labels, double* loss_sum,
                           cudaStream_t stream);
void cross_entropy_backward(int64_t n, int64_t c, const float* logits, const int64_t* labels, float grad_scale,
                            float* dlogits, cudaStream_t stream);
void nll_loss_forward(int64_t n, int64_t c, const float* logp, const int64_t* labels, double* loss_sum,
                      cudaStream_t stream);
void nll_loss_backward(int64_t n, int64_t c, const int64_t* labels, float grad_scale, float* dlogp,
                       cudaStream_t stream);
// *correct (rows whose first maximum is the label; labels may be null: 0) and *nonfinite (1 if
// any score is NaN/inf), device memory; one block.
void classify(int64_t n, int64_t c, const float* scores, const int64_t* labels, int64_t* correct, int* nonfinite,
              cudaStream_t stream);
// The three at once, one block (ops/loss.h loss_head): the same bits as the separate launches.
void loss_head(bool nll, int64_t n, int64_t c, const float* z, const int64_t* labels, bool count, float grad_scale,
               double* loss_sum, float* dz, int64_t* correct, int* nonfinite, cudaStream_t stream);

// ---------------------------------------------------------------- optimizers (optim.cu)
// One launch over a flat buffer of `count` parameters (a network keeps all its parameters
// in one), calling the update rules of ops/math.h. `skip` (device int, may be null): when
// it holds non-zero the update does nothing, so the executor's step whose output was not
// finite (RunTotals::bad, set by accumulate_totals) leaves the parameters untouched without
// the host having to wait for the answer.
// velocity is null iff momentum == 0. m, v, square_avg, acc_delta: (count,), zero at first.
// cur (device memory, may be null): the step's rate and bias corrections are read there, not
// from o (a replayed CUDA graph; ops/math.h StepValues).
void sgd_step(int64_t count, float* param, const float* grad, float* velocity, const SgdParams& o,
              cudaStream_t stream, const int* skip = nullptr, const math::StepValues* cur = nullptr);
void adam_step(int64_t count, float* param, const float* grad, float* m, float* v, const AdamParams& o,
               cudaStream_t stream, const int* skip = nullptr, const math::StepValues* cur = nullptr);
void adadelta_step(int64_t count, float* param, const float* grad, float* square_avg, float* acc_delta,
                   const AdadeltaParams& o, cudaStream_t stream, const int* skip = nullptr,
                   const math::StepValues* cur = nullptr);
// *nonfinite (device int) = 1 if x (count,) holds a NaN or inf, else 0. Queued, no sync.
void check_finite(int64_t count, const float* x, int* nonfinite, cudaStream_t stream);
// The cpu:: form: check_finite into `flag` (device int), then SYNCHRONISES and returns.
bool all_finite(int64_t count, const float* x, int* flag, cudaStream_t stream);

// ---------------------------------------------------------------- the executor's loop (train.cu)
// Running totals of a training epoch or an evaluation, kept on the device so that a step
// needs no host round-trip; the host reads them only when it shows progress.
struct RunTotals {
  double loss_sum;               // summed over samples
  unsigned long long correct;    // rows whose first maximum logit is the label
  unsigned long long steps;      // batches accepted
  int bad;                       // sticky: a batch was rejected (a non-finite output; labels are checked on the host)
  int pad_;
};
// x (n, sample_floats) = images[order[i]], y (n,) = labels[order[i]]; order: device int64
// indices already checked to lie in the dataset.
// With cur (device memory), the batch starts at order[cur->start] (a replayed step). Without
// an order (null), rows are taken in turn: images[cur->start + i] (images[i] without cur).
void gather_batch(int64_t n, int64_t sample_floats, const float* images, const int64_t* labels,
                  const int64_t* order, float* x, int64_t* y, cudaStream_t stream,
                  const math::StepValues* cur = nullptr);
// The first launch of a step on the device: *current = table[*cursor], then ++*cursor. The
// host fills the table for an epoch and zeroes the cursor; a graph replays this like any kernel.
void begin_step(const math::StepValues* table, int64_t* cursor, math::StepValues* current, cudaStream_t stream);
// After a step's loss and classify: totals += (loss_sum, correct, one step), or, when the step
// found a non-finite output, totals->bad = 1 (sticky; the optimizer, given &totals->bad as its
// skip flag, then does nothing). One thread.
void accumulate_totals(const double* loss_sum, const int64_t* correct, const int* nonfinite, RunTotals* totals,
                       cudaStream_t stream);

}  // namespace pylenet::cuda
