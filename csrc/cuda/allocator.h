// Device memory: one caching allocator per GPU, the device twin of core/allocator.h.
//
// Why a cache: cudaMalloc and cudaFree synchronise the whole device and cost tens of
// microseconds to milliseconds, so a training loop must never call them. Freed blocks go
// back to a per-device pool, keyed by size class, and the next request of that class
// reuses one without touching the driver. empty_cache() hands the pool back.
//
// Size classes (what a request is rounded up to):
//   <= 1 MiB : a multiple of 512 B (the alignment cudaMalloc gives anyway is 256 B);
//   >  1 MiB : four classes per power of two (1, 1.25, 1.5, 1.75 x 2^k), so at most 25%
//              is wasted; plain powers of two would waste up to 50% on a device-resident
//              dataset (MNIST's 188 MB training images would take 256 MiB).
// A block is reused only for a request of exactly its class, so the pool never splits or
// merges blocks: simple, and a network that allocates the same plan every step hits the
// cache every time.
//
// Streams: blocks are handed out again without any event bookkeeping, which is correct
// because pylenet runs all work of a device on that device's one CudaContext stream
// (stream order makes "free, then reuse" safe). Memory used on another stream must be
// synchronised before it is freed. Managed (unified) memory is never used.
//
// The allocators are created on first use and deliberately never destroyed: at process
// exit the CUDA runtime may already be torn down, and cudaFree from a static destructor
// would then fail; the driver reclaims everything anyway.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "core/allocator.h"

namespace pylenet::cuda {

// MemoryStats (bytes_in_use = bytes asked for by live allocations, peak_bytes,
// num_allocs / num_frees = calls) plus what the cache holds.
struct DeviceMemoryStats : MemoryStats {
  int64_t bytes_reserved = 0;   // held from cudaMalloc: live blocks (rounded) + the pool
  int64_t bytes_cached = 0;     // of which free in the pool, ready for reuse
  int64_t num_device_mallocs = 0;  // real cudaMalloc calls since start (cache misses)
};

// Number of CUDA devices; 0 (not an error) when there is no GPU or no driver.
int device_count();
// Throws InvalidArgument for an id outside [0, device_count()), Runtime when there is no GPU.
void check_device(int device);

// Rounds `bytes` up to its size class (see above).
size_t round_size(size_t bytes);

namespace device_memory {
// All of these take the device id explicitly and restore the caller's current device.
// allocate: throws Error(OutOfMemory) naming the bytes asked for and the free bytes, after
// emptying the cache and retrying once; never returns null for bytes > 0.
void* allocate(int device, size_t bytes);
void deallocate(int device, void* p);
void empty_cache(int device);
// Set by StreamGraph while this thread captures a CUDA graph: allocate() then throws (failing
// the capture), because a block taken during capture would be baked into the graph while the
// pool could hand it to someone else later.
void set_capturing(bool on);
DeviceMemoryStats stats(int device);
void reset_peak(int device);
}  // namespace device_memory

// Move-only owner of a device allocation from the caching allocator.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(int device, size_t bytes) : device_(device) { reserve(bytes); }
  ~DeviceBuffer() { release(); }
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_), device_(o.device_) {
    o.ptr_ = nullptr;
    o.bytes_ = 0;
  }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      ptr_ = o.ptr_; bytes_ = o.bytes_; device_ = o.device_;
      o.ptr_ = nullptr; o.bytes_ = 0;
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  // Grows (never shrinks) to at least `bytes`; old contents are not kept.
  void reserve(size_t bytes) {
    if (bytes > bytes_) {
      release();
      ptr_ = device_memory::allocate(device_, bytes);
      bytes_ = bytes;
    }
  }
  void release() noexcept;
  float* floats() const { return static_cast<float*>(ptr_); }
  void* data() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  int device() const { return device_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  int device_ = 0;
};

// Makes `device` current for a scope and restores the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

}  // namespace pylenet::cuda
