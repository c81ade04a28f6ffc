// Element-wise math written once for both backends: plain inline functions that the CUDA
// kernels will call from device code (PYL_HD expands to __host__ __device__ under nvcc).
#pragma once

#include <cmath>
#include <cstdint>

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
// Sigmoid from the output: dy * y * (1 - y).
PYL_HD inline float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
PYL_HD inline float sigmoid_backward(float y, float dy) { return dy * y * (1.0f - y); }
// Leaky ReLU keeps NaN like ReLU. Its gradient is taken from the input x, or, when the slope
// is positive, equally from the output (the signs of x and y agree then).
PYL_HD inline float leaky_relu(float x, float slope) { return x < 0.0f ? x * slope : x; }
PYL_HD inline float leaky_relu_backward(float x_or_y, float dy, float slope) { return x_or_y > 0.0f ? dy : dy * slope; }

// ---- dropout: a counter-based random number per element, the same on every backend.
// keep(key, i) is a pure function of a 64-bit key (seed, step and op mixed together) and the
// element's index in the batch, so any thread count, chunking or device draws the same mask,
// and backward recomputes it instead of storing it. Keys are mixed with SplitMix64's
// finaliser, once per op and step; elements with two rounds of a 32-bit integer hash
// (Wellons' lowbias32), which vectorises (16 elements per AVX-512 instruction).
PYL_HD inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
PYL_HD inline uint32_t hash32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  return x ^ (x >> 16);
}
// The key of one dropout op at one step, in two halves: the op's base key (fixed for a run)
// and the step mixed in (a replayed CUDA graph does this on the device, from StepValues).
PYL_HD inline uint64_t dropout_key_base(uint64_t seed, uint64_t op) { return mix64(seed + 0x9e3779b97f4a7c15ull * (op + 1)); }
PYL_HD inline uint64_t dropout_key_at(uint64_t base, uint64_t step) { return mix64(base + step); }
PYL_HD inline uint64_t dropout_key(uint64_t seed, uint64_t step, uint64_t op) {
  return dropout_key_at(dropout_key_base(seed, op), step);
}
// 24 uniform bits of element i: kept when >= threshold = round(p * 2^24).
PYL_HD inline bool dropout_keep(uint64_t key, uint64_t i, uint32_t threshold) {
  uint32_t h = hash32(static_cast<uint32_t>(i) ^ static_cast<uint32_t>(key));
  h = hash32(h + static_cast<uint32_t>(key >> 32) + static_cast<uint32_t>(i >> 32) * 0x9e3779b9u);
  return (h >> 8) >= threshold;
}
PYL_HD inline uint32_t dropout_threshold(double p) { return static_cast<uint32_t>(p * 16777216.0 + 0.5); }

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
  // sqrt(a) / sqrt(b) as one root of a / b: the same value to a rounding, one square root
  // less; the update of a large layer is bound by the divider (examples/mnist's fc1: 1.2 M
  // weights, a third less time).
  const float delta = sqrtf((acc_delta + o.eps) / (square_avg + o.eps)) * g;
  acc_delta = o.rho * acc_delta + (1.0f - o.rho) * delta * delta;
  p -= o.lr * delta;
}

// The values of one training step that change from step to step. A CUDA graph of the step
// (runtime/executor.cpp) cannot take them as launch arguments, which it would freeze at
// capture: the host computes them for a whole epoch ahead, a one-thread kernel copies the
// current step's row to a fixed device slot, and the kernels that need them read it there.
struct StepValues {
  float lr = 0.0f;
  float bc1 = 1.0f, bc2 = 1.0f;  // Adam's bias corrections for this step
  uint64_t step = 0;             // optimizer steps before this one: the dropout keys' step
  int64_t start = 0;             // the batch's first position in the epoch's sample order
};
// Adam's bias corrections at step `step` (counted from 1), the same expression everywhere.
inline void adam_bias_corrections(float beta1, float beta2, int64_t step, float& bc1, float& bc2) {
  bc1 = 1.0f - std::pow(beta1, static_cast<float>(step));
  bc2 = 1.0f - std::pow(beta2, static_cast<float>(step));
}
// The per-step fields of an update's parameters, taken from `s` when the step is on the device.
PYL_HD inline void apply_step(SgdParams& o, const StepValues* s) { if (s) o.lr = s->lr; }
PYL_HD inline void apply_step(AdadeltaParams& o, const StepValues* s) { if (s) o.lr = s->lr; }
PYL_HD inline void apply_step(AdamParams& o, const StepValues* s) {
  if (s) {
    o.lr = s->lr;
    o.bc1 = s->bc1;
    o.bc2 = s->bc2;
  }
}

}  // namespace pylenet::math
