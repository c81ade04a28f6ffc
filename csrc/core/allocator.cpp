#include "core/allocator.h"

#include <atomic>
#include <cstdlib>

#include "core/error.h"

namespace pylenet::host {
namespace {
std::atomic<int64_t> g_in_use{0}, g_peak{0}, g_allocs{0}, g_frees{0};
}

void* allocate(size_t bytes) {
  if (bytes == 0) return nullptr;
  // aligned_alloc wants a size that is a multiple of the alignment.
  const size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
  if (rounded < bytes) fail(ErrorKind::OutOfMemory, "host allocation of ", bytes, " bytes overflows");
  void* p = std::aligned_alloc(kAlignment, rounded);
  if (!p) fail(ErrorKind::OutOfMemory, "out of host memory: could not allocate ", bytes, " bytes (",
               g_in_use.load(), " bytes already held by pylenet)");
  const int64_t now = g_in_use.fetch_add(static_cast<int64_t>(bytes)) + static_cast<int64_t>(bytes);
  int64_t peak = g_peak.load();
  while (now > peak && !g_peak.compare_exchange_weak(peak, now)) {}
  g_allocs.fetch_add(1);
  return p;
}

void deallocate(void* p, size_t bytes) {
  if (!p) return;
  std::free(p);
  g_in_use.fetch_sub(static_cast<int64_t>(bytes));
  g_frees.fetch_add(1);
}

MemoryStats stats() {
  return MemoryStats{g_in_use.load(), g_peak.load(), g_allocs.load(), g_frees.load()};
}

void reset_peak() { g_peak.store(g_in_use.load()); }

}  // namespace pylenet::host
