#include "ops/batchnorm.h"

#include "ops/dispatch.h"

namespace pylenet {

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
