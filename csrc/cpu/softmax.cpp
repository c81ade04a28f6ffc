#include <algorithm>
#include <cmath>

#include "core/parallel.h"
#include "ops/softmax.h"

namespace pylenet::cpu {

void softmax_forward(bool log, int64_t n, int64_t c, const float* x, float* y, int threads) {
  parallel_for(threads, n, [&](int64_t i, int) {
    const float* z = x + i * c;
    float* o = y + i * c;
    const float zmax = *std::max_element(z, z + c);
    double sum = 0.0;
    for (int64_t j = 0; j < c; ++j) sum += std::exp(static_cast<double>(z[j] - zmax));
    if (log) {
      const double lse = std::log(sum);
      for (int64_t j = 0; j < c; ++j) o[j] = static_cast<float>(static_cast<double>(z[j] - zmax) - lse);
    } else {
      const double inv = 1.0 / sum;
      for (int64_t j = 0; j < c; ++j) o[j] = static_cast<float>(std::exp(static_cast<double>(z[j] - zmax)) * inv);
    }
  });
}

void softmax_backward(bool log, int64_t n, int64_t c, const float* y, const float* dy, float* dx, int threads) {
  parallel_for(threads, n, [&](int64_t i, int) {
    const float* o = y + i * c;
    const float* g = dy + i * c;
    float* d = dx + i * c;
    double sum = 0.0;
    if (log) {
      for (int64_t j = 0; j < c; ++j) sum += g[j];
      for (int64_t j = 0; j < c; ++j)
        d[j] = static_cast<float>(g[j] - std::exp(static_cast<double>(o[j])) * sum);
    } else {
      for (int64_t j = 0; j < c; ++j) sum += static_cast<double>(g[j]) * o[j];
      for (int64_t j = 0; j < c; ++j) d[j] = static_cast<float>(o[j] * (g[j] - sum));
    }
  });
}

}  // namespace pylenet::cpu
