#include "ops/optim.h"

#include <cmath>

#include "core/error.h"

namespace pylenet {

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
  PYL_CHECK_ARG(cpu::all_finite(d.numel(), grad), op, ": gradient of shape ", d.str(),
                " contains NaN or inf; parameters left unchanged");
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
  PYL_CHECK_ARG(cpu::all_finite(d.numel(), grad), op, ": gradient of shape ", d.str(),
                " contains NaN or inf; parameters left unchanged");
  o.bc1 = 1.0f - std::pow(o.beta1, static_cast<float>(step));
  o.bc2 = 1.0f - std::pow(o.beta2, static_cast<float>(step));
  cpu::adam_step(d.numel(), param, grad, m, v, o, h.threads());
}

void adadelta_step(Handle& h, const TensorDesc& d, float* param, const float* grad, float* square_avg,
                   float* acc_delta, const AdadeltaParams& o) {
  const char* op = "adadelta_step";
  check_adadelta_params(o);
  d.check(op, "param", -1);
  PYL_CHECK_ARG(cpu::all_finite(d.numel(), grad), op, ": gradient of shape ", d.str(),
                " contains NaN or inf; parameters left unchanged");
  cpu::adadelta_step(d.numel(), param, grad, square_avg, acc_delta, o, h.threads());
}

}  // namespace pylenet
