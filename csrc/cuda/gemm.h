// Our single-precision GEMM on the GPU, row-major, the twin of csrc/cpu/gemm.h:
//   C(m, n) = alpha * op(A)(m, k) * op(B)(k, n) + beta * C  [+ row_bias[m]] [+ col_bias[n]]
// op(X) is X or its transpose. With beta == 0, C is not read (it may hold garbage).
// No cuBLAS: one shared-memory tiled kernel (gemm_tile.cuh) that the implicit-GEMM
// convolution reuses with different operand loaders.
// Every C element is accumulated by one thread in increasing k order: deterministic, and
// no workspace is needed. Sizes must fit 32-bit ints (InvalidArgument otherwise).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace pylenet::cuda {

void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc, cudaStream_t stream);

// `batch` independent products in one launch: matrix i of X starts at x + i * stride_x
// (stride 0 shares one matrix, e.g. the filter across images). The biases, when not null,
// are added in the epilogue (conv adds its per-channel bias per row, linear per column), and
// with relu a ReLU is applied last (a ReLU the executor folded into the layer).
void sgemm_strided_batched(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                           const float* a, int64_t lda, int64_t stride_a, const float* b, int64_t ldb,
                           int64_t stride_b, float beta, float* c, int64_t ldc, int64_t stride_c, int64_t batch,
                           cudaStream_t stream, const float* row_bias = nullptr, const float* col_bias = nullptr,
                           bool relu = false);

}  // namespace pylenet::cuda
