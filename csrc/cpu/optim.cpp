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

void sgd_step(int64_t count, float* param, const float* grad, float* velocity, const SgdParams& o, int threads) {
  constexpr int64_t kChunk = 1 << 14;
  parallel_for(threads, (count + kChunk - 1) / kChunk, [&](int64_t c, int) {
    const int64_t lo = c * kChunk, hi = std::min(count, lo + kChunk);
    for (int64_t i = lo; i < hi; ++i) math::sgd_update(param[i], grad[i], velocity ? velocity + i : nullptr, o);
  });
}

}  // namespace pylenet::cpu
