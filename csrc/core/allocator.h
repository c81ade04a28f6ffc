// Host memory: 64-byte aligned (a cache line, one AVX-512 register), counted.
// Every long-lived buffer in pylenet is an AlignedBuffer, so the statistics below
// say exactly what the runtime holds.
#pragma once

#include <cstddef>
#include <cstdint>

namespace pylenet {

struct MemoryStats {
  int64_t bytes_in_use = 0;
  int64_t peak_bytes = 0;
  int64_t num_allocs = 0;   // allocations made since start
  int64_t num_frees = 0;
};

namespace host {
constexpr size_t kAlignment = 64;
// Throws Error(OutOfMemory) naming the size asked for; never returns null for bytes > 0.
void* allocate(size_t bytes);
// The check allocate() makes first, for memory that others allocate (NumPy arrays the
// bindings return): throws Error(OutOfMemory) when a large request exceeds what the system can
// still give without swapping. Linux overcommits, so the request itself would "succeed".
void check_available(size_t bytes, const char* what);
void deallocate(void* p, size_t bytes);
MemoryStats stats();
}  // namespace host

// Move-only owner of an aligned host allocation.
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t bytes) : ptr_(host::allocate(bytes)), bytes_(bytes) {}
  ~AlignedBuffer() { release(); }
  AlignedBuffer(AlignedBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr; o.bytes_ = 0; }
  AlignedBuffer& operator=(AlignedBuffer&& o) noexcept {
    if (this != &o) { release(); ptr_ = o.ptr_; bytes_ = o.bytes_; o.ptr_ = nullptr; o.bytes_ = 0; }
    return *this;
  }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;

  // Grows (never shrinks) to at least `bytes`; old contents are not kept.
  void reserve(size_t bytes) {
    if (bytes > bytes_) { release(); ptr_ = host::allocate(bytes); bytes_ = bytes; }
  }
  void release() { if (ptr_) host::deallocate(ptr_, bytes_); ptr_ = nullptr; bytes_ = 0; }
  float* floats() const { return static_cast<float*>(ptr_); }
  void* data() const { return ptr_; }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace pylenet
