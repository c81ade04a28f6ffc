// Losses over a batch of n rows of c class scores, and the classification counts.
//   cross_entropy(z, label) = logsumexp(z) - z[label]
//       d/dz = (softmax(z) - onehot(label)) * grad_scale
//   nll_loss(logp, label)   = -logp[label]
//       d/dlogp = -onehot(label) * grad_scale
// The forward functions write the SUM over the n rows given to *loss_sum (host memory on the
// CPU, device memory on CUDA), so that a batch split into chunks adds its chunks' sums in
// chunk order; grad_scale is 1 / (rows in the whole batch) for the batch mean. Labels must lie
// in [0, c) (the caller checks them once, e.g. per epoch). Softmax cross-entropy is stable for
// logits in the thousands (each row is shifted by its maximum), and the gradient of the true
// class is computed as -(sum of the other classes' probabilities), not as p - 1, so it keeps
// its precision when p rounds to 1.
#pragma once

#include <cstdint>

#include "core/handle.h"
#include "ops/tensor.h"

namespace pylenet {

// The check the callers make: every label (host memory) in [0, c), else InvalidArgument
// naming `op`, the label and its index.
void check_labels(const char* op, const int64_t* labels, int64_t n, int64_t c);

void cross_entropy_forward(Handle& h, int64_t n, int64_t c, const float* logits, const int64_t* labels,
                           double* loss_sum);
void cross_entropy_backward(Handle& h, int64_t n, int64_t c, const float* logits, const int64_t* labels,
                            float grad_scale, float* dlogits);
void nll_loss_forward(Handle& h, int64_t n, int64_t c, const float* logp, const int64_t* labels, double* loss_sum);
void nll_loss_backward(Handle& h, int64_t n, int64_t c, const int64_t* labels, float grad_scale, float* dlogp);

// *correct = rows whose first maximum is at the label; *nonfinite = 1 if any score is NaN or
// inf, else 0 (both in the handle's memory).
void classify(Handle& h, int64_t n, int64_t c, const float* scores, const int64_t* labels, int64_t* correct,
              int* nonfinite);

// A training step's loss head at once: the loss sum (cross-entropy of logits z, or nll of
// log-probabilities z), its gradient dz, and classify's counts over z (correct only when
// count, else 0). The same values as the three calls above; on CUDA one launch (the executor
// fuses them there, Executor::fuse_loss_head).
void loss_head(Handle& h, bool nll, int64_t n, int64_t c, const float* z, const int64_t* labels, bool count,
               float grad_scale, double* loss_sum, float* dz, int64_t* correct, int* nonfinite);

// The fused form of the functional API: checks shapes, labels and values, returns the mean
// loss and writes dlogits (N, C) = (softmax - onehot) / N when dlogits is not null.
double softmax_cross_entropy(Handle& h, const TensorDesc& logits_d, const float* logits, const TensorDesc& labels_d,
                             const int64_t* labels, float* dlogits);

namespace cpu {
double cross_entropy_forward(int64_t n, int64_t c, const float* logits, const int64_t* labels);
void cross_entropy_backward(int64_t n, int64_t c, const float* logits, const int64_t* labels, float grad_scale,
                            float* dlogits);
double nll_loss_forward(int64_t n, int64_t c, const float* logp, const int64_t* labels);
void nll_loss_backward(int64_t n, int64_t c, const int64_t* labels, float grad_scale, float* dlogp);
int64_t count_correct(int64_t n, int64_t c, const float* scores, const int64_t* labels);
}  // namespace cpu

}  // namespace pylenet
