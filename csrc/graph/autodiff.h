// Reverse-mode automatic differentiation over the graph. differentiate() appends to the graph
// the backward nodes of its loss, built from each op's gradient rule (autodiff.cpp, one case
// per op), walking the forward nodes in reverse:
//   - only gradients something needs are made: a value gets one only if it depends on a
//     trainable parameter, so the input's gradient (and the first conv's data gradient) is
//     never computed;
//   - where a value is used more than once, its gradient contributions are added with Add
//     nodes in a fixed order (the reverse order of the uses), so results are deterministic;
//   - a parameter's contributions are returned separately, one per use, in that order: the
//     executor sums them as it reduces the gradient (each use may be computed per chunk).
#pragma once

#include <vector>

#include "graph/graph.h"

namespace pylenet::graph {

struct ParamGradient {
  int param = -1;                  // the parameter value
  std::vector<int> contributions;  // gradient values (Fixed, the parameter's shape), summed in this order
};

// Requires g.loss(). Returns the trainable parameters the loss depends on, in value order.
std::vector<ParamGradient> differentiate(Graph& g);

}  // namespace pylenet::graph
