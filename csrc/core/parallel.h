// Threading in one place. Kernels split work with parallel_for over independent items
// (images, channels, output tiles) on the thread pool (core/thread_pool.h); no two items ever
// add into the same output, and every reduction runs in a fixed order, so results are
// bit-identical for any thread count.
#pragma once

#include <sched.h>

#include <algorithm>
#include <cstdint>
#include <thread>

#include "core/thread_pool.h"

namespace pylenet {

// The cores this process may run on (its CPU affinity mask, as a container or taskset sets it).
inline int hardware_threads() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

inline bool in_parallel_region() { return ThreadPool::in_job(); }

// How many workers parallel_for(threads, n, ...) will use: sizes per-worker scratch.
inline int workers_for(int threads, int64_t n) {
  if (in_parallel_region()) return 1;
  return static_cast<int>(std::min<int64_t>(std::max(threads, 1), std::max<int64_t>(n, 1)));
}

// fn(i, worker) for i in [0, n) on up to `threads` workers; worker < workers_for(threads, n)
// selects per-worker scratch space. Items are claimed dynamically: a result must never depend
// on which worker ran an item.
template <class F>
void parallel_for(int threads, int64_t n, F&& fn) {
  if (workers_for(threads, n) <= 1) {
    for (int64_t i = 0; i < n; ++i) fn(i, 0);
    return;
  }
  ThreadPool::instance().run(threads, n, ItemFn(fn));
}

}  // namespace pylenet
