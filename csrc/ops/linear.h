// Fully connected layer:  y (N, out) = x (N, in) . w^T + b,  w is (out, in) as in PyTorch.
//   dx (N, in)   = dy (N, out) . w
//   dw (out, in) = dy^T . x          (summed over the batch)
//   db (out,)    = dy summed over the batch
// All three backward functions OVERWRITE their outputs.
#pragma once

#include "core/handle.h"
#include "ops/tensor.h"

namespace pylenet {

struct LinearShape {
  int64_t n, in, out;
  static LinearShape make(const char* op, const TensorDesc& x, const TensorDesc& w);
  TensorDesc y_desc() const { return TensorDesc{n, out}; }
};

void linear_forward(Handle& h, const TensorDesc& xd, const float* x, const TensorDesc& wd, const float* w,
                    const TensorDesc& bd, const float* b /* may be null */, const TensorDesc& yd, float* y);
void linear_backward_data(Handle& h, const TensorDesc& dyd, const float* dy, const TensorDesc& wd, const float* w,
                          const TensorDesc& dxd, float* dx);
void linear_backward_weight(Handle& h, const TensorDesc& dyd, const float* dy, const TensorDesc& xd,
                            const float* x, const TensorDesc& dwd, float* dw);
void linear_backward_bias(Handle& h, const TensorDesc& dyd, const float* dy, const TensorDesc& dbd, float* db);

// Prepared-shape fast path (shapes checked once by the caller); workspace from the handle.
// relu: a ReLU folded in (CUDA: the GEMM's epilogue; the CPU: a second pass).
void linear_run_forward(Handle& h, const LinearShape& s, const float* x, const float* w, const float* b, float* y,
                        bool relu = false);
void linear_run_backward_data(Handle& h, const LinearShape& s, const float* dy, const float* w, float* dx);
void linear_run_backward_weight(Handle& h, const LinearShape& s, const float* dy, const float* x, float* dw);
void linear_run_backward_bias(Handle& h, const LinearShape& s, const float* dy, float* db);

namespace cpu {
void linear_forward(const LinearShape& s, const float* x, const float* w, const float* b, float* y, float* ws,
                    int threads);
void linear_backward_data(const LinearShape& s, const float* dy, const float* w, float* dx, float* ws, int threads);
void linear_backward_weight(const LinearShape& s, const float* dy, const float* x, float* dw, float* ws,
                            int threads);
void linear_backward_bias(const LinearShape& s, const float* dy, float* db, int threads);
int64_t linear_workspace_floats(const LinearShape& s);
}  // namespace cpu

}  // namespace pylenet
