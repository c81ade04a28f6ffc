// How an op-layer function (csrc/ops/*.cpp) sends a call to its backend: the handle's device
// picks the cuda:: kernels (csrc/cuda/kernels.h) or the cpu:: ones. Included by the op layer
// only. In a build without CUDA the cuda:: side does not exist and a CUDA handle cannot be
// made, so PYL_IF_CUDA reduces to a check.
#pragma once

#include "core/handle.h"

#ifdef PYLENET_HAVE_CUDA
#include "cuda/context.h"
#include "cuda/kernels.h"
namespace pylenet {
inline cudaStream_t stream_of(const Handle& h) { return h.cuda().stream(); }
}  // namespace pylenet
// Runs the statement (a cuda:: call) and returns when the handle is a CUDA one.
#define PYL_IF_CUDA(h, ...)   \
  do {                        \
    if ((h).on_cuda()) {      \
      __VA_ARGS__;            \
      return;                 \
    }                         \
  } while (0)
#else
#define PYL_IF_CUDA(h, ...)                                  \
  do {                                                       \
    if ((h).on_cuda()) ::pylenet::no_cuda_build(__func__);   \
  } while (0)
#endif
