#include "ops/activation.h"

#include "core/error.h"
#include "ops/dispatch.h"

namespace pylenet {

const char* activation_name(Activation a) {
  switch (a) {
    case Activation::Identity: return "identity";
    case Activation::ReLU: return "relu";
    case Activation::Tanh: return "tanh";
    case Activation::Sigmoid: return "sigmoid";
    case Activation::LeakyReLU: return "leaky_relu";
  }
  return "?";
}

Activation activation_from_name(const std::string& name) {
  for (Activation a : {Activation::Identity, Activation::ReLU, Activation::Tanh, Activation::Sigmoid,
                       Activation::LeakyReLU})
    if (name == activation_name(a)) return a;
  fail(ErrorKind::InvalidArgument, "unknown activation '", name,
       "' (expected relu, tanh, sigmoid, leaky_relu or identity)");
}

void activation_forward(Handle& h, Activation a, const TensorDesc& d, const float* x, float* y, float slope) {
  d.check(activation_name(a), "input", -1);
  activation_run_forward(h, a, d.numel(), x, y, slope);
}

void activation_backward(Handle& h, Activation a, const TensorDesc& d, const float* y, const float* dy, float* dx,
                         float slope) {
  d.check(str_cat(activation_name(a), "_backward").c_str(), "input", -1);
  activation_run_backward(h, a, d.numel(), y, dy, dx, slope);
}

void activation_run_forward(Handle& h, Activation a, int64_t count, const float* x, float* y, float slope) {
  PYL_IF_CUDA(h, cuda::activation_forward(a, count, x, y, slope, stream_of(h)));
  cpu::activation_forward(a, count, x, y, slope, h.threads());
}

void activation_run_backward(Handle& h, Activation a, int64_t count, const float* y, const float* dy, float* dx,
                             float slope) {
  PYL_IF_CUDA(h, cuda::activation_backward(a, count, y, dy, dx, slope, stream_of(h)));
  cpu::activation_backward(a, count, y, dy, dx, slope, h.threads());
}

}  // namespace pylenet
