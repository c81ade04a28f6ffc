// CUDA fully connected layer: three calls of our SGEMM (gemm.cu) and a column sum, the
// same products as csrc/cpu/linear.cpp. The forward bias (and a folded ReLU) ride in the
// GEMM's epilogue.
#include "cuda/check.h"
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace pylenet::cuda {
namespace {

// db[j] = sum_i dy[i, j], i ascending (the CPU's order): one thread per column, so a warp
// reads consecutive columns of each row (coalesced).
__global__ void column_sum_kernel(int64_t rows, int64_t cols, const float* dy, float* db) {
  PYL_GRID_STRIDE(j, cols) {
    float acc = 0.0f;
    for (int64_t i = 0; i < rows; ++i) acc += dy[i * cols + j];
    db[j] = acc;
  }
}

}  // namespace

void linear_forward(const LinearShape& s, const float* x, const float* w, const float* b, float* y,
                    cudaStream_t stream, bool relu) {
  // y (N, out) = x (N, in) . w^T (in, out) + b  [then relu]
  sgemm_strided_batched(false, true, s.n, s.out, s.in, 1.0f, x, s.in, 0, w, s.in, 0, 0.0f, y, s.out, 0, 1, stream,
                        nullptr, b, relu);
}

void linear_backward_data(const LinearShape& s, const float* dy, const float* w, float* dx, cudaStream_t stream) {
  // dx (N, in) = dy (N, out) . w (out, in)
  sgemm(false, false, s.n, s.in, s.out, 1.0f, dy, s.out, w, s.in, 0.0f, dx, s.in, stream);
}

void linear_backward_weight(const LinearShape& s, const float* dy, const float* x, float* dw, cudaStream_t stream) {
  // dw (out, in) = dy^T (out, N) . x (N, in): the batch is the GEMM's depth, summed in order
  sgemm(true, false, s.out, s.in, s.n, 1.0f, dy, s.out, x, s.in, 0.0f, dw, s.in, stream);
}

void linear_backward_bias(const LinearShape& s, const float* dy, float* db, cudaStream_t stream) {
  column_sum_kernel<<<detail::grid_for(s.out), detail::kBlock, 0, stream>>>(s.n, s.out, dy, db);
  PYL_CUDA_LAUNCH_CHECK();
}

}  // namespace pylenet::cuda
