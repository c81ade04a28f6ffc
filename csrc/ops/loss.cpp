#include "ops/loss.h"

#include <cmath>

#include "core/error.h"
#include "ops/dispatch.h"
#include "ops/optim.h"

namespace pylenet {

void check_labels(const char* op, const int64_t* labels, int64_t n, int64_t c) {
  for (int64_t i = 0; i < n; ++i)
    PYL_CHECK_ARG(labels[i] >= 0 && labels[i] < c, op, ": label ", labels[i], " at index ", i, " is outside [0, ", c,
                  ")");
}

void cross_entropy_forward(Handle& h, int64_t n, int64_t c, const float* logits, const int64_t* labels,
                           double* loss_sum) {
  PYL_IF_CUDA(h, cuda::cross_entropy_forward(n, c, logits, labels, loss_sum, stream_of(h)));
  *loss_sum = cpu::cross_entropy_forward(n, c, logits, labels);
}

void cross_entropy_backward(Handle& h, int64_t n, int64_t c, const float* logits, const int64_t* labels,
                            float grad_scale, float* dlogits) {
  PYL_IF_CUDA(h, cuda::cross_entropy_backward(n, c, logits, labels, grad_scale, dlogits, stream_of(h)));
  cpu::cross_entropy_backward(n, c, logits, labels, grad_scale, dlogits);
}

void nll_loss_forward(Handle& h, int64_t n, int64_t c, const float* logp, const int64_t* labels, double* loss_sum) {
  PYL_IF_CUDA(h, cuda::nll_loss_forward(n, c, logp, labels, loss_sum, stream_of(h)));
  *loss_sum = cpu::nll_loss_forward(n, c, logp, labels);
}

void nll_loss_backward(Handle& h, int64_t n, int64_t c, const int64_t* labels, float grad_scale, float* dlogp) {
  PYL_IF_CUDA(h, cuda::nll_loss_backward(n, c, labels, grad_scale, dlogp, stream_of(h)));
  cpu::nll_loss_backward(n, c, labels, grad_scale, dlogp);
}

void classify(Handle& h, int64_t n, int64_t c, const float* scores, const int64_t* labels, int64_t* correct,
              int* nonfinite) {
  PYL_IF_CUDA(h, cuda::classify(n, c, scores, labels, correct, nonfinite, stream_of(h)));
  *nonfinite = cpu::all_finite(n * c, scores) ? 0 : 1;
  *correct = labels ? cpu::count_correct(n, c, scores, labels) : 0;
}

void loss_head(Handle& h, bool nll, int64_t n, int64_t c, const float* z, const int64_t* labels, bool count,
               float grad_scale, double* loss_sum, float* dz, int64_t* correct, int* nonfinite) {
  PYL_IF_CUDA(h, cuda::loss_head(nll, n, c, z, labels, count, grad_scale, loss_sum, dz, correct, nonfinite,
                                 stream_of(h)));
  classify(h, n, c, z, count ? labels : nullptr, correct, nonfinite);
  if (nll) {
    nll_loss_forward(h, n, c, z, labels, loss_sum);
    nll_loss_backward(h, n, c, labels, grad_scale, dz);
  } else {
    cross_entropy_forward(h, n, c, z, labels, loss_sum);
    cross_entropy_backward(h, n, c, z, labels, grad_scale, dz);
  }
}

double softmax_cross_entropy(Handle& h, const TensorDesc& ld, const float* logits, const TensorDesc& yd,
                             const int64_t* labels, float* dlogits) {
  const char* op = "softmax_cross_entropy";
  ld.check(op, "logits", 2, "(N, num_classes)");
  yd.check(op, "labels", 1, "(N,)");
  PYL_CHECK_ARG(yd.dim(0) == ld.dim(0), op, ": ", yd.dim(0), " labels for ", ld.dim(0), " rows of logits ",
                ld.str());
  const int64_t n = ld.dim(0), c = ld.dim(1);
  const float scale = 1.0f / static_cast<float>(n);
#ifdef PYLENET_HAVE_CUDA
  if (h.on_cuda()) {  // validates labels and logits on the device, synchronises, throws on bad input
    cuda::CudaContext& ctx = h.cuda();
    void* ws = ctx.workspace(static_cast<size_t>(cuda::softmax_cross_entropy_workspace_bytes(n)));
    return cuda::softmax_cross_entropy(n, c, logits, labels, dlogits, scale,
                                       static_cast<cuda::LossResult*>(ctx.scratch()), ws, ctx.stream());
  }
#else
  PYL_IF_CUDA(h, );
#endif
  check_labels(op, labels, n, c);
  for (int64_t i = 0; i < n * c; ++i)
    if (!std::isfinite(logits[i]))
      fail(ErrorKind::InvalidArgument, op, ": logits contain a non-finite value (", logits[i], ") at row ", i / c,
           ", column ", i % c, "; the loss would be NaN (diverged training?)");
  const double sum = cpu::cross_entropy_forward(n, c, logits, labels);
  if (dlogits) cpu::cross_entropy_backward(n, c, logits, labels, scale, dlogits);
  return sum / static_cast<double>(n);
}

}  // namespace pylenet
