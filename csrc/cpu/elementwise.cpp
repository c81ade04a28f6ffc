#include <algorithm>
#include <cstring>

#include "core/parallel.h"
#include "ops/elementwise.h"

namespace pylenet::cpu {

void add(int64_t count, const float* a, const float* b, float* y, int threads) {
  constexpr int64_t kChunk = 1 << 14;
  parallel_for(threads, (count + kChunk - 1) / kChunk, [&](int64_t c, int) {
    const int64_t lo = c * kChunk, hi = std::min(count, lo + kChunk);
    for (int64_t i = lo; i < hi; ++i) y[i] = a[i] + b[i];
  });
}

void copy_blocks(int64_t rows, int64_t cols, const float* src, int64_t src_ld, float* dst, int64_t dst_ld,
                 int threads) {
  parallel_for(threads, rows, [&](int64_t i, int) {
    std::memcpy(dst + i * dst_ld, src + i * src_ld, sizeof(float) * cols);
  });
}

}  // namespace pylenet::cpu
