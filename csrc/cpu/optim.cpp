#include <cmath>

#include "core/parallel.h"
#include "ops/optim.h"

namespace pylenet::cpu {

bool all_finite(int64_t count, const float* x) {
  // Summing 0 * x turns any NaN/inf into NaN; one branch per element would not vectorise.
  float probe = 0.0f;
  for (int64_t i = 0; i < count; ++i) probe += 0.0f * x[i];
  return probe == 0.0f;
}

namespace {
// Element-wise updates over fixed chunks of the flat parameter buffer.
template <class F>
void for_chunks(int64_t count, int threads, F&& fn) {
  constexpr int64_t kChunk = 1 << 14;
  parallel_for(threads, (count + kChunk - 1) / kChunk, [&](int64_t c, int) {
    const int64_t lo = c * kChunk, hi = std::min(count, lo + kChunk);
    for (int64_t i = lo; i < hi; ++i) fn(i);
  });
}
}  // namespace

void sgd_step(int64_t count, float* param, const float* grad, float* velocity, const SgdParams& o, int threads) {
  for_chunks(count, threads, [&](int64_t i) { math::sgd_update(param[i], grad[i], velocity ? velocity + i : nullptr, o); });
}

void adam_step(int64_t count, float* param, const float* grad, float* m, float* v, const AdamParams& o, int threads) {
  for_chunks(count, threads, [&](int64_t i) { math::adam_update(param[i], grad[i], m[i], v[i], o); });
}

void adadelta_step(int64_t count, float* param, const float* grad, float* square_avg, float* acc_delta,
                   const AdadeltaParams& o, int threads) {
  for_chunks(count, threads, [&](int64_t i) { math::adadelta_update(param[i], grad[i], square_avg[i], acc_delta[i], o); });
}

}  // namespace pylenet::cpu
