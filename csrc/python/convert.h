// Marshalling shared by the bindings (module.cpp, runtime.cpp, cuda_ops.cpp):
// names and Python dicts to the runtime's enums and specs, and back. No logic beyond conversion.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "ops/activation.h"
#include "ops/conv.h"
#include "ops/optim.h"
#include "ops/pool.h"
#include "runtime/executor.h"

namespace pylenet::python {

namespace py = pybind11;
using PairT = std::tuple<int64_t, int64_t>;

inline Pair pair_of(const PairT& p) { return Pair{std::get<0>(p), std::get<1>(p)}; }

inline ConvDesc conv_desc(const PairT& stride, const PairT& pad) { return ConvDesc{pair_of(stride), pair_of(pad)}; }
inline PoolMode pool_mode_of(const std::string& mode) {
  PYL_CHECK_ARG(mode == "max" || mode == "avg", "pool2d: mode must be 'max' or 'avg', got '", mode, "'");
  return mode == "max" ? PoolMode::Max : PoolMode::Avg;
}
inline PoolDesc pool_desc(const std::string& mode, const PairT& k, const PairT& s, const PairT& p) {
  return PoolDesc{pool_mode_of(mode), pair_of(k), pair_of(s), pair_of(p)};
}
inline Activation activation_of(const std::string& name) { return activation_from_name(name); }
inline ConvPass pass_of(const std::string& name) {
  if (name == "forward") return ConvPass::Forward;
  if (name == "backward_data") return ConvPass::BackwardData;
  if (name == "backward_filter") return ConvPass::BackwardFilter;
  fail(ErrorKind::InvalidArgument, "conv2d: unknown pass '", name,
       "' (expected forward, backward_data or backward_filter)");
}

inline OptimSpec optim_spec_of(const py::dict& d) {
  OptimSpec o;
  const std::string kind = d["kind"].cast<std::string>();
  if (kind == "sgd") o.kind = OptimKind::SGD;
  else if (kind == "adam") o.kind = OptimKind::Adam;
  else if (kind == "adadelta") o.kind = OptimKind::Adadelta;
  else fail(ErrorKind::InvalidArgument, "unknown optimizer '", kind, "' (expected sgd, adam or adadelta)");
  auto getf = [&](const char* key, float& v) { if (d.contains(key)) v = d[key].cast<float>(); };
  getf("lr", o.lr); getf("momentum", o.momentum); getf("weight_decay", o.weight_decay);
  getf("beta1", o.beta1); getf("beta2", o.beta2); getf("eps", o.eps); getf("rho", o.rho);
  if (d.contains("nesterov")) o.nesterov = d["nesterov"].cast<bool>();
  return o;
}

inline runtime::ScheduleSpec schedule_spec_of(const py::dict& d) {
  runtime::ScheduleSpec s;
  const std::string kind = d["kind"].cast<std::string>();
  if (kind == "constant") s.kind = runtime::ScheduleSpec::Constant;
  else if (kind == "step") s.kind = runtime::ScheduleSpec::Step;
  else if (kind == "cosine") s.kind = runtime::ScheduleSpec::Cosine;
  else if (kind == "inv") s.kind = runtime::ScheduleSpec::Inv;
  else if (kind == "table") s.kind = runtime::ScheduleSpec::Table;
  else if (kind == "one_cycle") s.kind = runtime::ScheduleSpec::OneCycle;
  else fail(ErrorKind::InvalidArgument, "unknown schedule '", kind,
            "' (expected constant, step, cosine, inv, one_cycle or table)");
  if (d.contains("gamma")) s.gamma = d["gamma"].cast<double>();
  if (d.contains("power")) s.power = d["power"].cast<double>();
  if (d.contains("min_lr")) s.min_lr = d["min_lr"].cast<double>();
  if (d.contains("step_iters")) s.step_iters = d["step_iters"].cast<int64_t>();
  if (d.contains("total_iters")) s.total_iters = d["total_iters"].cast<int64_t>();
  if (d.contains("table")) s.table = d["table"].cast<std::vector<double>>();
  if (d.contains("first_iter")) s.first_iter = d["first_iter"].cast<int64_t>();
  if (d.contains("pct_start")) s.pct_start = d["pct_start"].cast<double>();
  if (d.contains("div_factor")) s.div_factor = d["div_factor"].cast<double>();
  if (d.contains("final_div_factor")) s.final_div_factor = d["final_div_factor"].cast<double>();
  if (d.contains("warmup_iters")) s.warmup_iters = d["warmup_iters"].cast<int64_t>();
  return s;
}

inline py::dict stats_dict(const runtime::RunStats& s) {
  py::dict d;
  d["loss_sum"] = s.loss_sum;
  d["correct"] = s.correct;
  d["samples"] = s.samples;
  d["steps"] = s.steps;
  return d;
}

inline py::dict memory_plan_dict(const runtime::MemoryPlan& p) {
  py::dict d;
  d["params"] = p.params;
  d["grads"] = p.grads;
  d["grad_slots"] = p.grad_slots;
  d["optimizer_state"] = p.optimizer_state;
  d["buffers"] = p.buffers;
  d["input"] = p.input;
  d["activations"] = p.activations;
  d["activations_unshared"] = p.activations_unshared;
  d["workspace"] = p.workspace;
  d["prepared"] = p.prepared;
  d["total"] = p.total();
  return d;
}

// The training loop's progress callback: takes the GIL, lets Ctrl-C stop the epoch, and
// stops it when the Python callable returns False. Empty when `progress` is None.
inline runtime::ProgressFn progress_fn(const py::object& progress) {
  if (progress.is_none()) return {};
  return [&progress](int64_t done, int64_t total, const runtime::RunStats& s) {
    py::gil_scoped_acquire gil;
    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    py::object r = progress(done, total, stats_dict(s));
    return r.is_none() || r.cast<bool>();
  };
}

}  // namespace pylenet::python
