#include "core/thread_pool.h"

#include <pthread.h>

#include <chrono>
#include <new>

#include "core/float_mode.h"

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <immintrin.h>
#define PYL_PAUSE() _mm_pause()
#else
#define PYL_PAUSE() ((void)0)
#endif

namespace pylenet {

namespace {
thread_local bool t_in_job = false;

// How long a waiting thread spins before it sleeps. Long enough to bridge the gaps between
// the phases of a training step (a few microseconds to tens of them), short enough that a
// worker whose core is shared with a busy process soon gives it the core back.
constexpr auto kSpin = std::chrono::microseconds(50);

// Spins until pred() or the spin budget is spent; returns pred().
template <class P>
bool spin_until(P&& pred) {
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 1;; ++i) {
    if (pred()) return true;
    PYL_PAUSE();
    if ((i & 63) == 0 && std::chrono::steady_clock::now() - t0 > kSpin) return pred();
  }
}
}  // namespace

namespace {
ThreadPool* g_pool = nullptr;
}

ThreadPool& ThreadPool::instance() {
  // Never destroyed: its threads are detached and simply end with the process (joining them
  // from a static destructor while Python shuts down could hang).
  static ThreadPool* pool = [] {
    g_pool = new ThreadPool();
    pthread_atfork(nullptr, nullptr, &ThreadPool::after_fork_child);
    return g_pool;
  }();
  return *pool;
}

// A forked child has none of the parent's threads, and a lock held by one of them at the
// fork stays locked: start from scratch there (the parent's thread objects are leaked).
void ThreadPool::after_fork_child() {
  ThreadPool& q = *g_pool;
  new (&q.mu_) std::mutex();
  new (&q.wake_cv_) std::condition_variable();
  new (&q.done_cv_) std::condition_variable();
  new (&q.threads_) std::vector<std::thread>();
  new (&q.free_jobs_) std::vector<Job*>();
  new (&q.all_jobs_) std::vector<Job*>();
  q.current_ = nullptr;
  q.sleepers_ = 0;
  q.busy_ = false;
  t_in_job = false;
}

ThreadPool::~ThreadPool() = default;

bool ThreadPool::in_job() { return t_in_job; }

int ThreadPool::started() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(threads_.size());
}

void ThreadPool::ensure_workers(int count) {
  std::lock_guard<std::mutex> lock(mu_);
  while (static_cast<int>(threads_.size()) < count) {
    threads_.emplace_back([this] { worker_loop(); });
    threads_.back().detach();
  }
}

ThreadPool::Job* ThreadPool::acquire_job() {
  if (!free_jobs_.empty()) {
    Job* j = free_jobs_.back();
    free_jobs_.pop_back();
    return j;
  }
  all_jobs_.push_back(new Job());
  return all_jobs_.back();
}

void ThreadPool::release(Job* job) {
  if (job->refs.fetch_sub(1) == 1) {
    std::lock_guard<std::mutex> lock(mu_);
    free_jobs_.push_back(job);
  }
}

void ThreadPool::work_on(Job& job, int worker) {
  for (;;) {
    const int64_t i = job.next.fetch_add(1);
    if (i >= job.n) return;
    try {
      job.fn(i, worker);
    } catch (...) {
      std::lock_guard<std::mutex> lock(job.error_mu);
      if (job.error_item < 0 || i < job.error_item) {
        job.error_item = i;
        job.error = std::current_exception();
      }
    }
    if (job.done.fetch_add(1) + 1 == job.n && job.caller_sleeping.load()) {
      ThreadPool& pool = instance();
      std::lock_guard<std::mutex> lock(pool.mu_);
      pool.done_cv_.notify_all();
    }
  }
}

void ThreadPool::worker_loop() {
  t_in_job = true;  // kernels called from a job never start jobs of their own
  uint64_t seen = generation_.load();
  for (;;) {
    if (!spin_until([&] { return generation_.load() != seen; })) {
      std::unique_lock<std::mutex> lock(mu_);
      ++sleepers_;
      wake_cv_.wait(lock, [&] { return stopping_ || generation_.load() != seen; });
      --sleepers_;
    }
    Job* job = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return;
      seen = generation_.load();
      job = current_;
      if (job) job->refs.fetch_add(1);
    }
    if (!job) continue;  // woke up after the job was over
    const int w = job->next_worker.fetch_add(1);
    if (w < job->max_workers) {
      FloatModeScope mode(job->float_mode);  // the caller's, so no result depends on the worker
      work_on(*job, w);
    }
    release(job);
  }
}

void ThreadPool::run(int threads, int64_t n, ItemFn fn) {
  if (n <= 0) return;
  const int workers = static_cast<int>(std::min<int64_t>(std::max(threads, 1), n));
  bool expected = false;
  if (workers <= 1 || t_in_job || !busy_.compare_exchange_strong(expected, true)) {
    for (int64_t i = 0; i < n; ++i) fn(i, 0);  // serial: same items, same results
    return;
  }
  try {
    ensure_workers(workers - 1);
  } catch (...) {  // no thread could be started: this call runs serially, later ones try again
    busy_ = false;
    for (int64_t i = 0; i < n; ++i) fn(i, 0);
    return;
  }
  Job* job;
  {
    std::lock_guard<std::mutex> lock(mu_);
    job = acquire_job();
    job->fn = fn;
    job->n = n;
    job->max_workers = workers;
    job->float_mode = float_mode();
    job->next = 0;
    job->done = 0;
    job->next_worker = 1;
    job->refs = 1;
    job->caller_sleeping = false;
    job->error_item = -1;
    job->error = nullptr;
    current_ = job;
    generation_.fetch_add(1);
  }
  if (sleepers_.load() > 0) wake_cv_.notify_all();
  t_in_job = true;
  work_on(*job, 0);
  if (!spin_until([&] { return job->done.load() == n; })) {
    job->caller_sleeping = true;
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [&] { return job->done.load() == n; });
  }
  t_in_job = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    current_ = nullptr;
  }
  std::exception_ptr error = job->error;
  job->error = nullptr;
  busy_ = false;
  release(job);
  if (error) std::rethrow_exception(error);
}

}  // namespace pylenet
