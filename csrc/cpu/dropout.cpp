#include <algorithm>

#include "core/parallel.h"
#include "ops/dropout.h"
#include "ops/math.h"

namespace pylenet::cpu {

namespace {
// Compiled for AVX-512, AVX2 and the baseline, picked by the CPU at load time (the mask and
// the scale are integer and one-multiply operations: every version gives the same bits).
__attribute__((target_clones("avx512f", "avx2", "default")))
void dropout_range(uint64_t key, uint32_t threshold, float scale, int64_t first, int64_t lo, int64_t hi,
                   const float* x, float* y) {
  for (int64_t i = lo; i < hi; ++i)
    y[i] = math::dropout_keep(key, static_cast<uint64_t>(first + i), threshold) ? x[i] * scale : 0.0f;
}
}  // namespace

// Used for forward (x -> y) and backward (dy -> dx) alike: the same mask, the same scale.
void dropout(const DropoutDesc& d, int64_t first, int64_t count, const float* x, float* y, int threads) {
  constexpr int64_t kChunk = 1 << 14;
  const uint32_t threshold = math::dropout_threshold(d.p);
  const uint64_t key = d.key;
  const float scale = d.scale();
  parallel_for(threads, (count + kChunk - 1) / kChunk, [&](int64_t c, int) {
    const int64_t lo = c * kChunk;
    dropout_range(key, threshold, scale, first, lo, std::min(count, lo + kChunk), x, y);
  });
}

}  // namespace pylenet::cpu
