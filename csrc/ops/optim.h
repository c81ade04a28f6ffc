// Optimizer updates, in place on a parameter tensor and its state.
//   SGD (PyTorch semantics, dampening 0):
//     g = grad + weight_decay * p;  v = momentum * v + g;  g = nesterov ? g + momentum * v : v;  p -= lr * g
//   Adam and Adadelta: PyTorch's update rules (see math.h).
// The gradient is checked for NaN/inf first: a bad step leaves the parameters untouched.
#pragma once

#include "core/handle.h"
#include "ops/math.h"
#include "ops/tensor.h"

namespace pylenet {

using math::AdadeltaParams;
using math::AdamParams;
using math::SgdParams;
void check_sgd_params(const SgdParams& o);
void check_adam_params(const AdamParams& o);
void check_adadelta_params(const AdadeltaParams& o);

void sgd_step(Handle& h, const TensorDesc& d, float* param, const float* grad, float* velocity /* null iff momentum == 0 */,
              const SgdParams& o);

// m, v: (same shape as param), zero before the first step; step counts from 1.
void adam_step(Handle& h, const TensorDesc& d, float* param, const float* grad, float* m, float* v, int64_t step,
               AdamParams o);
void adadelta_step(Handle& h, const TensorDesc& d, float* param, const float* grad, float* square_avg,
                   float* acc_delta, const AdadeltaParams& o);

namespace cpu {
void adam_step(int64_t count, float* param, const float* grad, float* m, float* v, const AdamParams& o, int threads);
void adadelta_step(int64_t count, float* param, const float* grad, float* square_avg, float* acc_delta,
                   const AdadeltaParams& o, int threads);
void sgd_step(int64_t count, float* param, const float* grad, float* velocity, const SgdParams& o, int threads);
bool all_finite(int64_t count, const float* x);
}  // namespace cpu

}  // namespace pylenet
