// Marshalling shared by the CPU and CUDA bindings (module.cpp, cuda_ops.cpp,
// cuda_network.cpp): names and Python dicts to the runtime's enums and specs, and back. No
// logic beyond conversion.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "net/network.h"
#include "ops/activation.h"
#include "ops/conv.h"
#include "ops/pool.h"

namespace pylenet::python {

namespace py = pybind11;
using PairT = std::tuple<int64_t, int64_t>;

inline Pair pair_of(const PairT& p) { return Pair{std::get<0>(p), std::get<1>(p)}; }

inline ConvDesc conv_desc(const PairT& stride, const PairT& pad) { return ConvDesc{pair_of(stride), pair_of(pad)}; }
inline PoolDesc pool_desc(const std::string& mode, const PairT& k, const PairT& s, const PairT& p) {
  PYL_CHECK_ARG(mode == "max" || mode == "avg", "pool2d: mode must be 'max' or 'avg', got '", mode, "'");
  return PoolDesc{mode == "max" ? PoolMode::Max : PoolMode::Avg, pair_of(k), pair_of(s), pair_of(p)};
}
inline Activation activation_of(const std::string& name) {
  if (name == "relu") return Activation::ReLU;
  if (name == "tanh") return Activation::Tanh;
  if (name == "identity") return Activation::Identity;
  fail(ErrorKind::InvalidArgument, "unknown activation '", name, "' (expected relu, tanh or identity)");
}
inline ConvPass pass_of(const std::string& name) {
  if (name == "forward") return ConvPass::Forward;
  if (name == "backward_data") return ConvPass::BackwardData;
  if (name == "backward_filter") return ConvPass::BackwardFilter;
  fail(ErrorKind::InvalidArgument, "conv2d: unknown pass '", name,
       "' (expected forward, backward_data or backward_filter)");
}

inline LayerSpec layer_spec_of(const py::dict& d) {
  static const std::map<std::string, LayerKind> kinds = {
      {"Conv2d", LayerKind::Conv2d}, {"MaxPool2d", LayerKind::MaxPool2d}, {"AvgPool2d", LayerKind::AvgPool2d},
      {"Linear", LayerKind::Linear}, {"ReLU", LayerKind::ReLU}, {"Tanh", LayerKind::Tanh},
      {"Flatten", LayerKind::Flatten}};
  const std::string kind = d["kind"].cast<std::string>();
  auto it = kinds.find(kind);
  PYL_CHECK_ARG(it != kinds.end(), "Network: unknown layer kind '", kind, "'");
  LayerSpec s;
  s.kind = it->second;
  auto get = [&](const char* key, auto fallback) { return d.contains(key) ? d[key].cast<decltype(fallback)>() : fallback; };
  s.in = get("in", int64_t(0));
  s.out = get("out", int64_t(0));
  s.kernel = pair_of(get("kernel", PairT{1, 1}));
  s.stride = pair_of(get("stride", PairT{1, 1}));
  s.pad = pair_of(get("padding", PairT{0, 0}));
  s.bias = get("bias", true);
  return s;
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

inline ScheduleSpec schedule_spec_of(const py::dict& d) {
  ScheduleSpec s;
  const std::string kind = d["kind"].cast<std::string>();
  if (kind == "constant") s.kind = ScheduleKind::Constant;
  else if (kind == "step") s.kind = ScheduleKind::Step;
  else if (kind == "cosine") s.kind = ScheduleKind::Cosine;
  else if (kind == "inv") s.kind = ScheduleKind::Inv;
  else fail(ErrorKind::InvalidArgument, "unknown schedule '", kind, "' (expected constant, step, cosine or inv)");
  if (d.contains("gamma")) s.gamma = d["gamma"].cast<double>();
  if (d.contains("power")) s.power = d["power"].cast<double>();
  if (d.contains("min_lr")) s.min_lr = d["min_lr"].cast<double>();
  if (d.contains("step_iters")) s.step_iters = d["step_iters"].cast<int64_t>();
  if (d.contains("total_iters")) s.total_iters = d["total_iters"].cast<int64_t>();
  return s;
}

inline py::dict stats_dict(const RunStats& s) {
  py::dict d;
  d["loss_sum"] = s.loss_sum;
  d["correct"] = s.correct;
  d["samples"] = s.samples;
  d["steps"] = s.steps;
  return d;
}

inline std::vector<LayerSpec> layer_specs_of(const py::list& layers) {
  std::vector<LayerSpec> specs;
  for (auto l : layers) specs.push_back(layer_spec_of(l.cast<py::dict>()));
  return specs;
}

inline py::list layers_list(const std::vector<LayerInfo>& layers) {
  py::list out;
  for (auto& l : layers) {
    py::dict d;
    d["kind"] = l.kind;
    d["out_shape"] = py::tuple(py::cast(l.out_shape));
    d["weight_count"] = l.weight_count;
    d["bias_count"] = l.bias_count;
    d["param_offset"] = l.param_offset;
    d["flops"] = l.flops;
    d["activation_floats"] = l.activation_floats;
    out.append(d);
  }
  return out;
}

inline py::dict memory_plan_dict(const MemoryPlan& p) {
  py::dict d;
  d["batch_size"] = p.batch_capacity;
  d["params"] = p.params;
  d["grads"] = p.grads;
  d["chunk_grads"] = p.chunk_grads;
  d["optimizer_state"] = p.optimizer_state;
  d["activations"] = p.activations;
  d["activation_grads"] = p.activation_grads;
  d["workspace"] = p.workspace;
  d["total"] = p.total();
  return d;
}

// The training loop's progress callback: takes the GIL, lets Ctrl-C stop the epoch, and
// stops it when the Python callable returns False. Empty when `progress` is None.
inline ProgressFn progress_fn(const py::object& progress) {
  if (progress.is_none()) return {};
  return [&progress](int64_t done, int64_t total, const RunStats& s) {
    py::gil_scoped_acquire gil;
    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    py::object r = progress(done, total, stats_dict(s));
    return r.is_none() || r.cast<bool>();
  };
}

}  // namespace pylenet::python
