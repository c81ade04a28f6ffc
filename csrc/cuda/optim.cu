// CUDA optimizer updates: one grid-stride launch over the flat parameter buffer, calling
// the update rules of ops/math.h that the CPU calls too. Compiled with --fmad=false
// (cmake/cuda.cmake): these kernels are memory-bound, so unfused arithmetic costs nothing
// and makes every update bit-identical to the CPU's (sqrtf and division are IEEE-rounded
// in CUDA by default).
//
// The "gradient must be finite" rule of ops/optim.h without a round trip to the host:
// check_finite writes a device flag, and the update reads it and returns early when set.
#include "cuda/check.h"
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace pylenet::cuda {
namespace {

__global__ void check_finite_kernel(int64_t count, const float* x, int* nonfinite) {
  PYL_GRID_STRIDE(i, count) {
    if (!isfinite(x[i])) *nonfinite = 1;  // every writer stores the same value
  }
}

// Each update kernel: nothing when *skip; the step's rate (and Adam's corrections) from *cur
// when given (a replayed step, ops/math.h StepValues), else from the launch arguments.
__global__ void sgd_kernel(int64_t count, float* param, const float* grad, float* velocity, SgdParams o,
                           const int* skip, const math::StepValues* cur) {
  if (skip && *skip) return;
  math::apply_step(o, cur);
  PYL_GRID_STRIDE(i, count) math::sgd_update(param[i], grad[i], velocity ? velocity + i : nullptr, o);
}

__global__ void adam_kernel(int64_t count, float* param, const float* grad, float* m, float* v, AdamParams o,
                            const int* skip, const math::StepValues* cur) {
  if (skip && *skip) return;
  math::apply_step(o, cur);
  PYL_GRID_STRIDE(i, count) math::adam_update(param[i], grad[i], m[i], v[i], o);
}

__global__ void adadelta_kernel(int64_t count, float* param, const float* grad, float* square_avg,
                                float* acc_delta, AdadeltaParams o, const int* skip, const math::StepValues* cur) {
  if (skip && *skip) return;
  math::apply_step(o, cur);
  PYL_GRID_STRIDE(i, count) math::adadelta_update(param[i], grad[i], square_avg[i], acc_delta[i], o);
}

}  // namespace

void check_finite(int64_t count, const float* x, int* nonfinite, cudaStream_t stream) {
  PYL_CUDA_CHECK(cudaMemsetAsync(nonfinite, 0, sizeof(int), stream));
  if (count <= 0) return;
  check_finite_kernel<<<detail::grid_for(count), detail::kBlock, 0, stream>>>(count, x, nonfinite);
  PYL_CUDA_LAUNCH_CHECK();
}

bool all_finite(int64_t count, const float* x, int* flag, cudaStream_t stream) {
  check_finite(count, x, flag, stream);
  int host = 0;
  PYL_CUDA_CHECK(cudaMemcpyAsync(&host, flag, sizeof host, cudaMemcpyDeviceToHost, stream));
  PYL_CUDA_CHECK(cudaStreamSynchronize(stream));
  return host == 0;
}

void sgd_step(int64_t count, float* param, const float* grad, float* velocity, const SgdParams& o,
              cudaStream_t stream, const int* skip, const math::StepValues* cur) {
  if (count <= 0) return;
  sgd_kernel<<<detail::grid_for(count), detail::kBlock, 0, stream>>>(
      count, param, grad, o.momentum != 0.0f ? velocity : nullptr, o, skip, cur);
  PYL_CUDA_LAUNCH_CHECK();
}

void adam_step(int64_t count, float* param, const float* grad, float* m, float* v, const AdamParams& o,
               cudaStream_t stream, const int* skip, const math::StepValues* cur) {
  if (count <= 0) return;
  adam_kernel<<<detail::grid_for(count), detail::kBlock, 0, stream>>>(count, param, grad, m, v, o, skip, cur);
  PYL_CUDA_LAUNCH_CHECK();
}

void adadelta_step(int64_t count, float* param, const float* grad, float* square_avg, float* acc_delta,
                   const AdadeltaParams& o, cudaStream_t stream, const int* skip, const math::StepValues* cur) {
  if (count <= 0) return;
  adadelta_kernel<<<detail::grid_for(count), detail::kBlock, 0, stream>>>(count, param, grad, square_avg,
                                                                           acc_delta, o, skip, cur);
  PYL_CUDA_LAUNCH_CHECK();
}

}  // namespace pylenet::cuda
