#include "cuda/ops.h"

#include <algorithm>
#include <limits>
#include <string>

#include "core/error.h"
#include "cuda/check.h"
#include "cuda/kernels.h"

namespace pylenet::cuda {

bool conv_algo_supported(ConvAlgo algo, const ConvShape&) {
  return algo == ConvAlgo::Naive || algo == ConvAlgo::Im2col || algo == ConvAlgo::ImplicitGemm;
}

ConvAlgo conv_heuristic_algo(ConvPass, const ConvShape&) { return ConvAlgo::ImplicitGemm; }

namespace {
void require_supported(ConvAlgo algo, const ConvShape& s) {
  if (!cuda::conv_algo_supported(algo, s))
    fail(ErrorKind::InvalidArgument, "conv2d: algorithm '", conv_algo_name(algo),
         "' does not run on CUDA devices; use naive, im2col, implicit_gemm, auto or heuristic");
}
}  // namespace

size_t conv_workspace_size(ConvAlgo algo, ConvPass pass, const ConvShape& s) {
  switch (algo) {
    case ConvAlgo::Naive: return 0;
    case ConvAlgo::Im2col: return sizeof(float) * conv_im2col_workspace_floats(pass, s);
    case ConvAlgo::ImplicitGemm: return sizeof(float) * conv_implicit_gemm_workspace_floats(pass, s);
    case ConvAlgo::Heuristic: return conv_workspace_size(cuda::conv_heuristic_algo(pass, s), pass, s);
    case ConvAlgo::Auto: {
      size_t most = 0;
      for (ConvAlgo a : kCudaConvAlgos) most = std::max(most, conv_workspace_size(a, pass, s));
      return most;
    }
    case ConvAlgo::Direct: require_supported(algo, s);
  }
  return 0;
}

void conv_run(CudaContext& ctx, ConvAlgo algo, ConvPass pass, const ConvShape& s, const float* x, const float* w,
              const float* bias, const float* dy, float* out) {
  require_supported(algo, s);
  const size_t ws_bytes = conv_workspace_size(algo, pass, s);
  float* ws = ws_bytes ? ctx.workspace(ws_bytes) : nullptr;
  DeviceGuard guard(ctx.device());
  cudaStream_t st = ctx.stream();
  switch (pass) {
    case ConvPass::Forward:
      if (algo == ConvAlgo::Naive) conv_forward_naive(s, x, w, bias, out, st);
      else if (algo == ConvAlgo::Im2col) conv_forward_im2col(s, x, w, bias, out, ws, st);
      else conv_forward_implicit_gemm(s, x, w, bias, out, st);
      return;
    case ConvPass::BackwardData:
      if (algo == ConvAlgo::Naive) conv_backward_data_naive(s, w, dy, out, st);
      else if (algo == ConvAlgo::Im2col) conv_backward_data_im2col(s, w, dy, out, ws, st);
      else conv_backward_data_implicit_gemm(s, w, dy, out, st);
      return;
    case ConvPass::BackwardFilter:
      if (algo == ConvAlgo::Naive) conv_backward_filter_naive(s, x, dy, out, st);
      else if (algo == ConvAlgo::Im2col) conv_backward_filter_im2col(s, x, dy, out, ws, st);
      else conv_backward_filter_implicit_gemm(s, x, dy, out, ws, st);
      return;
  }
}

namespace {
std::string cache_key(ConvPass pass, const ConvShape& s) {
  return str_cat("cuda-conv/", static_cast<int>(pass), "/", s.n, ",", s.c, ",", s.h, ",", s.w, "/", s.k, ",", s.r,
                 ",", s.s, "/", s.sh, ",", s.sw, ",", s.ph, ",", s.pw);
}

// Owns a pair of CUDA events for one measurement.
struct EventPair {
  cudaEvent_t start = nullptr, stop = nullptr;
  EventPair() {
    PYL_CUDA_CHECK(cudaEventCreate(&start));
    if (cudaEventCreate(&stop) != cudaSuccess) {
      (void)cudaEventDestroy(start);
      PYL_CUDA_CHECK(cudaGetLastError());
    }
  }
  ~EventPair() {
    (void)cudaEventDestroy(start);
    (void)cudaEventDestroy(stop);
  }
};
}  // namespace

ConvAlgo conv_resolve_algo(CudaContext& ctx, ConvAlgo algo, ConvPass pass, const ConvShape& s, const float* x,
                           const float* w, const float* dy, float* out) {
  if (algo == ConvAlgo::Heuristic) return cuda::conv_heuristic_algo(pass, s);
  if (algo != ConvAlgo::Auto) {
    require_supported(algo, s);
    return algo;
  }
  auto& cache = ctx.algo_cache();
  const std::string key = cache_key(pass, s);
  auto it = cache.find(key);
  if (it != cache.end()) return static_cast<ConvAlgo>(it->second);
  const ConvAlgo best = conv_find_algorithms(ctx, pass, s, x, w, dy, out).front().algo;
  cache[key] = static_cast<int>(best);
  return best;
}

std::vector<ConvAlgoPerf> conv_find_algorithms(CudaContext& ctx, ConvPass pass, const ConvShape& s, const float* x,
                                               const float* w, const float* dy, float* out) {
  DeviceGuard guard(ctx.device());
  EventPair ev;
  std::vector<ConvAlgoPerf> perf;
  for (ConvAlgo a : kCudaConvAlgos) {
    // One warm-up run (module load, workspace growth), then the best of three.
    conv_run(ctx, a, pass, s, x, w, nullptr, dy, out);
    float best = std::numeric_limits<float>::infinity();
    for (int i = 0; i < 3; ++i) {
      PYL_CUDA_CHECK(cudaEventRecord(ev.start, ctx.stream()));
      conv_run(ctx, a, pass, s, x, w, nullptr, dy, out);
      PYL_CUDA_CHECK(cudaEventRecord(ev.stop, ctx.stream()));
      PYL_CUDA_CHECK(cudaEventSynchronize(ev.stop));
      float ms = 0;
      PYL_CUDA_CHECK(cudaEventElapsedTime(&ms, ev.start, ev.stop));
      best = std::min(best, ms);
    }
    perf.push_back({a, best * 1e-3, conv_workspace_size(a, pass, s)});
  }
  std::stable_sort(perf.begin(), perf.end(), [](auto& a, auto& b) { return a.seconds < b.seconds; });
  return perf;
}

}  // namespace pylenet::cuda
