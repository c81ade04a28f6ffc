// CUDA softmax cross-entropy, the math of csrc/cpu/loss.cpp in three launches:
//   1. validate: the first bad label and the first non-finite logit (atomicMin on integer
//      indices: the answer does not depend on thread order);
//   2. rows: one warp per row (classes are few: 10 for MNIST, so a block per row would idle),
//      max and sum of exp by butterfly shuffles, exp and the sum in double as on the CPU;
//      writes dlogits and the row's loss, or nothing at all if step 1 found a bad input;
//   3. mean: one block adds the row losses in a fixed tree order (deterministic, no atomics).
// Nothing synchronises until the host asks for the number (softmax_cross_entropy), so a
// training loop can queue the loss and read it back once per epoch.
// Expected build note: ptxas reports a 16-byte spill in rows_kernel for sm_90; it is the
// stack frame of double exp()'s out-of-range path, not register pressure in the loop.
#include <cstring>

#include "cuda/check.h"
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace pylenet::cuda {
namespace {

constexpr int kRowThreads = 256;  // 8 warps, 8 rows per block
constexpr int kMeanThreads = 256;

__global__ void validate_kernel(int64_t n, int64_t c, const float* logits, const int64_t* labels, LossResult* res) {
  PYL_GRID_STRIDE(i, n * c) {
    if (i < n && (labels[i] < 0 || labels[i] >= c))
      atomicMin(&res->bad_label, static_cast<unsigned long long>(i));
    if (!isfinite(logits[i])) atomicMin(&res->nonfinite, static_cast<unsigned long long>(i));
  }
}

__global__ void __launch_bounds__(kRowThreads) rows_kernel(int64_t n, int64_t c, const float* logits,
                                                           const int64_t* labels, float* dlogits, float grad_scale,
                                                           const LossResult* res, double* row_loss) {
  if (res->bad_label != kNone || res->nonfinite != kNone) return;  // rejected: write nothing
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t(gridDim.x) * (kRowThreads / 32);
  for (int64_t row = int64_t(blockIdx.x) * (kRowThreads / 32) + threadIdx.x / 32; row < n; row += warps) {
    const float* z = logits + row * c;
    float zmax = -INFINITY;
    for (int64_t j = lane; j < c; j += 32) zmax = fmaxf(zmax, z[j]);
    zmax = detail::warp_max(zmax);
    double sum = 0.0;
    for (int64_t j = lane; j < c; j += 32) sum += exp(static_cast<double>(z[j] - zmax));
    sum = detail::warp_sum(sum);
    const int64_t label = labels[row];
    if (lane == 0) row_loss[row] = log(sum) + zmax - z[label];
    if (dlogits) {
      float* dz = dlogits + row * c;
      const double inv_sum = 1.0 / sum;
      for (int64_t j = lane; j < c; j += 32) {
        // (float)(p) * grad_scale, then - grad_scale at the label: the CPU's two roundings, unfused
        float v = __fmul_rn(static_cast<float>(exp(static_cast<double>(z[j] - zmax)) * inv_sum), grad_scale);
        if (j == label) v -= grad_scale;
        dz[j] = v;
      }
    }
  }
}

__global__ void __launch_bounds__(kMeanThreads) mean_kernel(int64_t n, const double* row_loss, LossResult* res) {
  const bool rejected = res->bad_label != kNone || res->nonfinite != kNone;  // loss stays NaN
  double acc = 0.0;
  if (!rejected)
    for (int64_t i = threadIdx.x; i < n; i += kMeanThreads) acc += row_loss[i];
  acc = detail::block_sum<kMeanThreads>(acc);
  if (threadIdx.x == 0 && !rejected) res->loss = acc / static_cast<double>(n);
}

}  // namespace

int64_t softmax_cross_entropy_workspace_bytes(int64_t n) { return n * static_cast<int64_t>(sizeof(double)); }

void softmax_cross_entropy_async(int64_t n, int64_t c, const float* logits, const int64_t* labels, float* dlogits,
                                 float grad_scale, LossResult* result, void* ws, cudaStream_t stream) {
  // All bits set: loss = NaN, bad_label = nonfinite = kNone.
  PYL_CUDA_CHECK(cudaMemsetAsync(result, 0xFF, sizeof(LossResult), stream));
  if (n <= 0 || c <= 0) return;
  validate_kernel<<<detail::grid_for(n * c), detail::kBlock, 0, stream>>>(n, c, logits, labels, result);
  PYL_CUDA_LAUNCH_CHECK();
  const int64_t blocks = (n + kRowThreads / 32 - 1) / (kRowThreads / 32);
  rows_kernel<<<static_cast<unsigned>(std::min<int64_t>(blocks, int64_t(1) << 16)), kRowThreads, 0, stream>>>(
      n, c, logits, labels, dlogits, grad_scale, result, static_cast<double*>(ws));
  PYL_CUDA_LAUNCH_CHECK();
  mean_kernel<<<1, kMeanThreads, 0, stream>>>(n, static_cast<const double*>(ws), result);
  PYL_CUDA_LAUNCH_CHECK();
}

double softmax_cross_entropy(int64_t n, int64_t c, const float* logits, const int64_t* labels, float* dlogits,
                             float grad_scale, LossResult* result, void* ws, cudaStream_t stream) {
  const char* op = "softmax_cross_entropy (cuda)";
  softmax_cross_entropy_async(n, c, logits, labels, dlogits, grad_scale, result, ws, stream);
  LossResult host;
  PYL_CUDA_CHECK(cudaMemcpyAsync(&host, result, sizeof host, cudaMemcpyDeviceToHost, stream));
  PYL_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (host.bad_label != kNone) {
    const int64_t row = static_cast<int64_t>(host.bad_label);
    int64_t label = 0;
    PYL_CUDA_CHECK(cudaMemcpy(&label, labels + row, sizeof label, cudaMemcpyDeviceToHost));
    fail(ErrorKind::InvalidArgument, op, ": label ", label, " at index ", row, " is outside [0, ", c, ")");
  }
  if (host.nonfinite != kNone) {
    const int64_t i = static_cast<int64_t>(host.nonfinite);
    float v = 0.0f;
    PYL_CUDA_CHECK(cudaMemcpy(&v, logits + i, sizeof v, cudaMemcpyDeviceToHost));
    fail(ErrorKind::InvalidArgument, op, ": logits contain a non-finite value (", v, ") at row ", i / c,
         ", column ", i % c, "; the loss would be NaN (diverged training?)");
  }
  return host.loss;
}

}  // namespace pylenet::cuda
