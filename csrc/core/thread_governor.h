// How many workers a repeated step should use.
//
// On an idle machine a training step is fastest on all cores. Beside a busy process it may
// not be: a worker that shares its core with that process is descheduled for milliseconds
// at a time (longer than a whole LeNet step), and the step waits for the item it holds.
// Claiming items dynamically (core/thread_pool.h) bounds the damage to one item per phase,
// but with two chunks per phase that is still half the step.
//
// So the executor times its steps and asks a governor for the count of the next one. The
// governor moves the count one worker at a time, to whichever count measures faster:
//   - after a few warm-up steps it tries one worker fewer (a neighbour there from the start);
//   - when two windows of steps in a row are markedly slower than the best it has seen at
//     the current count (a neighbour arrived), it tries one fewer again, less often each
//     time that does not pay (on a noisy machine, a slow spell is mostly just that);
//   - while below the maximum it tries one more now and then (the neighbour may have left),
//     less often each time that does not pay.
// A trial is a few steps; a count is adopted only when it is clearly faster. On an idle
// machine this costs the one early trial. Results never depend on the count (core/parallel.h),
// so changing it between steps changes no number.
#pragma once

#include <cstdint>
#include <vector>

namespace pylenet {

class ThreadGovernor {
 public:
  explicit ThreadGovernor(int max_threads = 1);

  // Process-wide switch (pylenet.set_num_threads(n, adaptive=False) turns it off): off, every
  // step uses all its workers and nothing is measured.
  static void set_enabled(bool on);
  static bool enabled();

  int max_threads() const { return max_; }
  // The count for the next step.
  int threads() const { return trial_ > 0 ? trial_ : cur_; }
  // A step just run with threads() workers took `seconds`; `items` is its parallel width
  // (chunks): steps of another width are not compared with these (the last short batch of
  // an epoch), until that width persists.
  void record(double seconds, int64_t items);

  int64_t trials() const { return trials_; }
  // Steps recorded at each count (index: workers - 1).
  const std::vector<int64_t>& steps_at() const { return steps_at_; }

  // The decision rule's constants (exposed for the tests).
  static constexpr int kWarmup = 3;       // steps ignored after a start or a change of width
  static constexpr int kAdopt = 4;        // steps of a new width before it replaces the old
  static constexpr int kWindow = 5;       // steps per median at the current count
  static constexpr int kTrialSteps = 3;   // steps per trial of another count
  static constexpr double kSlowdown = 1.5;  // two windows this much slower than the best: try fewer
  static constexpr double kGain = 0.95;   // a trial is adopted at 5 % faster
  static constexpr int64_t kFirstRetry = 16, kMaxRetry = 512;  // steps between trials (after a failed one)

 private:
  void restart(int64_t items);

  int max_ = 1, cur_ = 1, trial_ = 0;
  int64_t items_ = -1;
  int other_items_ = 0;      // consecutive steps of another width
  int warm_ = 0;
  bool try_fewer_ = true;    // a trial of one fewer is due at the next window
  std::vector<double> window_, trial_times_;
  double best_ = 0, recent_ = 0;  // window medians at cur_ (0: none yet)
  int slow_windows_ = 0;     // consecutive windows past kSlowdown x best_
  int64_t since_trial_ = 0;
  int64_t retry_more_ = kFirstRetry, retry_fewer_ = 0;  // steps between trials of more / of fewer
  int64_t trials_ = 0;
  std::vector<int64_t> steps_at_;
};

}  // namespace pylenet
