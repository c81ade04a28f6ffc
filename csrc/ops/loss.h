// Softmax cross-entropy over a batch, fused with its gradient.
//   loss = mean_i ( logsumexp(z_i) - z_i[label_i] )
//   dz_i = (softmax(z_i) - onehot(label_i)) / N
// Stable for logits in the thousands: every row is shifted by its maximum first.
// Non-finite logits and labels outside [0, C) are rejected before anything is written.
#pragma once

#include <cstdint>

#include "core/handle.h"
#include "ops/tensor.h"

namespace pylenet {

// Returns the mean loss; writes dlogits (N, C) when it is not null (OVERWRITES).
double softmax_cross_entropy(Handle& h, const TensorDesc& logits_d, const float* logits, const TensorDesc& labels_d,
                             const int64_t* labels, float* dlogits);

namespace cpu {
// dlogits = (softmax - onehot) * grad_scale; grad_scale = 1/N for the mean over N rows (a
// caller working on a slice of a batch passes 1/N of the whole batch).
double softmax_cross_entropy(int64_t n, int64_t c, const float* logits, const int64_t* labels, float* dlogits,
                             float grad_scale);
}

}  // namespace pylenet
