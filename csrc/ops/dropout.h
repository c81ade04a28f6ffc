// Dropout with a counter-based mask (ops/math.h, dropout_keep): element i of a batch is kept
// with probability 1 - p, as a pure function of (key, i), where the key mixes the seed, the
// optimizer step and the op. Any chunking, thread count or backend draws the same mask, and
// backward recomputes it rather than storing it.
//   forward:  y[i] = keep(i) ? x[i] / (1 - p) : 0      (p = 1: all zeros)
//   backward: dx[i] = keep(i) ? dy[i] / (1 - p) : 0
// `first` is the batch index of the first element passed (chunk start * elements per sample).
// In place is fine. Both OVERWRITE their output.
#pragma once

#include <cstdint>

#include "core/handle.h"

namespace pylenet {

struct DropoutDesc {
  double p = 0.5;
  uint64_t key = 0;
  // CUDA only (device memory): the step is read there and key is the op's base key
  // (math::dropout_key_base), so that a replayed CUDA graph draws each step's mask.
  const uint64_t* device_step = nullptr;
  // 1 / (1 - p), rounded once (in double, as PyTorch: p = 0.999 keeps values x 1000, not 1000.013)
  float scale() const { return p < 1.0 ? static_cast<float>(1.0 / (1.0 - p)) : 0.0f; }
};
void check_dropout_p(const char* op, double p);  // 0 <= p <= 1

void dropout_forward(Handle& h, const DropoutDesc& d, int64_t first, int64_t count, const float* x, float* y);
void dropout_backward(Handle& h, const DropoutDesc& d, int64_t first, int64_t count, const float* dy, float* dx);

namespace cpu {
void dropout(const DropoutDesc& d, int64_t first, int64_t count, const float* x, float* y, int threads);
}  // namespace cpu

}  // namespace pylenet
