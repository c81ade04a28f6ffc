#include "ops/loss.h"

#include <cmath>

#include "core/error.h"

namespace pylenet {

double softmax_cross_entropy(Handle& h, const TensorDesc& ld, const float* logits, const TensorDesc& yd,
                             const int64_t* labels, float* dlogits) {
  (void)h;
  const char* op = "softmax_cross_entropy";
  ld.check(op, "logits", 2, "(N, num_classes)");
  yd.check(op, "labels", 1, "(N,)");
  PYL_CHECK_ARG(yd.dim(0) == ld.dim(0), op, ": ", yd.dim(0), " labels for ", ld.dim(0), " rows of logits ",
                ld.str());
  const int64_t n = ld.dim(0), c = ld.dim(1);
  for (int64_t i = 0; i < n; ++i)
    PYL_CHECK_ARG(labels[i] >= 0 && labels[i] < c, op, ": label ", labels[i], " at index ", i,
                  " is outside [0, ", c, ") for logits ", ld.str());
  for (int64_t i = 0; i < n * c; ++i)
    if (!std::isfinite(logits[i]))
      fail(ErrorKind::InvalidArgument, op, ": logits contain a non-finite value (", logits[i], ") at row ", i / c,
           ", column ", i % c, "; the loss would be NaN (diverged training?)");
  return cpu::softmax_cross_entropy(n, c, logits, labels, dlogits, 1.0f / static_cast<float>(n));
}

}  // namespace pylenet
