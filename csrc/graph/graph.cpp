#include "graph/graph.h"

#include <cmath>

#include "core/error.h"
#include "ops/conv.h"
#include "ops/dropout.h"

namespace pylenet::graph {

const char* op_name(Op op) {
  switch (op) {
    case Op::Input: return "input";
    case Op::Labels: return "labels";
    case Op::Param: return "param";
    case Op::Buffer: return "buffer";
    case Op::Conv2d: return "conv2d";
    case Op::Linear: return "linear";
    case Op::Pool2d: return "pool2d";
    case Op::Activation: return "activation";
    case Op::Add: return "add";
    case Op::Cat: return "cat";
    case Op::Reshape: return "reshape";
    case Op::Dropout: return "dropout";
    case Op::BatchNorm: return "batch_norm";
    case Op::Softmax: return "softmax";
    case Op::CrossEntropy: return "cross_entropy";
    case Op::NllLoss: return "nll_loss";
    case Op::ConvBackwardData: return "conv2d_backward_data";
    case Op::ConvBackwardFilter: return "conv2d_backward_filter";
    case Op::ConvBackwardBias: return "conv2d_backward_bias";
    case Op::LinearBackwardData: return "linear_backward_data";
    case Op::LinearBackwardWeight: return "linear_backward_weight";
    case Op::LinearBackwardBias: return "linear_backward_bias";
    case Op::Pool2dBackward: return "pool2d_backward";
    case Op::ActivationBackward: return "activation_backward";
    case Op::Slice: return "slice";
    case Op::DropoutBackward: return "dropout_backward";
    case Op::BatchNormBackward: return "batch_norm_backward";
    case Op::SoftmaxBackward: return "softmax_backward";
    case Op::CrossEntropyBackward: return "cross_entropy_backward";
    case Op::NllLossBackward: return "nll_loss_backward";
  }
  return "?";
}

std::string Node::label() const {
  switch (op) {
    case Op::Pool2d: return attrs.pool == PoolMode::Max ? "max_pool2d" : "avg_pool2d";
    case Op::Pool2dBackward: return attrs.pool == PoolMode::Max ? "max_pool2d_backward" : "avg_pool2d_backward";
    case Op::Activation: return activation_name(attrs.act);
    case Op::ActivationBackward: return str_cat(activation_name(attrs.act), "_backward");
    case Op::Softmax: return attrs.log ? "log_softmax" : "softmax";
    case Op::SoftmaxBackward: return attrs.log ? "log_softmax_backward" : "softmax_backward";
    default: return op_name(op);
  }
}

int64_t Value::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

const Value& Graph::value(int v) const {
  PYL_CHECK_ARG(v >= 0 && v < static_cast<int>(values_.size()), "graph: no value ", v);
  return values_[static_cast<size_t>(v)];
}

int Graph::new_value(const Value& v) {
  values_.push_back(v);
  return static_cast<int>(values_.size()) - 1;
}

std::string Graph::describe(int v) const {
  const Value& x = value(v);
  if (x.kind == ValueKind::Scalar) return "()";
  std::string s = x.kind == ValueKind::Sample ? "(N" : "(";
  for (size_t i = 0; i < x.shape.size(); ++i) s += (i || x.kind == ValueKind::Sample ? ", " : "") + std::to_string(x.shape[i]);
  if (x.kind == ValueKind::Fixed && x.shape.size() == 1) s += ",";
  return s + ")";
}

std::vector<int> Graph::consumers(int v) const {
  std::vector<int> out;
  for (size_t i = 0; i < nodes_.size(); ++i)
    for (int u : nodes_[i].in)
      if (u == v) {
        out.push_back(static_cast<int>(i));
        break;
      }
  return out;
}

namespace {
void check_shape(const std::vector<int64_t>& shape, const char* what) {
  TensorDesc(shape).check("graph", what, -1);
}

Value sample(std::vector<int64_t> shape) {
  Value v;
  v.kind = ValueKind::Sample;
  v.shape = std::move(shape);
  return v;
}
Value fixed(std::vector<int64_t> shape) {
  Value v;
  v.kind = ValueKind::Fixed;
  v.shape = std::move(shape);
  return v;
}
}  // namespace

int Graph::add_input(const std::vector<int64_t>& shape) {
  PYL_CHECK_ARG(input_ < 0, "graph: the model already has an input");
  check_shape(shape, "input shape (per sample)");
  Node n;
  n.op = Op::Input;
  n.out = {new_value(sample(shape))};
  nodes_.push_back(n);
  values_[n.out[0]].producer = static_cast<int>(nodes_.size()) - 1;
  return input_ = n.out[0];
}

int Graph::add_labels() {
  PYL_CHECK_ARG(labels_ < 0, "graph: the model already has labels");
  Value v = sample({});
  v.is_int = true;
  Node n;
  n.op = Op::Labels;
  n.out = {new_value(v)};
  nodes_.push_back(n);
  values_[n.out[0]].producer = static_cast<int>(nodes_.size()) - 1;
  return labels_ = n.out[0];
}

int Graph::add_param(const std::string& name, const std::vector<int64_t>& shape, bool trainable) {
  if (!shape.empty()) check_shape(shape, "parameter shape");
  Value v = fixed(shape);
  v.name = name;
  v.trainable = trainable;
  Node n;
  n.op = Op::Param;
  n.out = {new_value(v)};
  nodes_.push_back(n);
  values_[n.out[0]].producer = static_cast<int>(nodes_.size()) - 1;
  return n.out[0];
}

int Graph::add_buffer(const std::string& name, const std::vector<int64_t>& shape, bool is_int) {
  if (!shape.empty()) check_shape(shape, "buffer shape");
  Value v = fixed(shape);
  v.name = name;
  v.is_int = is_int;
  Node n;
  n.op = Op::Buffer;
  n.out = {new_value(v)};
  nodes_.push_back(n);
  values_[n.out[0]].producer = static_cast<int>(nodes_.size()) - 1;
  return n.out[0];
}

void Graph::set_output(int v) {
  PYL_CHECK_ARG(value(v).kind == ValueKind::Sample, "the model's output must be a batch tensor (N, ...), got ",
                describe(v));
  output_ = v;
}

void Graph::set_loss(int v) {
  PYL_CHECK_ARG(value(v).kind == ValueKind::Scalar, "the loss must be a scalar, got ", describe(v));
  const int p = value(v).producer;
  PYL_CHECK_ARG(p >= 0 && (nodes_[p].op == Op::CrossEntropy || nodes_[p].op == Op::NllLoss),
                "the loss must be F.cross_entropy or F.nll_loss (of the model's output or a function of it)");
  loss_ = v;
}

namespace {

struct Inference {
  const Graph& g;
  const std::string display;  // the op as the user called it: "Linear", "conv2d", ...

