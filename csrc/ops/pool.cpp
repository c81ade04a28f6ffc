#include "ops/pool.h"

#include "core/error.h"
#include "ops/activation.h"
#include "ops/dispatch.h"

namespace pylenet {

const char* pool_op_name(PoolMode mode, bool backward) {
  if (mode == PoolMode::Max) return backward ? "max_pool2d_backward" : "max_pool2d";
  return backward ? "avg_pool2d_backward" : "avg_pool2d";
}

PoolShape PoolShape::make(const char* op, const TensorDesc& x, const PoolDesc& p) {
  x.check(op, "input", 4, "(N, C, H, W)");
  check_extent(op, "kernel_size", p.kernel, 1);
  check_extent(op, "stride", p.stride, 1);
  check_extent(op, "padding", p.pad, 0);
  PYL_CHECK_ARG(2 * p.pad.h <= p.kernel.h && 2 * p.pad.w <= p.kernel.w, op,
                ": padding must be at most half the kernel size, got padding (", p.pad.h, ", ", p.pad.w,
                ") for kernel (", p.kernel.h, ", ", p.kernel.w, ")");
  const int64_t hp = x.h() + 2 * p.pad.h, wp = x.w() + 2 * p.pad.w;
  PYL_CHECK_ARG(p.kernel.h <= hp && p.kernel.w <= wp, op, ": kernel ", p.kernel.h, "x", p.kernel.w,
                " is larger than the padded input ", hp, "x", wp, " (input ", x.str(), ")");
  return PoolShape{x.n(), x.c(), x.h(), x.w(), (hp - p.kernel.h) / p.stride.h + 1, (wp - p.kernel.w) / p.stride.w + 1,
                   p.kernel.h, p.kernel.w, p.stride.h, p.stride.w, p.pad.h, p.pad.w};
}

void pool_forward(Handle& h, const PoolDesc& p, const TensorDesc& xd, const float* x, const TensorDesc& yd,
                  float* y) {
  const char* op = pool_op_name(p.mode, false);
  const PoolShape s = PoolShape::make(op, xd, p);
  PYL_CHECK_ARG(yd == s.y_desc(), op, ": output must have shape ", s.y_desc().str(), ", got ", yd.str());
  pool_run_forward(h, p.mode, s, x, y);
}

void pool_run_forward(Handle& h, PoolMode mode, const PoolShape& s, const float* x, float* y, bool relu) {
  PYL_IF_CUDA(h, mode == PoolMode::Max ? cuda::max_pool_forward(s, x, y, stream_of(h), relu)
                                       : cuda::avg_pool_forward(s, x, y, stream_of(h), relu));
  if (mode == PoolMode::Max) cpu::max_pool_forward(s, x, y, h.threads());
  else cpu::avg_pool_forward(s, x, y, h.threads());
  // The CPU's folded ReLU is a second pass (the executor folds it only under Config::device_rules).
  if (relu) cpu::activation_forward(Activation::ReLU, s.n * s.c * s.oh * s.ow, y, y, 0.0f, h.threads());
}

void pool_run_backward(Handle& h, PoolMode mode, const PoolShape& s, const float* x, const float* dy, float* dx,
                       const float* relu_y) {
  PYL_IF_CUDA(h, mode == PoolMode::Max ? cuda::max_pool_backward(s, x, dy, dx, stream_of(h), relu_y)
                                       : cuda::avg_pool_backward(s, dy, dx, stream_of(h), relu_y));
  if (relu_y) {  // the ReLU's gradient first, into scratch (a second pass on the CPU)
    const int64_t count = s.n * s.c * s.oh * s.ow;
    float* t = h.workspace(sizeof(float) * static_cast<size_t>(count));
    cpu::activation_backward(Activation::ReLU, count, relu_y, dy, t, 0.0f, h.threads());
    dy = t;
  }
  if (mode == PoolMode::Max) cpu::max_pool_backward(s, x, dy, dx, h.threads());
  else cpu::avg_pool_backward(s, dy, dx, h.threads());
}

bool pool_max_from_indices_supported(Device dev, const PoolShape& s) {
  return dev == Device::CPU && cpu::max_pool_from_indices_supported(s);
}

void pool_run_max_forward_with_winners(Handle& h, const PoolShape& s, float* x, float* y) {
  PYL_CHECK_ARG(pool_max_from_indices_supported(h.device(), s),
                "max_pool2d with winners: the CPU's 2 x 2, stride 2 pooling without padding only");
  cpu::max_pool_forward_with_winners(s, x, y);
}

void pool_run_max_backward_from_indices(Handle& h, const PoolShape& s, const float* index, const float* dy, float* dx) {
  PYL_CHECK_ARG(pool_max_from_indices_supported(h.device(), s),
                "max_pool2d backward from indices: the CPU's 2 x 2, stride 2 pooling without padding only");
  cpu::max_pool_backward_from_indices(s, index, dy, dx, h.threads());
}

void pool_backward(Handle& h, const PoolDesc& p, const TensorDesc& xd, const float* x, const TensorDesc& dyd,
                   const float* dy, const TensorDesc& dxd, float* dx) {
  const char* op = pool_op_name(p.mode, true);
  const PoolShape s = PoolShape::make(op, xd, p);
  PYL_CHECK_ARG(dyd == s.y_desc(), op, ": grad_output must have shape ", s.y_desc().str(), " for input ",
                xd.str(), ", got ", dyd.str());
  PYL_CHECK_ARG(dxd == xd, op, ": grad_input must have the input's shape ", xd.str(), ", got ", dxd.str());
  pool_run_backward(h, p.mode, s, x, dy, dx);
}

}  // namespace pylenet
