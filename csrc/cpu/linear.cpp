// CPU fully connected layer: three GEMMs and a column sum.
#include <algorithm>

#include "core/parallel.h"
#include "cpu/gemm.h"
#include "ops/linear.h"

namespace pylenet::cpu {

int64_t linear_workspace_floats(const LinearShape& s) {
  return std::max({sgemm_workspace_floats(s.n, s.out, s.in), sgemm_workspace_floats(s.n, s.in, s.out),
                   sgemm_workspace_floats(s.out, s.in, s.n)});
}

void linear_forward(const LinearShape& s, const float* x, const float* w, const float* b, float* y, float* ws,
                    int threads) {
  // y (N, out) = x (N, in) . w^T (in, out)
  sgemm(false, true, s.n, s.out, s.in, 1.0f, x, s.in, w, s.in, 0.0f, y, s.out, ws, threads);
  if (b)
    parallel_for(threads, s.n, [&](int64_t i, int) {
      for (int64_t j = 0; j < s.out; ++j) y[i * s.out + j] += b[j];
    });
}

void linear_backward_data(const LinearShape& s, const float* dy, const float* w, float* dx, float* ws, int threads) {
  // dx (N, in) = dy (N, out) . w (out, in)
  sgemm(false, false, s.n, s.in, s.out, 1.0f, dy, s.out, w, s.in, 0.0f, dx, s.in, ws, threads);
}

void linear_backward_weight(const LinearShape& s, const float* dy, const float* x, float* dw, float* ws,
                            int threads) {
  // dw (out, in) = dy^T (out, N) . x (N, in)
  sgemm(true, false, s.out, s.in, s.n, 1.0f, dy, s.out, x, s.in, 0.0f, dw, s.in, ws, threads);
}

void linear_backward_bias(const LinearShape& s, const float* dy, float* db, int threads) {
  (void)threads;  // a column sum over the batch: cheap, and serial keeps its order fixed
  std::fill(db, db + s.out, 0.0f);
  for (int64_t i = 0; i < s.n; ++i)
    for (int64_t j = 0; j < s.out; ++j) db[j] += dy[i * s.out + j];
}

}  // namespace pylenet::cpu
