// CUDA softmax and log-softmax over the rows of (N, C): one warp per row (classes are few),
// the maximum and the sums by butterfly shuffles, in double as on the CPU.
#include "cuda/check.h"
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace pylenet::cuda {
namespace {

constexpr int kRowThreads = 256;  // 8 warps, a row each

__global__ void __launch_bounds__(kRowThreads) softmax_forward_kernel(bool log, int64_t n, int64_t c,
                                                                      const float* x, float* y) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t(gridDim.x) * (kRowThreads / 32);
  for (int64_t row = int64_t(blockIdx.x) * (kRowThreads / 32) + threadIdx.x / 32; row < n; row += warps) {
    const float* z = x + row * c;
    float zmax = -INFINITY;
    for (int64_t j = lane; j < c; j += 32) zmax = fmaxf(zmax, z[j]);
    zmax = detail::warp_max(zmax);
    double sum = 0.0;
    for (int64_t j = lane; j < c; j += 32) sum += exp(static_cast<double>(z[j] - zmax));
    sum = detail::warp_sum(sum);
    const double lse = ::log(sum);
    for (int64_t j = lane; j < c; j += 32)
      y[row * c + j] = log ? static_cast<float>(static_cast<double>(z[j] - zmax) - lse)
                           : static_cast<float>(exp(static_cast<double>(z[j] - zmax)) / sum);
  }
}

__global__ void __launch_bounds__(kRowThreads) softmax_backward_kernel(bool log, int64_t n, int64_t c,
                                                                       const float* y, const float* dy, float* dx) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t(gridDim.x) * (kRowThreads / 32);
  for (int64_t row = int64_t(blockIdx.x) * (kRowThreads / 32) + threadIdx.x / 32; row < n; row += warps) {
    const float* o = y + row * c;
    const float* g = dy + row * c;
    double sum = 0.0;
    for (int64_t j = lane; j < c; j += 32) sum += log ? static_cast<double>(g[j]) : static_cast<double>(g[j]) * o[j];
    sum = detail::warp_sum(sum);
    for (int64_t j = lane; j < c; j += 32)
      dx[row * c + j] = log ? static_cast<float>(g[j] - exp(static_cast<double>(o[j])) * sum)
                            : static_cast<float>(o[j] * (g[j] - sum));
  }
}

unsigned row_blocks(int64_t n) {
  return static_cast<unsigned>(std::min<int64_t>((n + kRowThreads / 32 - 1) / (kRowThreads / 32), int64_t(1) << 16));
}

}  // namespace

void softmax_forward(bool log, int64_t n, int64_t c, const float* x, float* y, cudaStream_t stream) {
  if (n <= 0) return;
  softmax_forward_kernel<<<row_blocks(n), kRowThreads, 0, stream>>>(log, n, c, x, y);
  PYL_CUDA_LAUNCH_CHECK();
}

void softmax_backward(bool log, int64_t n, int64_t c, const float* y, const float* dy, float* dx,
                      cudaStream_t stream) {
  if (n <= 0) return;
  softmax_backward_kernel<<<row_blocks(n), kRowThreads, 0, stream>>>(log, n, c, y, dy, dx);
  PYL_CUDA_LAUNCH_CHECK();
}

}  // namespace pylenet::cuda
