#include <algorithm>
#include <cmath>

#include "ops/loss.h"

namespace pylenet::cpu {

double softmax_cross_entropy(int64_t n, int64_t c, const float* logits, const int64_t* labels, float* dlogits,
                             float grad_scale) {
  double total = 0.0;
  const float inv_n = grad_scale;
  for (int64_t i = 0; i < n; ++i) {
    const float* z = logits + i * c;
    const float zmax = *std::max_element(z, z + c);
    double sum = 0.0;
    for (int64_t j = 0; j < c; ++j) sum += std::exp(static_cast<double>(z[j] - zmax));
    total += std::log(sum) + zmax - z[labels[i]];
    if (dlogits) {
      float* dz = dlogits + i * c;
      const double inv_sum = 1.0 / sum;
      for (int64_t j = 0; j < c; ++j)
        dz[j] = static_cast<float>(std::exp(static_cast<double>(z[j] - zmax)) * inv_sum) * inv_n;
      dz[labels[i]] -= inv_n;
    }
  }
  return total / static_cast<double>(n);
}

}  // namespace pylenet::cpu
