// Threading in one place. Kernels split work with parallel_for over independent items
// (images, channels, output tiles); no two threads ever add into the same output, and
// every reduction runs in a fixed order, so results are bit-identical for any thread
// count. OpenMP is used when the compiler has it; otherwise everything runs serially.
#pragma once

#include <algorithm>
#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace pylenet {

inline int hardware_threads() {
#ifdef _OPENMP
  return omp_get_num_procs();
#else
  return 1;
#endif
}

inline bool in_parallel_region() {
#ifdef _OPENMP
  return omp_in_parallel() != 0;
#else
  return false;
#endif
}

// fn(i, tid) for i in [0, n), items spread statically over up to `threads` workers.
// tid is in [0, threads) and selects per-thread scratch space.
template <class F>
void parallel_for(int threads, int64_t n, F&& fn) {
  const int t = static_cast<int>(std::min<int64_t>(std::max(threads, 1), std::max<int64_t>(n, 1)));
#ifdef _OPENMP
  if (t > 1 && !in_parallel_region()) {
#pragma omp parallel num_threads(t)
    {
      const int tid = omp_get_thread_num();
      const int nt = omp_get_num_threads();
      // Contiguous blocks: item i always goes to the same worker for a given t.
      const int64_t per = (n + nt - 1) / nt;
      const int64_t lo = std::min<int64_t>(n, per * tid), hi = std::min<int64_t>(n, lo + per);
      for (int64_t i = lo; i < hi; ++i) fn(i, tid);
    }
    return;
  }
#endif
  for (int64_t i = 0; i < n; ++i) fn(i, 0);
}

// fn(tid, nthreads) once on each of up to `threads` workers: one fork-join for a whole
// phase of work that the caller splits itself (the network's training step).
template <class F>
void parallel_region(int threads, F&& fn) {
#ifdef _OPENMP
  if (threads > 1 && !in_parallel_region()) {
#pragma omp parallel num_threads(threads)
    fn(omp_get_thread_num(), omp_get_num_threads());
    return;
  }
#endif
  fn(0, 1);
}

// How many workers parallel_for(threads, n, ...) will use: sizes per-thread scratch.
inline int workers_for(int threads, int64_t n) {
  if (in_parallel_region()) return 1;
  return static_cast<int>(std::min<int64_t>(std::max(threads, 1), std::max<int64_t>(n, 1)));
}

}  // namespace pylenet
