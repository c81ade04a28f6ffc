#include "core/allocator.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "core/error.h"

namespace pylenet::host {
namespace {
std::atomic<int64_t> g_in_use{0}, g_peak{0}, g_allocs{0}, g_frees{0};
}

// Bytes the kernel says can still be given out without swapping (MemAvailable), or -1 if
// unknown. Linux overcommits: a huge malloc "succeeds" and the process is killed later when
// the pages are touched, so large requests are checked against this first.
int64_t available_bytes() {
  std::FILE* f = std::fopen("/proc/meminfo", "r");
  if (!f) return -1;
  char line[256];
  int64_t kib = -1;
  while (std::fgets(line, sizeof line, f))
    if (std::strncmp(line, "MemAvailable:", 13) == 0) {
      kib = std::strtoll(line + 13, nullptr, 10);
      break;
    }
  std::fclose(f);
  return kib < 0 ? -1 : kib * 1024;
}

void check_available(size_t bytes, const char* what) {
  if (bytes < (size_t(64) << 20)) return;  // only large requests pay for the check
  const int64_t avail = available_bytes();
  if (avail >= 0 && bytes > static_cast<size_t>(avail))
    fail(ErrorKind::OutOfMemory, "out of host memory: ", what, " of ", bytes, " bytes asked for, ", avail,
         " bytes available (", g_in_use.load(), " bytes already held by pylenet)");
}

void* allocate(size_t bytes) {
  if (bytes == 0) return nullptr;
  check_available(bytes, "an allocation");
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

}  // namespace pylenet::host
