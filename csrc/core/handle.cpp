#include "core/handle.h"

#include <cstdlib>
#include <string>

#include "core/error.h"
#include "core/parallel.h"
#ifdef PYLENET_HAVE_CUDA
#include "cuda/context.h"
#endif

namespace pylenet {

Handle::Handle() : threads_(hardware_threads()) {
  if (const char* env = std::getenv("PYLENET_NUM_THREADS")) {
    char* end = nullptr;
    long n = std::strtol(env, &end, 10);
    if (end != env && *end == '\0' && n >= 1 && n <= 4096) threads_ = static_cast<int>(n);
  }
}

Handle::Handle(cuda::CudaContext& ctx) : threads_(1), cuda_(&ctx) {}

cuda::CudaContext& Handle::cuda() const {
  PYL_CHECK_INTERNAL(cuda_ != nullptr);
  return *cuda_;
}

void Handle::set_threads(int n) {
  PYL_CHECK_ARG(n >= 1 && n <= 4096, "set_num_threads: expected 1 to 4096 threads, got ", n);
  if (n != threads_) algo_cache_.clear();  // timings depend on the thread count
  threads_ = n;
}

#ifdef PYLENET_HAVE_CUDA
float* Handle::workspace(size_t bytes) {
  if (cuda_) return cuda_->workspace(bytes);
  workspace_.reserve(bytes);
  return workspace_.floats();
}
size_t Handle::workspace_bytes() const { return cuda_ ? cuda_->workspace_bytes() : workspace_.bytes(); }
void Handle::release_workspace() {
  if (cuda_) cuda_->release_workspace();
  else workspace_.release();
}
std::map<std::string, int>& Handle::algo_cache() { return cuda_ ? cuda_->algo_cache() : algo_cache_; }
#else
float* Handle::workspace(size_t bytes) {
  workspace_.reserve(bytes);
  return workspace_.floats();
}
size_t Handle::workspace_bytes() const { return workspace_.bytes(); }
void Handle::release_workspace() { workspace_.release(); }
std::map<std::string, int>& Handle::algo_cache() { return algo_cache_; }
#endif

void no_cuda_build(const char* op) {
  fail(ErrorKind::Runtime, op, ": this pylenet was built without CUDA kernels");
}

}  // namespace pylenet
