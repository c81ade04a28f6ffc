#include "core/thread_governor.h"

#include <algorithm>
#include <atomic>

namespace pylenet {

namespace {
// Sorts v in place (its contents are dropped after the median anyway): no copy, no allocation.
double median(std::vector<double>& v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}
std::atomic<bool> g_enabled{true};
}  // namespace

void ThreadGovernor::set_enabled(bool on) { g_enabled.store(on); }
bool ThreadGovernor::enabled() { return g_enabled.load(std::memory_order_relaxed); }

ThreadGovernor::ThreadGovernor(int max_threads)
    : max_(std::max(max_threads, 1)), cur_(max_), steps_at_(static_cast<size_t>(max_), 0) {
  window_.reserve(kWindow);  // record() runs inside the executor's steps: it never allocates
  trial_times_.reserve(kTrialSteps);
}

void ThreadGovernor::restart(int64_t items) {
  items_ = items;
  other_items_ = 0;
  warm_ = 0;
  trial_ = 0;
  try_fewer_ = true;
  window_.clear();
  trial_times_.clear();
  best_ = recent_ = 0;
  slow_windows_ = 0;
  since_trial_ = 0;
  retry_more_ = kFirstRetry;
  retry_fewer_ = 0;
}

void ThreadGovernor::record(double seconds, int64_t items) {
  ++steps_at_[static_cast<size_t>(threads() - 1)];
  if (max_ <= 1) return;
  if (items != items_) {
    if (items_ >= 0 && ++other_items_ < kAdopt) return;  // e.g. an epoch's short last batch
    restart(items);
  }
  other_items_ = 0;
  if (items_ < 2) return;  // one item: nothing runs in parallel, any count is the same
  if (warm_ < kWarmup) {
    ++warm_;
    return;
  }
  if (trial_ > 0) {
    trial_times_.push_back(seconds);
    if (static_cast<int>(trial_times_.size()) < kTrialSteps) return;
    const double t = median(trial_times_);
    const bool fewer = trial_ < cur_;
    if (t < kGain * recent_) {  // adopt it, and keep going that way while it pays
      cur_ = trial_;
      best_ = recent_ = t;
      try_fewer_ = fewer;
      retry_more_ = kFirstRetry;
      retry_fewer_ = 0;
      since_trial_ = fewer ? 0 : retry_more_;
    } else if (fewer) {
      best_ = recent_;  // the slower steps are the new normal here
      retry_fewer_ = std::min(std::max(retry_fewer_ * 2, kFirstRetry), kMaxRetry);
      since_trial_ = 0;
    } else {
      retry_more_ = std::min(retry_more_ * 2, kMaxRetry);
      since_trial_ = 0;
    }
    trial_ = 0;
    trial_times_.clear();
    window_.clear();
    return;
  }
  window_.push_back(seconds);
  ++since_trial_;
  if (static_cast<int>(window_.size()) < kWindow) return;
  recent_ = median(window_);
  window_.clear();
  best_ = best_ > 0 ? std::min(best_, recent_) : recent_;
  slow_windows_ = recent_ > kSlowdown * best_ ? slow_windows_ + 1 : 0;
  if (cur_ > 1 && (try_fewer_ || (slow_windows_ >= 2 && since_trial_ >= retry_fewer_))) {
    try_fewer_ = false;
    slow_windows_ = 0;
    trial_ = cur_ - 1;
    ++trials_;
  } else if (cur_ < max_ && since_trial_ >= retry_more_) {
    trial_ = cur_ + 1;
    ++trials_;
  }
}

}  // namespace pylenet
