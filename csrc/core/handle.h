// The handle: what every op call runs on, as in cuDNN. A CPU handle owns the number of worker
// threads, one grow-only workspace shared by the ops called through it, and the cache of
// algorithms chosen by measuring (algo "auto"). A CUDA handle is bound to a cuda::CudaContext
// (device, stream, device workspace, its own algorithm cache), which it does not own: the op
// layer (csrc/ops/) reads device() and sends the call to the cpu:: or cuda:: kernels.
// A handle is not thread-safe: use one per thread that calls ops concurrently.
#pragma once

#include <cstddef>
#include <map>
#include <string>

#include "core/allocator.h"

namespace pylenet {

namespace cuda {
class CudaContext;
}

enum class Device { CPU = 0, CUDA = 1 };

class Handle {
 public:
  Handle();                                   // the CPU, all cores (or $PYLENET_NUM_THREADS)
  explicit Handle(cuda::CudaContext& ctx);    // ops on ctx's device, queued on its stream
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;

  Device device() const { return cuda_ ? Device::CUDA : Device::CPU; }
  bool on_cuda() const { return cuda_ != nullptr; }
  cuda::CudaContext& cuda() const;            // the context of a CUDA handle (throws on a CPU one)

  int threads() const { return threads_; }   // CPU worker threads (1 on a CUDA handle)
  void set_threads(int n);  // n >= 1

  // Scratch space of at least `bytes` (host or device memory, as the handle's device), valid
  // until the next call to workspace(). A network reserves its largest need up front, so the
  // training loop never allocates.
  float* workspace(size_t bytes);
  size_t workspace_bytes() const;
  void release_workspace();

  // Algorithm choices made by measuring, keyed by op, pass and shapes.
  std::map<std::string, int>& algo_cache();

 private:
  int threads_;
  AlignedBuffer workspace_;
  std::map<std::string, int> algo_cache_;
  cuda::CudaContext* cuda_ = nullptr;
};

// Fails with a Runtime error naming `op` when this build has no CUDA kernels (used by the op
// layer's device branches).
[[noreturn]] void no_cuda_build(const char* op);

}  // namespace pylenet
