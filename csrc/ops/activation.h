// Element-wise activations on tensors of any shape.
//   relu: y = max(x, 0)          dx = dy * (y > 0)
//   tanh: y = tanh(x)            dx = dy * (1 - y^2)
// Backward takes the forward OUTPUT y (as cuDNN does); for ReLU, x may be passed instead
// since y > 0 exactly where x > 0. Backward OVERWRITES dx. In-place (y == x, dx == dy) is fine.
#pragma once

#include "core/handle.h"
#include "ops/tensor.h"

namespace pylenet {

enum class Activation { Identity = 0, ReLU = 1, Tanh = 2 };
const char* activation_name(Activation a);

void activation_forward(Handle& h, Activation a, const TensorDesc& d, const float* x, float* y);
void activation_backward(Handle& h, Activation a, const TensorDesc& d, const float* y, const float* dy, float* dx);

// Prepared fast path: `count` elements, no descriptor.
void activation_run_forward(Handle& h, Activation a, int64_t count, const float* x, float* y);
void activation_run_backward(Handle& h, Activation a, int64_t count, const float* y, const float* dy, float* dx);

namespace cpu {
void activation_forward(Activation a, int64_t count, const float* x, float* y, int threads);
void activation_backward(Activation a, int64_t count, const float* y, const float* dy, float* dx, int threads);
}  // namespace cpu

}  // namespace pylenet
