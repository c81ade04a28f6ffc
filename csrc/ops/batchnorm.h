// Batch normalisation over (N, C, HW) — BatchNorm2d (HW = H * W) and BatchNorm1d (HW = 1 for
// (N, C) inputs, or L for (N, C, L)) — as in PyTorch:
//   y = (x - mean) * invstd * gamma + beta,   invstd = 1 / sqrt(var + eps)
// Training uses the statistics of the WHOLE batch (the biased variance), and updates the
// running statistics with the unbiased one:
//   running = (1 - momentum) * running + momentum * stat   (momentum < 0: PyTorch's
//   momentum=None, a cumulative average with factor 1 / num_batches_tracked)
// Evaluation uses the running statistics.
//
// A batch may be split into chunks that run on different workers, so training statistics
// come in three steps: every chunk writes PARTIAL sums (in double), one finalize adds the
// chunks' partials in chunk order, then every chunk applies them. The running statistics are
// updated in a fourth step, once the step is accepted (its output was finite): a rejected
// step changes nothing. The result is therefore the
// same for any thread count. Backward has the same three steps:
//   dgamma = sum(dy * xhat),  dbeta = sum(dy)     (over N and HW)
//   dx = gamma * invstd * (dy - mean(dy) - xhat * mean(dy * xhat))
// gamma and beta may be null (affine=False: gamma = 1, beta = 0). Every function OVERWRITES
// its outputs.
#pragma once

#include <cstdint>
#include <optional>

#include "core/handle.h"
#include "ops/tensor.h"

namespace pylenet {

struct BatchNormShape {
  int64_t n = 0, c = 0, hw = 1;
  int64_t count() const { return n * hw; }  // values per channel
};
// Floats of one chunk's partial sums: (2, C) doubles.
inline int64_t batch_norm_partial_doubles(int64_t c) { return 2 * c; }

// The eager op (F.batch_norm on arrays, CPU or GPU) in two calls. check_batch_norm checks the
// arguments as descriptors (running_mean, running_var, weight, bias: empty when absent) and
// returns the shape; batch_norm_forward then runs the whole forward on one chunk: in training
// the batch statistics, the normalisation and (with running statistics) their update; in
// evaluation the running statistics. Its scratch comes from the handle's workspace.
using OptDesc = std::optional<TensorDesc>;
BatchNormShape check_batch_norm(const TensorDesc& x, const OptDesc& running_mean, const OptDesc& running_var,
                                const OptDesc& weight, const OptDesc& bias, bool training, double eps);
void batch_norm_forward(Handle& h, const BatchNormShape& s, const float* x, float* running_mean, float* running_var,
                        const float* gamma, const float* beta, bool training, double momentum, double eps, float* y);

// Training forward. partial (2, C): sum and sum of squares of x per channel.
void batch_norm_stats_partial(Handle& h, const BatchNormShape& s, const float* x, double* partial);
// partials (chunks, 2, C) of `count` values per channel in all -> mean (C,), invstd (C,) and
// the unbiased variance (C,) the running statistics take.
void batch_norm_stats_finalize(Handle& h, int64_t c, int64_t chunks, const double* partials, int64_t count,
                               double eps, float* mean, float* invstd, float* var_unbiased);
// running = (1 - f) * running + f * stat, f = momentum (momentum < 0: 1 / (num_batches_tracked
// + 1)); num_batches_tracked (may be null) += 1. `skip` (CUDA only, device memory, may be
// null): when it holds non-zero nothing changes.
void batch_norm_update_running(Handle& h, int64_t c, const float* mean, const float* var_unbiased, double momentum,
                               float* running_mean, float* running_var, int64_t* num_batches_tracked,
                               const int* skip = nullptr);
// y = (x - mean) * invstd * gamma + beta
void batch_norm_apply(Handle& h, const BatchNormShape& s, const float* x, const float* mean, const float* invstd,
                      const float* gamma, const float* beta, float* y);
// Evaluation: the same with the running statistics (invstd computed from running_var, eps).
void batch_norm_inference(Handle& h, const BatchNormShape& s, const float* x, const float* running_mean,
                          const float* running_var, double eps, const float* gamma, const float* beta, float* y);

// Training backward. partial (2, C): sum(dy) and sum(dy * xhat) per channel.
void batch_norm_backward_partial(Handle& h, const BatchNormShape& s, const float* x, const float* dy,
                                 const float* mean, const float* invstd, double* partial);
// -> dgamma, dbeta (may be null) and coef (2, C) floats: mean(dy), mean(dy * xhat).
void batch_norm_backward_finalize(Handle& h, int64_t c, int64_t chunks, const double* partials, int64_t count,
                                  float* dgamma, float* dbeta, float* coef);
void batch_norm_backward_apply(Handle& h, const BatchNormShape& s, const float* x, const float* dy,
                               const float* mean, const float* invstd, const float* gamma, const float* coef,
                               float* dx);
// Backward through evaluation mode (the statistics are constants): dx = dy * gamma * invstd
// (dx may be null); dgamma = sum(dy * xhat) and dbeta = sum(dy) over this chunk (may be null).
void batch_norm_inference_backward(Handle& h, const BatchNormShape& s, const float* x, const float* dy,
                                   const float* running_mean, const float* running_var, double eps,
                                   const float* gamma, float* dx, float* dgamma, float* dbeta);

namespace cpu {
void batch_norm_stats_partial(const BatchNormShape& s, const float* x, double* partial);
void batch_norm_stats_finalize(int64_t c, int64_t chunks, const double* partials, int64_t count, double eps,
                               float* mean, float* invstd, float* var_unbiased);
void batch_norm_update_running(int64_t c, const float* mean, const float* var_unbiased, double momentum,
                               float* running_mean, float* running_var, int64_t* num_batches_tracked);
void batch_norm_apply(const BatchNormShape& s, const float* x, const float* mean, const float* invstd,
                      const float* gamma, const float* beta, float* y);
void batch_norm_inference(const BatchNormShape& s, const float* x, const float* running_mean,
                          const float* running_var, double eps, const float* gamma, const float* beta, float* y);
void batch_norm_backward_partial(const BatchNormShape& s, const float* x, const float* dy, const float* mean,
                                 const float* invstd, double* partial);
void batch_norm_backward_finalize(int64_t c, int64_t chunks, const double* partials, int64_t count, float* dgamma,
                                  float* dbeta, float* coef);
void batch_norm_backward_apply(const BatchNormShape& s, const float* x, const float* dy, const float* mean,
                               const float* invstd, const float* gamma, const float* coef, float* dx);
void batch_norm_inference_backward(const BatchNormShape& s, const float* x, const float* dy,
                                   const float* running_mean, const float* running_var, double eps,
                                   const float* gamma, float* dx, float* dgamma, float* dbeta);
}  // namespace cpu

}  // namespace pylenet
