// CUDA losses. The executor's: the loss sum, its gradient and the classification counts, as
// three launches or fused into one (loss_head). The functional API's softmax cross-entropy,
// the math of csrc/cpu/loss.cpp in three launches:
//   1. validate: the first bad label and the first non-finite logit (atomicMin on integer
//      indices: the answer does not depend on thread order);
//   2. rows: one warp per row (classes are few: 10 for MNIST, so a block per row would idle),
//      max and sum of exp by butterfly shuffles, exp and the sum in double as on the CPU;
//      writes dlogits and the row's loss, or nothing at all if step 1 found a bad input;
//   3. mean: one block adds the row losses in a fixed tree order (deterministic, no atomics).
// Nothing synchronises until the host asks for the number (softmax_cross_entropy), so a
// training loop can queue the loss and read it back once per epoch.
// Expected build note: ptxas reports 16-20 byte spills in the row kernels (rows_kernel,
// cross_entropy_backward_kernel) for sm_90; it is the stack frame of double exp()'s
// out-of-range path, not register pressure in the loop.
#include <cstring>

#include "cuda/check.h"
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace pylenet::cuda {
namespace {

constexpr int kRowThreads = 256;  // 8 warps, 8 rows per block
constexpr int kMeanThreads = 256;

// One warp's pass over row z: its max, the sum of exp(z - max) in double, and the part of that
// sum from the classes other than `label`. Every lane gets the totals.
struct RowSums {
  float zmax;
  double sum, others;
};
__device__ RowSums row_sums(const float* z, int64_t c, int64_t label, int lane) {
  float zmax = -INFINITY;
  for (int64_t j = lane; j < c; j += 32) zmax = fmaxf(zmax, z[j]);
  zmax = detail::warp_max(zmax);
  double sum = 0.0, others = 0.0;
  for (int64_t j = lane; j < c; j += 32) {
    const double e = exp(static_cast<double>(z[j] - zmax));
    sum += e;
    if (j != label) others += e;
  }
  return {zmax, detail::warp_sum(sum), detail::warp_sum(others)};
}

// dz = softmax(z) * grad_scale - onehot(label) * grad_scale, the true class written as
// -(the others' share) * grad_scale: no cancellation when its probability is near 1.
__device__ void write_row_grad(const float* z, int64_t c, int64_t label, const RowSums& r, float grad_scale,
                               float* dz, int lane) {
  const double inv_sum = 1.0 / r.sum;
  for (int64_t j = lane; j < c; j += 32) {
    const double p = j == label ? -r.others * inv_sum : exp(static_cast<double>(z[j] - r.zmax)) * inv_sum;
    dz[j] = __fmul_rn(static_cast<float>(p), grad_scale);
  }
}

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
    const int64_t label = labels[row];
    const RowSums r = row_sums(z, c, label, lane);
    if (lane == 0) row_loss[row] = log(r.sum) + r.zmax - z[label];
    if (dlogits) write_row_grad(z, c, label, r, grad_scale, dlogits + row * c, lane);
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

// ---- the executor's losses: labels checked by the host once per dataset
constexpr int kSumThreads = 256;  // one block: 8 warps, each summing its rows in order

// Sum over rows of -logp[label] (nll) or logsumexp(z) - z[label] (cross-entropy): warp w takes
// rows w, w + 8, ... in order; the warps' sums are added in a fixed tree order.
__global__ void __launch_bounds__(kSumThreads) loss_sum_kernel(bool nll, int64_t n, int64_t c, const float* z_all,
                                                               const int64_t* labels, double* loss_sum) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  double acc = 0.0;
  for (int64_t row = warp; row < n; row += kSumThreads / 32) {
    const float* z = z_all + row * c;
    if (nll) {
      if (lane == 0) acc -= z[labels[row]];
      continue;
    }
    const RowSums r = row_sums(z, c, labels[row], lane);
    if (lane == 0) acc += log(r.sum) + r.zmax - z[labels[row]];
  }
  acc = detail::block_sum<kSumThreads>(lane == 0 ? acc : 0.0);
  if (threadIdx.x == 0) *loss_sum = acc;
}

__global__ void __launch_bounds__(kRowThreads) cross_entropy_backward_kernel(int64_t n, int64_t c,
                                                                             const float* logits,
                                                                             const int64_t* labels, float grad_scale,
                                                                             float* dlogits) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t(gridDim.x) * (kRowThreads / 32);
  for (int64_t row = int64_t(blockIdx.x) * (kRowThreads / 32) + threadIdx.x / 32; row < n; row += warps) {
    const float* z = logits + row * c;
    const int64_t label = labels[row];
    write_row_grad(z, c, label, row_sums(z, c, label, lane), grad_scale, dlogits + row * c, lane);
  }
}

__global__ void nll_backward_kernel(int64_t n, int64_t c, const int64_t* labels, float grad_scale, float* dlogp) {
  PYL_GRID_STRIDE(i, n * c) {
    const int64_t row = i / c, j = i - row * c;
    dlogp[i] = j == labels[row] ? -grad_scale : 0.0f;
  }
}

