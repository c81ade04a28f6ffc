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

}  // namespace pylenet::math
