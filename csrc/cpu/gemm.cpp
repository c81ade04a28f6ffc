#include "cpu/gemm.h"

#include <algorithm>

#include "core/error.h"
#include "core/simd.h"

namespace pylenet::cpu {

int64_t sgemm_workspace_floats(int64_t m, int64_t n, int64_t k) {
  const int64_t kc = std::min(std::max<int64_t>(k, 1), kGemmKC);
  const int64_t mp = (m + kGemmMaxMR - 1) / kGemmMaxMR * kGemmMaxMR;
  const int64_t np = (std::min(n, kGemmNC) + kGemmMaxNR - 1) / kGemmMaxNR * kGemmMaxNR;
  // Panels are sized for kGemmKC depth; kc <= kGemmKC.
  return (mp + kGemmMaxMR) * kGemmKC + np * kc + kGemmMaxNR;
}

void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
           const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
           int64_t ldc, float* workspace, int threads) {
  PYL_SIMD_DISPATCH(simd::active(), sgemm, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc,
                    workspace, threads);
}

int64_t sgemm_packed_b_floats(int64_t k, int64_t n) {
  return (n + kGemmMaxNR - 1) / kGemmMaxNR * kGemmMaxNR * std::max<int64_t>(k, 1);  // every NR divides kGemmMaxNR
}

void sgemm_pack_b(simd::Level level, bool trans_b, int64_t k, int64_t n, const float* b, int64_t ldb, float* packed,
                  int64_t p0, int64_t rows) {
  PYL_SIMD_DISPATCH(level, sgemm_pack_b, trans_b, k, n, b, ldb, packed, p0, rows);
}

void sgemm_prepacked_b(simd::Level level, bool trans_a, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                       int64_t lda, const float* packed_b, float beta, float* c, int64_t ldc, float* workspace,
                       int threads) {
  PYL_SIMD_DISPATCH(level, sgemm_prepacked_b, trans_a, m, n, k, alpha, a, lda, packed_b, beta, c, ldc, workspace,
                    threads);
}

}  // namespace pylenet::cpu
