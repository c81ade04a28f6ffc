// Element-wise ops on tensors of equal shape, and block copies.
//   add:         y = a + b                (a residual connection; also how autodiff sums the
//                                          gradients of a value used twice)
//   copy_blocks: dst[i * dst_ld + j] = src[i * src_ld + j], i < rows, j < cols: one block per
//                sample, e.g. the channels of one input of a concatenation (cat) or of one
//                slice of its gradient.
// In place (y == a or y == b) is fine for add.
#pragma once

#include <cstdint>

#include "core/handle.h"

namespace pylenet {

void add_run(Handle& h, int64_t count, const float* a, const float* b, float* y);
void copy_blocks(Handle& h, int64_t rows, int64_t cols, const float* src, int64_t src_ld, float* dst,
                 int64_t dst_ld);

namespace cpu {
void add(int64_t count, const float* a, const float* b, float* y, int threads);
void copy_blocks(int64_t rows, int64_t cols, const float* src, int64_t src_ld, float* dst, int64_t dst_ld,
                 int threads);
}  // namespace cpu

}  // namespace pylenet
