// The per-device caching allocator (see allocator.h for the policy and why).
#include "cuda/allocator.h"

#include <mutex>
#include <unordered_map>
#include <vector>

#include "core/error.h"
#include "cuda/check.h"

namespace pylenet::cuda {
namespace {

constexpr size_t kSmallLimit = size_t(1) << 20;  // 1 MiB
constexpr size_t kSmallStep = 512;

struct Block {
  size_t size;       // size class: what cudaMalloc was asked for
  size_t requested;  // what the caller asked for (counted in bytes_in_use)
};

struct Pool {
  std::mutex mu;
  std::unordered_map<void*, Block> live;
  std::unordered_map<size_t, std::vector<void*>> cached;  // size class -> free blocks
  DeviceMemoryStats st;
};

// Created on first use, never destroyed (see allocator.h).
Pool& pool(int device) {
  static std::mutex mu;
  static std::vector<Pool*>* pools = new std::vector<Pool*>();
  std::lock_guard<std::mutex> lock(mu);
  if (static_cast<size_t>(device) >= pools->size()) pools->resize(static_cast<size_t>(device) + 1, nullptr);
  Pool*& p = (*pools)[static_cast<size_t>(device)];
  if (!p) p = new Pool();
  return *p;
}

// Frees every cached block of `p`; the caller holds p.mu and has made the device current.
void free_cached_locked(Pool& p) {
  cudaError_t first = cudaSuccess;
  for (auto& [size, blocks] : p.cached) {
    for (void* b : blocks) {
      const cudaError_t err = cudaFree(b);
      if (err != cudaSuccess && first == cudaSuccess) first = err;
      p.st.bytes_reserved -= static_cast<int64_t>(size);
      p.st.bytes_cached -= static_cast<int64_t>(size);
    }
  }
  p.cached.clear();
  PYL_CUDA_CHECK(first);
}

}  // namespace

int device_count() {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver || err == cudaErrorNotSupported) {
    (void)cudaGetLastError();
    return 0;
  }
  PYL_CUDA_CHECK(err);
  return n;
}

void check_device(int device) {
  const int n = device_count();
  if (n == 0)
    fail(ErrorKind::Runtime, "CUDA: no GPU is visible (no NVIDIA device, or no driver); this pylenet was built "
                             "with CUDA kernels but must run on the CPU here");
  PYL_CHECK_ARG(device >= 0 && device < n, "CUDA: bad device id ", device, ": this machine has ", n,
                " CUDA device", n == 1 ? "" : "s", " (ids 0 to ", n - 1, ")");
}

size_t round_size(size_t bytes) {
  size_t r;
  if (bytes <= kSmallLimit) {
    r = (bytes + kSmallStep - 1) / kSmallStep * kSmallStep;
  } else {
    size_t top = kSmallLimit;  // highest power of two <= bytes
    while (top <= bytes / 2) top *= 2;
    const size_t step = top / 4;
    r = (bytes + step - 1) / step * step;
  }
  if (r < bytes) fail(ErrorKind::OutOfMemory, "CUDA allocation of ", bytes, " bytes overflows");
  return r;
}

DeviceGuard::DeviceGuard(int device) {
  PYL_CUDA_CHECK(cudaGetDevice(&previous_));
  if (previous_ != device) PYL_CUDA_CHECK(cudaSetDevice(device));
  else previous_ = -1;  // nothing to restore
}

DeviceGuard::~DeviceGuard() {
  if (previous_ >= 0) (void)cudaSetDevice(previous_);
}

namespace device_memory {

namespace {
thread_local bool capturing = false;
}  // namespace

void set_capturing(bool on) { capturing = on; }

void* allocate(int device, size_t bytes) {
  if (bytes == 0) return nullptr;
  if (capturing)
    fail(ErrorKind::Runtime, "device memory (", bytes, " bytes) asked for while a CUDA graph was being captured; the "
         "step runs without a graph");
  check_device(device);
  const size_t size = round_size(bytes);
  Pool& p = pool(device);
  std::lock_guard<std::mutex> lock(p.mu);
  void* ptr = nullptr;
  auto it = p.cached.find(size);
  if (it != p.cached.end() && !it->second.empty()) {
    ptr = it->second.back();
    it->second.pop_back();
    p.st.bytes_cached -= static_cast<int64_t>(size);
  } else {
    DeviceGuard guard(device);
    cudaError_t err = cudaMalloc(&ptr, size);
    if (err == cudaErrorMemoryAllocation && p.st.bytes_cached > 0) {
      // The pool may hold blocks of other classes: give them back and try once more.
      (void)cudaGetLastError();
      free_cached_locked(p);
      err = cudaMalloc(&ptr, size);
    }
    if (err == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      (void)cudaMemGetInfo(&free_b, &total_b);
      (void)cudaGetLastError();
      fail(ErrorKind::OutOfMemory, "CUDA out of memory on device ", device, ": could not allocate ", bytes,
           " bytes (size class ", size, "); ", free_b, " of ", total_b, " bytes free on the device, ",
           p.st.bytes_in_use, " bytes in use by pylenet");
    }
    PYL_CUDA_CHECK_ALLOC(err, bytes);
    p.st.bytes_reserved += static_cast<int64_t>(size);
    p.st.num_device_mallocs += 1;
  }
  p.live.emplace(ptr, Block{size, bytes});
  p.st.bytes_in_use += static_cast<int64_t>(bytes);
  if (p.st.bytes_in_use > p.st.peak_bytes) p.st.peak_bytes = p.st.bytes_in_use;
  p.st.num_allocs += 1;
  return ptr;
}

void deallocate(int device, void* ptr) {
  if (!ptr) return;
  Pool& p = pool(device);
  std::lock_guard<std::mutex> lock(p.mu);
  auto it = p.live.find(ptr);
  PYL_CHECK_INTERNAL(it != p.live.end());  // not from this device's allocator
  const Block b = it->second;
  p.live.erase(it);
  p.cached[b.size].push_back(ptr);
  p.st.bytes_in_use -= static_cast<int64_t>(b.requested);
  p.st.bytes_cached += static_cast<int64_t>(b.size);
  p.st.num_frees += 1;
}

void empty_cache(int device) {
  check_device(device);
  Pool& p = pool(device);
  std::lock_guard<std::mutex> lock(p.mu);
  DeviceGuard guard(device);
  free_cached_locked(p);
}

DeviceMemoryStats stats(int device) {
  check_device(device);
  Pool& p = pool(device);
  std::lock_guard<std::mutex> lock(p.mu);
  return p.st;
}

void reset_peak(int device) {
  check_device(device);
  Pool& p = pool(device);
  std::lock_guard<std::mutex> lock(p.mu);
  p.st.peak_bytes = p.st.bytes_in_use;
}

}  // namespace device_memory

void DeviceBuffer::release() noexcept {
  if (ptr_) {
    try {
      device_memory::deallocate(device_, ptr_);
    } catch (...) {
      // Only an internal bookkeeping error can get here; a destructor must not throw.
    }
  }
  ptr_ = nullptr;
  bytes_ = 0;
}

}  // namespace pylenet::cuda
