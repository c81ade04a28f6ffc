#include "ops/batchnorm.h"

#include <cmath>

#include "core/error.h"
#include "ops/dispatch.h"

namespace pylenet {

BatchNormShape check_batch_norm(const TensorDesc& x, const OptDesc& running_mean, const OptDesc& running_var,
                                const OptDesc& weight, const OptDesc& bias, bool training, double eps) {
  const char* op = "batch_norm";
  x.check(op, "input", -1);
  PYL_CHECK_ARG(x.rank() >= 2 && x.rank() <= 4, op, ": input must be (N, C), (N, C, L) or (N, C, H, W), got ",
                x.str());
  const int64_t c = x.dim(1);
  const BatchNormShape s{x.dim(0), c, x.numel() / (x.dim(0) * c)};
  const std::pair<const char*, const OptDesc*> stats[] = {
      {"running_mean", &running_mean}, {"running_var", &running_var}, {"weight", &weight}, {"bias", &bias}};
  for (const auto& [what, d] : stats)
    if (*d) PYL_CHECK_ARG(**d == TensorDesc{c}, op, ": ", what, " must have shape (", c, ",), got ", (*d)->str());
  PYL_CHECK_ARG(std::isfinite(eps) && eps > 0, op, ": eps must be > 0, got ", eps);
  PYL_CHECK_ARG(bool(running_mean) == bool(running_var), op, ": running_mean and running_var go together");
  PYL_CHECK_ARG(training || running_mean, op, ": evaluation needs running_mean and running_var");
  PYL_CHECK_ARG(!training || s.count() > 1, op, ": expected more than 1 value per channel when training, got input ",
                x.str());
  return s;
}

void batch_norm_forward(Handle& h, const BatchNormShape& s, const float* x, float* running_mean, float* running_var,
                        const float* gamma, const float* beta, bool training, double momentum, double eps, float* y) {
  if (!training) {
    batch_norm_inference(h, s, x, running_mean, running_var, eps, gamma, beta, y);
    return;
  }
  // partials (2C doubles), then mean, invstd and the unbiased variance (3C floats)
  const int64_t c = s.c;
  double* partial = reinterpret_cast<double*>(h.workspace(sizeof(double) * 2 * c + sizeof(float) * 3 * c));
  float* mean = reinterpret_cast<float*>(partial + 2 * c);
  float* invstd = mean + c;
  float* var = invstd + c;
  batch_norm_stats_partial(h, s, x, partial);
  batch_norm_stats_finalize(h, c, 1, partial, s.count(), eps, mean, invstd, var);
  batch_norm_apply(h, s, x, mean, invstd, gamma, beta, y);
  if (running_mean) batch_norm_update_running(h, c, mean, var, momentum, running_mean, running_var, nullptr);
}

void batch_norm_stats_partial(Handle& h, const BatchNormShape& s, const float* x, double* partial) {
  PYL_IF_CUDA(h, cuda::batch_norm_stats_partial(s, x, partial, stream_of(h)));
  cpu::batch_norm_stats_partial(s, x, partial);
}

void batch_norm_stats_finalize(Handle& h, int64_t c, int64_t chunks, const double* partials, int64_t count,
                               double eps, float* mean, float* invstd, float* var_unbiased) {
  PYL_IF_CUDA(h, cuda::batch_norm_stats_finalize(c, chunks, partials, count, eps, mean, invstd, var_unbiased,
                                                 stream_of(h)));
  cpu::batch_norm_stats_finalize(c, chunks, partials, count, eps, mean, invstd, var_unbiased);
}

void batch_norm_update_running(Handle& h, int64_t c, const float* mean, const float* var_unbiased, double momentum,
                               float* running_mean, float* running_var, int64_t* num_batches_tracked,
                               const int* skip) {
  PYL_IF_CUDA(h, cuda::batch_norm_update_running(c, mean, var_unbiased, momentum, running_mean, running_var,
                                                 num_batches_tracked, skip, stream_of(h)));
  cpu::batch_norm_update_running(c, mean, var_unbiased, momentum, running_mean, running_var, num_batches_tracked);
}

void batch_norm_apply(Handle& h, const BatchNormShape& s, const float* x, const float* mean, const float* invstd,
                      const float* gamma, const float* beta, float* y) {
  PYL_IF_CUDA(h, cuda::batch_norm_apply(s, x, mean, invstd, gamma, beta, y, stream_of(h)));
  cpu::batch_norm_apply(s, x, mean, invstd, gamma, beta, y);
}

void batch_norm_inference(Handle& h, const BatchNormShape& s, const float* x, const float* running_mean,
                          const float* running_var, double eps, const float* gamma, const float* beta, float* y) {
  PYL_IF_CUDA(h, cuda::batch_norm_inference(s, x, running_mean, running_var, eps, gamma, beta, y, stream_of(h)));
  cpu::batch_norm_inference(s, x, running_mean, running_var, eps, gamma, beta, y);
}

void batch_norm_backward_partial(Handle& h, const BatchNormShape& s, const float* x, const float* dy,
                                 const float* mean, const float* invstd, double* partial) {
  PYL_IF_CUDA(h, cuda::batch_norm_backward_partial(s, x, dy, mean, invstd, partial, stream_of(h)));
  cpu::batch_norm_backward_partial(s, x, dy, mean, invstd, partial);
}

void batch_norm_backward_finalize(Handle& h, int64_t c, int64_t chunks, const double* partials, int64_t count,
                                  float* dgamma, float* dbeta, float* coef) {
  PYL_IF_CUDA(h, cuda::batch_norm_backward_finalize(c, chunks, partials, count, dgamma, dbeta, coef, stream_of(h)));
  cpu::batch_norm_backward_finalize(c, chunks, partials, count, dgamma, dbeta, coef);
}

void batch_norm_backward_apply(Handle& h, const BatchNormShape& s, const float* x, const float* dy,
                               const float* mean, const float* invstd, const float* gamma, const float* coef,
                               float* dx) {
  PYL_IF_CUDA(h, cuda::batch_norm_backward_apply(s, x, dy, mean, invstd, gamma, coef, dx, stream_of(h)));
  cpu::batch_norm_backward_apply(s, x, dy, mean, invstd, gamma, coef, dx);
}

void batch_norm_inference_backward(Handle& h, const BatchNormShape& s, const float* x, const float* dy,
                                   const float* running_mean, const float* running_var, double eps,
                                   const float* gamma, float* dx, float* dgamma, float* dbeta) {
  PYL_IF_CUDA(h, cuda::batch_norm_inference_backward(s, x, dy, running_mean, running_var, eps, gamma, dx, dgamma,
                                                     dbeta, stream_of(h)));
  cpu::batch_norm_inference_backward(s, x, dy, running_mean, running_var, eps, gamma, dx, dgamma, dbeta);
}

}  // namespace pylenet
