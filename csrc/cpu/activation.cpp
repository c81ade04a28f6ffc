// CPU activations: flat loops over fixed-size chunks (the compiler vectorises them).
#include <cmath>

#include "core/parallel.h"
#include "ops/activation.h"
#include "ops/math.h"

namespace pylenet::cpu {
namespace {
constexpr int64_t kChunk = 1 << 14;

template <class F>
void for_chunks(int64_t count, int threads, F&& fn) {
  parallel_for(threads, (count + kChunk - 1) / kChunk, [&](int64_t c, int) {
    const int64_t lo = c * kChunk, hi = std::min(count, lo + kChunk);
    fn(lo, hi);
  });
}
}  // namespace

void activation_forward(Activation a, int64_t count, const float* x, float* y, float slope, int threads) {
  for_chunks(count, threads, [&](int64_t lo, int64_t hi) {
    const float s = slope;
    switch (a) {
      case Activation::Identity: for (int64_t i = lo; i < hi; ++i) y[i] = x[i]; break;
      case Activation::ReLU: for (int64_t i = lo; i < hi; ++i) y[i] = math::relu(x[i]); break;
      case Activation::Tanh: for (int64_t i = lo; i < hi; ++i) y[i] = std::tanh(x[i]); break;
      case Activation::Sigmoid: for (int64_t i = lo; i < hi; ++i) y[i] = math::sigmoid(x[i]); break;
      case Activation::LeakyReLU: for (int64_t i = lo; i < hi; ++i) y[i] = math::leaky_relu(x[i], s); break;
    }
  });
}

void activation_backward(Activation a, int64_t count, const float* y, const float* dy, float* dx, float slope,
                         int threads) {
  for_chunks(count, threads, [&](int64_t lo, int64_t hi) {
    const float s = slope;
    switch (a) {
      case Activation::Identity: for (int64_t i = lo; i < hi; ++i) dx[i] = dy[i]; break;
      case Activation::ReLU: for (int64_t i = lo; i < hi; ++i) dx[i] = math::relu_backward(y[i], dy[i]); break;
      case Activation::Tanh: for (int64_t i = lo; i < hi; ++i) dx[i] = math::tanh_backward(y[i], dy[i]); break;
      case Activation::Sigmoid:
        for (int64_t i = lo; i < hi; ++i) dx[i] = math::sigmoid_backward(y[i], dy[i]);
        break;
      case Activation::LeakyReLU:
        for (int64_t i = lo; i < hi; ++i) dx[i] = math::leaky_relu_backward(y[i], dy[i], s);
        break;
    }
  });
}

}  // namespace pylenet::cpu
