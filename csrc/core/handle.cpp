#include "core/handle.h"

#include <cstdlib>
#include <string>

#include "core/error.h"
#include "core/parallel.h"

namespace pylenet {

Handle::Handle() : threads_(hardware_threads()) {
  if (const char* env = std::getenv("PYLENET_NUM_THREADS")) {
    char* end = nullptr;
    long n = std::strtol(env, &end, 10);
    if (end != env && *end == '\0' && n >= 1 && n <= 4096) threads_ = static_cast<int>(n);
  }
}

void Handle::set_threads(int n) {
  PYL_CHECK_ARG(n >= 1 && n <= 4096, "set_num_threads: expected 1 to 4096 threads, got ", n);
  if (n != threads_) algo_cache_.clear();  // timings depend on the thread count
  threads_ = n;
}

}  // namespace pylenet
