#include <algorithm>

#include "core/parallel.h"
#include "ops/dropout.h"
#include "ops/math.h"

namespace pylenet::cpu {

// Used for forward (x -> y) and backward (dy -> dx) alike: the same mask, the same scale.
void dropout(const DropoutDesc& d, int64_t first, int64_t count, const float* x, float* y, int threads) {
  constexpr int64_t kChunk = 1 << 14;
  const uint32_t threshold = math::dropout_threshold(d.p);
  const uint64_t key = d.key;
  const float scale = d.scale();
  parallel_for(threads, (count + kChunk - 1) / kChunk, [&](int64_t c, int) {
    const int64_t lo = c * kChunk, hi = std::min(count, lo + kChunk);
    for (int64_t i = lo; i < hi; ++i)
      y[i] = math::dropout_keep(key, static_cast<uint64_t>(first + i), threshold) ? x[i] * scale : 0.0f;
  });
}

}  // namespace pylenet::cpu
