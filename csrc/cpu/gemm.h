// Our single-precision GEMM, row-major:
//   C(m, n) = alpha * op(A)(m, k) * op(B)(k, n) + beta * C
// op(X) is X or its transpose. With beta == 0, C is not read (it may hold garbage).
// Goto-style blocking: panels of op(B) (kc x nc) and op(A) (m x kc) are packed into
// the caller's workspace, then an MR x NR register-blocked micro-kernel sweeps the
// tiles of C. Each tile is owned by one thread and its k-loop runs in a fixed order,
// so the result does not depend on the thread count.
#pragma once

#include <cstdint>

#include "core/simd.h"

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

// Prepacked B, for a B shared by many products (a Linear layer's batch input X, used by every
// row block of its weight gradient): op(B) (k x n) is packed once into column panels of the
// micro-kernel's width, each holding all k rows (k-major), zero-padded past n. The layout
// depends on the SIMD level, so packing and use name the same `level`.
// Floats of a packed B (for every level):
int64_t sgemm_packed_b_floats(int64_t k, int64_t n);
// Packs rows [p0, p0 + rows) of op(B) into the packing of all k rows (so a batch's rows can
// be packed chunk by chunk, as the chunks finish).
void sgemm_pack_b(simd::Level level, bool trans_b, int64_t k, int64_t n, const float* b, int64_t ldb,
                  float* packed, int64_t p0, int64_t rows);
// sgemm with op(B) prepacked at `level`; the workspace holds only A panels
// (sgemm_workspace_floats is enough).
void sgemm_prepacked_b(simd::Level level, bool trans_a, int64_t m, int64_t n, int64_t k, float alpha,
                       const float* a, int64_t lda, const float* packed_b, float beta, float* c, int64_t ldc,
                       float* workspace, int threads);

// One copy per SIMD variant (gemm_kernel.inc compiled with different flags).
#define PYL_DECLARE_SGEMM(ns)                                                                   \
  namespace ns {                                                                                \
  void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,          \
             const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,    \
             int64_t ldc, float* workspace, int threads);                                       \
  void sgemm_pack_b(bool trans_b, int64_t k, int64_t n, const float* b, int64_t ldb,            \
                    float* packed, int64_t p0, int64_t rows);                                   \
  void sgemm_prepacked_b(bool trans_a, int64_t m, int64_t n, int64_t k, float alpha,            \
                         const float* a, int64_t lda, const float* packed_b, float beta,        \
                         float* c, int64_t ldc, float* workspace, int threads);                 \
  }
PYL_DECLARE_SGEMM(scalar)
PYL_DECLARE_SGEMM(avx2)
PYL_DECLARE_SGEMM(avx512)
#undef PYL_DECLARE_SGEMM

}  // namespace pylenet::cpu
