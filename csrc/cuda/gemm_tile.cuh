// The one tiled SGEMM kernel, written once and used twice: by the explicit GEMM (gemm.cu,
// operands are matrices in memory) and by the implicit-GEMM convolution (conv.cu, operands
// are computed on the fly from x, w or dy, so the unfolded matrix never exists in memory).
//
// Tiling: a block of 256 threads computes a 64 x 64 tile of C, walking k in steps of 16.
// Each step stages a 64 x 16 slice of A and a 16 x 64 slice of B in shared memory; each
// thread then owns a 4 x 4 set of C elements, spaced 16 apart (rows ty + 16 i, columns
// tx + 16 j) so that a warp reads consecutive shared-memory words (no bank conflicts) and
// writes consecutive columns of C (coalesced). While one slice is being multiplied, the
// next one is already being fetched from global memory into registers.
// The shared arrays are padded by one column: slices loaded "transposed" (when the
// operand's contiguous direction is k) would otherwise hit one bank 16 times.
//
// Operand protocol (A is M x K, row = m, col = k; B is K x N, row = k, col = n):
//   __device__ float operator()(int z, int row, int col) const;  // only in-range indices
//   static constexpr bool kColsContiguous;  // adjacent cols adjacent in memory? picks the
//                                           // thread-to-element mapping of the loads
// Epilogue: __device__ void operator()(int z, int m, int n, float acc) const;
// z is blockIdx.z: the batch index (a matrix of a batched GEMM, a chunk of images of the
// split backward-filter convolution).
//
// Each C element is summed by one thread, k ascending, with fmaf: deterministic.
#pragma once

#include <cuda_runtime.h>

#include "ops/math.h"  // PYL_HD

namespace pylenet::cuda::tile {

constexpr int kM = 64, kN = 64, kK = 16;
constexpr int kThreads = 256;
constexpr int kLoads = kM * kK / kThreads;  // elements of each operand slice per thread (4)
static_assert(kM * kK == kN * kK, "both slices have the same size");

inline dim3 grid(int m, int n, int batch) {
  return dim3(static_cast<unsigned>((n + kN - 1) / kN), static_cast<unsigned>((m + kM - 1) / kM),
              static_cast<unsigned>(batch));
}

// Which element of a slice thread `tid` fetches in load i: consecutive threads take
// consecutive addresses along the operand's contiguous direction.
template <bool kColsContiguous, int kRows, int kCols>
PYL_HD inline void slice_index(int idx, int& row, int& col) {
  if (kColsContiguous) { row = idx / kCols; col = idx % kCols; }
  else { col = idx / kRows; row = idx % kRows; }
}

template <class A, class B, class Epilogue>
__global__ void __launch_bounds__(kThreads) gemm_kernel(int M, int N, int K, A a, B b, Epilogue epilogue) {
  __shared__ float As[kK][kM + 1];  // As[k][m]
  __shared__ float Bs[kK][kN + 1];  // Bs[k][n]
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int m0 = blockIdx.y * kM, n0 = blockIdx.x * kN, z = blockIdx.z;

  float ra[kLoads], rb[kLoads];  // the next slices, in flight
  auto fetch = [&](int k0) {
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      int r, c;
      slice_index<A::kColsContiguous, kM, kK>(tid + i * kThreads, r, c);
      ra[i] = (m0 + r < M && k0 + c < K) ? a(z, m0 + r, k0 + c) : 0.0f;
      slice_index<B::kColsContiguous, kK, kN>(tid + i * kThreads, r, c);
      rb[i] = (k0 + r < K && n0 + c < N) ? b(z, k0 + r, n0 + c) : 0.0f;
    }
  };
  auto stage = [&]() {
#pragma unroll
    for (int i = 0; i < kLoads; ++i) {
      int r, c;
      slice_index<A::kColsContiguous, kM, kK>(tid + i * kThreads, r, c);
      As[c][r] = ra[i];
      slice_index<B::kColsContiguous, kK, kN>(tid + i * kThreads, r, c);
      Bs[r][c] = rb[i];
    }
  };

  float acc[4][4] = {};
  fetch(0);
  for (int k0 = 0; k0 < K; k0 += kK) {
    stage();
    __syncthreads();
    if (k0 + kK < K) fetch(k0 + kK);  // overlaps the arithmetic below
#pragma unroll
    for (int kk = 0; kk < kK; ++kk) {
      float av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = As[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = Bs[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int m = m0 + ty + 16 * i, n = n0 + tx + 16 * j;
      if (m < M && n < N) epilogue(z, m, n, acc[i][j]);
    }
}

}  // namespace pylenet::cuda::tile
