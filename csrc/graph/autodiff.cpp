#include "graph/autodiff.h"

#include <map>

#include "core/error.h"

namespace pylenet::graph {

namespace {

class Differentiator {
 public:
  explicit Differentiator(Graph& g) : g_(g), needs_(g.values().size(), false) {}

  std::vector<ParamGradient> run() {
    const int loss = g_.loss();
    PYL_CHECK_ARG(loss >= 0, "differentiate: the graph has no loss");
    const int forward_nodes = static_cast<int>(g_.nodes().size());
    // Which values depend on a trainable parameter (only those get gradients).
    for (const Node& n : g_.nodes()) {
      if (n.op == Op::Param) {
        needs_[n.out[0]] = g_.value(n.out[0]).trainable;
        continue;
      }
      bool any = false;
      for (int v : n.in) any |= v >= 0 && needs_[v];
      for (int v : n.out) needs_[v] = any && !g_.value(v).is_int;
    }
    const int loss_node = g_.value(loss).producer;
    for (int i = loss_node; i >= 0 && i < forward_nodes; --i) {
      const Node n = g_.nodes()[i];  // a copy: adding nodes moves the vector
      if (n.backward || n.op == Op::Input || n.op == Op::Labels || n.op == Op::Param || n.op == Op::Buffer) continue;
      if (i == loss_node) {
        seed(i, n);
        continue;
      }
      std::vector<int> gy;
      bool any = false;
      for (int v : n.out) {
        gy.push_back(gradient_of(v, n));
        any |= gy.back() >= 0;
      }
      if (any) rule(i, n, gy);
    }
    std::vector<ParamGradient> out;
    for (auto& [param, list] : param_grads_) out.push_back({param, list});
    return out;
  }

 private:
  bool needs(int v) const { return v >= 0 && needs_[v]; }

  int add(Op op, const Attrs& a, const std::vector<int>& in, const Node& fwd) {
    return g_.add(op, a, in, fwd.scope, fwd.module, fwd.where)[0];
  }
  std::vector<int> add_all(Op op, const Attrs& a, const std::vector<int>& in, const Node& fwd) {
    return g_.add(op, a, in, fwd.scope, fwd.module, fwd.where);
  }

  // Records gradient contribution `grad` to value v.
  void contribute(int v, int grad) {
    if (!needs(v) || grad < 0) return;
    if (g_.value(v).kind == ValueKind::Fixed && g_.nodes()[g_.value(v).producer].op == Op::Param)
      param_grads_[v].push_back(grad);
    else
      grads_[v].push_back(grad);
  }

  // The gradient of v: its contributions summed in the order they were made, or -1.
  int gradient_of(int v, const Node& fwd) {
    auto it = grads_.find(v);
    if (it == grads_.end() || it->second.empty()) return -1;
    int sum = it->second[0];
    for (size_t k = 1; k < it->second.size(); ++k) sum = add(Op::Add, Attrs{}, {sum, it->second[k]}, fwd);
    return sum;
  }

  static Attrs with_shape(Attrs a, const std::vector<int64_t>& shape, int forward) {
    a.shape = shape;
    a.forward = forward;
    return a;
  }

  void seed(int i, const Node& n) {
    const int x = n.in[0], labels = n.in[1];
    if (!needs(x)) return;
    if (n.op == Op::CrossEntropy)
      contribute(x, add(Op::CrossEntropyBackward, with_shape(n.attrs, {}, i), {x, labels}, n));
    else
      contribute(x, add(Op::NllLossBackward, with_shape(n.attrs, g_.value(x).shape, i), {labels}, n));
  }

