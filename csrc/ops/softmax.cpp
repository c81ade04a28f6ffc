#include "ops/softmax.h"

#include "ops/dispatch.h"

namespace pylenet {

void softmax_forward(Handle& h, bool log, int64_t n, int64_t c, const float* x, float* y) {
  PYL_IF_CUDA(h, cuda::softmax_forward(log, n, c, x, y, stream_of(h)));
  cpu::softmax_forward(log, n, c, x, y, h.threads());
}

void softmax_backward(Handle& h, bool log, int64_t n, int64_t c, const float* y, const float* dy, float* dx) {
  PYL_IF_CUDA(h, cuda::softmax_backward(log, n, c, y, dy, dx, stream_of(h)));
  cpu::softmax_backward(log, n, c, y, dy, dx, h.threads());
}

}  // namespace pylenet
