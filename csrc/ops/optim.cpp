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

}  // namespace pylenet
