// Explicit GEMM: the tiled kernel of gemm_tile.cuh with matrices in memory as operands.
#include "cuda/gemm.h"

#include "cuda/check.h"
#include "cuda/common.cuh"
#include "cuda/gemm_tile.cuh"

namespace pylenet::cuda {
namespace {

// op(A) (M x K): stored (M x K) row-major, or (K x M) when transposed.
template <bool kTrans>
struct MatrixA {
  const float* p;
  int64_t ld, stride;
  static constexpr bool kColsContiguous = !kTrans;
  PYL_HD float operator()(int z, int m, int k) const {
    return kTrans ? p[z * stride + k * ld + m] : p[z * stride + m * ld + k];
  }
};

// op(B) (K x N): stored (K x N) row-major, or (N x K) when transposed.
template <bool kTrans>
struct MatrixB {
  const float* p;
  int64_t ld, stride;
  static constexpr bool kColsContiguous = !kTrans;
  PYL_HD float operator()(int z, int k, int n) const {
    return kTrans ? p[z * stride + n * ld + k] : p[z * stride + k * ld + n];
  }
};

struct StoreC {
  float* c;
  int64_t ldc, stride;
  float alpha, beta;
  const float* row_bias;
  const float* col_bias;
  bool relu;  // a ReLU folded into the epilogue (after the biases)
  PYL_HD void operator()(int z, int m, int n, float acc) const {
    float* p = c + z * stride + m * ldc + n;
    float v = alpha * acc;
    if (beta != 0.0f) v += beta * *p;
    if (row_bias) v += row_bias[m];
    if (col_bias) v += col_bias[n];
    *p = relu ? math::relu(v) : v;
  }
};

template <bool kTa, bool kTb>
void launch(int m, int n, int k, const float* a, int64_t lda, int64_t sa, const float* b, int64_t ldb, int64_t sb,
            const StoreC& out, int batch, cudaStream_t stream) {
  tile::gemm_kernel<<<tile::grid(m, n, batch), tile::kThreads, 0, stream>>>(
      m, n, k, MatrixA<kTa>{a, lda, sa}, MatrixB<kTb>{b, ldb, sb}, out);
  PYL_CUDA_LAUNCH_CHECK();
}

}  // namespace

void sgemm_strided_batched(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                           const float* a, int64_t lda, int64_t stride_a, const float* b, int64_t ldb,
                           int64_t stride_b, float beta, float* c, int64_t ldc, int64_t stride_c, int64_t batch,
                           cudaStream_t stream, const float* row_bias, const float* col_bias, bool relu) {
  const char* op = "cuda::sgemm";
  detail::check_int32(op, m, "m");
  detail::check_int32(op, n, "n");
  detail::check_int32(op, k, "k");
  PYL_CHECK_ARG((m + tile::kM - 1) / tile::kM <= 65535, op, ": m = ", m, " needs more than 65535 row tiles");
  PYL_CHECK_ARG(batch >= 0 && batch <= 65535, op, ": batch = ", batch, " is outside [0, 65535]");
  if (m == 0 || n == 0 || batch == 0) return;
  const StoreC out{c, ldc, stride_c, alpha, beta, row_bias, col_bias, relu};
  const int M = static_cast<int>(m), N = static_cast<int>(n), K = static_cast<int>(k), B = static_cast<int>(batch);
  if (!trans_a && !trans_b) launch<false, false>(M, N, K, a, lda, stride_a, b, ldb, stride_b, out, B, stream);
  else if (!trans_a && trans_b) launch<false, true>(M, N, K, a, lda, stride_a, b, ldb, stride_b, out, B, stream);
  else if (trans_a && !trans_b) launch<true, false>(M, N, K, a, lda, stride_a, b, ldb, stride_b, out, B, stream);
  else launch<true, true>(M, N, K, a, lda, stride_a, b, ldb, stride_b, out, B, stream);
}

void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc, cudaStream_t stream) {
  sgemm_strided_batched(trans_a, trans_b, m, n, k, alpha, a, lda, 0, b, ldb, 0, beta, c, ldc, 0, 1, stream);
}

}  // namespace pylenet::cuda
