// Device side of the CUDA executor's loop (csrc/runtime/executor.cpp): gathering a batch by
// index from the device-resident dataset, and folding each step's loss and accuracy into
// running totals on the device. See kernels.h.
#include "cuda/check.h"
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace pylenet::cuda {
namespace {

__global__ void gather_kernel(int64_t n, int64_t sample, const float* images, const int64_t* labels,
                              const int64_t* order, float* x, int64_t* y, const math::StepValues* cur) {
  const int64_t start = cur ? cur->start : 0;
  PYL_GRID_STRIDE(i, n * sample) {
    const int64_t row = i / sample, col = i - row * sample;
    const int64_t src = order ? order[start + row] : start + row;
    x[i] = images[src * sample + col];
    if (col == 0 && y) y[row] = labels[src];
  }
}

__global__ void accumulate_kernel(const double* loss_sum, const int64_t* correct, const int* nonfinite,
                                  RunTotals* totals) {
  if (*nonfinite || totals->bad) {
    totals->bad = 1;
    return;
  }
  totals->loss_sum += loss_sum ? *loss_sum : 0.0;
  totals->correct += static_cast<unsigned long long>(*correct);
  totals->steps += 1;
}

__global__ void begin_step_kernel(const math::StepValues* table, int64_t* cursor, math::StepValues* current) {
  *current = table[*cursor];
  *cursor += 1;
}

}  // namespace

void gather_batch(int64_t n, int64_t sample_floats, const float* images, const int64_t* labels,
                  const int64_t* order, float* x, int64_t* y, cudaStream_t stream, const math::StepValues* cur) {
  if (n <= 0) return;
  gather_kernel<<<detail::grid_for(n * sample_floats), detail::kBlock, 0, stream>>>(n, sample_floats, images, labels,
                                                                                   order, x, y, cur);
  PYL_CUDA_LAUNCH_CHECK();
}

void begin_step(const math::StepValues* table, int64_t* cursor, math::StepValues* current, cudaStream_t stream) {
  begin_step_kernel<<<1, 1, 0, stream>>>(table, cursor, current);
  PYL_CUDA_LAUNCH_CHECK();
}

void accumulate_totals(const double* loss_sum, const int64_t* correct, const int* nonfinite, RunTotals* totals,
                       cudaStream_t stream) {
  accumulate_kernel<<<1, 1, 0, stream>>>(loss_sum, correct, nonfinite, totals);
  PYL_CUDA_LAUNCH_CHECK();
}

}  // namespace pylenet::cuda
