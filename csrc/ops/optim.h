// Optimizer updates, in place on a parameter tensor and its state.
//   SGD (PyTorch semantics, dampening 0):
//     g = grad + weight_decay * p;  v = momentum * v + g;  g = nesterov ? g + momentum * v : v;  p -= lr * g
//   Adam and Adadelta: PyTorch's update rules (see math.h).
// The single-tensor steps (sgd_step, adam_step, adadelta_step) check the gradient for NaN/inf
// first: a bad gradient leaves the parameters untouched. The executor's update does not look at
// the gradient; it rejects a step earlier, when the step's output is not finite.
#pragma once

#include "core/handle.h"
#include "ops/math.h"
#include "ops/tensor.h"

namespace pylenet {

using math::AdadeltaParams;
using math::AdamParams;
using math::SgdParams;
void check_sgd_params(const SgdParams& o);

// The optimizer of a training run, as the executor applies it to a flat parameter buffer.
enum class OptimKind { SGD = 0, Adam = 1, Adadelta = 2 };
struct OptimSpec {
  OptimKind kind = OptimKind::SGD;
  float lr = 0.01f, momentum = 0.0f, weight_decay = 0.0f;
  bool nesterov = false;
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, rho = 0.9f;
};
int optimizer_state_buffers(OptimKind kind);    // SGD: 1 (velocity), Adam: 2, Adadelta: 2
void check_optim_spec(const OptimSpec& optim);  // InvalidArgument for bad hyper-parameters
// One update of `count` parameters with learning rate lr at optimizer step `step` (from 1):
// state0/state1 are the spec's state buffers (velocity; m, v; square_avg, acc_delta). No
// checks: the executor checked the spec, and the step's output was finite. `skip` (CUDA only, device memory,
// may be null): when it holds non-zero the update does nothing. `on_device` (CUDA only, device
// memory, may be null): the step's rate and bias corrections are read there instead (a
// replayed CUDA graph; ops/math.h StepValues).
void optimizer_update(Handle& h, const OptimSpec& o, float lr, int64_t step, int64_t count, float* param,
                      const float* grad, float* state0, float* state1, const int* skip = nullptr,
                      const math::StepValues* on_device = nullptr);
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
