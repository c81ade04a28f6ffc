// The device side of a CUDA executor (runtime/cuda_state.cpp): its context and stream, the
// device copies of the parameters, buffers and optimizer state, the per-step totals kept on
// the device, and the host <-> device copies. Empty in a build without CUDA.
#pragma once

#ifdef PYLENET_HAVE_CUDA
#include "runtime/cuda_state_impl.h"
#else
namespace pylenet::runtime {
struct CudaState {};
}  // namespace pylenet::runtime
#endif
