// The convolution op layer: checks descriptors, sizes the workspace, resolves "auto" by
// measuring, and dispatches to the backend kernels.
#include "ops/conv.h"

#include <algorithm>
#include <chrono>
#include <iterator>
#include <limits>
#include <vector>

#include "core/error.h"
#include "core/simd.h"
#include "cpu/conv_direct.h"
#include "cpu/conv_winograd.h"
#include "ops/activation.h"
#include "ops/dispatch.h"
#ifdef PYLENET_HAVE_CUDA
#include "cuda/check.h"
#endif

namespace pylenet {

const char* conv_algo_name(ConvAlgo algo) {
  switch (algo) {
    case ConvAlgo::Naive: return "naive";
    case ConvAlgo::Im2col: return "im2col";
    case ConvAlgo::Direct: return "direct";
    case ConvAlgo::ImplicitGemm: return "implicit_gemm";
    case ConvAlgo::Winograd: return "winograd";
    case ConvAlgo::Auto: return "auto";
    case ConvAlgo::Heuristic: return "heuristic";
  }
  return "?";
}

ConvAlgo conv_algo_from_name(const std::string& name) {
  if (name == "naive") return ConvAlgo::Naive;
  if (name == "im2col") return ConvAlgo::Im2col;
  if (name == "direct") return ConvAlgo::Direct;
  if (name == "implicit_gemm") return ConvAlgo::ImplicitGemm;
  if (name == "winograd") return ConvAlgo::Winograd;
  if (name == "auto") return ConvAlgo::Auto;
  if (name == "heuristic") return ConvAlgo::Heuristic;
  fail(ErrorKind::InvalidArgument, "conv2d: unknown algorithm '", name,
       "' (expected naive, im2col, direct, winograd, implicit_gemm, auto or heuristic)");
}

bool conv_algo_supported(Device dev, ConvAlgo algo, const ConvShape& s) {
  if (dev == Device::CUDA) return algo == ConvAlgo::Naive || algo == ConvAlgo::Im2col || algo == ConvAlgo::ImplicitGemm;
  if (algo == ConvAlgo::Direct) return cpu::conv_direct_supported(s);
  if (algo == ConvAlgo::Winograd) return cpu::conv_winograd_supported(s);
  return algo == ConvAlgo::Naive || algo == ConvAlgo::Im2col;
}

ConvAlgo conv_heuristic_algo(Device dev, ConvPass pass, const ConvShape& s) {
  if (dev == Device::CUDA) return ConvAlgo::ImplicitGemm;
  if (cpu::conv_winograd_supported(s) && s.c >= 16 && s.k >= 16 && (s.r == 3 || s.n >= 4)) return ConvAlgo::Winograd;
  if (!cpu::conv_direct_supported(s)) return ConvAlgo::Im2col;
  if (s.c * s.r * s.s <= 256) return ConvAlgo::Direct;
  // Many input channels: narrow output rows still favour direct forward and backward
  // filter, whose kernels put output channels in the lanes or, on CPUs with split 512-bit
  // FMAs, rows 8 lanes wide (cudnn_lenet conv2, C*R*S = 500, 8 columns, per sample: forward
  // 30 vs 42 us, filter 36 vs 55 us); backward data stays im2col (41 vs 62 us).
  return pass != ConvPass::BackwardData && s.ow < 16 ? ConvAlgo::Direct : ConvAlgo::Im2col;
}

namespace {
void require_supported(Device dev, ConvAlgo algo, const ConvShape& s) {
  if (conv_algo_supported(dev, algo, s)) return;
  if (dev == Device::CUDA)
    fail(ErrorKind::InvalidArgument, "conv2d: algorithm '", conv_algo_name(algo),
         "' does not run on CUDA devices; use naive, im2col, implicit_gemm, auto or heuristic");
  if (algo == ConvAlgo::ImplicitGemm)
    fail(ErrorKind::InvalidArgument, "conv2d: algorithm 'implicit_gemm' runs on CUDA devices only; on the CPU use "
         "naive, im2col, direct, winograd, auto or heuristic");
  fail(ErrorKind::InvalidArgument, "conv2d: algorithm '", conv_algo_name(algo), "' does not support stride (", s.sh,
       ", ", s.sw, "), padding (", s.ph, ", ", s.pw, ") with kernel ", s.r, "x", s.s,
       algo == ConvAlgo::Winograd ? " (winograd needs a 3x3 or 5x5 kernel, stride 1 and padding smaller than the kernel)"
                                  : " (direct needs stride 1, padding smaller than the kernel and a kernel width up to 8)",
       "; use im2col or auto");
}

}  // namespace

size_t conv_workspace_size(Device dev, ConvAlgo algo, ConvPass pass, const ConvShape& s, int threads) {
  switch (algo) {
    case ConvAlgo::Heuristic: return conv_workspace_size(dev, conv_heuristic_algo(dev, pass, s), pass, s, threads);
    case ConvAlgo::Auto: {
      size_t most = 0;
      for (ConvAlgo a : dev == Device::CUDA ? std::vector<ConvAlgo>(std::begin(kCudaConvAlgos), std::end(kCudaConvAlgos))
                                            : std::vector<ConvAlgo>(std::begin(kConvAlgos), std::end(kConvAlgos)))
        if (conv_algo_supported(dev, a, s)) most = std::max(most, conv_workspace_size(dev, a, pass, s, threads));
      return most;
    }
    default: break;
  }
  require_supported(dev, algo, s);
  if (algo == ConvAlgo::Naive) return 0;
#ifdef PYLENET_HAVE_CUDA
  if (dev == Device::CUDA)
    return sizeof(float) * (algo == ConvAlgo::Im2col ? cuda::conv_im2col_workspace_floats(pass, s)
                                                     : cuda::conv_implicit_gemm_workspace_floats(pass, s));
#endif
  if (algo == ConvAlgo::Im2col) return sizeof(float) * cpu::conv_im2col_workspace_floats(pass, s, threads);
  if (algo == ConvAlgo::Winograd) return sizeof(float) * cpu::conv_winograd_workspace_floats(pass, s, threads);
  return sizeof(float) * cpu::conv_direct_workspace_floats(pass, s, threads);
}

size_t conv_workspace_size(Handle& h, ConvAlgo algo, ConvPass pass, const ConvShape& s) {
  return conv_workspace_size(h.device(), algo, pass, s, h.threads());
}

ConvShape ConvShape::make(const char* op, const TensorDesc& x, const TensorDesc& w, const ConvDesc& conv) {
  x.check(op, "input", 4, "(N, C, H, W)");
  const FilterDesc f = FilterDesc::from(w, op);
  check_extent(op, "stride", conv.stride, 1);
  check_extent(op, "padding", conv.pad, 0);
  PYL_CHECK_ARG(f.c == x.c(), op, ": input has ", x.c(), " channels but weight ", w.str(), " expects ", f.c,
                " (input shape ", x.str(), ")");
  const int64_t hp = x.h() + 2 * conv.pad.h, wp = x.w() + 2 * conv.pad.w;
  PYL_CHECK_ARG(f.r <= hp && f.s <= wp, op, ": kernel ", f.r, "x", f.s, " is larger than the padded input ", hp,
                "x", wp, " (input ", x.str(), ", padding (", conv.pad.h, ", ", conv.pad.w, "))");
  ConvShape s{x.n(), x.c(), x.h(), x.w(), f.k, f.r, f.s, (hp - f.r) / conv.stride.h + 1,
              (wp - f.s) / conv.stride.w + 1, conv.pad.h, conv.pad.w, conv.stride.h, conv.stride.w};
  s.y_desc().check(op, "output", 4);
  return s;
}

void conv_run(Handle& h, ConvAlgo algo, ConvPass pass, const ConvShape& s, const float* x, const float* w,
              const float* bias, const float* dy, float* out, bool relu, const float* prepared) {
  PYL_CHECK_ARG(!relu || pass == ConvPass::Forward, "conv2d: a folded ReLU belongs to the forward pass");
  PYL_CHECK_ARG(!prepared || (pass == ConvPass::Forward && !h.on_cuda()),
                "conv2d: a prepared filter belongs to the CPU's forward pass");
  const size_t bytes = conv_workspace_size(h, algo, pass, s);
  float* ws = bytes ? h.workspace(bytes) : nullptr;
#ifdef PYLENET_HAVE_CUDA
  if (h.on_cuda()) {
    cuda::DeviceGuard guard(h.cuda().device());
    cudaStream_t st = stream_of(h);
    switch (pass) {
      case ConvPass::Forward:
        if (algo == ConvAlgo::Naive) cuda::conv_forward_naive(s, x, w, bias, out, st, relu);
        else if (algo == ConvAlgo::Im2col) cuda::conv_forward_im2col(s, x, w, bias, out, ws, st, relu);
        else cuda::conv_forward_implicit_gemm(s, x, w, bias, out, st, relu);
        return;
      case ConvPass::BackwardData:
        if (algo == ConvAlgo::Naive) cuda::conv_backward_data_naive(s, w, dy, out, st);
        else if (algo == ConvAlgo::Im2col) cuda::conv_backward_data_im2col(s, w, dy, out, ws, st);
        else cuda::conv_backward_data_implicit_gemm(s, w, dy, out, st);
        return;
      case ConvPass::BackwardFilter:
        if (algo == ConvAlgo::Naive) cuda::conv_backward_filter_naive(s, x, dy, out, st);
        else if (algo == ConvAlgo::Im2col) cuda::conv_backward_filter_im2col(s, x, dy, out, ws, st);
        else cuda::conv_backward_filter_implicit_gemm(s, x, dy, out, ws, st);
        return;
    }
  }
#endif
  const int t = h.threads();
  switch (pass) {
    case ConvPass::Forward:
      if (algo == ConvAlgo::Naive) cpu::conv_forward_naive(s, x, w, bias, out, t);
      else if (algo == ConvAlgo::Direct && prepared) cpu::conv_forward_direct_prepared(s, x, w, bias, prepared, out, ws, t);
      else if (algo == ConvAlgo::Direct) cpu::conv_forward_direct(s, x, w, bias, out, ws, t);
      else if (algo == ConvAlgo::Winograd && prepared)
        cpu::conv_forward_winograd_prepared(s, x, prepared, bias != nullptr, out, ws, t);
      else if (algo == ConvAlgo::Winograd) cpu::conv_forward_winograd(s, x, w, bias, out, ws, t);
      else cpu::conv_forward_im2col(s, x, w, bias, out, ws, t);
      // The CPU's folded ReLU is a second pass (the executor folds it only under Config::device_rules).
      if (relu) cpu::activation_forward(Activation::ReLU, s.n * s.k * s.oh * s.ow, out, out, 0.0f, t);
      return;
    case ConvPass::BackwardData:
      if (algo == ConvAlgo::Naive) cpu::conv_backward_data_naive(s, w, dy, out, t);
      else if (algo == ConvAlgo::Direct) cpu::conv_backward_data_direct(s, w, dy, out, ws, t);
      else if (algo == ConvAlgo::Winograd) cpu::conv_backward_data_winograd(s, w, dy, out, ws, t);
      else cpu::conv_backward_data_im2col(s, w, dy, out, ws, t);
      return;
    case ConvPass::BackwardFilter:
      if (algo == ConvAlgo::Naive) cpu::conv_backward_filter_naive(s, x, dy, out, t);
      else if (algo == ConvAlgo::Direct) cpu::conv_backward_filter_direct(s, x, dy, out, ws, t);
      else if (algo == ConvAlgo::Winograd) cpu::conv_backward_filter_winograd(s, x, dy, out, ws, t);
      else cpu::conv_backward_filter_im2col(s, x, dy, out, ws, t);
      return;
  }
}

bool conv_max_pool_fusable(Device dev, ConvAlgo algo) { return dev == Device::CPU && algo == ConvAlgo::Winograd; }

void conv_run_max_pool(Handle& h, const ConvShape& s, const float* x, const float* w, const float* bias,
                       const float* prepared, float* pooled, float* index) {
  PYL_CHECK_ARG(conv_max_pool_fusable(h.device(), ConvAlgo::Winograd),
                "conv2d + max_pool2d: fused only on the CPU, for winograd");
  const size_t bytes = conv_workspace_size(h, ConvAlgo::Winograd, ConvPass::Forward, s);
  float* ws = bytes ? h.workspace(bytes) : nullptr;
  if (prepared) cpu::conv_forward_winograd_prepared_max_pool(s, x, prepared, bias != nullptr, pooled, index, ws,
                                                             h.threads());
  else cpu::conv_forward_winograd_max_pool(s, x, w, bias, pooled, index, ws, h.threads());
}

int64_t conv_prepared_filter_floats(Device dev, ConvAlgo algo, const ConvShape& s) {
  if (dev == Device::CUDA) return 0;
  if (algo == ConvAlgo::Winograd) return cpu::conv_winograd_prepared_floats(s);
  if (algo == ConvAlgo::Direct) return cpu::conv_direct_prepared_floats(s);
  return 0;
}

void conv_prepare_filter(Handle& h, ConvAlgo algo, const ConvShape& s, const float* w, const float* bias,
                         float* prepared) {
  if (conv_prepared_filter_floats(h.device(), algo, s) == 0) return;  // (a SIMD path whose kernel reads w)
  if (algo == ConvAlgo::Winograd) cpu::conv_winograd_prepare(s, w, bias, prepared, h.threads());
  else cpu::conv_direct_prepare(s, w, bias, prepared);
}

namespace {
std::string cache_key(const Handle& h, ConvPass pass, const ConvShape& s) {
  return str_cat(h.on_cuda() ? "cuda-conv/" : "conv/", static_cast<int>(pass), "/", s.n, ",", s.c, ",", s.h, ",",
                 s.w, "/", s.k, ",", s.r, ",", s.s, "/", s.sh, ",", s.sw, ",", s.ph, ",", s.pw, "/t", h.threads(), "/",
                 h.on_cuda() ? "" : simd::path_name());  // with the AVX-512 lanes when forced
}

#ifdef PYLENET_HAVE_CUDA
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
#endif
}  // namespace

// Resolves Heuristic by its rule and Auto to the measured-fastest algorithm for this pass and
// shape (cached in the handle).
ConvAlgo conv_resolve_algo(Handle& h, ConvAlgo algo, ConvPass pass, const ConvShape& s, const float* x, const float* w,
                           const float* dy, float* out) {
  if (algo == ConvAlgo::Heuristic) return conv_heuristic_algo(h.device(), pass, s);
  if (algo != ConvAlgo::Auto) {
    require_supported(h.device(), algo, s);
    return algo;
  }
  auto& cache = h.algo_cache();
  const std::string key = cache_key(h, pass, s);
  auto it = cache.find(key);
  if (it != cache.end()) return static_cast<ConvAlgo>(it->second);
  const ConvAlgo best = conv_find_algorithms(h, pass, s, x, w, dy, out).front().algo;
  cache[key] = static_cast<int>(best);
  return best;
}

void conv_run_backward_bias(Handle& h, const ConvShape& s, const float* dy, float* db) {
  PYL_IF_CUDA(h, cuda::conv_backward_bias(s, dy, db, stream_of(h)));
  cpu::conv_backward_bias(s, dy, db, h.threads());
}

namespace {
bool fused_backward(const Handle& h, ConvAlgo data_algo, ConvAlgo filter_algo, bool with_dx) {
  return !h.on_cuda() && filter_algo == ConvAlgo::Winograd && (!with_dx || data_algo == ConvAlgo::Winograd);
}
}  // namespace

size_t conv_backward_workspace_size(Handle& h, ConvAlgo data_algo, ConvAlgo filter_algo, const ConvShape& s) {
  size_t bytes = std::max(conv_workspace_size(h, data_algo, ConvPass::BackwardData, s),
                          conv_workspace_size(h, filter_algo, ConvPass::BackwardFilter, s));
  if (fused_backward(h, data_algo, filter_algo, false))
    bytes = std::max(bytes, sizeof(float) * static_cast<size_t>(cpu::conv_winograd_backward_workspace_floats(s, h.threads())));
  return bytes;
}

bool conv_backward_unpools(Device dev, ConvAlgo data_algo, ConvAlgo filter_algo, bool with_dx) {
  return dev == Device::CPU && filter_algo == ConvAlgo::Winograd && (!with_dx || data_algo == ConvAlgo::Winograd);
}

void conv_run_backward(Handle& h, ConvAlgo data_algo, ConvAlgo filter_algo, const ConvShape& s, const float* x,
                       const float* w, const float* dy, float* dx, float* dw, float* db, const float* winners) {
  PYL_CHECK_ARG(!winners || conv_backward_unpools(h.device(), data_algo, filter_algo, dx != nullptr),
                "conv2d_backward: a pooling's gradient with its winners is read by the CPU's winograd pass only");
  if (fused_backward(h, data_algo, filter_algo, dx != nullptr)) {
    const size_t bytes = sizeof(float) * static_cast<size_t>(cpu::conv_winograd_backward_workspace_floats(s, h.threads()));
    cpu::conv_backward_winograd(s, x, w, dy, dx, dw, db, h.workspace(bytes), h.threads(), winners);
    return;
  }
  if (dx) conv_run(h, data_algo, ConvPass::BackwardData, s, nullptr, w, nullptr, dy, dx);
  conv_run(h, filter_algo, ConvPass::BackwardFilter, s, x, nullptr, nullptr, dy, dw);
  if (db) conv_run_backward_bias(h, s, dy, db);
}

std::vector<ConvAlgoPerf> conv_find_algorithms(Handle& h, ConvPass pass, const ConvShape& s, const float* x,
                                               const float* w, const float* dy, float* out) {
  std::vector<ConvAlgoPerf> perf;
#ifdef PYLENET_HAVE_CUDA
  if (h.on_cuda()) {
    cuda::DeviceGuard guard(h.cuda().device());
    EventPair ev;
    for (ConvAlgo a : kCudaConvAlgos) {
      // One warm-up run (module load, workspace growth), then the best of three.
      conv_run(h, a, pass, s, x, w, nullptr, dy, out);
      float best = std::numeric_limits<float>::infinity();
      for (int i = 0; i < 3; ++i) {
        PYL_CUDA_CHECK(cudaEventRecord(ev.start, stream_of(h)));
        conv_run(h, a, pass, s, x, w, nullptr, dy, out);
        PYL_CUDA_CHECK(cudaEventRecord(ev.stop, stream_of(h)));
        PYL_CUDA_CHECK(cudaEventSynchronize(ev.stop));
        float ms = 0;
        PYL_CUDA_CHECK(cudaEventElapsedTime(&ms, ev.start, ev.stop));
        best = std::min(best, ms);
      }
      perf.push_back({a, best * 1e-3, conv_workspace_size(h, a, pass, s)});
    }
    std::stable_sort(perf.begin(), perf.end(), [](auto& a, auto& b) { return a.seconds < b.seconds; });
    return perf;
  }
#endif
  for (ConvAlgo a : kConvAlgos) {
    if (!conv_algo_supported(Device::CPU, a, s)) continue;
    double best = std::numeric_limits<double>::infinity();
    // One untimed run warms caches and the workspace; then the best of two runs. The
    // slow naive loops get a single timed run on big shapes.
    const int runs = (a == ConvAlgo::Naive && s.forward_flops() > 5e7) ? 1 : 2;
    conv_run(h, a, pass, s, x, w, nullptr, dy, out);
    for (int i = 0; i < runs; ++i) {
      auto t0 = std::chrono::steady_clock::now();
      conv_run(h, a, pass, s, x, w, nullptr, dy, out);
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    perf.push_back({a, best, conv_workspace_size(h, a, pass, s)});
  }
  std::stable_sort(perf.begin(), perf.end(), [](auto& a, auto& b) { return a.seconds < b.seconds; });
  return perf;
}

void conv_forward(Handle& h, ConvAlgo algo, const TensorDesc& xd, const float* x, const TensorDesc& wd,
                  const float* w, const TensorDesc& bd, const float* bias, const ConvDesc& conv,
                  const TensorDesc& yd, float* y) {
  const ConvShape s = ConvShape::make("conv2d", xd, wd, conv);
  if (bias)
    PYL_CHECK_ARG(bd == TensorDesc{s.k}, "conv2d: bias must have shape (", s.k, ",) for weight ", wd.str(),
                  ", got ", bd.str());
  PYL_CHECK_ARG(yd == s.y_desc(), "conv2d: output must have shape ", s.y_desc().str(), ", got ", yd.str());
  algo = conv_resolve_algo(h, algo, ConvPass::Forward, s, x, w, nullptr, y);
  conv_run(h, algo, ConvPass::Forward, s, x, w, bias, nullptr, y);
}

void conv_backward_data(Handle& h, ConvAlgo algo, const TensorDesc& wd, const float* w, const TensorDesc& dyd,
                        const float* dy, const ConvDesc& conv, const TensorDesc& dxd, float* dx) {
  const ConvShape s = ConvShape::make("conv2d_backward", dxd, wd, conv);
  PYL_CHECK_ARG(dyd == s.y_desc(), "conv2d_backward: grad_output must have shape ", s.y_desc().str(),
                " (the conv2d output for input ", dxd.str(), " and weight ", wd.str(), "), got ", dyd.str());
  algo = conv_resolve_algo(h, algo, ConvPass::BackwardData, s, nullptr, w, dy, dx);
  conv_run(h, algo, ConvPass::BackwardData, s, nullptr, w, nullptr, dy, dx);
}

void conv_backward_filter(Handle& h, ConvAlgo algo, const TensorDesc& xd, const float* x, const TensorDesc& dyd,
                          const float* dy, const ConvDesc& conv, const TensorDesc& dwd, float* dw) {
  const ConvShape s = ConvShape::make("conv2d_backward", xd, dwd, conv);
  PYL_CHECK_ARG(dyd == s.y_desc(), "conv2d_backward: grad_output must have shape ", s.y_desc().str(),
                " (the conv2d output for input ", xd.str(), " and weight ", dwd.str(), "), got ", dyd.str());
  algo = conv_resolve_algo(h, algo, ConvPass::BackwardFilter, s, x, nullptr, dy, dw);
  conv_run(h, algo, ConvPass::BackwardFilter, s, x, nullptr, nullptr, dy, dw);
}

void conv_backward(Handle& h, ConvAlgo algo, const TensorDesc& xd, const float* x, const TensorDesc& wd,
                   const float* w, const TensorDesc& dyd, const float* dy, const ConvDesc& conv, float* dx, float* dw,
                   float* db) {
  const ConvShape s = ConvShape::make("conv2d_backward", xd, wd, conv);
  PYL_CHECK_ARG(dyd == s.y_desc(), "conv2d_backward: grad_output must have shape ", s.y_desc().str(),
                " (the conv2d output for input ", xd.str(), " and weight ", wd.str(), "), got ", dyd.str());
  const ConvAlgo fa = conv_resolve_algo(h, algo, ConvPass::BackwardFilter, s, x, nullptr, dy, dw);
  const ConvAlgo da = dx ? conv_resolve_algo(h, algo, ConvPass::BackwardData, s, nullptr, w, dy, dx) : fa;
  conv_run_backward(h, da, fa, s, x, w, dy, dx, dw, db);
}

void conv_backward_bias(Handle& h, const TensorDesc& dyd, const float* dy, const TensorDesc& dbd, float* db) {
  dyd.check("conv2d_backward", "grad_output", 4, "(N, K, OH, OW)");
  PYL_CHECK_ARG(dbd == TensorDesc{dyd.c()}, "conv2d_backward: bias gradient must have shape (", dyd.c(),
                ",), got ", dbd.str());
  ConvShape s{};
  s.n = dyd.n(); s.k = dyd.c(); s.oh = dyd.h(); s.ow = dyd.w();
  conv_run_backward_bias(h, s, dy, db);
}

}  // namespace pylenet
