#include "ops/dropout.h"

#include <cmath>

#include "core/error.h"
#include "ops/dispatch.h"

namespace pylenet {

void check_dropout_p(const char* op, double p) {
  PYL_CHECK_ARG(std::isfinite(p) && p >= 0.0 && p <= 1.0, op, ": dropout probability must be between 0 and 1, got ",
                p);
}

void dropout_forward(Handle& h, const DropoutDesc& d, int64_t first, int64_t count, const float* x, float* y) {
  PYL_IF_CUDA(h, cuda::dropout(d, first, count, x, y, stream_of(h)));
  PYL_CHECK_ARG(!d.device_step, "dropout: a step read from device memory needs a CUDA handle");
  cpu::dropout(d, first, count, x, y, h.threads());
}

void dropout_backward(Handle& h, const DropoutDesc& d, int64_t first, int64_t count, const float* dy, float* dx) {
  dropout_forward(h, d, first, count, dy, dx);  // the same mask and scale
}

}  // namespace pylenet