  const Value& val(int v) const { return g.value(v); }
  std::string d(int v) const { return g.describe(v); }

  // A batch tensor of the given per-sample rank (-1: any).
  const Value& need_sample(int v, const char* what, int rank, const char* layout) const {
    PYL_CHECK_ARG(v >= 0, display, ": ", what, " is missing");
    const Value& x = val(v);
    PYL_CHECK_ARG(x.kind == ValueKind::Sample && !x.is_int, display, " expects ", what, " to be a float batch tensor ",
                  layout, ", got ", x.kind == ValueKind::Sample ? "labels" : "a parameter or constant", " ", d(v));
    PYL_CHECK_ARG(rank < 0 || static_cast<int>(x.shape.size()) == rank, display, " expects ", rank + 1, "-D ", what,
                  " ", layout, ", got ", d(v));
    return x;
  }
  const Value& need_fixed(int v, const char* what, const std::vector<int64_t>& shape) const {
    PYL_CHECK_ARG(v >= 0, display, ": ", what, " is missing");
    const Value& x = val(v);
    PYL_CHECK_ARG(x.kind == ValueKind::Fixed, display, " expects ", what, " to be a parameter or buffer, got ", d(v));
    if (!shape.empty())
      PYL_CHECK_ARG(x.shape == shape, display, " expects ", what, " of shape ", TensorDesc(shape).str(), ", got ",
                    d(v));
    return x;
  }
  const Value& need_labels(int v) const {
    PYL_CHECK_ARG(v >= 0 && val(v).kind == ValueKind::Sample && val(v).is_int && val(v).shape.empty(), display,
                  " expects the labels (N,) as its second argument, got ", v >= 0 ? d(v) : "nothing");
    return val(v);
  }
};

}  // namespace

std::vector<int> Graph::add(Op op, const Attrs& a, const std::vector<int>& in, const std::string& scope,
                            const std::string& module, const std::string& where) {
  Node n;
  n.op = op;
  n.attrs = a;
  n.in = in;
  n.scope = scope;
  n.module = module;
  n.where = where;
  const std::string name = module.empty() ? n.label() : module;
  Inference inf{*this, name};
  for (int v : in) PYL_CHECK_ARG(v >= -1 && v < static_cast<int>(values_.size()), name, ": bad input value ", v);
  auto arg = [&](size_t i) { return i < in.size() ? in[i] : -1; };
  std::vector<Value> outs;

  switch (op) {
    case Op::Input: case Op::Labels: case Op::Param: case Op::Buffer:
      fail(ErrorKind::InvalidArgument, "graph: sources are added with add_input/add_labels/add_param/add_buffer");

    case Op::Conv2d: {
      const Value& x = inf.need_sample(arg(0), "an input", 3, "(N, C, H, W)");
      const Value& w = inf.need_fixed(arg(1), "a weight", {});
      PYL_CHECK_ARG(w.shape.size() == 4, name, " expects a weight (out_channels, in_channels, kh, kw), got ", describe(in[1]));
      PYL_CHECK_ARG(w.shape[1] == x.shape[0], name, " expects ", w.shape[1], " input channels, got ", x.shape[0],
                    " (input ", describe(in[0]), ")");
      if (arg(2) >= 0) inf.need_fixed(arg(2), "a bias", {w.shape[0]});
      // ConvShape::make is the one check of the arguments and of the shape arithmetic.
      const ConvShape s = ConvShape::make(name.c_str(), TensorDesc{1, x.shape[0], x.shape[1], x.shape[2]},
                                          TensorDesc(w.shape), ConvDesc{a.stride, a.pad});
      outs.push_back(sample({s.k, s.oh, s.ow}));
      break;
    }
    case Op::Linear: {
      const Value& x = inf.need_sample(arg(0), "an input", -1, "(N, in_features)");
      const Value& w = inf.need_fixed(arg(1), "a weight", {});
      PYL_CHECK_ARG(w.shape.size() == 2, name, " expects a weight (out_features, in_features), got ", describe(in[1]));
      PYL_CHECK_ARG(x.shape.size() == 1, name, " expects a flat input (N, ", w.shape[1], "), got ", describe(in[0]),
                    "; flatten it first (x.flatten(1) or x.view(x.size(0), -1))");
      PYL_CHECK_ARG(x.shape[0] == w.shape[1], name, " expects ", w.shape[1], " input features, got ", x.shape[0]);
      if (arg(2) >= 0) inf.need_fixed(arg(2), "a bias", {w.shape[0]});
      outs.push_back(sample({w.shape[0]}));
      break;
    }
    case Op::Pool2d: {
      const Value& x = inf.need_sample(arg(0), "an input", 3, "(N, C, H, W)");
      const PoolShape s = PoolShape::make(name.c_str(), TensorDesc{1, x.shape[0], x.shape[1], x.shape[2]},
                                          PoolDesc{a.pool, a.kernel, a.stride, a.pad});
      outs.push_back(sample({s.c, s.oh, s.ow}));
      break;
    }
    case Op::Activation: {
      const Value& x = inf.need_sample(arg(0), "an input", -1, "(N, ...)");
      PYL_CHECK_ARG(std::isfinite(a.slope), name, ": negative_slope must be finite, got ", a.slope);
      outs.push_back(sample(x.shape));
      break;
    }
    case Op::Add: {
      const Value& x = inf.need_sample(arg(0), "a first operand", -1, "(N, ...)");
      const Value& y = inf.need_sample(arg(1), "a second operand", -1, "(N, ...)");
      PYL_CHECK_ARG(x.shape == y.shape, name, ": the operands have different shapes, ", describe(in[0]), " and ",
                    describe(in[1]), " (no broadcasting)");
      outs.push_back(sample(x.shape));
      break;
    }
    case Op::Cat: {
      PYL_CHECK_ARG(!in.empty(), name, " expects at least one tensor");
      std::vector<int64_t> shape;
      for (size_t i = 0; i < in.size(); ++i) {
        const Value& x = inf.need_sample(in[i], "tensors", -1, "(N, C, ...)");
        PYL_CHECK_ARG(!x.shape.empty(), name, ": cannot concatenate tensors of shape ", describe(in[i]));
        if (i == 0) {
          shape = x.shape;
          continue;
        }
        std::vector<int64_t> rest_a(shape.begin() + 1, shape.end()), rest_b(x.shape.begin() + 1, x.shape.end());
        PYL_CHECK_ARG(rest_a == rest_b, name, ": along dim 1 all other dimensions must agree, got ",
                      describe(in[0]), " and ", describe(in[i]));
        shape[0] += x.shape[0];
      }
      outs.push_back(sample(shape));
      break;
    }
    case Op::Reshape: {
      const Value& x = inf.need_sample(arg(0), "an input", -1, "(N, ...)");
      check_shape(a.shape, "reshape target");
      PYL_CHECK_ARG(Value(sample(a.shape)).numel() == x.numel(), name, ": cannot view ", describe(in[0]), " as (N, ",
                    TensorDesc(a.shape).str().substr(1), " (", x.numel(), " values per sample, not ",
                    Value(sample(a.shape)).numel(), ")");
      outs.push_back(sample(a.shape));
      break;
    }
    case Op::Dropout: {
      const Value& x = inf.need_sample(arg(0), "an input", -1, "(N, ...)");
      check_dropout_p(name.c_str(), a.p);
      outs.push_back(sample(x.shape));
      break;
    }
    case Op::BatchNorm: {
      const Value& x = inf.need_sample(arg(0), "an input", -1, "(N, C, ...)");
      PYL_CHECK_ARG(!x.shape.empty() && x.shape.size() <= 3, name, " expects an input (N, C), (N, C, L) or "
                    "(N, C, H, W), got ", describe(in[0]));
      const int64_t c = x.shape[0];
      for (int i = 1; i <= 4; ++i)
        if (arg(static_cast<size_t>(i)) >= 0)
          inf.need_fixed(arg(static_cast<size_t>(i)),
                         i == 1 ? "a weight" : i == 2 ? "a bias" : i == 3 ? "running_mean" : "running_var", {c});
      PYL_CHECK_ARG((arg(1) >= 0) == (arg(2) >= 0), name, ": weight and bias go together (affine)");
      PYL_CHECK_ARG((arg(3) >= 0) == (arg(4) >= 0), name, ": running_mean and running_var go together");
      PYL_CHECK_ARG(a.training || arg(3) >= 0, name, ": evaluation mode needs running statistics");
      if (arg(5) >= 0) PYL_CHECK_ARG(value(arg(5)).is_int && value(arg(5)).shape.empty(), name,
                                     ": num_batches_tracked must be an int64 scalar");
      PYL_CHECK_ARG(std::isfinite(a.eps) && a.eps > 0, name, ": eps must be > 0, got ", a.eps);
      PYL_CHECK_ARG(std::isfinite(a.momentum) && a.momentum <= 1, name, ": momentum must be in [0, 1] (or None), got ",
                    a.momentum);
      PYL_CHECK_ARG(!a.training || arg(3) < 0 || a.momentum >= 0 || arg(5) >= 0, name,
                    ": momentum=None needs num_batches_tracked");
      outs.push_back(sample(x.shape));
      if (a.training) {  // the batch's statistics, kept for backward
        outs.push_back(fixed({c}));
        outs.push_back(fixed({c}));
      }
      break;
    }
    case Op::Softmax: {
      const Value& x = inf.need_sample(arg(0), "an input", 1, "(N, C)");
      outs.push_back(sample(x.shape));
      break;
    }
    case Op::CrossEntropy:
    case Op::NllLoss: {
      inf.need_sample(arg(0), op == Op::CrossEntropy ? "logits" : "log-probabilities", 1, "(N, classes)");
      inf.need_labels(arg(1));
      PYL_CHECK_ARG(value(arg(0)).shape[0] >= 1, name, " expects at least one class");
      Value v;
      v.kind = ValueKind::Scalar;
      outs.push_back(v);
      break;
    }

    // Backward ops (autodiff builds them from checked forward nodes: only the shapes are set).
    case Op::ConvBackwardData:
    case Op::LinearBackwardData:
    case Op::Pool2dBackward:
    case Op::NllLossBackward:
      outs.push_back(sample(a.shape));
      break;
    case Op::ConvBackwardFilter:
    case Op::LinearBackwardWeight:
    case Op::ConvBackwardBias:
    case Op::LinearBackwardBias:
      outs.push_back(fixed(a.shape));
      break;
    case Op::ActivationBackward:
    case Op::DropoutBackward:
    case Op::SoftmaxBackward:
      outs.push_back(sample(value(in.back()).shape));
      break;
    case Op::Slice: {
      std::vector<int64_t> shape = value(in[0]).shape;
      shape[0] = a.size;
      outs.push_back(sample(shape));
      break;
    }
    case Op::CrossEntropyBackward:
      outs.push_back(sample(value(in[0]).shape));
      break;
    case Op::BatchNormBackward: {
      const Value& x = value(in[0]);
      outs.push_back(sample(x.shape));
      outs.push_back(fixed({x.shape[0]}));
      outs.push_back(fixed({x.shape[0]}));
      break;
    }
  }

  n.backward = op >= Op::ConvBackwardData;
  const int id = static_cast<int>(nodes_.size());
  for (Value& v : outs) {
    v.producer = id;
    n.out.push_back(new_value(v));
  }
  nodes_.push_back(std::move(n));
  return nodes_.back().out;
}

double Graph::flops(int node) const {
  const Node& n = nodes_.at(static_cast<size_t>(node));
  const auto numel = [&](int v) { return v >= 0 ? static_cast<double>(value(v).numel()) : 0.0; };
  switch (n.op) {
    case Op::Conv2d: {
      const Value& w = value(n.in[1]);
      const double macs = numel(n.out[0]) * static_cast<double>(w.shape[1] * w.shape[2] * w.shape[3]);
      return 2 * macs + (n.in[2] >= 0 ? numel(n.out[0]) : 0);
    }
    case Op::Linear: return 2 * numel(n.in[1]) + (n.in[2] >= 0 ? numel(n.out[0]) : 0);
    case Op::Pool2d: return numel(n.out[0]) * static_cast<double>(n.attrs.kernel.h * n.attrs.kernel.w);
    case Op::Activation: case Op::Add: case Op::Dropout: return numel(n.out[0]);
    case Op::BatchNorm: return 2 * numel(n.out[0]);
    case Op::Softmax: return 3 * numel(n.out[0]);
    case Op::CrossEntropy: case Op::NllLoss: return 3 * numel(n.in[0]);
    default: return 0;
  }
}

}  // namespace pylenet::graph
