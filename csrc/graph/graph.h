// The graph: the one description of a model. Python traces a module's forward() into it, op
// by op (pylenet/graph.py); each op's output shape is inferred here as it is added, so a bad
// call fails at its line in the user's code. Shape inference, FLOPs, autodiff
// (graph/autodiff.h), the graph passes (graph/passes.h), the executor's memory plan
// (runtime/), summary(), checkpoints and exporters all read this structure.
//
// Values are tensors. A Sample value has a leading batch dimension that the graph leaves
// symbolic: its `shape` is per sample ((C, H, W) or (features,)). Fixed values (parameters,
// buffers, batch statistics, parameter gradients) have their full shape. The loss is a Scalar.
// Nodes are kept in topological order: every input of a node is defined before it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ops/activation.h"
#include "ops/pool.h"
#include "ops/tensor.h"

namespace pylenet::graph {

enum class Op {
  // Sources: no computation.
  Input,    // the batch (N, *shape)
  Labels,   // class indices (N,), int64
  Param,    // a trainable parameter
  Buffer,   // state that is not trained (batch norm's running statistics)
  // Forward ops.
  Conv2d,       // in: x, w, b|-1                      attrs: stride, pad
  Linear,       // in: x, w, b|-1
  Pool2d,       // in: x                               attrs: pool, kernel, stride, pad
  Activation,   // in: x                               attrs: act, slope
  Add,          // in: a, b (same shape)
  Cat,          // in: x0, x1, ... along channels      (per-sample dim 0)
  Reshape,      // in: x                               attrs: shape (per sample); a view
  Dropout,      // in: x                               attrs: p
  BatchNorm,    // in: x, gamma|-1, beta|-1, running_mean|-1, running_var|-1, num_batches_tracked|-1
                //   attrs: eps, momentum (< 0: cumulative), training. out: y[, mean, invstd when training]
  Softmax,      // in: x (N, C)                        attrs: log
  CrossEntropy, // in: logits (N, C), labels           out: the mean loss (Scalar)
  NllLoss,      // in: log-probabilities, labels       out: the mean loss (Scalar)
  // Backward ops, made by autodiff.
  ConvBackwardData,      // in: dy, w        -> dx
  ConvBackwardFilter,    // in: x, dy        -> dw (Fixed)
  ConvBackwardBias,      // in: dy           -> db (Fixed)
  LinearBackwardData,    // in: dy, w        -> dx
  LinearBackwardWeight,  // in: x, dy        -> dw (Fixed)
  LinearBackwardBias,    // in: dy           -> db (Fixed)
  Pool2dBackward,        // in: x|-1, dy     -> dx (max pooling reads x; attrs.shape: the input's)
  ActivationBackward,    // in: y (x for leaky_relu with slope <= 0), dy -> dx
  Slice,                 // in: dy           -> dy's channels [offset, offset + size) (cat's backward)
  DropoutBackward,       // in: dy           -> dx  (attrs.forward: the Dropout node, whose id keys the mask)
  BatchNormBackward,     // in: x, dy, gamma|-1, mean|running_mean, invstd|running_var -> dx|-1, dgamma|-1, dbeta|-1
  SoftmaxBackward,       // in: y, dy        -> dx
  CrossEntropyBackward,  // in: logits, labels -> dlogits (the gradient of the batch mean)
  NllLossBackward,       // in: labels       -> dlogp (attrs.shape: (C,))
};
const char* op_name(Op op);

enum class ValueKind { Sample, Fixed, Scalar };

struct Value {
  ValueKind kind = ValueKind::Sample;
  bool is_int = false;             // int64 (labels, num_batches_tracked), else float32
  std::vector<int64_t> shape;      // per sample (Sample) or full (Fixed); empty for Scalar
  int producer = -1;               // the node that writes it (-1 for a source)
  std::string name;                // parameters and buffers: their state_dict name
  bool trainable = false;          // parameters: differentiated and updated
  int64_t numel() const;           // per sample for Sample values
};

struct Attrs {
  Pair kernel{1, 1}, stride{1, 1}, pad{0, 0};
  PoolMode pool = PoolMode::Max;
  Activation act = Activation::ReLU;
  double slope = 0.01;             // leaky_relu
  double p = 0.5;                  // dropout
  double eps = 1e-5, momentum = 0.1;
  bool training = false;           // batch norm: batch statistics (else running ones)
  bool log = false;                // softmax: log-softmax
  int64_t offset = 0, size = 0;    // slice: floats per sample
  std::vector<int64_t> shape;      // reshape: the per-sample shape; some backward ops: their output's
  int forward = -1;                // backward ops: the forward node they belong to
};

struct Node {
  Op op = Op::Input;
  Attrs attrs;
  std::vector<int> in, out;  // value ids; -1 marks an absent optional input
  std::string scope;         // the module path ("LeNet.fc1"), for errors and summaries
  std::string module;        // the leaf module's class ("Linear"), or empty for a functional call
  std::string where;         // the user's source line ("model.py:14")
  bool backward = false;     // made by autodiff
  std::string label() const; // "relu", "max_pool2d", "conv2d_backward_filter", ...
};

class Graph {
 public:
  int add_input(const std::vector<int64_t>& shape);
  int add_labels();
  int add_param(const std::string& name, const std::vector<int64_t>& shape, bool trainable);
  int add_buffer(const std::string& name, const std::vector<int64_t>& shape, bool is_int);
  // Adds an op after inferring and checking its output shapes; returns the output ids.
  // Errors are InvalidArgument naming the op as the user called it (`module` when not empty)
  // and the shapes; the caller adds the module path and source line.
  std::vector<int> add(Op op, const Attrs& attrs, const std::vector<int>& in, const std::string& scope = "",
                       const std::string& module = "", const std::string& where = "");
  // Forward flops of a node, per sample (Fixed-only nodes: in total).
  double flops(int node) const;

  void set_output(int v);
  void set_loss(int v);
  int output() const { return output_; }
  int loss() const { return loss_; }
  int input() const { return input_; }
  int labels() const { return labels_; }

  const std::vector<Node>& nodes() const { return nodes_; }
  std::vector<Node>& nodes() { return nodes_; }
  const std::vector<Value>& values() const { return values_; }
  std::vector<Value>& values() { return values_; }
  const Value& value(int v) const;
  int new_value(const Value& v);  // for autodiff and passes

  // Every node that reads value v, in node order.
  std::vector<int> consumers(int v) const;
  std::string describe(int v) const;  // "(N, 6, 14, 14)" or "(120, 84)"

 private:
  std::vector<Node> nodes_;
  std::vector<Value> values_;
  int input_ = -1, labels_ = -1, output_ = -1, loss_ = -1;
};

}  // namespace pylenet::graph
