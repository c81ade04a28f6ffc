// CUDA activations: grid-stride loops over the math of ops/math.h (the CPU calls the same
// functions). This file is compiled with --fmad=false (cmake/cuda.cmake) so that
// tanh_backward's dy * (1 - y*y) is rounded exactly as on the CPU; relu and its gradient
// are bit-identical anyway. tanh itself is CUDA's tanhf, which may differ from the CPU's
// libm tanhf in the last bit.
#include "cuda/check.h"
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace pylenet::cuda {
namespace {

template <Activation A>
__global__ void activation_forward_kernel(int64_t count, const float* x, float* y) {
  PYL_GRID_STRIDE(i, count) {
    const float v = x[i];
    if constexpr (A == Activation::ReLU) y[i] = math::relu(v);
    else if constexpr (A == Activation::Tanh) y[i] = tanhf(v);
    else y[i] = v;
  }
}

template <Activation A>
__global__ void activation_backward_kernel(int64_t count, const float* y, const float* dy, float* dx) {
  PYL_GRID_STRIDE(i, count) {
    if constexpr (A == Activation::ReLU) dx[i] = math::relu_backward(y[i], dy[i]);
    else if constexpr (A == Activation::Tanh) dx[i] = math::tanh_backward(y[i], dy[i]);
    else dx[i] = dy[i];
  }
}

}  // namespace

void activation_forward(Activation a, int64_t count, const float* x, float* y, cudaStream_t stream) {
  if (count <= 0) return;
  const unsigned grid = detail::grid_for(count);
  switch (a) {
    case Activation::Identity:
      if (x == y) return;
      activation_forward_kernel<Activation::Identity><<<grid, detail::kBlock, 0, stream>>>(count, x, y);
      break;
    case Activation::ReLU:
      activation_forward_kernel<Activation::ReLU><<<grid, detail::kBlock, 0, stream>>>(count, x, y);
      break;
    case Activation::Tanh:
      activation_forward_kernel<Activation::Tanh><<<grid, detail::kBlock, 0, stream>>>(count, x, y);
      break;
  }
  PYL_CUDA_LAUNCH_CHECK();
}

void activation_backward(Activation a, int64_t count, const float* y, const float* dy, float* dx,
                         cudaStream_t stream) {
  if (count <= 0) return;
  const unsigned grid = detail::grid_for(count);
  switch (a) {
    case Activation::Identity:
      if (dy == dx) return;
      activation_backward_kernel<Activation::Identity><<<grid, detail::kBlock, 0, stream>>>(count, y, dy, dx);
      break;
    case Activation::ReLU:
      activation_backward_kernel<Activation::ReLU><<<grid, detail::kBlock, 0, stream>>>(count, y, dy, dx);
      break;
    case Activation::Tanh:
      activation_backward_kernel<Activation::Tanh><<<grid, detail::kBlock, 0, stream>>>(count, y, dy, dx);
      break;
  }
  PYL_CUDA_LAUNCH_CHECK();
}

}  // namespace pylenet::cuda
