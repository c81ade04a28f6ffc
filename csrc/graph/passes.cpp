#include "graph/passes.h"

#include <utility>

namespace pylenet::graph {

int defer_relu_past_max_pool(Graph& g) {
  int rewrites = 0;
  auto& nodes = g.nodes();
  for (size_t i = 0; i < nodes.size(); ++i) {
    Node& relu = nodes[i];
    if (relu.backward || relu.op != Op::Activation || relu.attrs.act != Activation::ReLU) continue;
    const int v = relu.out[0];
    if (v == g.output()) continue;
    const std::vector<int> users = g.consumers(v);
    if (users.size() != 1) continue;
    Node& pool = nodes[users[0]];
    if (pool.op != Op::Pool2d || pool.attrs.pool != PoolMode::Max || pool.in[0] != v) continue;
    // relu: x -> v, pool: v -> y   becomes   pool: x -> v (pooled), relu: v -> y. Consumers of
    // y are unchanged; v had no other consumer. The pool moves to the ReLU's place (its new
    // input x is defined before it) and the ReLU to the pool's.
    const int x = relu.in[0], y = pool.out[0];
    pool.in[0] = x;
    pool.out[0] = v;
    relu.in[0] = v;
    relu.out[0] = y;
    g.values()[v].shape = g.values()[y].shape;
    std::swap(nodes[i], nodes[users[0]]);
    g.values()[v].producer = static_cast<int>(i);
    g.values()[y].producer = users[0];
    ++rewrites;
  }
  return rewrites;
}

}  // namespace pylenet::graph
