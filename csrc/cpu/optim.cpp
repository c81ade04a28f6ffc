#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/parallel.h"
#include "core/simd.h"
#include "ops/optim.h"

namespace pylenet::cpu {

bool all_finite(int64_t count, const float* x) {
  // NaN and inf are the floats whose exponent bits are all set. An OR over integers
  // vectorises (a float sum would not: its order is fixed), about 16 floats a cycle.
  uint32_t bad = 0;
  for (int64_t i = 0; i < count; ++i) {
    uint32_t u;
    std::memcpy(&u, x + i, sizeof u);
    bad |= static_cast<uint32_t>((u & 0x7f800000u) == 0x7f800000u);
  }
  return bad == 0;
}

// Per-SIMD-level update loops over [lo, hi) (optim_kernel.inc).
#define PYL_DECLARE_OPTIM(ns)                                                                                     \
  namespace ns {                                                                                                  \
  void sgd_range(int64_t lo, int64_t hi, float* param, const float* grad, float* velocity, math::SgdParams opt);  \
  void adam_range(int64_t lo, int64_t hi, float* param, const float* grad, float* m, float* v,                    \
                  math::AdamParams opt);                                                                          \
  void adadelta_range(int64_t lo, int64_t hi, float* param, const float* grad, float* square_avg, float* acc_delta, \
                      math::AdadeltaParams opt);                                                                  \
  }
PYL_DECLARE_OPTIM(scalar)
PYL_DECLARE_OPTIM(avx2)
PYL_DECLARE_OPTIM(avx512)
#undef PYL_DECLARE_OPTIM

namespace {
// Element-wise updates over fixed chunks of the flat parameter buffer, each chunk by the copy
// of the loop for the active SIMD level (all levels give the same bits).
template <class F>
void for_chunks(int64_t count, int threads, F&& fn) {
  constexpr int64_t kChunk = 1 << 14;
  const simd::Level level = simd::active();
  parallel_for(threads, (count + kChunk - 1) / kChunk, [&](int64_t c, int) {
    const int64_t lo = c * kChunk;
    fn(level, lo, std::min(count, lo + kChunk));
  });
}
}  // namespace

void sgd_step(int64_t count, float* param, const float* grad, float* velocity, const SgdParams& o, int threads) {
  for_chunks(count, threads, [&](simd::Level level, int64_t lo, int64_t hi) {
    PYL_SIMD_DISPATCH(level, sgd_range, lo, hi, param, grad, velocity, o);
  });
}

void adam_step(int64_t count, float* param, const float* grad, float* m, float* v, const AdamParams& o, int threads) {
  for_chunks(count, threads, [&](simd::Level level, int64_t lo, int64_t hi) {
    PYL_SIMD_DISPATCH(level, adam_range, lo, hi, param, grad, m, v, o);
  });
}

void adadelta_step(int64_t count, float* param, const float* grad, float* square_avg, float* acc_delta,
                   const AdadeltaParams& o, int threads) {
  for_chunks(count, threads, [&](simd::Level level, int64_t lo, int64_t hi) {
    PYL_SIMD_DISPATCH(level, adadelta_range, lo, hi, param, grad, square_avg, acc_delta, o);
  });
}

}  // namespace pylenet::cpu
