// Element-wise activations on tensors of any shape.
//   relu:       y = max(x, 0)                dx = dy * (y > 0)
//   tanh:       y = tanh(x)                  dx = dy * (1 - y^2)
//   sigmoid:    y = 1 / (1 + exp(-x))        dx = dy * y * (1 - y)
//   leaky_relu: y = x < 0 ? slope * x : x    dx = x > 0 ? dy : slope * dy
// Backward takes the forward OUTPUT y (as cuDNN does), except leaky_relu with a slope <= 0,
// which takes the input x (for a positive slope either works: y and x have the same sign; for
// ReLU likewise, since y > 0 exactly where x > 0). Backward OVERWRITES dx. In place (y == x,
// dx == dy) is fine.
#pragma once

#include "core/handle.h"
#include "ops/tensor.h"

namespace pylenet {

enum class Activation { Identity = 0, ReLU = 1, Tanh = 2, Sigmoid = 3, LeakyReLU = 4 };
const char* activation_name(Activation a);
Activation activation_from_name(const std::string& name);  // "relu", "tanh", "sigmoid", "leaky_relu", "identity"

// `slope` is leaky_relu's negative slope (ignored by the others).
void activation_forward(Handle& h, Activation a, const TensorDesc& d, const float* x, float* y, float slope = 0.01f);
void activation_backward(Handle& h, Activation a, const TensorDesc& d, const float* y, const float* dy, float* dx,
                         float slope = 0.01f);

// Prepared fast path: `count` elements, no descriptor.
void activation_run_forward(Handle& h, Activation a, int64_t count, const float* x, float* y, float slope = 0.01f);
void activation_run_backward(Handle& h, Activation a, int64_t count, const float* y, const float* dy, float* dx,
                             float slope = 0.01f);

namespace cpu {
void activation_forward(Activation a, int64_t count, const float* x, float* y, float slope, int threads);
void activation_backward(Activation a, int64_t count, const float* y, const float* dy, float* dx, float slope,
                         int threads);
}  // namespace cpu

}  // namespace pylenet
