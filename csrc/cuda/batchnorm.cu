// CUDA batch normalisation, the three steps of ops/batchnorm.h. Per-channel sums run one block
// per channel: each thread adds a fixed strided subset of the channel's N * HW values in
// double, then the block adds the threads' sums in a fixed tree order, so the result is the
// same run after run (no atomics). Finalize is one thread per channel; apply is element-wise.
#include "cuda/check.h"
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace pylenet::cuda {
namespace {

constexpr int kChannelThreads = 256;

// partial[ch] = sum of a(x, dy) and partial[C + ch] = sum of b(x, dy) over the channel.
template <bool Backward>
__global__ void __launch_bounds__(kChannelThreads) channel_sums_kernel(int64_t n, int64_t c, int64_t hw,
                                                                       const float* x, const float* dy,
                                                                       const float* mean, const float* invstd,
                                                                       double* partial) {
  const int64_t ch = blockIdx.x;
  const int64_t count = n * hw;
  const float m = Backward ? mean[ch] : 0.0f, is = Backward ? invstd[ch] : 0.0f;
  double a = 0.0, b = 0.0;
  for (int64_t k = threadIdx.x; k < count; k += kChannelThreads) {
    const int64_t i = k / hw, j = k - i * hw;
    const int64_t at = (i * c + ch) * hw + j;
    if (Backward) {
      const double g = dy[at];
      a += g;
      b += g * static_cast<double>((x[at] - m) * is);
    } else {
      const double v = x[at];
      a += v;
      b += v * v;
    }
  }
  a = detail::block_sum<kChannelThreads>(a);
  b = detail::block_sum<kChannelThreads>(b);
  if (threadIdx.x == 0) {
    partial[ch] = a;
    partial[c + ch] = b;
  }
}

__global__ void stats_finalize_kernel(int64_t c, int64_t chunks, const double* partials, int64_t count, double eps,
                                      float* mean, float* invstd, float* var_unbiased) {
  const int64_t ch = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (ch >= c) return;
  double sum = 0.0, sq = 0.0;
  for (int64_t k = 0; k < chunks; ++k) {
    sum += partials[k * 2 * c + ch];
    sq += partials[k * 2 * c + c + ch];
  }
  const double m = sum / static_cast<double>(count);
  const double var = fmax(sq / static_cast<double>(count) - m * m, 0.0);
  mean[ch] = static_cast<float>(m);
  invstd[ch] = static_cast<float>(1.0 / sqrt(var + eps));
  var_unbiased[ch] =
      static_cast<float>(count > 1 ? var * static_cast<double>(count) / static_cast<double>(count - 1) : var);
}

__global__ void update_running_kernel(int64_t c, const float* mean, const float* var_unbiased, double momentum,
                                      float* running_mean, float* running_var, const int64_t* num_batches_tracked,
                                      const int* skip) {
  const int64_t ch = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (ch >= c || (skip && *skip)) return;
  double factor = momentum;
  if (num_batches_tracked && momentum < 0) factor = 1.0 / static_cast<double>(*num_batches_tracked + 1);
  running_mean[ch] = static_cast<float>((1.0 - factor) * running_mean[ch] + factor * mean[ch]);
  running_var[ch] = static_cast<float>((1.0 - factor) * running_var[ch] + factor * var_unbiased[ch]);
}

__global__ void increment_kernel(int64_t* counter, const int* skip) {
  if (!(skip && *skip)) *counter += 1;
}

// y = x * (invstd * gamma) + (beta - mean * invstd * gamma); `var` instead of invstd when
// `from_var` (evaluation: the running variance).
__global__ void apply_kernel(int64_t n, int64_t c, int64_t hw, const float* x, const float* mean,
                             const float* stat, bool from_var, double eps, const float* gamma, const float* beta,
                             float* y) {
  PYL_GRID_STRIDE(i, n * c * hw) {
    const int64_t ch = (i / hw) % c;
    const float invstd = from_var ? static_cast<float>(1.0 / sqrt(static_cast<double>(stat[ch]) + eps)) : stat[ch];
    const float scale = detail::mul_rn(invstd, gamma ? gamma[ch] : 1.0f);
    const float shift = (beta ? beta[ch] : 0.0f) - detail::mul_rn(mean[ch], scale);
    y[i] = detail::mul_rn(x[i], scale) + shift;
  }
}

__global__ void backward_finalize_kernel(int64_t c, int64_t chunks, const double* partials, int64_t count,
                                         float* dgamma, float* dbeta, float* coef) {
  const int64_t ch = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (ch >= c) return;
  double sdy = 0.0, sdyx = 0.0;
  for (int64_t k = 0; k < chunks; ++k) {
    sdy += partials[k * 2 * c + ch];
    sdyx += partials[k * 2 * c + c + ch];
  }
  if (dgamma) dgamma[ch] = static_cast<float>(sdyx);
  if (dbeta) dbeta[ch] = static_cast<float>(sdy);
  coef[ch] = static_cast<float>(sdy / static_cast<double>(count));
  coef[c + ch] = static_cast<float>(sdyx / static_cast<double>(count));
}

__global__ void backward_apply_kernel(int64_t n, int64_t c, int64_t hw, const float* x, const float* dy,
                                      const float* mean, const float* invstd, const float* gamma, const float* coef,
                                      float* dx) {
  PYL_GRID_STRIDE(i, n * c * hw) {
    const int64_t ch = (i / hw) % c;
    const float is = invstd[ch], k = detail::mul_rn(is, gamma ? gamma[ch] : 1.0f);
    const float xhat = detail::mul_rn(x[i] - mean[ch], is);
    dx[i] = detail::mul_rn(k, dy[i] - coef[ch] - detail::mul_rn(xhat, coef[c + ch]));
  }
}

__global__ void inference_dx_kernel(int64_t n, int64_t c, int64_t hw, const float* dy, const float* running_var,
                                    double eps, const float* gamma, float* dx) {
  PYL_GRID_STRIDE(i, n * c * hw) {
    const int64_t ch = (i / hw) % c;
    const float is = static_cast<float>(1.0 / sqrt(static_cast<double>(running_var[ch]) + eps));
    dx[i] = detail::mul_rn(dy[i], detail::mul_rn(is, gamma ? gamma[ch] : 1.0f));
  }
}

__global__ void __launch_bounds__(kChannelThreads) inference_param_grads_kernel(int64_t n, int64_t c, int64_t hw,
                                                                                const float* x, const float* dy,
                                                                                const float* running_mean,
                                                                                const float* running_var, double eps,
                                                                                float* dgamma, float* dbeta) {
  const int64_t ch = blockIdx.x;
  const float m = running_mean[ch];
  const float is = static_cast<float>(1.0 / sqrt(static_cast<double>(running_var[ch]) + eps));
  double a = 0.0, b = 0.0;
  for (int64_t k = threadIdx.x; k < n * hw; k += kChannelThreads) {
    const int64_t i = k / hw, j = k - i * hw;
    const int64_t at = (i * c + ch) * hw + j;
    a += dy[at];
    b += static_cast<double>(dy[at]) * static_cast<double>((x[at] - m) * is);
  }
  a = detail::block_sum<kChannelThreads>(a);
  b = detail::block_sum<kChannelThreads>(b);
  if (threadIdx.x == 0) {
    if (dbeta) dbeta[ch] = static_cast<float>(a);
    if (dgamma) dgamma[ch] = static_cast<float>(b);
  }
}

unsigned channel_grid(int64_t c) { return static_cast<unsigned>((c + 255) / 256); }

}  // namespace

void batch_norm_stats_partial(const BatchNormShape& s, const float* x, double* partial, cudaStream_t stream) {
  detail::check_int32("batch_norm", s.c, "channels");
  channel_sums_kernel<false><<<static_cast<unsigned>(s.c), kChannelThreads, 0, stream>>>(s.n, s.c, s.hw, x, nullptr,
                                                                                        nullptr, nullptr, partial);
  PYL_CUDA_LAUNCH_CHECK();
}

void batch_norm_stats_finalize(int64_t c, int64_t chunks, const double* partials, int64_t count, double eps,
                               float* mean, float* invstd, float* var_unbiased, cudaStream_t stream) {
  stats_finalize_kernel<<<channel_grid(c), 256, 0, stream>>>(c, chunks, partials, count, eps, mean, invstd,
                                                             var_unbiased);
  PYL_CUDA_LAUNCH_CHECK();
}

void batch_norm_update_running(int64_t c, const float* mean, const float* var_unbiased, double momentum,
                               float* running_mean, float* running_var, int64_t* num_batches_tracked, const int* skip,
                               cudaStream_t stream) {
  update_running_kernel<<<channel_grid(c), 256, 0, stream>>>(c, mean, var_unbiased, momentum, running_mean,
                                                             running_var, num_batches_tracked, skip);
  PYL_CUDA_LAUNCH_CHECK();
  if (num_batches_tracked) {  // after every channel has read the old count
    increment_kernel<<<1, 1, 0, stream>>>(num_batches_tracked, skip);
    PYL_CUDA_LAUNCH_CHECK();
  }
}

void batch_norm_apply(const BatchNormShape& s, const float* x, const float* mean, const float* invstd,
                      const float* gamma, const float* beta, float* y, cudaStream_t stream) {
  const int64_t total = s.n * s.c * s.hw;
  if (total <= 0) return;
  apply_kernel<<<detail::grid_for(total), detail::kBlock, 0, stream>>>(s.n, s.c, s.hw, x, mean, invstd, false, 0.0,
                                                                      gamma, beta, y);
  PYL_CUDA_LAUNCH_CHECK();
}

void batch_norm_inference(const BatchNormShape& s, const float* x, const float* running_mean,
                          const float* running_var, double eps, const float* gamma, const float* beta, float* y,
                          cudaStream_t stream) {
  const int64_t total = s.n * s.c * s.hw;
  if (total <= 0) return;
  apply_kernel<<<detail::grid_for(total), detail::kBlock, 0, stream>>>(s.n, s.c, s.hw, x, running_mean, running_var,
                                                                      true, eps, gamma, beta, y);
  PYL_CUDA_LAUNCH_CHECK();
}

void batch_norm_backward_partial(const BatchNormShape& s, const float* x, const float* dy, const float* mean,
                                 const float* invstd, double* partial, cudaStream_t stream) {
  detail::check_int32("batch_norm_backward", s.c, "channels");
  channel_sums_kernel<true><<<static_cast<unsigned>(s.c), kChannelThreads, 0, stream>>>(s.n, s.c, s.hw, x, dy, mean,
                                                                                       invstd, partial);
  PYL_CUDA_LAUNCH_CHECK();
}

void batch_norm_backward_finalize(int64_t c, int64_t chunks, const double* partials, int64_t count, float* dgamma,
                                  float* dbeta, float* coef, cudaStream_t stream) {
  backward_finalize_kernel<<<channel_grid(c), 256, 0, stream>>>(c, chunks, partials, count, dgamma, dbeta, coef);
  PYL_CUDA_LAUNCH_CHECK();
}

void batch_norm_backward_apply(const BatchNormShape& s, const float* x, const float* dy, const float* mean,
                               const float* invstd, const float* gamma, const float* coef, float* dx,
                               cudaStream_t stream) {
  const int64_t total = s.n * s.c * s.hw;
  if (total <= 0) return;
  backward_apply_kernel<<<detail::grid_for(total), detail::kBlock, 0, stream>>>(s.n, s.c, s.hw, x, dy, mean, invstd,
                                                                               gamma, coef, dx);
  PYL_CUDA_LAUNCH_CHECK();
}

void batch_norm_inference_backward(const BatchNormShape& s, const float* x, const float* dy,
                                   const float* running_mean, const float* running_var, double eps,
                                   const float* gamma, float* dx, float* dgamma, float* dbeta, cudaStream_t stream) {
  const int64_t total = s.n * s.c * s.hw;
  if (total <= 0) return;
  if (dx) {
    inference_dx_kernel<<<detail::grid_for(total), detail::kBlock, 0, stream>>>(s.n, s.c, s.hw, dy, running_var, eps,
                                                                               gamma, dx);
    PYL_CUDA_LAUNCH_CHECK();
  }
  if (dgamma || dbeta) {
    detail::check_int32("batch_norm_backward", s.c, "channels");
    inference_param_grads_kernel<<<static_cast<unsigned>(s.c), kChannelThreads, 0, stream>>>(
        s.n, s.c, s.hw, x, dy, running_mean, running_var, eps, dgamma, dbeta);
    PYL_CUDA_LAUNCH_CHECK();
  }
}

}  // namespace pylenet::cuda
