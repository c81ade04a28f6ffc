#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/parallel.h"
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

namespace {
// Element-wise updates over fixed chunks of the flat parameter buffer. fn(lo, hi) runs a plain
// loop over [lo, hi) with its options copied into a local first: read through a reference
// or a closure, every store to a parameter might change an option (both are floats), so the
// option branches stay inside the loop and it does not vectorise.
template <class F>
void for_chunks(int64_t count, int threads, F&& fn) {
  constexpr int64_t kChunk = 1 << 14;
  parallel_for(threads, (count + kChunk - 1) / kChunk, [&](int64_t c, int) {
    const int64_t lo = c * kChunk;
    fn(lo, std::min(count, lo + kChunk));
  });
}
}  // namespace

void sgd_step(int64_t count, float* param, const float* grad, float* velocity, const SgdParams& o, int threads) {
  for_chunks(count, threads, [&](int64_t lo, int64_t hi) {
    const SgdParams opt = o;
    if (!velocity)
      for (int64_t i = lo; i < hi; ++i) math::sgd_update(param[i], grad[i], nullptr, opt);
    else
      for (int64_t i = lo; i < hi; ++i) math::sgd_update(param[i], grad[i], velocity + i, opt);
  });
}

void adam_step(int64_t count, float* param, const float* grad, float* m, float* v, const AdamParams& o, int threads) {
  for_chunks(count, threads, [&](int64_t lo, int64_t hi) {
    const AdamParams opt = o;
    for (int64_t i = lo; i < hi; ++i) math::adam_update(param[i], grad[i], m[i], v[i], opt);
  });
}

void adadelta_step(int64_t count, float* param, const float* grad, float* square_avg, float* acc_delta,
                   const AdadeltaParams& o, int threads) {
  for_chunks(count, threads, [&](int64_t lo, int64_t hi) {
    const AdadeltaParams opt = o;
    for (int64_t i = lo; i < hi; ++i) math::adadelta_update(param[i], grad[i], square_avg[i], acc_delta[i], opt);
  });
}

}  // namespace pylenet::cpu