  void rule(int i, const Node& n, const std::vector<int>& gy) {
    const int dy = gy[0];
    const auto shape = [&](int v) { return g_.value(v).shape; };
    switch (n.op) {
      case Op::Conv2d: {
        const int x = n.in[0], w = n.in[1], b = n.in[2];
        if (dy < 0) return;
        if (needs(w)) contribute(w, add(Op::ConvBackwardFilter, with_shape(n.attrs, shape(w), i), {x, dy}, n));
        if (needs(b)) contribute(b, add(Op::ConvBackwardBias, with_shape(n.attrs, shape(b), i), {dy}, n));
        if (needs(x)) contribute(x, add(Op::ConvBackwardData, with_shape(n.attrs, shape(x), i), {dy, w}, n));
        return;
      }
      case Op::Linear: {
        const int x = n.in[0], w = n.in[1], b = n.in[2];
        if (dy < 0) return;
        if (needs(w)) contribute(w, add(Op::LinearBackwardWeight, with_shape(n.attrs, shape(w), i), {x, dy}, n));
        if (needs(b)) contribute(b, add(Op::LinearBackwardBias, with_shape(n.attrs, shape(b), i), {dy}, n));
        if (needs(x)) contribute(x, add(Op::LinearBackwardData, with_shape(n.attrs, shape(x), i), {dy, w}, n));
        return;
      }
      case Op::Pool2d: {
        const int x = n.in[0];
        if (dy < 0 || !needs(x)) return;
        const int reads = n.attrs.pool == PoolMode::Max ? x : -1;  // average pooling needs only dy
        contribute(x, add(Op::Pool2dBackward, with_shape(n.attrs, shape(x), i), {reads, dy}, n));
        return;
      }
      case Op::Activation: {
        const int x = n.in[0], y = n.out[0];
        if (dy < 0 || !needs(x)) return;
        // From the output (which lets the forward run in place), except leaky_relu with a
        // slope <= 0, whose output does not give the input's sign.
        const bool from_x = n.attrs.act == Activation::LeakyReLU && n.attrs.slope <= 0;
        contribute(x, add(Op::ActivationBackward, with_shape(n.attrs, {}, i), {from_x ? x : y, dy}, n));
        return;
      }
      case Op::Add:
        contribute(n.in[0], dy);
        contribute(n.in[1], dy);
        return;
      case Op::Cat: {
        int64_t offset = 0;
        for (int x : n.in) {
          const int64_t c = shape(x)[0];
          if (needs(x) && dy >= 0) {
            Attrs a = with_shape(n.attrs, {}, i);
            a.offset = offset;
            a.size = c;
            contribute(x, add(Op::Slice, a, {dy}, n));
          }
          offset += c;
        }
        return;
      }
      case Op::Reshape: {
        const int x = n.in[0];
        if (dy >= 0 && needs(x)) contribute(x, add(Op::Reshape, with_shape(n.attrs, shape(x), i), {dy}, n));
        return;
      }
      case Op::Dropout: {
        const int x = n.in[0];
        if (dy >= 0 && needs(x)) contribute(x, add(Op::DropoutBackward, with_shape(n.attrs, {}, i), {dy}, n));
        return;
      }
      case Op::BatchNorm: {
        const int x = n.in[0], gamma = n.in[1], beta = n.in[2];
        if (dy < 0 || !(needs(x) || needs(gamma) || needs(beta))) return;
        const int stat_a = n.attrs.training ? n.out[1] : n.in[3];  // mean | running_mean
        const int stat_b = n.attrs.training ? n.out[2] : n.in[4];  // invstd | running_var
        const std::vector<int> outs =
            add_all(Op::BatchNormBackward, with_shape(n.attrs, {}, i), {x, dy, gamma, stat_a, stat_b}, n);
        contribute(x, needs(x) ? outs[0] : -1);
        contribute(gamma, needs(gamma) ? outs[1] : -1);
        contribute(beta, needs(beta) ? outs[2] : -1);
        return;
      }
      case Op::Softmax: {
        const int x = n.in[0];
        if (dy >= 0 && needs(x))
          contribute(x, add(Op::SoftmaxBackward, with_shape(n.attrs, {}, i), {n.out[0], dy}, n));
        return;
      }
      case Op::CrossEntropy:
      case Op::NllLoss:
        fail(ErrorKind::InvalidArgument, "differentiate: a second loss (", n.label(), " at ", n.where,
             ") feeds the loss; only one loss per graph is supported");
      default:
        fail(ErrorKind::Runtime, "differentiate: no gradient rule for ", n.label());
    }
  }

  Graph& g_;
  std::vector<bool> needs_;
  std::map<int, std::vector<int>> grads_;        // per value: gradient contributions so far
  std::map<int, std::vector<int>> param_grads_;  // per parameter: its contributions
};

}  // namespace

std::vector<ParamGradient> differentiate(Graph& g) { return Differentiator(g).run(); }

}  // namespace pylenet::graph
