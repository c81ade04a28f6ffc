// Our single-precision GEMM, row-major:
//   C(m, n) = alpha * op(A)(m, k) * op(B)(k, n) + beta * C
// op(X) is X or its transpose. With beta == 0, C is not read (it may hold garbage).
// Goto-style blocking: panels of op(B) (kc x nc) and op(A) (m x kc) are packed into
// the caller's workspace, then an MR x NR register-blocked micro-kernel sweeps the
// tiles of C. Each tile is owned by one thread and its k-loop runs in a fixed order,
// so the result does not depend on the thread count.
#pragma once

#include <cstdint>

namespace pylenet::cpu {

constexpr int64_t kGemmKC = 256;    // depth of a packed panel
constexpr int64_t kGemmNC = 3072;   // columns of op(B) packed at once
constexpr int64_t kGemmMaxMR = 8;   // largest micro-tile over all SIMD variants
constexpr int64_t kGemmMaxNR = 32;

// Floats of workspace sgemm needs for these sizes.
int64_t sgemm_workspace_floats(int64_t m, int64_t n, int64_t k);

void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
           const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
           int64_t ldc, float* workspace, int threads);

// One copy per SIMD variant (gemm_kernel.inc compiled with different flags).
#define PYL_DECLARE_SGEMM(ns)                                                                   \
  namespace ns {                                                                                \
  void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,          \
             const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,    \
             int64_t ldc, float* workspace, int threads);                                       \
  }
PYL_DECLARE_SGEMM(scalar)
PYL_DECLARE_SGEMM(avx2)
PYL_DECLARE_SGEMM(avx512)
#undef PYL_DECLARE_SGEMM

}  // namespace pylenet::cpu
