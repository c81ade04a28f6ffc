// CUDA element-wise ops: add, block copies (cat and its gradient) and dropout, whose mask is
// the CPU's (ops/math.h: a pure function of the key and the element's index in the batch).
#include "cuda/check.h"
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace pylenet::cuda {
namespace {

__global__ void add_kernel(int64_t count, const float* a, const float* b, float* y) {
  PYL_GRID_STRIDE(i, count) y[i] = a[i] + b[i];
}

// key: the step's key, or, with step (a replayed CUDA graph), the op's base key and the step
// read on the device.
__global__ void dropout_kernel(int64_t first, int64_t count, uint64_t key, const uint64_t* step, uint32_t threshold,
                               float scale, const float* x, float* y) {
  if (step) key = math::dropout_key_at(key, *step);
  PYL_GRID_STRIDE(i, count) {
    y[i] = math::dropout_keep(key, static_cast<uint64_t>(first + i), threshold) ? detail::mul_rn(x[i], scale) : 0.0f;
  }
}

}  // namespace

void add(int64_t count, const float* a, const float* b, float* y, cudaStream_t stream) {
  if (count <= 0) return;
  add_kernel<<<detail::grid_for(count), detail::kBlock, 0, stream>>>(count, a, b, y);
  PYL_CUDA_LAUNCH_CHECK();
}

void copy_blocks(int64_t rows, int64_t cols, const float* src, int64_t src_ld, float* dst, int64_t dst_ld,
                 cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return;
  PYL_CUDA_CHECK(cudaMemcpy2DAsync(dst, sizeof(float) * dst_ld, src, sizeof(float) * src_ld, sizeof(float) * cols,
                                   rows, cudaMemcpyDeviceToDevice, stream));
}

void dropout(const DropoutDesc& d, int64_t first, int64_t count, const float* x, float* y, cudaStream_t stream) {
  if (count <= 0) return;
  dropout_kernel<<<detail::grid_for(count), detail::kBlock, 0, stream>>>(
      first, count, d.key, d.device_step, math::dropout_threshold(d.p), d.scale(), x, y);
  PYL_CUDA_LAUNCH_CHECK();
}

}  // namespace pylenet::cuda
