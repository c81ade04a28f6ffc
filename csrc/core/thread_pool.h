// The worker threads every parallel loop in pylenet runs on.
//
// run(threads, n, fn) calls fn(item, worker) for every item in [0, n). Items are CLAIMED as
// workers come free (an atomic counter), not dealt out in advance, and the call returns when
// every item is done, not when every worker has checked in: a worker that the OS has
// descheduled (a busy neighbour on its core) holds up at most the one item it took, and a
// worker that wakes up late finds no items left and goes back to sleep. Waits spin for a
// bounded time (long enough to bridge the short gaps between the phases of a training step)
// and then sleep, so an idle pool costs no CPU.
//
// `worker` is in [0, min(threads, n)) and selects per-worker scratch space; the caller is
// worker 0. Which worker runs an item must never change its result: that is what keeps
// pylenet's results identical for any thread count and any timing.
//
// One job runs at a time. A call made while another thread's job is running, or from inside
// a job, runs its items serially on the calling thread (same results, no deadlock), so ops
// may be called from any number of threads.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace pylenet {

// A non-owning reference to a callable void(int64_t item, int worker).
class ItemFn {
 public:
  ItemFn() = default;
  template <class F, class = std::enable_if_t<!std::is_same_v<std::decay_t<F>, ItemFn>>>
  ItemFn(F& f) : obj_(const_cast<void*>(static_cast<const void*>(&f))), call_([](void* o, int64_t i, int w) { (*static_cast<F*>(o))(i, w); }) {}
  void operator()(int64_t i, int w) const { call_(obj_, i, w); }

 private:
  void* obj_ = nullptr;
  void (*call_)(void*, int64_t, int) = nullptr;
};

class ThreadPool {
 public:
  static ThreadPool& instance();
  ~ThreadPool();

  // Runs fn(item, worker) for item in [0, n) on up to `threads` workers; rethrows the
  // exception of the lowest-numbered item that threw, after every item has finished.
  void run(int threads, int64_t n, ItemFn fn);

  // True on a pool worker, or on a thread inside its own run(): parallel loops there run serially.
  static bool in_job();
  // Threads the pool has started so far (it starts them on demand).
  int started() const;

 private:
  struct Job {
    ItemFn fn;
    int64_t n = 0;
    int max_workers = 1;
    uint32_t float_mode = 0;  // the caller's (core/float_mode.h): every item runs in it
    std::atomic<int64_t> next{0}, done{0};
    std::atomic<int> next_worker{1};
    std::atomic<int> refs{0};
    std::atomic<bool> caller_sleeping{false};
    std::mutex error_mu;
    int64_t error_item = -1;
    std::exception_ptr error;
  };
  ThreadPool() = default;
  static void after_fork_child();
  void ensure_workers(int count);
  void worker_loop();
  static void work_on(Job& job, int worker);
  Job* acquire_job();        // a free job object (under mu_)
  void release(Job* job);    // drops one reference

  mutable std::mutex mu_;
  std::condition_variable wake_cv_, done_cv_;
  std::vector<std::thread> threads_;
  std::vector<Job*> free_jobs_;
  std::vector<Job*> all_jobs_;
  Job* current_ = nullptr;                 // the job being offered (under mu_)
  std::atomic<uint64_t> generation_{0};    // bumped once per job
  std::atomic<int> sleepers_{0};
  std::atomic<bool> busy_{false};
  bool stopping_ = false;
};

}  // namespace pylenet
