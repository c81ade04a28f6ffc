#include "ops/linear.h"

#include "core/error.h"
#include "ops/activation.h"
#include "ops/dispatch.h"

namespace pylenet {

LinearShape LinearShape::make(const char* op, const TensorDesc& x, const TensorDesc& w) {
  x.check(op, "input", 2, "(N, in_features)");
  w.check(op, "weight", 2, "(out_features, in_features)");
  PYL_CHECK_ARG(x.dim(1) == w.dim(1), op, ": input ", x.str(), " has ", x.dim(1), " features but weight ", w.str(),
                " expects ", w.dim(1));
  return LinearShape{x.dim(0), x.dim(1), w.dim(0)};
}

void linear_forward(Handle& h, const TensorDesc& xd, const float* x, const TensorDesc& wd, const float* w,
                    const TensorDesc& bd, const float* b, const TensorDesc& yd, float* y) {
  const LinearShape s = LinearShape::make("linear", xd, wd);
  if (b)
    PYL_CHECK_ARG(bd == TensorDesc{s.out}, "linear: bias must have shape (", s.out, ",) for weight ", wd.str(),
                  ", got ", bd.str());
  PYL_CHECK_ARG(yd == s.y_desc(), "linear: output must have shape ", s.y_desc().str(), ", got ", yd.str());
  linear_run_forward(h, s, x, w, b, y);
}

namespace {
LinearShape backward_shape(const TensorDesc& dyd, const TensorDesc& xd, const TensorDesc& wd) {
  const LinearShape s = LinearShape::make("linear_backward", xd, wd);
  PYL_CHECK_ARG(dyd == s.y_desc(), "linear_backward: grad_output must have shape ", s.y_desc().str(),
                " for input ", xd.str(), " and weight ", wd.str(), ", got ", dyd.str());
  return s;
}
}  // namespace

void linear_backward_data(Handle& h, const TensorDesc& dyd, const float* dy, const TensorDesc& wd, const float* w,
                          const TensorDesc& dxd, float* dx) {
  const LinearShape s = backward_shape(dyd, dxd, wd);
  linear_run_backward_data(h, s, dy, w, dx);
}

void linear_backward_weight(Handle& h, const TensorDesc& dyd, const float* dy, const TensorDesc& xd,
                            const float* x, const TensorDesc& dwd, float* dw) {
  const LinearShape s = backward_shape(dyd, xd, dwd);
  linear_run_backward_weight(h, s, dy, x, dw);
}

void linear_backward_bias(Handle& h, const TensorDesc& dyd, const float* dy, const TensorDesc& dbd, float* db) {
  dyd.check("linear_backward", "grad_output", 2, "(N, out_features)");
  PYL_CHECK_ARG(dbd == TensorDesc{dyd.dim(1)}, "linear_backward: bias gradient must have shape (", dyd.dim(1),
                ",), got ", dbd.str());
  linear_run_backward_bias(h, LinearShape{dyd.dim(0), 0, dyd.dim(1)}, dy, db);
}

void linear_run_forward(Handle& h, const LinearShape& s, const float* x, const float* w, const float* b, float* y,
                        bool relu) {
  PYL_IF_CUDA(h, cuda::linear_forward(s, x, w, b, y, stream_of(h), relu));
  cpu::linear_forward(s, x, w, b, y, h.workspace(sizeof(float) * cpu::linear_workspace_floats(s)), h.threads());
  // The CPU's folded ReLU is a second pass (the executor folds it only under Config::device_rules).
  if (relu) cpu::activation_forward(Activation::ReLU, s.n * s.out, y, y, 0.0f, h.threads());
}

void linear_run_backward_data(Handle& h, const LinearShape& s, const float* dy, const float* w, float* dx) {
  PYL_IF_CUDA(h, cuda::linear_backward_data(s, dy, w, dx, stream_of(h)));
  cpu::linear_backward_data(s, dy, w, dx, h.workspace(sizeof(float) * cpu::linear_workspace_floats(s)), h.threads());
}

void linear_run_backward_weight(Handle& h, const LinearShape& s, const float* dy, const float* x, float* dw) {
  PYL_IF_CUDA(h, cuda::linear_backward_weight(s, dy, x, dw, stream_of(h)));
  cpu::linear_backward_weight(s, dy, x, dw, h.workspace(sizeof(float) * cpu::linear_workspace_floats(s)),
                              h.threads());
}

void linear_run_backward_bias(Handle& h, const LinearShape& s, const float* dy, float* db) {
  PYL_IF_CUDA(h, cuda::linear_backward_bias(s, dy, db, stream_of(h)));
  cpu::linear_backward_bias(s, dy, db, h.threads());
}

}  // namespace pylenet
