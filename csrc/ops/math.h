// Element-wise math written once for both backends: plain inline functions that the CUDA
// kernels will call from device code (PYL_HD expands to __host__ __device__ under nvcc).
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define PYL_HD __host__ __device__
#else
#define PYL_HD
#endif

namespace pylenet::math {

// ReLU keeps NaN (as PyTorch does): NaN < 0 is false.
PYL_HD inline float relu(float x) { return x < 0.0f ? 0.0f : x; }
// Gradient from the output: y > 0 exactly where x > 0, so either may be passed as y.
PYL_HD inline float relu_backward(float y, float dy) { return y > 0.0f ? dy : 0.0f; }
PYL_HD inline float tanh_backward(float y, float dy) { return dy * (1.0f - y * y); }

struct SgdParams {
  float lr = 0.01f;
  float momentum = 0.0f;
  float weight_decay = 0.0f;
  bool nesterov = false;
};

// torch.optim.SGD with dampening 0; v starts at zero, which matches PyTorch's first step
// (buffer = grad) because momentum * 0 + g = g.
PYL_HD inline void sgd_update(float& p, float grad, float* v, const SgdParams& o) {
  float g = grad + o.weight_decay * p;
  if (o.momentum != 0.0f) {
    *v = o.momentum * *v + g;
    g = o.nesterov ? g + o.momentum * *v : *v;
  }
  p -= o.lr * g;
}

// torch.optim.Adam (L2 weight decay added to the gradient, no amsgrad). `step` counts from 1;
// bc1 = 1 - beta1^step and bc2 = 1 - beta2^step are computed once per step by the caller.
struct AdamParams {
  float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.0f;
  float bc1 = 1.0f, bc2 = 1.0f;
};
PYL_HD inline void adam_update(float& p, float grad, float& m, float& v, const AdamParams& o) {
  const float g = grad + o.weight_decay * p;
  m = o.beta1 * m + (1.0f - o.beta1) * g;
  v = o.beta2 * v + (1.0f - o.beta2) * g * g;
  const float denom = sqrtf(v) / sqrtf(o.bc2) + o.eps;
  p -= (o.lr / o.bc1) * m / denom;
}

// torch.optim.Adadelta: square_avg and acc_delta are running averages of g^2 and delta^2.
struct AdadeltaParams {
  float lr = 1.0f, rho = 0.9f, eps = 1e-6f, weight_decay = 0.0f;
};
PYL_HD inline void adadelta_update(float& p, float grad, float& square_avg, float& acc_delta,
                                   const AdadeltaParams& o) {
  const float g = grad + o.weight_decay * p;
  square_avg = o.rho * square_avg + (1.0f - o.rho) * g * g;
  const float delta = sqrtf(acc_delta + o.eps) / sqrtf(square_avg + o.eps) * g;
  acc_delta = o.rho * acc_delta + (1.0f - o.rho) * delta * delta;
  p -= o.lr * delta;
}

}  // namespace pylenet::math
