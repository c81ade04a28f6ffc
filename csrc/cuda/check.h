// Error checks for CUDA runtime calls and kernel launches. They throw pylenet::Error, never
// exit: a failed call inside a Python session must become a Python exception, not kill the
// interpreter (the fault of cudnn-training's and Caffe's CHECK macros).
//
//   PYL_CUDA_CHECK(cudaMemcpyAsync(...));            // Runtime, or OutOfMemory
//   PYL_CUDA_CHECK_ALLOC(cudaMalloc(&p, n), n);      // OutOfMemory names n and the free bytes
//   kernel<<<grid, block, 0, stream>>>(...);
//   PYL_CUDA_LAUNCH_CHECK();                         // bad configuration, missing SASS/PTX, ...
//
// A launch check only sees launch errors; a fault inside a kernel surfaces at the next
// synchronising call, as it does in every CUDA program. Before throwing, the checks clear
// CUDA's last-error slot, so one failure is not reported again by the next unrelated check.
#pragma once

#include <cuda_runtime_api.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "core/error.h"

namespace pylenet::cuda {

// Kernel launches made through PYL_CUDA_LAUNCH_CHECK (every launch of csrc/cuda is followed by
// one), for the runtime's launches-per-step report. Launches replayed by a CUDA graph are not
// counted: the graph's launch is one host call.
inline std::atomic<uint64_t>& launch_counter() {
  static std::atomic<uint64_t> count{0};
  return count;
}

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* call, const char* file, int line,
                                          size_t bytes_asked = 0) {
  (void)cudaGetLastError();  // reset the (non-sticky) error state
  if (err == cudaErrorMemoryAllocation) {
    size_t free_b = 0, total_b = 0;
    const bool known = cudaMemGetInfo(&free_b, &total_b) == cudaSuccess;
    (void)cudaGetLastError();
    std::string asked = bytes_asked ? str_cat(bytes_asked, " bytes asked for; ") : std::string();
    fail(ErrorKind::OutOfMemory, "CUDA out of memory: ", asked,
         known ? str_cat(free_b, " of ", total_b, " bytes free on the device") : std::string("free bytes unknown"),
         " (", call, " at ", file, ":", line, ")");
  }
  fail(ErrorKind::Runtime, "CUDA error ", static_cast<int>(err), " (", cudaGetErrorName(err),
       "): ", cudaGetErrorString(err), " in ", call, " at ", file, ":", line);
}

}  // namespace pylenet::cuda

#define PYL_CUDA_CHECK(call)                                                           \
  do {                                                                                 \
    const cudaError_t pyl_err_ = (call);                                               \
    if (pyl_err_ != cudaSuccess)                                                       \
      ::pylenet::cuda::throw_cuda_error(pyl_err_, #call, __FILE__, __LINE__);          \
  } while (0)

#define PYL_CUDA_CHECK_ALLOC(call, bytes)                                                        \
  do {                                                                                           \
    const cudaError_t pyl_err_ = (call);                                                         \
    if (pyl_err_ != cudaSuccess)                                                                 \
      ::pylenet::cuda::throw_cuda_error(pyl_err_, #call, __FILE__, __LINE__, (bytes));           \
  } while (0)

#define PYL_CUDA_LAUNCH_CHECK()                                                        \
  do {                                                                                 \
    ::pylenet::cuda::launch_counter().fetch_add(1, std::memory_order_relaxed);         \
    const cudaError_t pyl_err_ = cudaGetLastError();                                   \
    if (pyl_err_ != cudaSuccess)                                                       \
      ::pylenet::cuda::throw_cuda_error(pyl_err_, "kernel launch", __FILE__, __LINE__); \
  } while (0)
