// Graph passes: rewrites that keep a graph's values and gradients, applied by the executor to
// any graph where they are valid (they replace the special cases of a layer-by-layer runtime).
#pragma once

#include "graph/graph.h"

namespace pylenet::graph {

// relu(x) -> max_pool2d becomes max_pool2d(x) -> relu where the ReLU's output feeds nothing
// else: both are monotonic, so the values are the same (NaN propagates through either), and
// so are the gradients (only a positive pooled value passes one, from the same first maximum
// of its window). After the pool the ReLU touches a quarter of the values (LeNet-5: 3.6 us
// less per sample). Run on the forward graph, before differentiate(). Returns the number of
// rewrites.
int defer_relu_past_max_pool(Graph& g);

}  // namespace pylenet::graph
