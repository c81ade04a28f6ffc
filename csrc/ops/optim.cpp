#include "ops/optim.h"

#include <cmath>

#include "core/error.h"
#include "ops/dispatch.h"

namespace pylenet {

namespace {
// A NaN/inf gradient is refused before anything changes (on a GPU: checked there, then waited for).
void check_finite_gradient(Handle& h, const char* op, const TensorDesc& d, const float* grad) {
  bool finite;
#ifdef PYLENET_HAVE_CUDA
  if (h.on_cuda())
    finite = cuda::all_finite(d.numel(), grad, static_cast<int*>(h.cuda().scratch()), stream_of(h));
  else
#endif
    finite = cpu::all_finite(d.numel(), grad);
  PYL_CHECK_ARG(finite, op, ": gradient of shape ", d.str(), " contains NaN or inf; parameters left unchanged");
}
}  // namespace

void check_sgd_params(const SgdParams& o) {
  const char* op = "sgd_step";
  PYL_CHECK_ARG(std::isfinite(o.lr) && o.lr >= 0.0f, op, ": lr must be a finite number >= 0, got ", o.lr);
  PYL_CHECK_ARG(std::isfinite(o.momentum) && o.momentum >= 0.0f, op, ": momentum must be finite and >= 0, got ",
                o.momentum);
  PYL_CHECK_ARG(std::isfinite(o.weight_decay) && o.weight_decay >= 0.0f, op,
                ": weight_decay must be finite and >= 0, got ", o.weight_decay);
  PYL_CHECK_ARG(!o.nesterov || o.momentum > 0.0f, op, ": nesterov momentum requires momentum > 0");
}

void sgd_step(Handle& h, const TensorDesc& d, float* param, const float* grad, float* velocity, const SgdParams& o) {
  const char* op = "sgd_step";
  check_sgd_params(o);
  d.check(op, "param", -1);
  PYL_CHECK_ARG(o.momentum == 0.0f || velocity, op, ": momentum ", o.momentum, " needs a velocity buffer");
  check_finite_gradient(h, op, d, grad);
  PYL_IF_CUDA(h, cuda::sgd_step(d.numel(), param, grad, o.momentum != 0.0f ? velocity : nullptr, o, stream_of(h)));
  cpu::sgd_step(d.numel(), param, grad, o.momentum != 0.0f ? velocity : nullptr, o, h.threads());
}

void check_adam_params(const AdamParams& o) {
  const char* op = "adam_step";
  PYL_CHECK_ARG(std::isfinite(o.lr) && o.lr >= 0.0f, op, ": lr must be a finite number >= 0, got ", o.lr);
  PYL_CHECK_ARG(o.beta1 >= 0.0f && o.beta1 < 1.0f && o.beta2 >= 0.0f && o.beta2 < 1.0f, op,
                ": betas must be in [0, 1), got (", o.beta1, ", ", o.beta2, ")");
  PYL_CHECK_ARG(std::isfinite(o.eps) && o.eps > 0.0f, op, ": eps must be > 0, got ", o.eps);
  PYL_CHECK_ARG(std::isfinite(o.weight_decay) && o.weight_decay >= 0.0f, op, ": weight_decay must be >= 0, got ",
                o.weight_decay);
}

void check_adadelta_params(const AdadeltaParams& o) {
  const char* op = "adadelta_step";
  PYL_CHECK_ARG(std::isfinite(o.lr) && o.lr >= 0.0f, op, ": lr must be a finite number >= 0, got ", o.lr);
  PYL_CHECK_ARG(o.rho >= 0.0f && o.rho <= 1.0f, op, ": rho must be in [0, 1], got ", o.rho);
  PYL_CHECK_ARG(std::isfinite(o.eps) && o.eps > 0.0f, op, ": eps must be > 0, got ", o.eps);
  PYL_CHECK_ARG(std::isfinite(o.weight_decay) && o.weight_decay >= 0.0f, op, ": weight_decay must be >= 0, got ",
                o.weight_decay);
}

void adam_step(Handle& h, const TensorDesc& d, float* param, const float* grad, float* m, float* v, int64_t step,
               AdamParams o) {
  const char* op = "adam_step";
  check_adam_params(o);
  d.check(op, "param", -1);
  PYL_CHECK_ARG(step >= 1, op, ": step counts from 1, got ", step);
  check_finite_gradient(h, op, d, grad);
  math::adam_bias_corrections(o.beta1, o.beta2, step, o.bc1, o.bc2);
  PYL_IF_CUDA(h, cuda::adam_step(d.numel(), param, grad, m, v, o, stream_of(h)));
  cpu::adam_step(d.numel(), param, grad, m, v, o, h.threads());
}

void adadelta_step(Handle& h, const TensorDesc& d, float* param, const float* grad, float* square_avg,
                   float* acc_delta, const AdadeltaParams& o) {
  const char* op = "adadelta_step";
  check_adadelta_params(o);
  d.check(op, "param", -1);
  check_finite_gradient(h, op, d, grad);
  PYL_IF_CUDA(h, cuda::adadelta_step(d.numel(), param, grad, square_avg, acc_delta, o, stream_of(h)));
  cpu::adadelta_step(d.numel(), param, grad, square_avg, acc_delta, o, h.threads());
}

int optimizer_state_buffers(OptimKind kind) { return kind == OptimKind::SGD ? 1 : 2; }

void check_optim_spec(const OptimSpec& o) {
  switch (o.kind) {
    case OptimKind::SGD: check_sgd_params(SgdParams{o.lr, o.momentum, o.weight_decay, o.nesterov}); break;
    case OptimKind::Adam: check_adam_params(AdamParams{o.lr, o.beta1, o.beta2, o.eps, o.weight_decay}); break;
    case OptimKind::Adadelta: check_adadelta_params(AdadeltaParams{o.lr, o.rho, o.eps, o.weight_decay}); break;
  }
}

void optimizer_update(Handle& h, const OptimSpec& o, float lr, int64_t step, int64_t count, float* param,
                      const float* grad, float* state0, float* state1, const int* skip,
                      const math::StepValues* on_device) {
  const SgdParams sgd{lr, o.momentum, o.weight_decay, o.nesterov};
  AdamParams adam{lr, o.beta1, o.beta2, o.eps, o.weight_decay};
  math::adam_bias_corrections(o.beta1, o.beta2, step, adam.bc1, adam.bc2);
  const AdadeltaParams adadelta{lr, o.rho, o.eps, o.weight_decay};
  float* velocity = o.momentum != 0.0f ? state0 : nullptr;
#ifdef PYLENET_HAVE_CUDA
  if (h.on_cuda()) {
    cudaStream_t st = stream_of(h);
    switch (o.kind) {
      case OptimKind::SGD: cuda::sgd_step(count, param, grad, velocity, sgd, st, skip, on_device); return;
      case OptimKind::Adam: cuda::adam_step(count, param, grad, state0, state1, adam, st, skip, on_device); return;
      case OptimKind::Adadelta:
        cuda::adadelta_step(count, param, grad, state0, state1, adadelta, st, skip, on_device);
        return;
    }
  }
#else
  PYL_IF_CUDA(h, );
#endif
  PYL_CHECK_ARG(!on_device && !skip, "optimizer_update: per-step values and skip flags live on a CUDA device only");
  switch (o.kind) {
    case OptimKind::SGD: cpu::sgd_step(count, param, grad, velocity, sgd, h.threads()); return;
    case OptimKind::Adam: cpu::adam_step(count, param, grad, state0, state1, adam, h.threads()); return;
    case OptimKind::Adadelta: cpu::adadelta_step(count, param, grad, state0, state1, adadelta, h.threads()); return;
  }
}

}  // namespace pylenet
