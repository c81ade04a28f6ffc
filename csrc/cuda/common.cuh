// Internal helpers shared by the .cu files: launch geometry, grid-stride loops, 32-bit
// index checks and deterministic reductions. Device code only; not part of the API.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "core/error.h"
#include "ops/math.h"  // PYL_HD

namespace pylenet::cuda::detail {

constexpr int kBlock = 256;  // threads per block of the element-wise kernels

// Blocks for a grid-stride loop over `count` items: enough to fill any current GPU many
// times over, capped so huge tensors reuse threads instead of launching millions of blocks.
inline unsigned grid_for(int64_t count, int block = kBlock) {
  const int64_t blocks = (count + block - 1) / block;
  return static_cast<unsigned>(std::clamp<int64_t>(blocks, 1, int64_t(1) << 16));
}

// Grid-stride loop over [0, n) with a 64-bit index.
#define PYL_GRID_STRIDE(i, n)                                                                     \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n);          \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

// Kernels that decompose flat indices with 32-bit division (several times faster than
// 64-bit division on a GPU) call this first for every extent they index.
inline void check_int32(const char* op, int64_t value, const char* what) {
  PYL_CHECK_ARG(value >= 0 && value <= INT_MAX, op, ": ", what, " = ", value,
                " is too large for the CUDA kernels' 32-bit indexing (at most ", INT_MAX, ")");
}

// Small helpers usable on both sides (PYL_HD), for the per-element functions that a host
// harness can call without a GPU.
PYL_HD inline bool inside(int i, int n) { return static_cast<unsigned>(i) < static_cast<unsigned>(n); }  // 0 <= i < n
PYL_HD inline int imin(int a, int b) { return a < b ? a : b; }
PYL_HD inline int imax(int a, int b) { return a > b ? a : b; }
PYL_HD inline bool is_nan(float v) { return v != v; }
// a * b rounded on its own: nvcc never fuses __fmul_rn into an FMA with a following add.
PYL_HD inline float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

// Sum of `v` over a block of kThreads threads, in a fixed tree order: the same bits on
// every run (no atomics). Every thread must call it; all get the total.
template <int kThreads, class T>
__device__ T block_sum(T v) {
  static_assert((kThreads & (kThreads - 1)) == 0, "power-of-two block");
  __shared__ T partial[kThreads];
  partial[threadIdx.x] = v;
  __syncthreads();
#pragma unroll
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (static_cast<int>(threadIdx.x) < s) partial[threadIdx.x] += partial[threadIdx.x + s];
    __syncthreads();
  }
  const T total = partial[0];
  __syncthreads();  // partial[] may be reused by a second call
  return total;
}

// Butterfly reductions over a full warp: every lane ends with the same value, and the
// order of the additions is fixed, so the result is deterministic.
template <class T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

}  // namespace pylenet::cuda::detail
