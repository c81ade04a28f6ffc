#include "ops/elementwise.h"

#include "ops/dispatch.h"

namespace pylenet {

void add_run(Handle& h, int64_t count, const float* a, const float* b, float* y) {
  PYL_IF_CUDA(h, cuda::add(count, a, b, y, stream_of(h)));
  cpu::add(count, a, b, y, h.threads());
}

void copy_blocks(Handle& h, int64_t rows, int64_t cols, const float* src, int64_t src_ld, float* dst,
                 int64_t dst_ld) {
  PYL_IF_CUDA(h, cuda::copy_blocks(rows, cols, src, src_ld, dst, dst_ld, stream_of(h)));
  cpu::copy_blocks(rows, cols, src, src_ld, dst, dst_ld, h.threads());
}

}  // namespace pylenet
