// The handle: what every op call runs on, as in cuDNN. It owns the device (the CPU here),
// the number of worker threads, one grow-only workspace shared by the ops called through
// it, and the cache of algorithms chosen by measuring (algo "auto").
// A handle is not thread-safe: use one per thread that calls ops concurrently.
#pragma once

#include <cstddef>
#include <map>
#include <string>

#include "core/allocator.h"

namespace pylenet {

enum class Device { CPU = 0, CUDA = 1 };

class Handle {
 public:
  Handle();
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;

  Device device() const { return Device::CPU; }
  int threads() const { return threads_; }
  void set_threads(int n);  // n >= 1

  // Scratch space of at least `bytes`, valid until the next call to workspace().
  // A network reserves its largest need up front, so the training loop never allocates.
  float* workspace(size_t bytes) {
    workspace_.reserve(bytes);
    return workspace_.floats();
  }
  size_t workspace_bytes() const { return workspace_.bytes(); }
  void release_workspace() { workspace_.release(); }

  // Algorithm choices made by measuring, keyed by op, pass and shapes.
  std::map<std::string, int>& algo_cache() { return algo_cache_; }

 private:
  int threads_;
  AlignedBuffer workspace_;
  std::map<std::string, int> algo_cache_;
};

}  // namespace pylenet
