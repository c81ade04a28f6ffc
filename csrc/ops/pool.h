// 2-D max and average pooling, NCHW, float32.
//   y[n,c,oh,ow] = max / mean of x[n, c, oh*sh - ph + i, ow*sw - pw + j], 0 <= i < kh, 0 <= j < kw
// Max: padded cells never win; ties go to the FIRST maximum in row-major window order; a
// NaN in the window wins (it propagates, as in PyTorch). Average: padded cells count as
// zeros (PyTorch's count_include_pad=True), divisor kh*kw.
// Backward recomputes the max positions from x and OVERWRITES dx; overlapping windows add.
#pragma once

#include "core/handle.h"
#include "ops/tensor.h"

namespace pylenet {

enum class PoolMode { Max = 0, Avg = 1 };

struct PoolDesc {
  PoolMode mode = PoolMode::Max;
  Pair kernel{2, 2};
  Pair stride{2, 2};
  Pair pad{0, 0};
};

struct PoolShape {
  int64_t n, c, h, w;
  int64_t oh, ow;
  int64_t kh, kw, sh, sw, ph, pw;
  static PoolShape make(const char* op, const TensorDesc& x, const PoolDesc& p);
  TensorDesc y_desc() const { return TensorDesc{n, c, oh, ow}; }
};

const char* pool_op_name(PoolMode mode, bool backward);

void pool_forward(Handle& h, const PoolDesc& p, const TensorDesc& xd, const float* x, const TensorDesc& yd,
                  float* y);
void pool_backward(Handle& h, const PoolDesc& p, const TensorDesc& xd, const float* x, const TensorDesc& dyd,
                   const float* dy, const TensorDesc& dxd, float* dx);

// Prepared-shape fast path (shapes checked once by the caller).
// relu / relu_y: a ReLU folded in, applied to the pooled values, and its gradient taken from
// its output relu_y (the shape of dy) before the pooling's: in the CUDA kernels' epilogue; on
// the CPU a second pass (backward: through the handle's workspace).
void pool_run_forward(Handle& h, PoolMode mode, const PoolShape& s, const float* x, float* y, bool relu = false);
void pool_run_backward(Handle& h, PoolMode mode, const PoolShape& s, const float* x, const float* dy, float* dx,
                       const float* relu_y = nullptr);

// The CPU's 2 x 2, stride 2 max pooling backward from each window's winner (index, shaped as
// dy: 0.0 top left to 3.0 bottom right) instead of the pooling's input, as the fused forward
// conv_run_max_pool leaves them.
bool pool_max_from_indices_supported(Device dev, const PoolShape& s);
// The pooling forward that leaves those winners in its input's place (x is then overwritten
// from its start: its first n c oh ow floats), for a fused convolution's training pass.
void pool_run_max_forward_with_winners(Handle& h, const PoolShape& s, float* x, float* y);
void pool_run_max_backward_from_indices(Handle& h, const PoolShape& s, const float* index, const float* dy, float* dx);

namespace cpu {
bool max_pool_from_indices_supported(const PoolShape& s);
void max_pool_forward_with_winners(const PoolShape& s, float* x, float* y);  // one thread: see pool_kernel.inc
void max_pool_backward_from_indices(const PoolShape& s, const float* index, const float* dy, float* dx, int threads);
void max_pool_forward(const PoolShape& s, const float* x, float* y, int threads);
void max_pool_backward(const PoolShape& s, const float* x, const float* dy, float* dx, int threads);
void avg_pool_forward(const PoolShape& s, const float* x, float* y, int threads);
void avg_pool_backward(const PoolShape& s, const float* dy, float* dx, int threads);
}  // namespace cpu

}  // namespace pylenet
