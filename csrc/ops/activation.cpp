#include "ops/activation.h"

#include "core/error.h"

namespace pylenet {

const char* activation_name(Activation a) {
  switch (a) {
    case Activation::Identity: return "identity";
    case Activation::ReLU: return "relu";
    case Activation::Tanh: return "tanh";
  }
  return "?";
}

void activation_forward(Handle& h, Activation a, const TensorDesc& d, const float* x, float* y) {
  d.check(activation_name(a), "input", -1);
  cpu::activation_forward(a, d.numel(), x, y, h.threads());
}

void activation_backward(Handle& h, Activation a, const TensorDesc& d, const float* y, const float* dy, float* dx) {
  d.check(str_cat(activation_name(a), "_backward").c_str(), "input", -1);
  cpu::activation_backward(a, d.numel(), y, dy, dx, h.threads());
}

void activation_run_forward(Handle& h, Activation a, int64_t count, const float* x, float* y) {
  cpu::activation_forward(a, count, x, y, h.threads());
}

void activation_run_backward(Handle& h, Activation a, int64_t count, const float* y, const float* dy, float* dx) {
  cpu::activation_backward(a, count, y, dy, dx, h.threads());
}

}  // namespace pylenet