__global__ void __launch_bounds__(kSumThreads) classify_kernel(int64_t n, int64_t c, const float* scores,
                                                               const int64_t* labels, int64_t* correct,
                                                               int* nonfinite) {
  long long right = 0;
  int bad = 0;
  for (int64_t row = threadIdx.x; row < n; row += kSumThreads) {
    const float* z = scores + row * c;
    int64_t best = 0;  // the first maximum, as std::max_element on the CPU
    for (int64_t j = 0; j < c; ++j) {
      bad |= !isfinite(z[j]);
      if (z[j] > z[best]) best = j;
    }
    right += labels && best == labels[row];
  }
  right = detail::block_sum<kSumThreads>(right);
  bad = detail::block_sum<kSumThreads>(bad);
  if (threadIdx.x == 0) {
    *correct = right;
    *nonfinite = bad ? 1 : 0;
  }
}

// The executor's loss head in one launch (ops/loss.h loss_head): loss_sum_kernel's sum (the
// same rows per warp, in the same order, the same tree), each row's gradient as
// cross_entropy_backward_kernel / nll_backward_kernel write it, and classify_kernel's counts
// (integers: the order they are added in does not matter). So the same bits as the three.
__global__ void __launch_bounds__(kSumThreads) loss_head_kernel(bool nll, int64_t n, int64_t c, const float* z_all,
                                                                const int64_t* labels, bool count, float grad_scale,
                                                                double* loss_sum, float* dz_all, int64_t* correct,
                                                                int* nonfinite) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  double acc = 0.0;
  long long right = 0;
  int bad = 0;
  for (int64_t row = warp; row < n; row += kSumThreads / 32) {
    const float* z = z_all + row * c;
    float* dz = dz_all + row * c;
    const int64_t label = labels[row];
    if (lane == 0) {
      int64_t best = 0;  // the first maximum, as classify_kernel
      for (int64_t j = 0; j < c; ++j) {
        bad |= !isfinite(z[j]);
        if (z[j] > z[best]) best = j;
      }
      right += count && best == label;
    }
    if (nll) {
      if (lane == 0) acc -= z[label];
      for (int64_t j = lane; j < c; j += 32) dz[j] = j == label ? -grad_scale : 0.0f;
      continue;
    }
    const RowSums r = row_sums(z, c, label, lane);
    if (lane == 0) acc += log(r.sum) + r.zmax - z[label];
    write_row_grad(z, c, label, r, grad_scale, dz, lane);
  }
  acc = detail::block_sum<kSumThreads>(lane == 0 ? acc : 0.0);
  right = detail::block_sum<kSumThreads>(right);
  bad = detail::block_sum<kSumThreads>(bad);
  if (threadIdx.x == 0) {
    *loss_sum = acc;
    *correct = right;
    *nonfinite = bad ? 1 : 0;
  }
}

}  // namespace

void loss_head(bool nll, int64_t n, int64_t c, const float* z, const int64_t* labels, bool count, float grad_scale,
               double* loss_sum, float* dz, int64_t* correct, int* nonfinite, cudaStream_t stream) {
  loss_head_kernel<<<1, kSumThreads, 0, stream>>>(nll, n, c, z, labels, count, grad_scale, loss_sum, dz, correct,
                                                  nonfinite);
  PYL_CUDA_LAUNCH_CHECK();
}

void cross_entropy_forward(int64_t n, int64_t c, const float* logits, const int64_t* labels, double* loss_sum,
                           cudaStream_t stream) {
  loss_sum_kernel<<<1, kSumThreads, 0, stream>>>(false, n, c, logits, labels, loss_sum);
  PYL_CUDA_LAUNCH_CHECK();
}

void nll_loss_forward(int64_t n, int64_t c, const float* logp, const int64_t* labels, double* loss_sum,
                      cudaStream_t stream) {
  loss_sum_kernel<<<1, kSumThreads, 0, stream>>>(true, n, c, logp, labels, loss_sum);
  PYL_CUDA_LAUNCH_CHECK();
}

void cross_entropy_backward(int64_t n, int64_t c, const float* logits, const int64_t* labels, float grad_scale,
                            float* dlogits, cudaStream_t stream) {
  if (n <= 0) return;
  const int64_t blocks = (n + kRowThreads / 32 - 1) / (kRowThreads / 32);
  cross_entropy_backward_kernel<<<static_cast<unsigned>(std::min<int64_t>(blocks, int64_t(1) << 16)), kRowThreads, 0,
                                  stream>>>(n, c, logits, labels, grad_scale, dlogits);
  PYL_CUDA_LAUNCH_CHECK();
}

void nll_loss_backward(int64_t n, int64_t c, const int64_t* labels, float grad_scale, float* dlogp,
                       cudaStream_t stream) {
  if (n <= 0) return;
  nll_backward_kernel<<<detail::grid_for(n * c), detail::kBlock, 0, stream>>>(n, c, labels, grad_scale, dlogp);
  PYL_CUDA_LAUNCH_CHECK();
}

void classify(int64_t n, int64_t c, const float* scores, const int64_t* labels, int64_t* correct, int* nonfinite,
              cudaStream_t stream) {
  classify_kernel<<<1, kSumThreads, 0, stream>>>(n, c, scores, labels, correct, nonfinite);
  PYL_CUDA_LAUNCH_CHECK();
}

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
