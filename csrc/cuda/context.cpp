#include "cuda/context.h"

#include <utility>

#include "cuda/check.h"

namespace pylenet::cuda {

CudaContext::CudaContext(int device) : device_(device) {
  check_device(device);
  DeviceGuard guard(device);
  PYL_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamDefault));
  try {
    scratch_ = DeviceBuffer(device, kScratchBytes);
    workspace_ = DeviceBuffer(device, 0);
  } catch (...) {
    destroy();
    throw;
  }
}

CudaContext::~CudaContext() { destroy(); }

CudaContext::CudaContext(CudaContext&& o) noexcept
    : device_(o.device_), stream_(o.stream_), workspace_(std::move(o.workspace_)),
      scratch_(std::move(o.scratch_)), algo_cache_(std::move(o.algo_cache_)) {
  o.stream_ = nullptr;
}

CudaContext& CudaContext::operator=(CudaContext&& o) noexcept {
  if (this != &o) {
    destroy();
    device_ = o.device_;
    stream_ = o.stream_;
    workspace_ = std::move(o.workspace_);
    scratch_ = std::move(o.scratch_);
    algo_cache_ = std::move(o.algo_cache_);
    o.stream_ = nullptr;
  }
  return *this;
}

void CudaContext::destroy() noexcept {
  if (stream_) {
    // Queued kernels may still use the workspace: wait for them before it goes back to the
    // pool, where a user on another stream could pick it up. Errors are ignored: a
    // destructor must not throw, and a faulted context has nothing left to protect.
    (void)cudaStreamSynchronize(stream_);
    (void)cudaStreamDestroy(stream_);
    (void)cudaGetLastError();
    stream_ = nullptr;
  }
  workspace_.release();
  scratch_.release();
}

void CudaContext::synchronize() const { PYL_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

}  // namespace pylenet::cuda
