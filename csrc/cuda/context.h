// The CUDA side of a handle: what every CUDA kernel call runs on. It owns a device id, one
// stream created on that device, a grow-only workspace and a small scratch area for
// results the host reads back (loss, "gradient is finite" flags), and it caches the
// algorithms chosen by measuring, like core/handle.h does for the CPU.
//
// Why one stream per context, created rather than the default stream: every kernel of a
// training step is queued on it in order, so nothing in the step needs an explicit
// synchronisation, the caching allocator may hand a freed block out again at once (see
// allocator.h), and the step can later be captured into a CUDA graph (capture does not work
// on the legacy default stream). The stream is created *blocking* (cudaStreamDefault, not
// cudaStreamNonBlocking): work that CuPy or PyTorch queue on the legacy default stream is
// then ordered with ours without extra events when arrays are exchanged.
//
// A context is move-only and not thread-safe: use one per host thread that issues work.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <map>
#include <string>

#include "cuda/allocator.h"

namespace pylenet::cuda {

class CudaContext {
 public:
  // Checks the id (InvalidArgument for a bad one, Runtime when there is no GPU) and creates
  // the stream on that device.
  explicit CudaContext(int device = 0);
  ~CudaContext();
  CudaContext(CudaContext&& o) noexcept;
  CudaContext& operator=(CudaContext&& o) noexcept;
  CudaContext(const CudaContext&) = delete;
  CudaContext& operator=(const CudaContext&) = delete;

  int device() const { return device_; }
  cudaStream_t stream() const { return stream_; }

  // Device scratch of at least `bytes`, valid until the next call to workspace(). Growing
  // returns the old block to the pool; kernels already queued on stream() that still read
  // it are safe, because any later user of that block is queued behind them.
  float* workspace(size_t bytes) {
    workspace_.reserve(bytes);
    return workspace_.floats();
  }
  size_t workspace_bytes() const { return workspace_.bytes(); }
  void release_workspace() { workspace_.release(); }

  // kScratchBytes of device memory, separate from the workspace, for small results written
  // by kernels and read back by the host (cuda::LossResult, finite flags).
  static constexpr size_t kScratchBytes = 256;
  void* scratch() const { return scratch_.data(); }

  // Waits for everything queued on stream(); throws if a kernel faulted.
  void synchronize() const;

  std::map<std::string, int>& algo_cache() { return algo_cache_; }

 private:
  void destroy() noexcept;

  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  DeviceBuffer workspace_;
  DeviceBuffer scratch_;
  std::map<std::string, int> algo_cache_;
};

}  // namespace pylenet::cuda
