// Device side of the CUDA training loop (csrc/net/cuda_network.cpp): gathering a batch by
// index from the device-resident dataset, folding each step's loss and accuracy into
// running totals on the device, and the softmax of predict. See kernels.h.
#include "cuda/check.h"
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace pylenet::cuda {
namespace {

constexpr int kStatThreads = 256;
constexpr int kRowThreads = 256;  // one warp per row, as in loss.cu

__global__ void gather_kernel(int64_t n, int64_t sample, const float* images, const int64_t* labels,
                              const int64_t* order, float* x, int64_t* y) {
  PYL_GRID_STRIDE(i, n * sample) {
    const int64_t row = i / sample, col = i - row * sample;
    const int64_t src = order[row];
    x[i] = images[src * sample + col];
    if (col == 0) y[row] = labels[src];
  }
}

__global__ void __launch_bounds__(kStatThreads) accumulate_kernel(int64_t n, int64_t c, const float* logits,
                                                                  const int64_t* labels, const LossResult* res,
                                                                  RunTotals* totals) {
  const bool rejected = res->bad_label != kNone || res->nonfinite != kNone;
  unsigned long long correct = 0;
  if (!rejected)
    for (int64_t row = threadIdx.x; row < n; row += kStatThreads) {
      const float* z = logits + row * c;
      int64_t best = 0;  // the first maximum, as std::max_element on the CPU
      for (int64_t j = 1; j < c; ++j)
        if (z[j] > z[best]) best = j;
      correct += best == labels[row];
    }
  correct = detail::block_sum<kStatThreads>(correct);
  if (threadIdx.x == 0) {
    if (rejected) {
      totals->bad = 1;
    } else {
      totals->loss_sum += res->loss * static_cast<double>(n);
      totals->correct += correct;
      totals->steps += 1;
    }
  }
}

__global__ void __launch_bounds__(kRowThreads) softmax_rows_kernel(int64_t n, int64_t c, const float* logits,
                                                                   float* probs) {
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
    for (int64_t j = lane; j < c; j += 32)
      probs[row * c + j] = static_cast<float>(exp(static_cast<double>(z[j] - zmax)) / sum);
  }
}

}  // namespace

void gather_batch(int64_t n, int64_t sample_floats, const float* images, const int64_t* labels,
                  const int64_t* order, float* x, int64_t* y, cudaStream_t stream) {
  if (n <= 0) return;
  gather_kernel<<<detail::grid_for(n * sample_floats), detail::kBlock, 0, stream>>>(n, sample_floats, images, labels,
                                                                                   order, x, y);
  PYL_CUDA_LAUNCH_CHECK();
}

void accumulate_step(int64_t n, int64_t c, const float* logits, const int64_t* labels, const LossResult* result,
                     RunTotals* totals, cudaStream_t stream) {
  accumulate_kernel<<<1, kStatThreads, 0, stream>>>(n, c, logits, labels, result, totals);
  PYL_CUDA_LAUNCH_CHECK();
}

void softmax_rows(int64_t n, int64_t c, const float* logits, float* probs, cudaStream_t stream) {
  if (n <= 0) return;
  const int64_t blocks = (n + kRowThreads / 32 - 1) / (kRowThreads / 32);
  softmax_rows_kernel<<<static_cast<unsigned>(std::min<int64_t>(blocks, int64_t(1) << 16)), kRowThreads, 0,
                        stream>>>(n, c, logits, probs);
  PYL_CUDA_LAUNCH_CHECK();
}

}  // namespace pylenet::cuda
