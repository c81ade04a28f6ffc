// CUDA activations: grid-stride loops over the math of ops/math.h (the CPU calls the same
// functions). This file is compiled with --fmad=false (cmake/cuda.cmake) so that
// tanh_backward's dy * (1 - y*y) is rounded exactly as on the CPU; relu and its gradient
// are bit-identical anyway. tanh and sigmoid use CUDA's tanhf / expf, which may differ from the
// CPU's libm in the last bit.
#include "cuda/check.h"
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace pylenet::cuda {
namespace {

template <Activation A>
__global__ void activation_forward_kernel(int64_t count, const float* x, float* y, float slope) {
  PYL_GRID_STRIDE(i, count) {
    const float v = x[i];
    if constexpr (A == Activation::ReLU) y[i] = math::relu(v);
    else if constexpr (A == Activation::Tanh) y[i] = tanhf(v);
    else if constexpr (A == Activation::Sigmoid) y[i] = math::sigmoid(v);
    else if constexpr (A == Activation::LeakyReLU) y[i] = math::leaky_relu(v, slope);
    else y[i] = v;
  }
}

template <Activation A>
__global__ void activation_backward_kernel(int64_t count, const float* y, const float* dy, float* dx, float slope) {
  PYL_GRID_STRIDE(i, count) {
    if constexpr (A == Activation::ReLU) dx[i] = math::relu_backward(y[i], dy[i]);
    else if constexpr (A == Activation::Tanh) dx[i] = math::tanh_backward(y[i], dy[i]);
    else if constexpr (A == Activation::Sigmoid) dx[i] = math::sigmoid_backward(y[i], dy[i]);
    else if constexpr (A == Activation::LeakyReLU) dx[i] = math::leaky_relu_backward(y[i], dy[i], slope);
    else dx[i] = dy[i];
  }
}

template <Activation A>
void launch_forward(int64_t count, const float* x, float* y, float slope, cudaStream_t st) {
  activation_forward_kernel<A><<<detail::grid_for(count), detail::kBlock, 0, st>>>(count, x, y, slope);
}
template <Activation A>
void launch_backward(int64_t count, const float* y, const float* dy, float* dx, float slope, cudaStream_t st) {
  activation_backward_kernel<A><<<detail::grid_for(count), detail::kBlock, 0, st>>>(count, y, dy, dx, slope);
}

}  // namespace

void activation_forward(Activation a, int64_t count, const float* x, float* y, float slope, cudaStream_t stream) {
  if (count <= 0) return;
  switch (a) {
    case Activation::Identity:
      if (x == y) return;
      launch_forward<Activation::Identity>(count, x, y, slope, stream);
      break;
    case Activation::ReLU: launch_forward<Activation::ReLU>(count, x, y, slope, stream); break;
    case Activation::Tanh: launch_forward<Activation::Tanh>(count, x, y, slope, stream); break;
    case Activation::Sigmoid: launch_forward<Activation::Sigmoid>(count, x, y, slope, stream); break;
    case Activation::LeakyReLU: launch_forward<Activation::LeakyReLU>(count, x, y, slope, stream); break;
  }
  PYL_CUDA_LAUNCH_CHECK();
}

void activation_backward(Activation a, int64_t count, const float* y, const float* dy, float* dx, float slope,
                         cudaStream_t stream) {
  if (count <= 0) return;
  switch (a) {
    case Activation::Identity:
      if (dy == dx) return;
      launch_backward<Activation::Identity>(count, y, dy, dx, slope, stream);
      break;
    case Activation::ReLU: launch_backward<Activation::ReLU>(count, y, dy, dx, slope, stream); break;
    case Activation::Tanh: launch_backward<Activation::Tanh>(count, y, dy, dx, slope, stream); break;
    case Activation::Sigmoid: launch_backward<Activation::Sigmoid>(count, y, dy, dx, slope, stream); break;
    case Activation::LeakyReLU: launch_backward<Activation::LeakyReLU>(count, y, dy, dx, slope, stream); break;
  }
  PYL_CUDA_LAUNCH_CHECK();
}

}  // namespace pylenet::cuda
