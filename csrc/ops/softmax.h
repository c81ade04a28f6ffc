// Softmax and log-softmax over the c values of each of n rows (dim 1 of an (N, C) tensor).
//   softmax:     y = exp(x - logsumexp(x))     dx = y * (dy - sum(dy * y))
//   log_softmax: y = x - logsumexp(x)          dx = dy - exp(y) * sum(dy)
// Backward takes the forward OUTPUT y and OVERWRITES dx. Rows are shifted by their maximum,
// and the sums are taken in double.
#pragma once

#include <cstdint>

#include "core/handle.h"

namespace pylenet {

void softmax_forward(Handle& h, bool log, int64_t n, int64_t c, const float* x, float* y);
void softmax_backward(Handle& h, bool log, int64_t n, int64_t c, const float* y, const float* dy, float* dx);

namespace cpu {
void softmax_forward(bool log, int64_t n, int64_t c, const float* x, float* y, int threads);
void softmax_backward(bool log, int64_t n, int64_t c, const float* y, const float* dy, float* dx, int threads);
}  // namespace cpu

}  // namespace pylenet
