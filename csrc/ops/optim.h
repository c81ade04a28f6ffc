// Optimizer updates, in place on a parameter tensor and its state.
//   SGD (PyTorch semantics, dampening 0):
//     g = grad + weight_decay * p;  v = momentum * v + g;  g = nesterov ? g + momentum * v : v;  p -= lr * g
// The gradient is checked for NaN/inf first: a bad step leaves the parameters untouched.
#pragma once

#include "core/handle.h"
#include "ops/math.h"
#include "ops/tensor.h"

namespace pylenet {

using math::SgdParams;
void check_sgd_params(const SgdParams& o);

void sgd_step(Handle& h, const TensorDesc& d, float* param, const float* grad, float* velocity /* null iff momentum == 0 */,
              const SgdParams& o);

namespace cpu {
void sgd_step(int64_t count, float* param, const float* grad, float* velocity, const SgdParams& o, int threads);
bool all_finite(int64_t count, const float* x);
}  // namespace cpu

}  // namespace pylenet
