// The executor's buffers: zeroed host memory (AlignedBuffer) or, for a CUDA executor, device
// memory from the caching allocator. Move-only; the memory plan allocates each once.
#pragma once

#include <cstddef>
#include <cstring>

#include "core/allocator.h"
#include "core/handle.h"
#ifdef PYLENET_HAVE_CUDA
#include "cuda/allocator.h"
#endif

namespace pylenet::runtime {

class Memory {
 public:
  Memory() = default;
  // `bytes` of zeroed memory on `dev` (device id `cuda_device` for CUDA).
  Memory(Device dev, int cuda_device, size_t bytes);
  float* floats() const { return static_cast<float*>(data()); }
  void* data() const;
  size_t bytes() const { return bytes_; }

 private:
  size_t bytes_ = 0;
  AlignedBuffer host_;
#ifdef PYLENET_HAVE_CUDA
  cuda::DeviceBuffer device_;
#endif
};

}  // namespace pylenet::runtime
