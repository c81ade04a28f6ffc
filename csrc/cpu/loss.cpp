#include <algorithm>
#include <cmath>

#include "ops/loss.h"

namespace pylenet::cpu {

double cross_entropy_forward(int64_t n, int64_t c, const float* logits, const int64_t* labels) {
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const float* z = logits + i * c;
    const float zmax = *std::max_element(z, z + c);
    double sum = 0.0;
    for (int64_t j = 0; j < c; ++j) sum += std::exp(static_cast<double>(z[j] - zmax));
    total += std::log(sum) + zmax - z[labels[i]];
  }
  return total;
}

void cross_entropy_backward(int64_t n, int64_t c, const float* logits, const int64_t* labels, float grad_scale,
                            float* dlogits) {
  for (int64_t i = 0; i < n; ++i) {
    const float* z = logits + i * c;
    float* dz = dlogits + i * c;
    const int64_t label = labels[i];
    const float zmax = *std::max_element(z, z + c);
    double sum = 0.0, others = 0.0;
    for (int64_t j = 0; j < c; ++j) {
      const double e = std::exp(static_cast<double>(z[j] - zmax));
      sum += e;
      if (j != label) others += e;
    }
    const double inv_sum = 1.0 / sum;
    for (int64_t j = 0; j < c; ++j)
      dz[j] = static_cast<float>(std::exp(static_cast<double>(z[j] - zmax)) * inv_sum) * grad_scale;
    // p_label - 1 = -(the other classes' share): no cancellation when p_label rounds to 1.
    dz[label] = -static_cast<float>(others * inv_sum) * grad_scale;
  }
}

double nll_loss_forward(int64_t n, int64_t c, const float* logp, const int64_t* labels) {
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) total -= logp[i * c + labels[i]];
  return total;
}

void nll_loss_backward(int64_t n, int64_t c, const int64_t* labels, float grad_scale, float* dlogp) {
  std::fill(dlogp, dlogp + n * c, 0.0f);
  for (int64_t i = 0; i < n; ++i) dlogp[i * c + labels[i]] = -grad_scale;
}

int64_t count_correct(int64_t n, int64_t c, const float* scores, const int64_t* labels) {
  int64_t correct = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float* z = scores + i * c;
    correct += (std::max_element(z, z + c) - z) == labels[i];
  }
  return correct;
}

}  // namespace pylenet::cpu
