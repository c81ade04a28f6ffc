#include "runtime/executor.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <unistd.h>

#include <cstring>
#include <map>
#include <optional>

#include "core/error.h"
#include "core/float_mode.h"
#include "core/parallel.h"
#include "core/simd.h"
#include "cpu/gemm.h"
#include "graph/passes.h"
#include "ops/activation.h"
#include "ops/dropout.h"
#include "ops/elementwise.h"
#include "ops/loss.h"
#include "ops/math.h"
#include "ops/softmax.h"
#include "runtime/cuda_state.h"
#ifdef PYLENET_HAVE_CUDA
#include "cuda/check.h"
#include "cuda/tensor.h"
#endif

namespace pylenet::runtime {

int64_t cpu_chunk(int64_t capacity) {
  if (capacity <= kCpuMinChunk) return std::max<int64_t>(capacity, 1);
  return std::clamp<int64_t>((capacity + 1) / 2, kCpuMinChunk, kCpuChunk);
}

using graph::Node;
using graph::Op;
using graph::ValueKind;

namespace {
inline int64_t round16(int64_t n) { return (n + 15) / 16 * 16; }
using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Rows of dW per job of a Linear weight gradient: >= ~16k weights and a multiple of the
// GEMM's 6-row tile.
int64_t grad_rows(int64_t in) { return std::max<int64_t>(24, (16384 / in + 5) / 6 * 6); }

// First-fit allocation of float ranges in an arena, for the liveness plan.
class ArenaAllocator {
 public:
  int64_t allocate(int64_t floats) {
    for (auto it = free_.begin(); it != free_.end(); ++it)
      if (it->second >= floats) {
        const int64_t off = it->first;
        if (it->second == floats) free_.erase(it);
        else {
          const int64_t rest = it->second - floats;
          free_.erase(it);
          free_[off + floats] = rest;
        }
        return off;
      }
    const int64_t off = top_;
    top_ += floats;
    return off;
  }
  void release(int64_t off, int64_t floats) {
    auto it = free_.emplace(off, floats).first;
    auto next = std::next(it);
    if (next != free_.end() && it->first + it->second == next->first) {  // merge with the next block
      it->second += next->second;
      free_.erase(next);
    }
    if (it != free_.begin()) {  // and with the previous one
      auto prev = std::prev(it);
      if (prev->first + prev->second == it->first) {
        prev->second += it->second;
        free_.erase(it);
        it = prev;
      }
    }
    if (it->first + it->second == top_) {  // the top block returns to the unused end
      top_ = it->first;
      free_.erase(it);
    }
  }
  int64_t peak() const { return peak_ = std::max(peak_, top_), peak_; }
  void note() { peak_ = std::max(peak_, top_); }

 private:
  std::map<int64_t, int64_t> free_;
  int64_t top_ = 0;
  mutable int64_t peak_ = 0;
};
}  // namespace

// ------------------------------------------------------------------------------ schedules
namespace {
double rule_lr(const ScheduleSpec& s, double lr, int64_t iter);
}

double schedule_lr(const ScheduleSpec& s, double lr, int64_t iter) {
  const double rate = rule_lr(s, lr, iter);
  if (s.warmup_iters > 0 && iter < s.warmup_iters)
    return rate * (static_cast<double>(iter) + 1.0) / static_cast<double>(s.warmup_iters);
  return rate;
}

namespace {
// Cosine from `from` (pct 0) to `to` (pct 1), as PyTorch's OneCycleLR anneals.
double cos_anneal(double from, double to, double pct) { return to + (from - to) / 2.0 * (std::cos(M_PI * pct) + 1.0); }

double rule_lr(const ScheduleSpec& s, double lr, int64_t iter) {
  switch (s.kind) {
    case ScheduleSpec::Constant: return lr;
    case ScheduleSpec::Step:
      return lr * std::pow(s.gamma, static_cast<double>(iter / std::max<int64_t>(s.step_iters, 1)));
    case ScheduleSpec::Cosine: {
      const double t = std::min<double>(static_cast<double>(iter) / std::max<int64_t>(s.total_iters, 1), 1.0);
      return s.min_lr + (lr - s.min_lr) * 0.5 * (1.0 + std::cos(M_PI * t));
    }
    case ScheduleSpec::Inv: return lr * std::pow(1.0 + s.gamma * static_cast<double>(iter), -s.power);
    case ScheduleSpec::Table: {
      const int64_t n = static_cast<int64_t>(s.table.size());
      PYL_CHECK_ARG(iter >= s.first_iter && iter - s.first_iter < n, "schedule: the table of rates covers iterations ",
                    s.first_iter, " to ", s.first_iter + n - 1, ", asked for iteration ", iter);
      return s.table[static_cast<size_t>(iter - s.first_iter)];
    }
    case ScheduleSpec::OneCycle: {
      const double initial = lr / s.div_factor, last = initial / s.final_div_factor;
      const double up_end = s.pct_start * static_cast<double>(s.total_iters) - 1.0;
      const double end = static_cast<double>(s.total_iters) - 1.0, i = static_cast<double>(iter);
      if (i <= up_end) return cos_anneal(initial, lr, up_end > 0 ? i / up_end : 1.0);
      return cos_anneal(lr, last, end > up_end ? std::min((i - up_end) / (end - up_end), 1.0) : 1.0);
    }
  }
  return lr;
}
}  // namespace

namespace {
// The learning rate of one step, refused before the step runs when it is not a finite
// number >= 0 (a schedule that overflows, or Caffe's inv with a negative gamma): applied, it
// would turn every weight into NaN without a non-finite output to notice it by.
float checked_lr(double lr, int64_t iter, const char* op) {
  const float f = static_cast<float>(lr);
  PYL_CHECK_ARG(std::isfinite(f) && f >= 0.0f, op, ": the learning rate at iteration ", iter, " is ", lr,
                " (it must be a finite number >= 0 in float32; check the schedule and its parameters)");
  return f;
}
}  // namespace

// ------------------------------------------------------------------------------ memory plan
enum class Home : uint8_t { None, Input, Labels, Worker, Chunk, Fixed, Param, Buffer, GradChunk, GradBatch, GradDirect };

struct Executor::Store {
  struct Slot {
    Home home = Home::None;
    int64_t offset = 0;  // floats
    int64_t floats = 0;  // per sample (batch values) or in all (fixed values)
  };
  std::vector<Slot> at;  // per graph value
  int64_t worker_floats = 0, chunk_floats = 0, fixed_floats = 0;
  int64_t chunk_grad_floats = 0, batch_grad_floats = 0;
  int64_t unshared = 0;
  Memory worker, chunk, fixed, grads, chunk_grads, batch_grads;
  // The Linear weight gradients on the CPU: per LinearBackwardWeight node, its batch's input
  // (packed as the B of dW = dY^T X) and output gradient, stashed chunk by chunk.
  struct Stash {
    int x = -1, dy = -1, dw = -1, db = -1;
    int64_t in = 0, out = 0;
    float* packed_x = nullptr;
    float* saved_dy = nullptr;
  };
  std::vector<Stash> stashes;
  Memory stash;
  int64_t stash_x_floats = 0, stash_dy_floats = 0;
  // Per chunk: loss sum, correct count, non-finite flag.
  std::vector<double> loss;
  std::vector<int64_t> correct;
  std::vector<int> bad;
  Memory input, labels;  // the gathered batch (train_epoch)
  // Inference on the CPU: convolution filters prepared once (conv_prepare_filter), each with
  // the weights, bias and SIMD level it was made from, compared before every forward call so
  // that a write to the parameters is never missed.
  struct Prepared {
    int instr = -1;
    int64_t offset = 0, floats = 0;  // in `prepared`
    int64_t seen = 0, seen_floats = 0;  // in `prepared`: the weights, then the bias, it was made from
    simd::Level level = simd::Level::Scalar;
    int lanes512 = 0;                // with the direct convolution's forced AVX-512 lanes
    bool ready = false;
  };
  std::vector<Prepared> prepared_filters;
  Memory prepared;
  int64_t workspace_bytes = 0;  // per worker: the most any instruction's kernels ask for
  int64_t wide_workspace_bytes = 0;  // the wide handle's (Instr::wide)
  int classes = 0;       // the loss's classes (for label checks), 0 without a loss
  int64_t out_floats = 0;
};

Memory::Memory(Device dev, int cuda_device, size_t bytes) : bytes_(bytes) {
  if (bytes == 0) return;
#ifdef PYLENET_HAVE_CUDA
  if (dev == Device::CUDA) {
    // The caching allocator does not track streams: a block that device tensors freed (work
    // queued on the default context's stream) may come back here, so that stream's work must
    // finish before this executor's stream writes the block.
    if (cuda::DefaultContext* dc = cuda::default_context_if_created(cuda_device)) {
      std::lock_guard<std::mutex> lock(dc->mu);
      dc->ctx.synchronize();
    }
    device_ = cuda::DeviceBuffer(cuda_device, bytes);
    cuda::DeviceGuard guard(cuda_device);
    PYL_CUDA_CHECK(cudaMemset(device_.data(), 0, bytes));
    return;
  }
#else
  (void)dev;
  (void)cuda_device;
#endif
  host_ = AlignedBuffer(bytes);
  std::memset(host_.data(), 0, bytes);
}

void* Memory::data() const {
#ifdef PYLENET_HAVE_CUDA
  if (device_.data()) return device_.data();
#endif
  return host_.data();
}

// ------------------------------------------------------------------------------ executor
Executor::~Executor() {
#ifdef PYLENET_HAVE_CUDA
  // Nothing queued may still use the plan when its buffers go back to the pool.
  if (cuda_) {
    (void)cudaStreamSynchronize(cuda_->ctx.stream());
    (void)cudaGetLastError();
  }
#endif
}

Executor::Executor(const graph::Graph& g, const Config& cfg, Bindings bind)
    : g_(g), cfg_(cfg), bind_(std::move(bind)), store_(std::make_unique<Store>()) {
  PYL_CHECK_ARG(cfg.capacity >= 1 && cfg.capacity <= (1 << 20), "compile: batch size must be 1 to 1048576, got ",
                cfg.capacity);
  PYL_CHECK_ARG(cfg.threads >= 1 && cfg.threads <= 4096, "compile: threads must be 1 to 4096, got ", cfg.threads);
  PYL_CHECK_ARG(g_.input() >= 0, "compile: the graph has no input");
  PYL_CHECK_ARG(g_.output() >= 0 || g_.loss() >= 0, "compile: the graph has no output");
  PYL_CHECK_ARG(bind_.param_offset.size() == g_.values().size() && bind_.buffer_ptr.size() == g_.values().size() &&
                    bind_.param_ptr.size() == g_.values().size(),
                "compile: bindings for ", bind_.param_offset.size(), " values, the graph has ", g_.values().size());
  for (size_t v = 0; v < g_.values().size(); ++v) {
    const int p = g_.values()[v].producer;
    const Op op = p >= 0 ? g_.nodes()[p].op : Op::Input;
    if (op == Op::Param)
      PYL_CHECK_ARG(bind_.param_ptr[v] && bind_.param_offset[v] >= 0 &&
                        bind_.param_offset[v] + g_.values()[v].numel() <= bind_.num_params,
                    "compile: parameter ", g_.values()[v].name, " is not bound inside the parameter layout");
    if (op == Op::Buffer)
      PYL_CHECK_ARG(bind_.buffer_ptr[v] != nullptr, "compile: buffer ", g_.values()[v].name, " is not bound");
  }
  if (cfg.train) {
    check_optim_spec(cfg.optim);
    PYL_CHECK_ARG(g_.loss() >= 0, "compile: training needs a loss");
    PYL_CHECK_ARG(static_cast<int>(bind_.state.size()) >= optimizer_state_buffers(cfg.optim.kind),
                  "compile: the optimizer needs ", optimizer_state_buffers(cfg.optim.kind), " state buffers");
  }
#ifdef PYLENET_HAVE_CUDA
  std::optional<cuda::DeviceGuard> guard;  // every CUDA call of the planning on the executor's device
#endif
  if (cfg.device == Device::CUDA) {
#ifdef PYLENET_HAVE_CUDA
    guard.emplace(cfg.cuda_device);
    cuda_ = std::make_unique<CudaState>(cfg.cuda_device);
    workers_.push_back(std::make_unique<Handle>(cuda_->ctx));
    chunk_ = cfg.capacity;
#else
    no_cuda_build("compile(device='cuda')");
#endif
  } else {
    for (int t = 0; t < cfg.threads; ++t) {
      workers_.push_back(std::make_unique<Handle>());
      workers_.back()->set_threads(1);
    }
    wide_ = std::make_unique<Handle>();
    wide_->set_threads(cfg.threads);
    chunk_ = cpu_chunk(cfg.capacity);
  }
  max_chunks_ = (cfg.capacity + chunk_ - 1) / chunk_;
  train_gov_ = infer_gov_ = ThreadGovernor(threads());
  active_ = threads();

  // Graph passes, then (training) the backward graph.
  graph::defer_relu_past_max_pool(g_);
  if (cfg.train) param_grads_ = graph::differentiate(g_);
  bind_.param_offset.resize(g_.values().size(), -1);
  bind_.param_ptr.resize(g_.values().size(), nullptr);
  bind_.buffer_ptr.resize(g_.values().size(), nullptr);
  lower();
  plan_memory();
  choose_algorithms();
  plan_prepared_filters();
  plan_wide_ops();
  set_profiling(false);
}

// ---- lowering: graph nodes -> instructions and phases
void Executor::lower() {
  const auto& nodes = g_.nodes();
  const int V = static_cast<int>(g_.values().size());
  // Which values anything needs: inputs of live nodes, the output, the loss, parameter gradients.
  std::vector<char> used(V, 0), live(nodes.size(), 0);
  if (g_.output() >= 0) used[g_.output()] = 1;
  if (g_.loss() >= 0) used[g_.loss()] = 1;
  for (auto& pg : param_grads_)
    for (int v : pg.contributions) used[v] = 1;
  for (size_t i = nodes.size(); i-- > 0;) {
    const Node& n = nodes[i];
    bool keep = n.op == Op::BatchNorm && n.attrs.training && n.in[3] >= 0;  // updates running statistics
    for (int v : n.out) keep |= used[v] != 0;
    if (!keep) continue;
    live[i] = 1;
    for (int v : n.in)
      if (v >= 0) used[v] = 1;
  }
  const auto need = [&](int v) { return v >= 0 && used[v] ? v : -1; };
  // The value the output aliases through views, whose producer the Classify follows.
  const auto root = [&](int v) {
    while (v >= 0 && g_.value(v).producer >= 0 && nodes[g_.value(v).producer].op == Op::Reshape)
      v = nodes[g_.value(v).producer].in[0];
    return v;
  };
  const int out_root = g_.output() >= 0 ? root(g_.output()) : -1;
  // Per Linear node: its bias gradient, computed with its weight gradient's stash (CPU).
  std::map<int, int> bias_of_linear;
  if (!on_device())
    for (size_t i = 0; i < nodes.size(); ++i)
      if (live[i] && nodes[i].op == Op::LinearBackwardBias) bias_of_linear[nodes[i].attrs.forward] = nodes[i].out[0];
  std::vector<int> stashed_linears;
  // Per convolution: its live backward nodes (data, filter, bias), emitted as one ConvBwd
  // instruction at the first of them where its algorithms fuse the passes (CPU winograd,
  // ops/conv.h conv_run_backward): every input (x, w, dy) exists by then.
  struct ConvBackward { int node[3] = {-1, -1, -1}; bool emitted = false; };
  std::map<int, ConvBackward> conv_backward;
  const auto fusable = [&](const Node& f) {
    if (on_device() || cfg_.conv_algo == ConvAlgo::Auto) return false;  // auto measures each pass alone
    const auto& x = g_.value(f.in[0]).shape;
    ConvShape s = ConvShape::make("conv2d", TensorDesc{chunk_, x[0], x[1], x[2]}, TensorDesc(g_.value(f.in[1]).shape),
                                  ConvDesc{f.attrs.stride, f.attrs.pad});
    const auto algo = [&](ConvPass p) {
      return cfg_.conv_algo == ConvAlgo::Heuristic ? conv_heuristic_algo(Device::CPU, p, s) : cfg_.conv_algo;
    };
    return algo(ConvPass::BackwardFilter) == ConvAlgo::Winograd && algo(ConvPass::BackwardData) == ConvAlgo::Winograd;
  };
  for (size_t i = 0; i < nodes.size(); ++i) {
    const Op op = nodes[i].op;
    if (!live[i] || (op != Op::ConvBackwardData && op != Op::ConvBackwardFilter && op != Op::ConvBackwardBias)) continue;
    const int slot = op == Op::ConvBackwardData ? 0 : op == Op::ConvBackwardFilter ? 1 : 2;
    conv_backward[nodes[i].attrs.forward].node[slot] = static_cast<int>(i);
  }
  for (auto it = conv_backward.begin(); it != conv_backward.end();)
    it = it->second.node[1] >= 0 && need(nodes[it->second.node[1]].out[0]) >= 0 && fusable(nodes[it->first])
             ? std::next(it) : conv_backward.erase(it);

  std::vector<Instr> deferred;  // the Linear weight-gradient jobs, run after every chunk's backward
  const auto emit = [&](Instr ins, int node) {
    ins.node = node;
    ins.label = nodes[node].label();
    instrs_.push_back(std::move(ins));
  };
  for (size_t i = 0; i < nodes.size(); ++i) {
    const Node& n = nodes[i];
    if (!live[i]) continue;
    const int node = static_cast<int>(i);
    const graph::Attrs& a = n.attrs;
    const auto per = [&](int v) { return g_.value(v).numel(); };
    Instr ins{};
    ins.in = n.in;
    for (int v : n.out) ins.out.push_back(need(v));
    switch (n.op) {
      case Op::Input: case Op::Labels: case Op::Param: case Op::Buffer: case Op::Reshape:
        continue;  // sources and views: no instruction
      case Op::Conv2d: {
        const auto& x = g_.value(n.in[0]).shape;
        ins.kind = Instr::ConvFwd;
        ins.conv = ConvShape::make("conv2d", TensorDesc{1, x[0], x[1], x[2]}, TensorDesc(g_.value(n.in[1]).shape),
                                   ConvDesc{a.stride, a.pad});
        break;
      }
      case Op::ConvBackwardData:
      case Op::ConvBackwardFilter:
      case Op::ConvBackwardBias: {
        const Node& f = nodes[a.forward];
        const auto& x = g_.value(f.in[0]).shape;
        ins.conv = ConvShape::make("conv2d", TensorDesc{1, x[0], x[1], x[2]}, TensorDesc(g_.value(f.in[1]).shape),
                                   ConvDesc{f.attrs.stride, f.attrs.pad});
        ins.kind = n.op == Op::ConvBackwardData ? Instr::ConvBwdData
                   : n.op == Op::ConvBackwardFilter ? Instr::ConvBwdFilter : Instr::ConvBwdBias;
        auto fused = conv_backward.find(a.forward);
        if (fused != conv_backward.end()) {
          if (fused->second.emitted) continue;  // part of the ConvBwd already emitted
          fused->second.emitted = true;
          const auto out_of = [&](int slot) { return fused->second.node[slot] >= 0 ? need(nodes[fused->second.node[slot]].out[0]) : -1; };
          ins.kind = Instr::ConvBwd;
          ins.in = {f.in[0], f.in[1], n.op == Op::ConvBackwardFilter ? n.in[1] : n.in[0]};  // x, w, dy
          ins.out = {out_of(0), out_of(1), out_of(2)};
          emit(ins, fused->second.node[1]);
          instrs_.back().label = "conv2d_backward";
          continue;
        }
        break;
      }
      case Op::Linear:
        ins.kind = Instr::LinearFwd;
        ins.a = g_.value(n.in[1]).shape[1];
        ins.b = g_.value(n.in[1]).shape[0];
        break;
      case Op::LinearBackwardData:
        ins.kind = Instr::LinearBwdData;
        ins.a = g_.value(n.in[1]).shape[1];
        ins.b = g_.value(n.in[1]).shape[0];
        break;
      case Op::LinearBackwardWeight: {
        ins.a = a.shape[1];
        ins.b = a.shape[0];
        if (on_device()) {
          ins.kind = Instr::LinearBwdWeight;
          break;
        }
        // CPU: stash X (packed) and dY per chunk; one product over the whole batch later.
        Store::Stash st;
        st.x = n.in[0];
        st.dy = n.in[1];
        st.dw = ins.out[0];
        auto b = bias_of_linear.find(a.forward);
        if (b != bias_of_linear.end()) {
          st.db = b->second;
          stashed_linears.push_back(a.forward);
        }
        st.in = ins.a;
        st.out = ins.b;
        ins.kind = Instr::LinearStash;
        ins.linear = static_cast<int>(store_->stashes.size());
        store_->stashes.push_back(st);
        const int64_t rows = grad_rows(st.in);
        for (int64_t r = 0; r < st.out; r += rows) {
          Instr job{};
          job.kind = Instr::LinearGradJob;
          job.batch = true;
          job.linear = ins.linear;
          job.r0 = r;
          job.r1 = std::min(r + rows, st.out);
          job.node = node;
          job.label = "linear_backward_weight";
          job.out = {st.dw, st.db};
          deferred.push_back(job);
        }
        break;
      }
      case Op::LinearBackwardBias:
        if (!on_device() && std::find(stashed_linears.begin(), stashed_linears.end(), a.forward) != stashed_linears.end())
          continue;  // computed with the weight gradient, from the stashed dY
        ins.kind = Instr::LinearBwdBias;
        ins.b = a.shape[0];
        break;
      case Op::Pool2d:
      case Op::Pool2dBackward: {
        const auto& x = n.op == Op::Pool2d ? g_.value(n.in[0]).shape : a.shape;
        ins.pool = PoolShape::make("pool2d", TensorDesc{1, x[0], x[1], x[2]}, PoolDesc{a.pool, a.kernel, a.stride, a.pad});
        ins.kind = n.op == Op::Pool2d ? Instr::PoolFwd : Instr::PoolBwd;
        break;
      }
      case Op::Activation: ins.kind = Instr::ActFwd; ins.a = per(n.in[0]); break;
      case Op::ActivationBackward: ins.kind = Instr::ActBwd; ins.a = per(n.in[1]); break;
      case Op::Add: ins.kind = Instr::Add; ins.a = per(n.in[0]); break;
      case Op::Cat: ins.kind = Instr::Cat; ins.a = per(n.out[0]); break;
      case Op::Slice: {
        const auto& s = g_.value(n.in[0]).shape;
        int64_t rest = 1;
        for (size_t k = 1; k < s.size(); ++k) rest *= s[k];
        ins.kind = Instr::Slice;
        ins.a = a.offset * rest;  // offset and size in floats per sample
        ins.b = a.size * rest;
        break;
      }
      case Op::Dropout: ins.kind = Instr::DropoutFwd; ins.a = per(n.in[0]); break;
      case Op::DropoutBackward: ins.kind = Instr::DropoutBwd; ins.a = per(n.in[0]); break;
      case Op::BatchNorm:
      case Op::BatchNormBackward: {
        const auto& x = g_.value(n.in[0]).shape;
        ins.a = x[0];  // channels
        ins.b = 1;     // values per channel per sample
        for (size_t k = 1; k < x.size(); ++k) ins.b *= x[k];
        const int64_t partial = 2 * batch_norm_partial_doubles(ins.a);  // floats of one chunk's partial sums
        if (n.op == Op::BatchNorm && !a.training) {
          ins.kind = Instr::BnInference;
          break;
        }
        if (n.op == Op::BatchNormBackward && !a.training) {
          ins.kind = Instr::BnInferenceBwd;
          break;
        }
        // Training: partial sums per chunk, a batch finalize, then apply per chunk.
        ins.fixed = store_->fixed_floats;
        store_->fixed_floats += round16(partial * max_chunks_);
        Instr fin = ins, app = ins;
        const int64_t coef = store_->fixed_floats;  // backward: mean(dy), mean(dy * xhat)
        if (n.op == Op::BatchNormBackward) store_->fixed_floats += round16(2 * ins.a);
        ins.kind = n.op == Op::BatchNorm ? Instr::BnStats : Instr::BnBwdPartial;
        fin.kind = n.op == Op::BatchNorm ? Instr::BnStatsFinalize : Instr::BnBwdFinalize;
        fin.batch = true;
        app.kind = n.op == Op::BatchNorm ? Instr::BnApply : Instr::BnBwdApply;
        fin.r0 = ins.fixed;  // the finalize reads the chunks' partials there
        if (n.op == Op::BatchNormBackward) {
          app.fixed = fin.fixed = coef;
        } else {  // the unbiased variance, for the running statistics once the step is accepted
          fin.fixed = store_->fixed_floats;
          store_->fixed_floats += round16(ins.a);
        }
        emit(ins, node);
        emit(fin, node);
        emit(app, node);
        if (n.out[0] == out_root) {
          Instr cls{};
          cls.kind = Instr::Classify;
          cls.in = {g_.output(), g_.labels()};
          emit(cls, node);
          instrs_.back().label = "classify";
        }
        continue;
      }
      case Op::Softmax: ins.kind = Instr::SoftmaxFwd; ins.a = per(n.in[0]); break;
      case Op::SoftmaxBackward: ins.kind = Instr::SoftmaxBwd; ins.a = per(n.in[0]); break;
      case Op::CrossEntropy: ins.kind = Instr::CrossEntropy; ins.a = per(n.in[0]); break;
      case Op::CrossEntropyBackward: ins.kind = Instr::CrossEntropyBwd; ins.a = per(n.in[0]); break;
      case Op::NllLoss: ins.kind = Instr::Nll; ins.a = per(n.in[0]); break;
      case Op::NllLossBackward: ins.kind = Instr::NllBwd; ins.a = a.shape[0]; break;
    }
    emit(ins, node);
    if (!n.out.empty() && n.out[0] == out_root) {  // accuracy and the non-finite check, right after the output
      Instr cls{};
      cls.kind = Instr::Classify;
      cls.in = {g_.output(), g_.labels()};
      emit(cls, node);
      instrs_.back().label = "classify";
    }
  }
  if (out_root >= 0 && g_.value(out_root).producer >= 0 &&
      (nodes[g_.value(out_root).producer].op == Op::Input)) {  // the model is a view of its input
    Instr cls{};
    cls.kind = Instr::Classify;
    cls.in = {g_.output(), g_.labels()};
    cls.node = g_.value(out_root).producer;
    cls.label = "classify";
    instrs_.insert(instrs_.begin(), cls);
  }
  const auto cost = [&](const Instr& j) { return (j.r1 - j.r0) * store_->stashes[j.linear].in; };
  std::stable_sort(deferred.begin(), deferred.end(), [&](const Instr& x, const Instr& y) {
    return cost(x) > cost(y);  // largest jobs first: claimed first, the small ones fill in
  });
  if ((on_device() && cfg_.fuse) || cfg_.device_rules) {
    fuse_relu();
    if (cfg_.train && cfg_.capacity <= 1024) fuse_loss_head();  // one CUDA block does the whole batch
  } else if (!on_device() && cfg_.fuse) {
    fuse_conv_max_pool();
  }
  // Phases: runs of chunk instructions, split by batch instructions; the Linear jobs last.
  for (size_t k = 0; k < instrs_.size(); ++k) {
    if (instrs_[k].batch || phases_.empty() || phases_.back().batch) phases_.push_back(Phase{instrs_[k].batch, {}});
    phases_.back().instrs.push_back(static_cast<int>(k));
  }
  if (!deferred.empty()) {
    phases_.push_back(Phase{true, {}});
    for (Instr& j : deferred) {
      phases_.back().instrs.push_back(static_cast<int>(instrs_.size()));
      instrs_.push_back(std::move(j));
    }
  }
  if (g_.loss() >= 0) {
    const int logits = g_.nodes()[g_.value(g_.loss()).producer].in[0];
    store_->classes = static_cast<int>(g_.value(logits).numel());
  }
  store_->out_floats = g_.output() >= 0 ? g_.value(g_.output()).numel() : 0;
}

// CUDA: a ReLU right after a pooling (as defer_relu_past_max_pool leaves LeNets), a convolution
// or a Linear layer becomes that kernel's epilogue: one launch and one pass over the tensor
// less, the same bits (cuda/pool.cu, conv.cu, gemm.cu). After a pooling its backward becomes
// part of the pooling's backward too (which then reads the ReLU's output); after a convolution
// or a Linear layer it stays (their backward passes never read the pre-activation value).
// Only where that value feeds nothing but the ReLU (nor is the output), and, when folding the
// backward, the ReLU's gradient nothing but the pooling's backward. The CPU keeps them apart:
// its chunks are in cache, a pass costs little there.
int Executor::view_root(int v) const {
  const auto& nodes = g_.nodes();
  while (v >= 0 && g_.value(v).producer >= 0 && nodes[g_.value(v).producer].op == Op::Reshape)
    v = nodes[g_.value(v).producer].in[0];
  return v;
}

std::vector<int> Executor::readers_by_root() const {
  std::vector<int> readers(g_.values().size(), 0);
  for (const Instr& ins : instrs_)
    for (int v : ins.in)
      if (v >= 0) ++readers[view_root(v)];
  return readers;
}

void Executor::drop_instrs(const std::vector<char>& drop) {
  std::vector<Instr> kept;
  for (size_t k = 0; k < instrs_.size(); ++k)
    if (!drop[k]) kept.push_back(std::move(instrs_[k]));
  instrs_ = std::move(kept);
}

void Executor::fuse_relu() {
  const auto& nodes = g_.nodes();
  const auto root = [&](int v) { return view_root(v); };
  const std::vector<int> readers = readers_by_root();
  const int out_root = g_.output() >= 0 ? root(g_.output()) : -1;
  const auto first_of = [&](Instr::Kind kind, const auto& pred) -> int {
    for (size_t k = 0; k < instrs_.size(); ++k)
      if (instrs_[k].kind == kind && pred(instrs_[k])) return static_cast<int>(k);
    return -1;
  };
  std::vector<char> drop(instrs_.size(), 0);
  for (size_t k = 0; k < instrs_.size(); ++k) {
    Instr& pool = instrs_[k];  // or the convolution / Linear layer
    const bool is_pool = pool.kind == Instr::PoolFwd;
    const bool foldable = is_pool || pool.kind == Instr::ConvFwd || pool.kind == Instr::LinearFwd;
    const int p = foldable && !pool.out.empty() ? pool.out[0] : -1;
    if (p < 0 || root(p) != p || p == out_root || readers[p] != 1) continue;
    const int a = first_of(Instr::ActFwd, [&](const Instr& j) {
      return j.in[0] == p && nodes[j.node].attrs.act == Activation::ReLU && j.out[0] >= 0;
    });
    if (a < 0) continue;
    const Instr act = instrs_[a];
    // Its backward, if any: relu_backward(y, dy) -> dz, read by nothing but the pooling's backward.
    const int b = !is_pool ? -1 : first_of(Instr::ActBwd, [&](const Instr& j) {
      return nodes[j.node].attrs.forward == act.node;
    });
    int q = -1;
    if (b >= 0) {
      const int dz = instrs_[b].out[0];
      q = first_of(Instr::PoolBwd, [&](const Instr& j) {
        return nodes[j.node].attrs.forward == pool.node && j.in[1] == dz;
      });
      if (dz < 0 || root(dz) != dz || readers[dz] != 1 || q < 0 || instrs_[b].in[0] != act.out[0]) continue;
    }
    pool.out[0] = act.out[0];
    pool.relu = true;
    pool.label += "+relu";
    drop[a] = 1;
    if (b >= 0) {
      Instr& back = instrs_[q];
      back.in = {back.in[0], instrs_[b].in[1], act.out[0]};  // x, the ReLU output's gradient, the ReLU's output
      back.relu = true;
      back.label += "+relu";
      drop[b] = 1;
    }
  }
  drop_instrs(drop);
}

// CPU: a 2x2, stride-2 max pooling that alone reads a convolution's output (and, training, its
// backward) joins the convolution's instruction. Where the convolution runs winograd (the
// second layers of mnist_net and cudnn_lenet) the pooling is done on the output tiles in
// registers and the convolution's output is never written: mnist_net's conv2 wrote 147 KB per
// image back to NCHW (15 of its 62 us) for the pooling to read again (8 us). Otherwise the
// instruction runs the two kernels, through the convolution's own output (out[1]), which the
// plan keeps for that. Training keeps each window's winner in that output's place (a quarter
// of it) either way, and the pooling's backward scatters its gradient by them rather than
// finding the winners again in the convolution's output.
void Executor::fuse_conv_max_pool() {
  const auto& nodes = g_.nodes();
  const std::vector<int> readers = readers_by_root();  // a view's reader reads its root too
  const int out_root = g_.output() >= 0 ? view_root(g_.output()) : -1;
  std::vector<char> drop(instrs_.size(), 0);
  std::vector<std::pair<int, int>> pairs;  // (pooling's backward, its convolution's forward) to link after the drop
  for (size_t k = 0; k + 1 < instrs_.size(); ++k) {
    Instr& conv = instrs_[k];
    if (conv.kind != Instr::ConvFwd || conv.relu || conv.out.empty()) continue;
    const int y = conv.out[0];
    if (y < 0 || view_root(y) != y || y == out_root) continue;
    size_t q = k + 1;
    while (q < instrs_.size() && !(instrs_[q].kind == Instr::PoolFwd && instrs_[q].in[0] == y)) ++q;
    if (q == instrs_.size()) continue;
    const Instr& pool = instrs_[q];
    const PoolShape& p = pool.pool;
    if (nodes[pool.node].attrs.pool != PoolMode::Max || pool.relu || p.kh != 2 || p.kw != 2 || p.sh != 2 ||
        p.sw != 2 || p.ph != 0 || p.pw != 0 || p.oh != conv.conv.oh / 2 || p.ow != conv.conv.ow / 2)
      continue;
    // Training: the pooling's backward, reading y as its input, is y's only other reader.
    int back = -1;
    for (size_t b = q + 1; b < instrs_.size(); ++b)
      if (instrs_[b].kind == Instr::PoolBwd && nodes[instrs_[b].node].attrs.forward == pool.node &&
          !instrs_[b].in.empty() && instrs_[b].in[0] == y && !instrs_[b].relu)
        back = static_cast<int>(b);
    if (readers[y] != (back >= 0 ? 2 : 1)) continue;
    // The pooling reads y alone, which nothing else reads: it can run at the convolution's place.
    conv.out = {pool.out[0], y};
    conv.max_pool = true;
    conv.pool = p;
    conv.label += "+max_pool2d";
    drop[q] = 1;
    if (back < 0) continue;
    // And where the pooling's gradient feeds nothing but this convolution's one-pass backward
    // (conv2d_backward: winograd), that joins it too: dy is then the pooled gradient, in[3] y,
    // and out[3] the convolution's gradient for the chunks whose passes cannot read the winners.
    const int dconv = instrs_[back].out[0];
    int cb = -1;
    if (dconv >= 0 && view_root(dconv) == dconv && readers[dconv] == 1)
      for (size_t b = back + 1; b < instrs_.size(); ++b)
        if (instrs_[b].kind == Instr::ConvBwd && instrs_[b].in[2] == dconv && instrs_[b].in[0] == conv.in[0] &&
            instrs_[b].in[1] == conv.in[1])
          cb = static_cast<int>(b);
    if (cb >= 0) {
      Instr& c = instrs_[cb];
      // The scratch only where some chunk size may take another algorithm (the heuristic's
      // 5x5 rule below 4 images; 3x3 layers are winograd for any count): mnist_net's would be
      // 4.7 MB of plan never used.
      bool always = cfg_.conv_algo == ConvAlgo::Winograd;
      if (cfg_.conv_algo == ConvAlgo::Heuristic) {
        always = true;
        for (int64_t m = 1; m <= chunk_; ++m) {
          ConvShape sm = c.conv;
          sm.n = m;
          always = always && conv_heuristic_algo(cfg_.device, ConvPass::BackwardFilter, sm) == ConvAlgo::Winograd &&
                   (c.out[0] < 0 || conv_heuristic_algo(cfg_.device, ConvPass::BackwardData, sm) == ConvAlgo::Winograd);
        }
      }
      c.in = {c.in[0], c.in[1], instrs_[back].in[1], y};
      c.out.push_back(always ? -1 : dconv);
      c.pool = p;
      c.label += "+max_pool2d";
      drop[back] = 1;
      pairs.emplace_back(cb, static_cast<int>(k));
    } else {
      pairs.emplace_back(back, static_cast<int>(k));
    }
  }
  // Positions after the drop, for the links.
  std::vector<int> after(instrs_.size(), -1);
  for (size_t k = 0, kept = 0; k < instrs_.size(); ++k)
    if (!drop[k]) after[k] = static_cast<int>(kept++);
  for (auto [back, conv] : pairs) instrs_[back].fused_conv = after[conv];
  drop_instrs(drop);
}

// CUDA, training: the loss, its gradient and the accuracy count in one launch (ops/loss.h
// loss_head: the same bits as the three) at the loss's place; the gradient is then written
// early, which only lengthens its slot's life by the loss-to-backward stretch.
void Executor::fuse_loss_head() {
  const auto root = [&](int v) { return view_root(v); };
  int cls = -1, loss = -1, back = -1;
  for (size_t k = 0; k < instrs_.size(); ++k) {
    const Instr::Kind kind = instrs_[k].kind;
    if (kind == Instr::Classify && cls < 0) cls = static_cast<int>(k);
    if (kind == Instr::CrossEntropy || kind == Instr::Nll) loss = static_cast<int>(k);
    if (kind == Instr::CrossEntropyBwd || kind == Instr::NllBwd) back = static_cast<int>(k);
  }
  if (cls < 0 || loss < 0 || back < 0) return;
  const Instr& l = instrs_[loss];
  const Instr& b = instrs_[back];
  const bool nll = l.kind == Instr::Nll;
  if ((b.kind == Instr::NllBwd) != nll || root(instrs_[cls].in[0]) != root(l.in[0]) || b.out.empty() || b.out[0] < 0 ||
      (!nll && b.in[0] != l.in[0]))
    return;
  Instr f = l;
  f.kind = Instr::LossHead;
  f.in = {l.in[0], l.in[1], instrs_[cls].in[0]};  // scores, labels, the output (classify's view of the scores)
  f.out = {b.out[0]};
  f.b = nll ? 1 : 0;
  f.label = "loss_head";
  instrs_[loss] = std::move(f);
  for (int k : {std::max(cls, back), std::min(cls, back)}) instrs_.erase(instrs_.begin() + k);
}

// ---- memory: every value's home, arenas by liveness
void Executor::plan_memory() {
  Store& st = *store_;
  const auto& nodes = g_.nodes();
  const int V = static_cast<int>(g_.values().size());
  st.at.assign(V, {});
  std::vector<int> alias(V);
  for (int v = 0; v < V; ++v) alias[v] = v;
  for (const Node& n : nodes)
    if (n.op == Op::Reshape) alias[n.out[0]] = n.in[0];
  const auto root = [&](int v) {
    while (alias[v] != v) v = alias[v];
    return v;
  };
  // Sources and fixed values.
  for (int v = 0; v < V; ++v) {
    const graph::Value& val = g_.value(v);
    const Op op = val.producer >= 0 ? nodes[val.producer].op : Op::Input;
    auto& s = st.at[v];
    if (op == Op::Input) s = {Home::Input, 0, val.numel()};
    else if (op == Op::Labels) s = {Home::Labels, 0, 1};
    else if (op == Op::Param) s = {Home::Param, bind_.param_offset[v], val.numel()};
    else if (op == Op::Buffer) s = {Home::Buffer, 0, val.numel()};
  }
  // Gradient contributions of the parameters.
  std::vector<char> batch_made(V, 0);
  for (const Instr& ins : instrs_)
    if (ins.kind == Instr::LinearGradJob || ins.kind == Instr::BnBwdFinalize)
      for (int v : ins.out)
        if (v >= 0) batch_made[v] = 1;
  for (auto& pg : param_grads_) {
    const int64_t count = g_.value(pg.param).numel();
    const bool single = pg.contributions.size() == 1;
    for (int v : pg.contributions) {
      auto& s = st.at[v];
      s.floats = count;
      if (single && (batch_made[v] || max_chunks_ == 1)) {
        s.home = Home::GradDirect;
        s.offset = bind_.param_offset[pg.param];
      } else if (batch_made[v]) {
        s.home = Home::GradBatch;
        s.offset = st.batch_grad_floats;
        st.batch_grad_floats += round16(count);
      } else {
        s.home = Home::GradChunk;
        s.offset = st.chunk_grad_floats;
        st.chunk_grad_floats += round16(count);
      }
    }
  }
  // Batch statistics (batch norm's mean and invstd): the fixed arena.
  for (const Instr& ins : instrs_)
    if (ins.kind == Instr::BnStatsFinalize)
      for (size_t k = 1; k < ins.out.size(); ++k) {
        const int v = ins.out[k];
        if (v < 0) continue;
        st.at[v] = {Home::Fixed, st.fixed_floats, g_.value(v).numel()};
        st.fixed_floats += round16(g_.value(v).numel());
      }
  // BnStatsFinalize always writes mean/invstd: give unneeded ones a place too.
  for (Instr& ins : instrs_)
    if (ins.kind == Instr::BnStatsFinalize || ins.kind == Instr::BnStats || ins.kind == Instr::BnApply)
      for (size_t k = 1; k < ins.out.size(); ++k)
        if (ins.out[k] < 0) {
          const int v = g_.nodes()[ins.node].out[k];
          ins.out[k] = v;
          if (st.at[v].home == Home::None) {
            st.at[v] = {Home::Fixed, st.fixed_floats, g_.value(v).numel()};
            st.fixed_floats += round16(g_.value(v).numel());
          }
        }

  // Liveness of batch values over the instruction order (phases flattened).
  std::vector<int> order;
  std::vector<int> phase_of_pos;
  for (size_t p = 0; p < phases_.size(); ++p)
    for (int k : phases_[p].instrs) {
      order.push_back(k);
      phase_of_pos.push_back(static_cast<int>(p));
    }
  std::vector<int> first(V, -1), last(V, -1);
  const auto is_batch_value = [&](int v) {
    return v >= 0 && g_.value(v).kind == ValueKind::Sample && st.at[v].home == Home::None;
  };
  for (size_t pos = 0; pos < order.size(); ++pos) {
    const Instr& ins = instrs_[order[pos]];
    for (int v : ins.in)
      if (v >= 0 && is_batch_value(root(v))) last[root(v)] = static_cast<int>(pos);
    for (int v : ins.out)
      if (v >= 0 && is_batch_value(root(v))) {
        if (first[root(v)] < 0) first[root(v)] = static_cast<int>(pos);
        last[root(v)] = std::max(last[root(v)], static_cast<int>(pos));
      }
  }
  // Arena class: worker-local if written and last read within one chunk phase.
  std::vector<char> in_chunk_arena(V, 0);
  for (int v = 0; v < V; ++v)
    if (first[v] >= 0) in_chunk_arena[v] = phase_of_pos[first[v]] != phase_of_pos[last[v]];
  ArenaAllocator worker, chunk;
  std::vector<char> passed(V, 0);  // an input whose slot an in-place output took over
  for (size_t pos = 0; pos < order.size(); ++pos) {
    const Instr& ins = instrs_[order[pos]];
    const bool elementwise = ins.kind == Instr::ActFwd || ins.kind == Instr::ActBwd || ins.kind == Instr::DropoutFwd ||
                             ins.kind == Instr::DropoutBwd || ins.kind == Instr::Add;
    for (int o : ins.out) {
      if (o < 0 || root(o) != o || !is_batch_value(o) || first[o] != static_cast<int>(pos)) continue;
      const int64_t floats = round16(chunk_ * g_.value(o).numel());
      st.unshared += floats;
      auto& so = st.at[o];
      so.floats = g_.value(o).numel();
      // In place: an element-wise op writes over an input that dies here (never the caller's input).
      if (elementwise) {
        bool done = false;
        for (int i : ins.in) {
          if (i < 0) continue;
          const int r = root(i);
          const bool in_arena = st.at[r].home == Home::Worker || st.at[r].home == Home::Chunk;
          if (passed[r] || last[r] != static_cast<int>(pos) || !in_arena || in_chunk_arena[r] != in_chunk_arena[o] ||
              g_.value(r).numel() != g_.value(o).numel())
            continue;
          so.home = st.at[r].home;
          so.offset = st.at[r].offset;
          passed[r] = 1;
          done = true;
          break;
        }
        if (done) continue;
      }
      ArenaAllocator& arena = in_chunk_arena[o] ? chunk : worker;
      so.home = in_chunk_arena[o] ? Home::Chunk : Home::Worker;
      so.offset = arena.allocate(floats);
      arena.note();
    }
    // Values whose last use is here go back to their arena.
    std::vector<int> dying;
    for (int v : ins.in)
      if (v >= 0) dying.push_back(root(v));
    for (int v : ins.out)
      if (v >= 0) dying.push_back(root(v));
    std::sort(dying.begin(), dying.end());
    dying.erase(std::unique(dying.begin(), dying.end()), dying.end());
    for (int r : dying) {
      if (!is_batch_value(r) && !(st.at[r].home == Home::Worker || st.at[r].home == Home::Chunk)) continue;
      if (last[r] != static_cast<int>(pos) || passed[r]) continue;
      if (st.at[r].home != Home::Worker && st.at[r].home != Home::Chunk) continue;
      (st.at[r].home == Home::Chunk ? chunk : worker).release(st.at[r].offset, round16(chunk_ * g_.value(r).numel()));
    }
  }
  // Views share their root's slot.
  for (int v = 0; v < V; ++v)
    if (root(v) != v) {
      const auto home = st.at[root(v)];
      st.at[v] = {home.home, home.offset, g_.value(v).numel()};
    }
  st.worker_floats = round16(worker.peak());
  st.chunk_floats = round16(chunk.peak());

  // Allocate. Sizes are per worker / per chunk of the largest batch. The whole plan is sized
  // first: one that cannot fit in this machine's memory fails here, before anything is taken.
  const Device dev = cfg_.device;
  const int cd = cfg_.cuda_device;
  const auto bytes = [](int64_t floats) { return static_cast<size_t>(sizeof(float) * std::max<int64_t>(floats, 0)); };
  for (auto& s : st.stashes) {
    st.stash_x_floats += round16(cpu::sgemm_packed_b_floats(cfg_.capacity, s.in));
    st.stash_dy_floats += round16(cfg_.capacity * s.out);
  }
  const int64_t sample = g_.value(g_.input()).numel();
  const double planned = static_cast<double>(bytes(st.worker_floats) * threads()) +
                         static_cast<double>(bytes(st.chunk_floats)) * static_cast<double>(max_chunks_) +
                         static_cast<double>(bytes(st.fixed_floats) + bytes(cfg_.train ? bind_.num_params : 0)) +
                         static_cast<double>(bytes(st.chunk_grad_floats)) * static_cast<double>(max_chunks_) +
                         static_cast<double>(bytes(st.batch_grad_floats) + bytes(st.stash_x_floats + st.stash_dy_floats)) +
                         static_cast<double>(bytes(cfg_.capacity * sample) + 8 * cfg_.capacity);
  if (dev == Device::CPU) {
    const double physical = static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGE_SIZE));
    if (physical > 0 && planned > physical)
      fail(ErrorKind::OutOfMemory, "compile: the memory plan for a batch of ", cfg_.capacity, " needs ",
           static_cast<int64_t>(planned), " bytes, more than this machine's ", static_cast<int64_t>(physical),
           " bytes of memory; use a smaller batch size");
  }
  st.worker = Memory(dev, cd, bytes(st.worker_floats * threads()));
  st.chunk = Memory(dev, cd, bytes(st.chunk_floats * max_chunks_));
  st.fixed = Memory(dev, cd, bytes(st.fixed_floats));
  st.grads = Memory(dev, cd, bytes(cfg_.train ? std::max<int64_t>(bind_.num_params, 1) : 0));
  st.chunk_grads = Memory(dev, cd, bytes(st.chunk_grad_floats * max_chunks_));
  st.batch_grads = Memory(dev, cd, bytes(st.batch_grad_floats));
  st.stash = Memory(dev, cd, bytes(st.stash_x_floats + st.stash_dy_floats));
  float* sp = st.stash.floats();
  for (auto& s : st.stashes) {
    s.packed_x = sp;
    sp += round16(cpu::sgemm_packed_b_floats(cfg_.capacity, s.in));
    s.saved_dy = sp;
    sp += round16(cfg_.capacity * s.out);
  }
  st.loss.assign(max_chunks_, 0.0);
  st.correct.assign(max_chunks_, 0);
  st.bad.assign(max_chunks_, 0);
  if (cfg_.train || dev == Device::CUDA) {  // batches are gathered (or copied to the device) here
    st.input = Memory(dev, cd, bytes(round16(cfg_.capacity * sample)));
    st.labels = Memory(dev, cd, sizeof(int64_t) * cfg_.capacity);
  }
#ifdef PYLENET_HAVE_CUDA
  if (cuda_) cuda_allocate();
#endif
}

// ---- algorithms and workspace, fixed now for a chunk ("auto" measures on these buffers)
void Executor::choose_algorithms() {
  Store& st = *store_;
  Handle& h = *workers_[0];
  int64_t ws = 0;
  // "auto" measures on real buffers: a zeroed batch stands in for the input.
  const Memory probe(cfg_.device, cfg_.cuda_device, sizeof(float) * chunk_ * g_.value(g_.input()).numel());
  x_ = probe.floats();
  for (Instr& ins : instrs_) {
    switch (ins.kind) {
      case Instr::ConvFwd:
      case Instr::ConvBwdData:
      case Instr::ConvBwdFilter: {
        const ConvPass pass = ins.kind == Instr::ConvFwd ? ConvPass::Forward
                              : ins.kind == Instr::ConvBwdData ? ConvPass::BackwardData : ConvPass::BackwardFilter;
        ConvShape s = ins.conv;
        s.n = chunk_;
        const float* x = pass == ConvPass::BackwardData ? nullptr : ptr(ins.in[0], 0, 0);
        const float* w = pass == ConvPass::BackwardFilter ? nullptr : ptr(ins.in[1], 0, 0);
        const float* dy = pass == ConvPass::Forward ? nullptr : ptr(ins.in[pass == ConvPass::BackwardData ? 0 : 1], 0, 0);
        const int o = ins.max_pool ? ins.out[1] : ins.out[0];  // the convolution's own output
        float* out = o >= 0 ? (pass == ConvPass::BackwardFilter ? grad_ptr(o, 0) : ptr(o, 0, 0)) : nullptr;
        if (!out) break;
        try {
          ins.algo = conv_resolve_algo(h, cfg_.conv_algo, pass, s, x, w, dy, out);
          // The rule depends on the images per call (a single image through model(x), a
          // batch's short last chunk), so it is applied per call (conv_algo_for); the
          // workspace covers its choice for one image too.
          if (cfg_.conv_algo == ConvAlgo::Heuristic) {
            ConvShape one = s;
            one.n = 1;
            ws = std::max<int64_t>(ws, static_cast<int64_t>(conv_workspace_size(
                                           h, conv_heuristic_algo(h.device(), pass, one), pass, s)));
          }
        } catch (const Error& e) {
          const Node& n = g_.nodes()[ins.node];
          fail(e.kind(), n.scope.empty() ? "" : n.scope + " ", n.where.empty() ? "" : "(" + n.where + ") ", e.what());
        }
        ws = std::max<int64_t>(ws, static_cast<int64_t>(conv_workspace_size(h, ins.algo, pass, s)));
        break;
      }
      case Instr::ConvBwd: {
        ConvShape s = ins.conv;
        s.n = chunk_;
        float* dx = ptr(ins.out[0], 0, 0);  // null: nothing needs the input gradient
        try {
          // A folded pooling's backward (fuse_conv_max_pool): the convolution's gradient is out[3],
          // or (always winograd) nowhere: the pooled gradient then stands in, as large as needed
          // only for "auto", which keeps the passes apart and never gets here.
          const float* dy = ptr(ins.fused_conv >= 0 && ins.out[3] >= 0 ? ins.out[3] : ins.in[2], 0, 0);
          ins.algo = conv_resolve_algo(h, cfg_.conv_algo, ConvPass::BackwardFilter, s, ptr(ins.in[0], 0, 0), nullptr,
                                       dy, grad_ptr(ins.out[1], 0));
          ins.algo_data = dx ? conv_resolve_algo(h, cfg_.conv_algo, ConvPass::BackwardData, s, nullptr,
                                                 ptr(ins.in[1], 0, 0), dy, dx)
                             : ins.algo;
        } catch (const Error& e) {
          const Node& n = g_.nodes()[ins.node];
          fail(e.kind(), n.scope.empty() ? "" : n.scope + " ", n.where.empty() ? "" : "(" + n.where + ") ", e.what());
        }
        ws = std::max<int64_t>(ws, static_cast<int64_t>(conv_backward_workspace_size(h, ins.algo_data, ins.algo, s)));
        if (cfg_.conv_algo == ConvAlgo::Heuristic) {  // the rule per call (see above)
          ConvShape one = s;
          one.n = 1;
          ws = std::max<int64_t>(ws, static_cast<int64_t>(conv_backward_workspace_size(
                                         h, conv_heuristic_algo(h.device(), ConvPass::BackwardData, one),
                                         conv_heuristic_algo(h.device(), ConvPass::BackwardFilter, one), s)));
        }
        break;
      }
      case Instr::LinearFwd:
      case Instr::LinearBwdData:
        if (!on_device())
          ws = std::max<int64_t>(ws, sizeof(float) * cpu::linear_workspace_floats(LinearShape{chunk_, ins.a, ins.b}));
        break;
      case Instr::PoolBwd:  // the CPU's folded ReLU (Config::device_rules) takes its gradient there
        if (ins.relu && !on_device())
          ws = std::max<int64_t>(ws, sizeof(float) * chunk_ * ins.pool.c * ins.pool.oh * ins.pool.ow);
        break;
      case Instr::LinearGradJob: {
        const auto& s = st.stashes[ins.linear];
        ws = std::max<int64_t>(
            ws, sizeof(float) * cpu::sgemm_workspace_floats(std::min(grad_rows(s.in), s.out), s.in, cfg_.capacity));
        break;
      }
      default: break;
    }
  }
  x_ = nullptr;
  st.workspace_bytes = ws;
  for (auto& w : workers_) w->workspace(static_cast<size_t>(ws));
  // "auto" wrote into the buffers it measured on.
#ifdef PYLENET_HAVE_CUDA
  if (cuda_) {
    cudaStream_t stream = cuda_->ctx.stream();
    PYL_CUDA_CHECK(cudaMemsetAsync(st.grads.data(), 0, st.grads.bytes(), stream));
    if (st.chunk_grads.bytes()) PYL_CUDA_CHECK(cudaMemsetAsync(st.chunk_grads.data(), 0, st.chunk_grads.bytes(), stream));
    cuda_->synchronize();
    return;
  }
#endif
  if (st.grads.bytes()) std::memset(st.grads.data(), 0, st.grads.bytes());  // (an inference plan has none)
  if (st.chunk_grads.bytes()) std::memset(st.chunk_grads.data(), 0, st.chunk_grads.bytes());
}

void Executor::plan_prepared_filters() {
  if (on_device()) return;
  Store& st = *store_;
  int64_t total = 0;  // floats
  for (size_t i = 0; i < instrs_.size(); ++i) {
    Instr& ins = instrs_[i];
    if (cfg_.train || ins.kind != Instr::ConvFwd) continue;
    // Only filters the forward pass reads as they are stored (parameters, buffers): one that
    // the graph computes changes within the call, after the check.
    const auto stored = [&](size_t k) {
      if (k >= ins.in.size() || ins.in[k] < 0) return k == 2;  // no bias is fine
      const Home home = st.at[ins.in[k]].home;
      return home == Home::Param || home == Home::Buffer;
    };
    if (!stored(1) || !stored(2)) continue;
    ConvShape s = ins.conv;
    s.n = chunk_;
    const int64_t floats = conv_prepared_filter_floats(cfg_.device, ins.algo, s);
    if (floats == 0) continue;
    const auto aligned = [](int64_t f) { return (f + 15) / 16 * 16; };  // 64 bytes
    Store::Prepared p;
    p.instr = static_cast<int>(i);
    p.offset = total;
    p.floats = aligned(floats);
    p.seen = p.offset + p.floats;
    p.seen_floats = s.k * s.c * s.r * s.s + (ins.in.size() > 2 && ins.in[2] >= 0 ? s.k : 0);
    total = p.seen + aligned(p.seen_floats);
    ins.prepared = static_cast<int>(st.prepared_filters.size());
    st.prepared_filters.push_back(p);
  }
  if (total) st.prepared = Memory(cfg_.device, cfg_.cuda_device, sizeof(float) * total);
}

void Executor::plan_wide_ops() {
  if (on_device() || threads() < 2) return;
  int64_t ws = 0;
  for (Instr& ins : instrs_) {
    // A lone chunk's Linear with a large weight (cudnn_lenet fc1, 800 x 500: 1.6 MB read for
    // one image) splits its rows over the workers; small ones lose more to the hand-off
    // than they gain (lenet5's, measured).
    if (ins.kind == Instr::LinearFwd && ins.a * ins.b >= (int64_t{1} << 16)) {
      ins.wide = true;
      ws = std::max<int64_t>(ws, sizeof(float) * cpu::linear_workspace_floats(LinearShape{chunk_, ins.a, ins.b}));
    }
    // Winograd's forward splits one image's tiles into bands of rows (cudnn_lenet conv2), when
    // every call runs it (a prepared filter; the rule would take direct for a few images).
    if (ins.kind == Instr::ConvFwd && ins.algo == ConvAlgo::Winograd && ins.prepared >= 0) {
      ins.wide = true;
      ConvShape s = ins.conv;
      s.n = chunk_;
      ws = std::max<int64_t>(ws, static_cast<int64_t>(conv_workspace_size(cfg_.device, ins.algo, ConvPass::Forward, s,
                                                                          threads())));
    }
  }
  store_->wide_workspace_bytes = ws;
  if (ws) wide_->workspace(static_cast<size_t>(ws));
}

void Executor::refresh_prepared_filters() {
  Store& st = *store_;
  for (Store::Prepared& p : st.prepared_filters) {
    const Instr& ins = instrs_[p.instr];
    ConvShape s = ins.conv;
    s.n = chunk_;
    const float* w = ptr(ins.in[1], 0, 0);
    const float* b = ins.in.size() > 2 && ins.in[2] >= 0 ? ptr(ins.in[2], 0, 0) : nullptr;
    const int64_t nw = s.k * s.c * s.r * s.s;
    float* seen = st.prepared.floats() + p.seen;
    // (memcmp: bits, so a NaN written into a weight counts as a change too)
    if (p.ready && p.level == simd::active() && p.lanes512 == simd::lanes512() &&
        std::memcmp(seen, w, sizeof(float) * nw) == 0 &&
        (!b || std::memcmp(seen + nw, b, sizeof(float) * (p.seen_floats - nw)) == 0))
      continue;
    conv_prepare_filter(*workers_[0], ins.algo, s, w, b, st.prepared.floats() + p.offset);
    std::memcpy(seen, w, sizeof(float) * nw);
    if (b) std::memcpy(seen + nw, b, sizeof(float) * (p.seen_floats - nw));
    p.level = simd::active();
    p.lanes512 = simd::lanes512();
    p.ready = true;
  }
}

MemoryPlan Executor::memory_plan() const {
  const Store& st = *store_;
  MemoryPlan m;
  m.params = static_cast<int64_t>(sizeof(float) * bind_.num_params);
  m.grads = cfg_.train ? m.params : 0;
  m.grad_slots = static_cast<int64_t>(st.chunk_grads.bytes() + st.batch_grads.bytes());
  m.optimizer_state = cfg_.train ? m.params * optimizer_state_buffers(cfg_.optim.kind) : 0;
  for (int v = 0; v < static_cast<int>(g_.values().size()); ++v)
    if (g_.value(v).producer >= 0 && g_.nodes()[g_.value(v).producer].op == Op::Buffer)
      m.buffers += (g_.value(v).is_int ? 8 : 4) * g_.value(v).numel();
  m.input = static_cast<int64_t>(st.input.bytes() + st.labels.bytes());
  m.activations = static_cast<int64_t>(st.worker.bytes() + st.chunk.bytes() + st.fixed.bytes() + st.stash.bytes());
  m.activations_unshared = static_cast<int64_t>(sizeof(float) * st.unshared * (on_device() ? 1 : max_chunks_)) +
                           static_cast<int64_t>(st.fixed.bytes() + st.stash.bytes());
  m.workspace = st.workspace_bytes * static_cast<int64_t>(workers_.size()) + st.wide_workspace_bytes;
  m.prepared = static_cast<int64_t>(st.prepared.bytes());
  return m;
}

std::vector<std::string> Executor::conv_algorithms() const {
  std::vector<std::string> v;
  for (const Instr& ins : instrs_)
    if (ins.kind == Instr::ConvFwd) v.push_back(conv_algo_name(ins.algo));
  return v;
}


#ifdef PYLENET_HAVE_CUDA
double* Executor::loss_slot(int64_t c) { return cuda_ ? cuda_->loss_slot() : &store_->loss[c]; }
int64_t* Executor::correct_slot(int64_t c) { return cuda_ ? cuda_->correct_slot() : &store_->correct[c]; }
int* Executor::bad_slot(int64_t c) { return cuda_ ? cuda_->bad_slot() : &store_->bad[c]; }
#else
double* Executor::loss_slot(int64_t c) { return &store_->loss[c]; }
int64_t* Executor::correct_slot(int64_t c) { return &store_->correct[c]; }
int* Executor::bad_slot(int64_t c) { return &store_->bad[c]; }
#endif

float* Executor::grads() { return store_->grads.floats(); }

void Executor::copy_grads(float* host) const {
  const size_t bytes = sizeof(float) * bind_.num_params;
#ifdef PYLENET_HAVE_CUDA
  if (cuda_) {
    cuda::DeviceGuard guard(cfg_.cuda_device);
    PYL_CUDA_CHECK(cudaMemcpyAsync(host, store_->grads.data(), bytes, cudaMemcpyDeviceToHost, cuda_->ctx.stream()));
    cuda_->synchronize();
    return;
  }
#endif
  std::memcpy(host, store_->grads.data(), bytes);
}

// ---- pointers
// Rows [start, start + m) of the output, from the backend's memory to forward()'s host array.
void Executor::copy_output(const float* scores, int64_t start, int64_t m) {
  const int64_t per = store_->out_floats;
#ifdef PYLENET_HAVE_CUDA
  if (on_device()) {
    PYL_CUDA_CHECK(cudaMemcpyAsync(out_ + start * per, scores, sizeof(float) * m * per, cudaMemcpyDeviceToHost,
                                   cuda_->ctx.stream()));
    return;
  }
#endif
  std::memcpy(out_ + start * per, scores, sizeof(float) * m * per);
}

float* Executor::ptr(int v, int64_t c, int worker) const {
  if (v < 0) return nullptr;
  const Store& st = *store_;
  const auto& s = st.at[v];
  switch (s.home) {
    case Home::Input: return const_cast<float*>(x_) + c * chunk_ * s.floats;
    case Home::Labels: return reinterpret_cast<float*>(const_cast<int64_t*>(y_) + c * chunk_);
    case Home::Worker: return st.worker.floats() + worker * st.worker_floats + s.offset;
    case Home::Chunk: return st.chunk.floats() + c * st.chunk_floats + s.offset;
    case Home::Fixed: return st.fixed.floats() + s.offset;
    case Home::Param:
#ifdef PYLENET_HAVE_CUDA
      if (cuda_) return cuda_->params.floats() + s.offset;
#endif
      return bind_.param_ptr[v];
    case Home::Buffer:
#ifdef PYLENET_HAVE_CUDA
      if (cuda_) return static_cast<float*>(cuda_->buffer(v));
#endif
      return static_cast<float*>(bind_.buffer_ptr[v]);
    case Home::GradChunk:
    case Home::GradBatch:
    case Home::GradDirect: return grad_ptr(v, c);
    case Home::None: break;
  }
  PYL_CHECK_INTERNAL(false && "a value without a home");
  return nullptr;
}

float* Executor::grad_ptr(int v, int64_t c) const {
  if (v < 0) return nullptr;
  const Store& st = *store_;
  const auto& s = st.at[v];
  switch (s.home) {
    case Home::GradChunk: return st.chunk_grads.floats() + c * st.chunk_grad_floats + s.offset;
    case Home::GradBatch: return st.batch_grads.floats() + s.offset;
    case Home::GradDirect: return st.grads.floats() + s.offset;
    default: return ptr(v, c, 0);
  }
}

void Executor::set_profiling(bool on) {
  profiling_ = on;
  times_.assign(workers_.size(), std::vector<double>(instrs_.size() + 1, 0.0));  // + the update
}

void Executor::profile_sync() {
#ifdef PYLENET_HAVE_CUDA
  if (cuda_) cuda_->synchronize();
#endif
}

std::vector<double> Executor::profile() const {
  std::vector<double> out(instrs_.size() + 1, 0.0);
  for (auto& w : times_)
    for (size_t i = 0; i < out.size(); ++i) out[i] += w[i];
  return out;
}

// ---- running
void Executor::check_labels(const int64_t* labels, int64_t n, const char* op) const {
  if (labels && store_->classes > 0) pylenet::check_labels(op, labels, n, store_->classes);
}

ConvAlgo Executor::conv_algo_for(const Instr& ins, ConvPass pass, const ConvShape& s) const {
  // A prepared filter takes away the per-call cost that makes the rule depend on the images
  // per call (winograd's transform): every call runs the chunk's algorithm.
  if (ins.prepared >= 0) return ins.algo;
  if (cfg_.conv_algo == ConvAlgo::Heuristic) return conv_heuristic_algo(cfg_.device, pass, s);
  return ins.kind == Instr::ConvBwd && pass == ConvPass::BackwardData ? ins.algo_data : ins.algo;
}

void Executor::exec(const Instr& ins, Handle& h, int64_t c, int w, int64_t start, int64_t m, int64_t n) {
  const Node& node = g_.nodes()[ins.node];
  const graph::Attrs& a = node.attrs;
  const auto in = [&](size_t k) { return k < ins.in.size() ? ptr(ins.in[k], c, w) : nullptr; };
  const auto out = [&](size_t k) { return k < ins.out.size() ? ptr(ins.out[k], c, w) : nullptr; };
  const auto labels = [&](int v) { return reinterpret_cast<const int64_t*>(ptr(v, c, w)); };
  const auto fixed = [&](int64_t off) { return store_->fixed.floats() + off; };
  switch (ins.kind) {
    case Instr::ConvFwd: {
      ConvShape s = ins.conv;
      s.n = m;
      const float* prep = ins.prepared >= 0 ? store_->prepared.floats() + store_->prepared_filters[ins.prepared].offset
                                            : nullptr;
      const ConvAlgo algo = conv_algo_for(ins, ConvPass::Forward, s);
      if (!ins.max_pool) {
        conv_run(h, algo, ConvPass::Forward, s, in(0), in(1), in(2), nullptr, out(0), ins.relu, prep);
      } else if (conv_max_pool_fusable(h.device(), algo)) {  // training: the winners in the output's place
        conv_run_max_pool(h, s, in(0), in(1), in(2), prep, out(0), cfg_.train ? out(1) : nullptr);
      } else {  // the two kernels, through the convolution's own output (training: then the winners)
        conv_run(h, algo, ConvPass::Forward, s, in(0), in(1), in(2), nullptr, out(1), false, prep);
        PoolShape p = ins.pool;
        p.n = m;
        if (cfg_.train) pool_run_max_forward_with_winners(h, p, out(1), out(0));
        else pool_run_forward(h, PoolMode::Max, p, out(1), out(0));
      }
      return;
    }
    case Instr::ConvBwdData: {
      ConvShape s = ins.conv;
      s.n = m;
      conv_run(h, conv_algo_for(ins, ConvPass::BackwardData, s), ConvPass::BackwardData, s, nullptr, in(1), nullptr, in(0), out(0));
      return;
    }
    case Instr::ConvBwdFilter: {
      ConvShape s = ins.conv;
      s.n = m;
      conv_run(h, conv_algo_for(ins, ConvPass::BackwardFilter, s), ConvPass::BackwardFilter, s, in(0), nullptr, nullptr, in(1), out(0));
      return;
    }
    case Instr::ConvBwdBias: {
      ConvShape s = ins.conv;
      s.n = m;
      conv_run_backward_bias(h, s, in(0), out(0));
      return;
    }
    case Instr::ConvBwd: {
      ConvShape s = ins.conv;
      s.n = m;
      const ConvAlgo data = conv_algo_for(ins, ConvPass::BackwardData, s);
      const ConvAlgo filter = conv_algo_for(ins, ConvPass::BackwardFilter, s);
      const float* dy = in(2);
      const float* winners = nullptr;
      if (ins.fused_conv >= 0) {  // dy: the pooling's gradient; in(3): the windows' winners
        if (conv_backward_unpools(h.device(), data, filter, out(0) != nullptr)) {
          winners = in(3);
        } else {  // the pooling's backward first, into out(3)
          if (!out(3)) fail(ErrorKind::Runtime, "conv2d_backward+max_pool2d: no buffer planned for this chunk's algorithms");
          PoolShape p = ins.pool;
          p.n = m;
          pool_run_max_backward_from_indices(h, p, in(3), dy, out(3));
          dy = out(3);
        }
      }
      conv_run_backward(h, data, filter, s, in(0), in(1), dy, out(0), out(1), out(2), winners);  // absent outputs: null
      return;
    }
    case Instr::LinearFwd:
      linear_run_forward(h, LinearShape{m, ins.a, ins.b}, in(0), in(1), in(2), out(0), ins.relu);
      return;
    case Instr::LinearBwdData: linear_run_backward_data(h, LinearShape{m, ins.a, ins.b}, in(0), in(1), out(0)); return;
    case Instr::LinearBwdWeight:
      linear_run_backward_weight(h, LinearShape{m, ins.a, ins.b}, in(1), in(0), out(0));
      return;
    case Instr::LinearBwdBias: linear_run_backward_bias(h, LinearShape{m, 0, ins.b}, in(0), out(0)); return;
    case Instr::LinearStash: {
      const Store::Stash& s = store_->stashes[ins.linear];
      // The packing reads rows [start, start + m) of the batch's X, whose chunk rows are here.
      cpu::sgemm_pack_b(level_, false, n, s.in, in(0) - start * s.in, s.in, s.packed_x, start, m);
      std::memcpy(s.saved_dy + start * s.out, in(1), sizeof(float) * m * s.out);
      return;
    }
    case Instr::LinearGradJob: {  // rows [r0, r1) of dW (out, in) and db, over the whole batch
      const Store::Stash& s = store_->stashes[ins.linear];
      const int64_t r0 = ins.r0, r1 = ins.r1;
      if (s.dw >= 0)
        cpu::sgemm_prepacked_b(level_, true, r1 - r0, s.in, n, 1.0f, s.saved_dy + r0, s.out, s.packed_x, 0.0f,
                               grad_ptr(s.dw, 0) + r0 * s.in, s.in, h.workspace(store_->workspace_bytes), 1);
      if (s.db >= 0) {
        float* db = grad_ptr(s.db, 0);
        std::fill(db + r0, db + r1, 0.0f);
        for (int64_t i = 0; i < n; ++i)
          for (int64_t j = r0; j < r1; ++j) db[j] += s.saved_dy[i * s.out + j];
      }
      return;
    }
    case Instr::PoolFwd: {
      PoolShape s = ins.pool;
      s.n = m;
      pool_run_forward(h, a.pool, s, in(0), out(0), ins.relu);
      return;
    }
    case Instr::PoolBwd: {
      PoolShape s = ins.pool;
      s.n = m;
      if (ins.fused_conv >= 0) pool_run_max_backward_from_indices(h, s, in(0), in(1), out(0));  // in(0): winners
      else
        pool_run_backward(h, a.pool, s, in(0), in(1), out(0), ins.relu ? in(2) : nullptr);
      return;
    }
    case Instr::ActFwd:
      activation_run_forward(h, a.act, m * ins.a, in(0), out(0), static_cast<float>(a.slope));
      return;
    case Instr::ActBwd:
      activation_run_backward(h, a.act, m * ins.a, in(0), in(1), out(0), static_cast<float>(a.slope));
      return;
    case Instr::Add: add_run(h, m * ins.a, in(0), in(1), out(0)); return;
    case Instr::Cat: {
      int64_t off = 0;
      for (size_t k = 0; k < ins.in.size(); ++k) {
        const int64_t per = g_.value(ins.in[k]).numel();
        copy_blocks(h, m, per, in(k), per, out(0) + off, ins.a);
        off += per;
      }
      return;
    }
    case Instr::Slice: {
      const int64_t total = g_.value(ins.in[0]).numel();
      copy_blocks(h, m, ins.b, in(0) + ins.a, total, out(0), ins.b);
      return;
    }
    case Instr::DropoutFwd:
    case Instr::DropoutBwd: {
      const int fwd = ins.kind == Instr::DropoutFwd ? ins.node : a.forward;
      DropoutDesc d{a.p, math::dropout_key(cfg_.seed, static_cast<uint64_t>(steps_), static_cast<uint64_t>(fwd))};
      if (dstep_) {  // the step is read on the device (a CUDA graph replays this launch)
        d.key = math::dropout_key_base(cfg_.seed, static_cast<uint64_t>(fwd));
        d.device_step = &dstep_->step;
      }
      dropout_forward(h, d, start * ins.a, m * ins.a, in(0), out(0));
      return;
    }
    case Instr::BnStats:
      batch_norm_stats_partial(h, BatchNormShape{m, ins.a, ins.b}, in(0),
                               reinterpret_cast<double*>(fixed(ins.fixed)) + c * 2 * ins.a);
      return;
    case Instr::BnStatsFinalize: {
      PYL_CHECK_ARG(n * ins.b > 1, node.scope.empty() ? "" : node.scope + " ",
                    node.where.empty() ? "" : "(" + node.where + ") ", node.module.empty() ? node.label() : node.module,
                    ": expected more than 1 value per channel when training, got a batch of ", n,
                    " with ", ins.b, " value(s) per channel");
      const int64_t chunks = (n + chunk_ - 1) / chunk_;
      batch_norm_stats_finalize(h, ins.a, chunks, reinterpret_cast<const double*>(fixed(ins.r0)), n * ins.b, a.eps,
                                ptr(ins.out[1], 0, 0), ptr(ins.out[2], 0, 0), fixed(ins.fixed));
      return;
    }
    case Instr::BnApply:
      batch_norm_apply(h, BatchNormShape{m, ins.a, ins.b}, in(0), ptr(ins.out[1], 0, 0), ptr(ins.out[2], 0, 0), in(1),
                       in(2), out(0));
      return;
    case Instr::BnInference:
      batch_norm_inference(h, BatchNormShape{m, ins.a, ins.b}, in(0), in(3), in(4), a.eps, in(1), in(2), out(0));
      return;
    case Instr::BnBwdPartial:  // in: x, dy, gamma, mean, invstd
      batch_norm_backward_partial(h, BatchNormShape{m, ins.a, ins.b}, in(0), in(1), in(3), in(4),
                                  reinterpret_cast<double*>(fixed(ins.fixed)) + c * 2 * ins.a);
      return;
    case Instr::BnBwdFinalize: {
      const int64_t chunks = (n + chunk_ - 1) / chunk_;
      batch_norm_backward_finalize(h, ins.a, chunks, reinterpret_cast<const double*>(fixed(ins.r0)), n * ins.b,
                                   grad_ptr(ins.out[1], 0), grad_ptr(ins.out[2], 0), fixed(ins.fixed));
      return;
    }
    case Instr::BnBwdApply:
      if (ins.out[0] >= 0)
        batch_norm_backward_apply(h, BatchNormShape{m, ins.a, ins.b}, in(0), in(1), in(3), in(4), in(2),
                                  fixed(ins.fixed), out(0));
      return;
    case Instr::BnInferenceBwd:
      batch_norm_inference_backward(h, BatchNormShape{m, ins.a, ins.b}, in(0), in(1), in(3), in(4), a.eps, in(2),
                                    out(0), grad_ptr(ins.out[1], c), grad_ptr(ins.out[2], c));
      return;
    case Instr::SoftmaxFwd: softmax_forward(h, a.log, m, ins.a, in(0), out(0)); return;
    case Instr::SoftmaxBwd: softmax_backward(h, a.log, m, ins.a, in(0), in(1), out(0)); return;
    case Instr::CrossEntropy:
      cross_entropy_forward(h, m, ins.a, in(0), labels(ins.in[1]), loss_slot(c));
      return;
    case Instr::CrossEntropyBwd:
      cross_entropy_backward(h, m, ins.a, in(0), labels(ins.in[1]), 1.0f / static_cast<float>(n), out(0));
      return;
    case Instr::Nll: nll_loss_forward(h, m, ins.a, in(0), labels(ins.in[1]), loss_slot(c)); return;
    case Instr::NllBwd: nll_loss_backward(h, m, ins.a, labels(ins.in[0]), 1.0f / static_cast<float>(n), out(0)); return;
    case Instr::LossHead: {
      const bool count = y_ != nullptr && g_.value(ins.in[2]).shape.size() == 1;
      loss_head(h, ins.b != 0, m, ins.a, in(0), labels(ins.in[1]), count, 1.0f / static_cast<float>(n), loss_slot(c),
                out(0), correct_slot(c), bad_slot(c));
      if (out_) copy_output(in(2), start, m);
      return;
    }
    case Instr::Classify: {
      const float* scores = in(0);
      const int64_t per = store_->out_floats;
      const bool has_labels = y_ != nullptr && ins.in[1] >= 0 && g_.value(ins.in[0]).shape.size() == 1;
      classify(h, m, per, scores, has_labels ? labels(ins.in[1]) : nullptr, correct_slot(c), bad_slot(c));
      if (out_) copy_output(scores, start, m);
      return;
    }
  }
}

void Executor::run_batch(const float* x, const int64_t* y, int64_t n) {
  x_ = x;
  y_ = y;
  level_ = simd::active();  // the Linear stash's packing layout, fixed for the step
  const int64_t chunks = (n + chunk_ - 1) / chunk_;
  std::fill(store_->bad.begin(), store_->bad.begin() + chunks, 0);
  for (const Phase& ph : phases_) {
    if (ph.batch) {
      const auto job = [&](int64_t k, int w) {
        const Instr& ins = instrs_[ph.instrs[static_cast<size_t>(k)]];
        const auto t0 = profiling_ ? Clock::now() : Clock::time_point{};
        exec(ins, *workers_[w], 0, w, 0, n, n);
        if (profiling_) {
          profile_sync();
          times_[w][ph.instrs[static_cast<size_t>(k)]] += since(t0);
        }
      };
      ThreadPool::instance().run(on_device() ? 1 : active_, static_cast<int64_t>(ph.instrs.size()), ItemFn(job));
      continue;
    }
    // A batch of one chunk leaves the other workers idle: its large ops use them inside
    // (wide_: every kernel's result is the same for any thread count).
    const bool lone = chunks == 1 && active_ > 1 && !on_device();
    const auto chunk_job = [&](int64_t c, int w) {
      const int64_t start = c * chunk_, m = std::min(chunk_, n - start);
      for (int k : ph.instrs) {
        Handle& h = lone && instrs_[k].wide ? *wide_ : *workers_[w];
        const auto t0 = profiling_ ? Clock::now() : Clock::time_point{};
        exec(instrs_[k], h, c, w, start, m, n);
        if (profiling_) {
          profile_sync();
          times_[w][k] += since(t0);
        }
      }
    };
    if (lone) {
      wide_->set_threads(active_);
      chunk_job(0, 0);
    } else {
      ThreadPool::instance().run(on_device() ? 1 : active_, chunks, ItemFn(chunk_job));
    }
  }
}

Clock::time_point Executor::begin_step(ThreadGovernor& gov) {
  active_ = ThreadGovernor::enabled() ? gov.threads() : threads();
  return Clock::now();
}

void Executor::end_step(ThreadGovernor& gov, Clock::time_point t0, int64_t n) {
  if (ThreadGovernor::enabled()) gov.record(since(t0), (n + chunk_ - 1) / chunk_);
}

RunStats Executor::collect(int64_t n, const char* op) {
  RunStats st;
  const int64_t chunks = (n + chunk_ - 1) / chunk_;
  for (int64_t c = 0; c < chunks; ++c)
    if (store_->bad[c]) {
      if (cfg_.train)
        fail(ErrorKind::Runtime, "training diverged: the network produced a non-finite output after ", steps_,
             " optimizer steps (the parameters were not updated); try a smaller learning rate");
      fail(ErrorKind::Runtime, op, ": the model produced a non-finite output; its weights or the input hold NaN/inf");
    }
  for (int64_t c = 0; c < chunks; ++c) {
    st.loss_sum += store_->loss[c];
    st.correct += store_->correct[c];
  }
  st.samples = n;
  st.steps = 1;
  return st;
}

void Executor::commit_running(const int* skip) {
  for (const Instr& ins : instrs_) {
    if (ins.kind != Instr::BnStatsFinalize) continue;
    const Node& node = g_.nodes()[ins.node];
    if (node.in[3] < 0) continue;  // no running statistics
    int64_t* nbt = node.in[5] >= 0 ? reinterpret_cast<int64_t*>(ptr(node.in[5], 0, 0)) : nullptr;
    batch_norm_update_running(*workers_[0], ins.a, ptr(ins.out[1], 0, 0), store_->fixed.floats() + ins.fixed,
                              node.attrs.momentum, ptr(node.in[3], 0, 0), ptr(node.in[4], 0, 0), nbt, skip);
  }
}

void Executor::plan_update() {
  update_planned_ = true;
  for (size_t k = 0; k < param_grads_.size(); ++k) {
    const int64_t lo = bind_.param_offset[param_grads_[k].param];
    ranges_.push_back({lo, lo + g_.value(param_grads_[k].param).numel(), k});
  }
  constexpr int64_t kBlock = 4096;
  for (size_t r = 0; r < ranges_.size(); ++r)
    for (int64_t lo = ranges_[r].lo; lo < ranges_[r].hi; lo += kBlock)
      blocks_.push_back({lo, std::min(ranges_[r].hi, lo + kBlock), r});
  // Runs of adjacent parameters in the layout (a LeNet: one), for the device's update launches.
  std::vector<std::pair<int64_t, int64_t>> sorted;
  for (const Range& r : ranges_) sorted.emplace_back(r.lo, r.hi);
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 0; i < sorted.size();) {
    int64_t lo = sorted[i].first, hi = sorted[i].second;
    for (++i; i < sorted.size() && sorted[i].first == hi; ++i) hi = sorted[i].second;
    runs_.emplace_back(lo, hi);
  }
}

void Executor::update(int64_t n, float lr) {
  if (!update_planned_) plan_update();  // once: nothing is allocated in later steps
  const auto t0 = Clock::now();
  update_now(n, lr);
  if (profiling_) {
    profile_sync();
    times_[0].back() += since(t0);
  }
}

void Executor::update_now(int64_t n, float lr) {
  ++steps_;
  const int64_t chunks = (n + chunk_ - 1) / chunk_;
  const Store& st = *store_;
  float* grads = st.grads.floats();
#ifdef PYLENET_HAVE_CUDA
  if (cuda_) {
    cuda_update(chunks, lr);
    return;
  }
#endif
  // Blocks of parameters over the ranges that have gradients; each block sums its share of
  // the per-chunk (and per-use) contributions in a fixed order, then updates.
  const std::vector<Range>& ranges = ranges_;
  const std::vector<Block>& blocks = blocks_;
  float* s0 = bind_.state.size() > 0 ? bind_.state[0] : nullptr;
  float* s1 = bind_.state.size() > 1 ? bind_.state[1] : nullptr;
  std::atomic<bool> overflowed{false};
  const auto job = [&](int64_t b, int w) {
    const Block& blk = blocks[static_cast<size_t>(b)];
    const auto& pg = param_grads_[ranges[blk.range].grad];
    const int64_t base = ranges[blk.range].lo, len = blk.hi - blk.lo;
    float* g = grads + blk.lo;
    bool first = true;
    for (int v : pg.contributions) {
      const auto& s = st.at[v];
      if (s.home == Home::GradDirect) {
        first = false;
        continue;
      }
      const int64_t parts = s.home == Home::GradChunk ? chunks : 1;
      for (int64_t c = 0; c < parts; ++c) {
        const float* src = (s.home == Home::GradChunk ? st.chunk_grads.floats() + c * st.chunk_grad_floats
                                                      : st.batch_grads.floats()) + s.offset + (blk.lo - base);
        if (first) std::memcpy(g, src, sizeof(float) * len);
        else
          for (int64_t i = 0; i < len; ++i) g[i] += src[i];
        first = false;
      }
    }
    float* p = bind_.param_ptr[pg.param] + (blk.lo - base);  // the parameter where it lives
    optimizer_update(*workers_[w], cfg_.optim, lr, steps_, len, p, g, s0 ? s0 + blk.lo : nullptr,
                     s1 ? s1 + blk.lo : nullptr);
    // The block is still in cache: a finite output with a finite rate can still overflow a
    // weight (a huge rate, a huge gradient), and no later output may come to show it.
    if (!cpu::all_finite(len, p)) overflowed.store(true, std::memory_order_relaxed);
  };
  ThreadPool::instance().run(active_, static_cast<int64_t>(blocks.size()), ItemFn(job));
  if (overflowed.load())
    fail(ErrorKind::Runtime, "training diverged: the update of optimizer step ", steps_,
         " made parameters NaN or inf (their values are lost); try a smaller learning rate");
}

RunStats Executor::train_step(const float* x, const int64_t* labels, int64_t n, float lr) {
  PYL_CHECK_ARG(cfg_.train, "train_step: this network was compiled for inference");
  PYL_CHECK_ARG(n >= 1 && n <= cfg_.capacity, "train_step: batch of ", n, " exceeds the planned batch size ",
                cfg_.capacity);
  check_labels(labels, n, "train_step");  // the loss indexes scores by label
  checked_lr(lr, steps_, "train_step");
  out_ = nullptr;
  const FlushDenormals flush;  // core/float_mode.h: the step's host work without microcode assists
#ifdef PYLENET_HAVE_CUDA
  if (cuda_) {
    cuda::DeviceGuard guard(cfg_.cuda_device);
    const int64_t before = steps_;
    cuda_reset_totals();
    cuda_stage(x, labels, n);
    run_batch(store_->input.floats(), static_cast<const int64_t*>(store_->labels.data()), n);
    cuda_accumulate();
    commit_running(&cuda_->run_totals()->bad);  // both no-ops on the device if the output was not finite
    update(n, lr);
    return cuda_read_totals(n, "train_step", before);
  }
#endif
  const auto t0 = begin_step(train_gov_);
  run_batch(x, labels, n);
  RunStats st = collect(n, "train_step");  // raises, changing nothing, if the output is not finite
  commit_running(nullptr);
  update(n, lr);
  end_step(train_gov_, t0, n);
  return st;
}

RunStats Executor::train_epoch(const float* images, const int64_t* labels, int64_t count, const int64_t* order,
                               int64_t order_len, int64_t batch_size, const ScheduleSpec& schedule,
                               int64_t& iteration, const ProgressFn& progress, int64_t every) {
  PYL_CHECK_ARG(cfg_.train, "train: this network was compiled for inference");
  PYL_CHECK_ARG(!on_device(), "train: a CUDA network trains on an uploaded dataset");
  PYL_CHECK_ARG(batch_size >= 1 && batch_size <= cfg_.capacity, "train: batch size ", batch_size,
                " exceeds the planned batch size ", cfg_.capacity);
  for (int64_t i = 0; i < order_len; ++i)
    PYL_CHECK_ARG(order[i] >= 0 && order[i] < count, "train: sample index ", order[i], " is outside [0, ", count, ")");
  check_labels(labels, count, "train");
  out_ = nullptr;
  const FlushDenormals flush;
  const int64_t sample = g_.value(g_.input()).numel();
  float* xb = store_->input.floats();
  int64_t* yb = static_cast<int64_t*>(store_->labels.data());
  RunStats total;
  const int64_t steps = (order_len + batch_size - 1) / batch_size;
  for (int64_t step = 0; step < steps; ++step) {
    const int64_t start = step * batch_size, n = std::min(batch_size, order_len - start);
    // Gather the batch by index, a chunk per work item (one thread alone spent 2-4 % of a
    // LeNet-5 step on it, reading scattered images).
    const auto gather = [&](int64_t c, int) {
      for (int64_t i = c * chunk_; i < std::min(n, (c + 1) * chunk_); ++i) {
        const int64_t src = order[start + i];
        std::memcpy(xb + i * sample, images + src * sample, sizeof(float) * sample);
        yb[i] = labels[src];
      }
    };
    const float lr = checked_lr(schedule_lr(schedule, cfg_.optim.lr, iteration), iteration, "train");
    const auto t0 = begin_step(train_gov_);
    ThreadPool::instance().run(active_, (n + chunk_ - 1) / chunk_, ItemFn(gather));
    run_batch(xb, yb, n);
    RunStats st = collect(n, "train");
    commit_running(nullptr);
    update(n, lr);
    end_step(train_gov_, t0, n);
    ++iteration;
    total.loss_sum += st.loss_sum;
    total.correct += st.correct;
    total.samples += st.samples;
    total.steps += 1;
    if (progress && ((step + 1) % std::max<int64_t>(every, 1) == 0 || step + 1 == steps)) {
      const FloatModeScope user(flush.saved());  // the callback is the user's Python
      if (!progress(step + 1, steps, total)) break;
    }
  }
  return total;
}

RunStats Executor::forward(const float* x, const int64_t* labels, int64_t count, float* out) {
  PYL_CHECK_ARG(count >= 1, "forward: no samples");
  PYL_CHECK_ARG(labels || g_.loss() < 0, "forward: this network computes a loss and needs the labels");
  const FlushDenormals flush;
#ifdef PYLENET_HAVE_CUDA
  std::optional<cuda::DeviceGuard> guard;
  if (cuda_) guard.emplace(cfg_.cuda_device);
#endif
  if (labels) check_labels(labels, count, "evaluate");
  const int64_t sample = g_.value(g_.input()).numel();
  RunStats total;
#ifdef PYLENET_HAVE_CUDA
  if (cuda_) cuda_reset_totals();
#endif
  for (int64_t base = 0; base < count; base += cfg_.capacity) {
    const int64_t n = std::min(cfg_.capacity, count - base);
    out_ = out ? out + base * store_->out_floats : nullptr;
    const float* xb = x + base * sample;
    const int64_t* yb = labels ? labels + base : nullptr;
#ifdef PYLENET_HAVE_CUDA
    if (cuda_) {
      cuda_stage(xb, yb, n);
      run_batch(store_->input.floats(), yb ? static_cast<const int64_t*>(store_->labels.data()) : nullptr, n);
      cuda_accumulate();
      commit_running(&cuda_->run_totals()->bad);
      continue;
    }
#endif
    if (base == 0) refresh_prepared_filters();
    std::fill(store_->loss.begin(), store_->loss.end(), 0.0);
    const auto t0 = begin_step(infer_gov_);
    run_batch(xb, yb, n);
    end_step(infer_gov_, t0, n);
    RunStats st = collect(n, labels ? "evaluate" : "predict");
    commit_running(nullptr);  // a training-mode forward updates the running statistics
    total.loss_sum += st.loss_sum;
    total.correct += st.correct;
    total.samples += n;
    total.steps += 1;
  }
  out_ = nullptr;
#ifdef PYLENET_HAVE_CUDA
  if (cuda_) return cuda_read_totals(count, labels ? "evaluate" : "predict", -1);
#endif
  return total;
}

#ifndef PYLENET_HAVE_CUDA
void Executor::upload_state() {}
void Executor::download_state() {}
#else
// ------------------------------------------------------------------------------ CUDA
namespace {
size_t value_bytes(const graph::Value& v) { return (v.is_int ? 8 : 4) * static_cast<size_t>(v.numel()); }

// Binds a loop's step values on the device (Executor::dstep_) and restores what was bound before.
struct BindSteps {
  const math::StepValues*& slot;
  const math::StepValues* before;
  BindSteps(const math::StepValues*& s, const math::StepValues* now) : slot(s), before(s) { slot = now; }
  ~BindSteps() { slot = before; }
};

// A full step run without a graph: counted, and its kernel launches measured.
void run_eager(CudaState::CapturedStep& slot, const std::function<void()>& run) {
  const uint64_t k0 = cuda::launch_counter().load();
  run();
  slot.kernels_per_step = cuda::launch_counter().load() - k0;
  ++slot.eager;
}

// A run's step values into `mem` (grown when short), the cursor zeroed; waits, so the host
// vector may go.
void upload_steps(CudaState& c, int device, Memory& mem, const std::vector<math::StepValues>& table) {
  const size_t bytes = sizeof(math::StepValues) * table.size();
  if (mem.bytes() < bytes) mem = Memory(Device::CUDA, device, bytes);
  PYL_CUDA_CHECK(cudaMemcpyAsync(mem.data(), table.data(), bytes, cudaMemcpyHostToDevice, c.ctx.stream()));
  PYL_CUDA_CHECK(cudaMemsetAsync(c.step_cursor(), 0, sizeof(int64_t), c.ctx.stream()));
  c.synchronize();
}
}  // namespace

void Executor::cuda_allocate() {
  CudaState& c = *cuda_;
  const int dev = cfg_.cuda_device;
  c.params = Memory(Device::CUDA, dev, sizeof(float) * std::max<int64_t>(bind_.num_params, 1));
  for (size_t i = 0; i < bind_.state.size(); ++i)
    c.state.emplace_back(Device::CUDA, dev, sizeof(float) * std::max<int64_t>(bind_.num_params, 1));
  for (int v = 0; v < static_cast<int>(g_.values().size()); ++v)
    if (store_->at[v].home == Home::Buffer) c.buffers.emplace(v, Memory(Device::CUDA, dev, value_bytes(g_.value(v))));
  c.step = Memory(Device::CUDA, dev, 64);
  c.totals = Memory(Device::CUDA, dev, 64);
  c.step_slot = Memory(Device::CUDA, dev, 16 + sizeof(math::StepValues));
}

// Parameters, optimizer state and buffers between their host homes and the device copies,
// one direction at a time.
void Executor::copy_state(bool to_device) {
  if (!cuda_) return;
  CudaState& c = *cuda_;
  cuda::DeviceGuard guard(cfg_.cuda_device);
  cudaStream_t st = c.ctx.stream();
  const cudaMemcpyKind kind = to_device ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost;
  const auto copy = [&](void* device, void* host, size_t bytes) {
    PYL_CUDA_CHECK(cudaMemcpyAsync(to_device ? device : host, to_device ? host : device, bytes, kind, st));
  };
  const size_t pbytes = sizeof(float) * bind_.num_params;
  for (int v = 0; v < static_cast<int>(g_.values().size()); ++v)
    if (bind_.param_ptr[v])
      copy(c.params.floats() + bind_.param_offset[v], bind_.param_ptr[v], sizeof(float) * g_.value(v).numel());
  for (size_t i = 0; i < c.state.size() && pbytes; ++i) copy(c.state[i].data(), bind_.state[i], pbytes);
  for (auto& [v, mem] : c.buffers) copy(mem.data(), bind_.buffer_ptr[v], value_bytes(g_.value(v)));
  c.synchronize();
}

void Executor::upload_state() { copy_state(true); }
void Executor::download_state() { copy_state(false); }

void Executor::cuda_reset_totals() {
  PYL_CUDA_CHECK(cudaMemsetAsync(cuda_->totals.data(), 0, cuda_->totals.bytes(), cuda_->ctx.stream()));
}

void Executor::cuda_stage(const float* x, const int64_t* y, int64_t n) {
  cudaStream_t st = cuda_->ctx.stream();
  const int64_t sample = g_.value(g_.input()).numel();
  PYL_CUDA_CHECK(cudaMemcpyAsync(store_->input.data(), x, sizeof(float) * n * sample, cudaMemcpyHostToDevice, st));
  if (y) PYL_CUDA_CHECK(cudaMemcpyAsync(store_->labels.data(), y, sizeof(int64_t) * n, cudaMemcpyHostToDevice, st));
}

void Executor::cuda_accumulate() {
  cuda::accumulate_totals(g_.loss() >= 0 ? cuda_->loss_slot() : nullptr, cuda_->correct_slot(), cuda_->bad_slot(),
                          cuda_->run_totals(), cuda_->ctx.stream());
}

RunStats Executor::cuda_read_totals(int64_t samples, const char* op, int64_t steps_before) {
  cuda::RunTotals t{};
  PYL_CUDA_CHECK(cudaMemcpyAsync(&t, cuda_->totals.data(), sizeof t, cudaMemcpyDeviceToHost, cuda_->ctx.stream()));
  cuda_->synchronize();
  if (t.bad) {
    if (steps_before >= 0) {
      steps_ = steps_before + static_cast<int64_t>(t.steps);  // the skipped updates did not happen
      fail(ErrorKind::Runtime, "training diverged: the network produced a non-finite output after ", steps_,
           " optimizer steps (no later step was applied); try a smaller learning rate");
    }
    fail(ErrorKind::Runtime, op, ": the model produced a non-finite output; its weights or the input hold NaN/inf");
  }
  RunStats s;
  s.loss_sum = t.loss_sum;
  s.correct = static_cast<int64_t>(t.correct);
  s.samples = samples;
  s.steps = static_cast<int64_t>(t.steps);
  return s;
}

void Executor::cuda_update(int64_t chunks, float lr) {
  const Store& st = *store_;
  Handle& h = *workers_[0];
  cudaStream_t stream = cuda_->ctx.stream();
  float* grads = st.grads.floats();
  // Parameters used more than once: their contributions summed in a fixed order.
  for (const auto& pg : param_grads_) {
    const int64_t off = bind_.param_offset[pg.param], count = g_.value(pg.param).numel();
    bool first = true;
    for (int v : pg.contributions) {
      const auto& s = st.at[v];
      if (s.home == Home::GradDirect) {
        first = false;
        continue;
      }
      for (int64_t c = 0; c < (s.home == Home::GradChunk ? chunks : 1); ++c) {
        const float* src = grad_ptr(v, c);
        if (first) PYL_CUDA_CHECK(cudaMemcpyAsync(grads + off, src, sizeof(float) * count, cudaMemcpyDeviceToDevice,
                                                  stream));
        else add_run(h, count, grads + off, src, grads + off);
        first = false;
      }
    }
  }
  // One update launch per run of adjacent parameters (runs_, a LeNet: one), skipped on the
  // device when this step (or an earlier one of the epoch) produced a non-finite output.
  float* s0 = cuda_->state.size() > 0 ? cuda_->state[0].floats() : nullptr;
  float* s1 = cuda_->state.size() > 1 ? cuda_->state[1].floats() : nullptr;
  const int* skip = &cuda_->run_totals()->bad;
  for (const auto& [lo, hi] : runs_) {
    optimizer_update(h, cfg_.optim, lr, steps_, hi - lo, cuda_->params.floats() + lo, grads + lo, s0 ? s0 + lo : nullptr,
                     s1 ? s1 + lo : nullptr, skip, dstep_);
  }
}

std::shared_ptr<Executor::DeviceData> Executor::upload(const float* images, const int64_t* labels, int64_t count) {
  PYL_CHECK_ARG(cuda_, "upload: this network is not on a CUDA device");
  PYL_CHECK_ARG(count >= 1, "upload: no samples");
  if (labels) check_labels(labels, count, "upload");
  auto d = std::make_shared<DeviceData>();
  d->count = count;
  d->sample_floats = g_.value(g_.input()).numel();
  d->device = cfg_.cuda_device;
  d->images = Memory(Device::CUDA, d->device, sizeof(float) * count * d->sample_floats);
  cuda::DeviceGuard guard(d->device);
  PYL_CUDA_CHECK(cudaMemcpy(d->images.data(), images, d->images.bytes(), cudaMemcpyHostToDevice));
  if (labels) {
    d->labels = Memory(Device::CUDA, d->device, sizeof(int64_t) * count);
    PYL_CUDA_CHECK(cudaMemcpy(d->labels.data(), labels, d->labels.bytes(), cudaMemcpyHostToDevice));
  }
  return d;
}

RunStats Executor::train_epoch_device(const DeviceData& data, const int64_t* order, int64_t order_len,
                                      int64_t batch_size, const ScheduleSpec& schedule, int64_t& iteration,
                                      const ProgressFn& progress, int64_t every) {
  PYL_CHECK_ARG(cfg_.train && cuda_, "train: this network is not a CUDA training network");
  PYL_CHECK_ARG(data.device == cfg_.cuda_device, "train: the dataset is on cuda:", data.device, ", the model on cuda:",
                cfg_.cuda_device);
  PYL_CHECK_ARG(data.sample_floats == g_.value(g_.input()).numel(), "train: the dataset's samples hold ",
                data.sample_floats, " values, the model's input ", g_.value(g_.input()).numel());
  PYL_CHECK_ARG(data.labels.data(), "train: the dataset has no labels");
  PYL_CHECK_ARG(batch_size >= 1 && batch_size <= cfg_.capacity, "train: batch size ", batch_size,
                " exceeds the planned batch size ", cfg_.capacity);
  for (int64_t i = 0; i < order_len; ++i)
    PYL_CHECK_ARG(order[i] >= 0 && order[i] < data.count, "train: sample index ", order[i], " is outside [0, ",
                  data.count, ")");
  const int64_t steps = (order_len + batch_size - 1) / batch_size;
  // The epoch's per-step values, made and checked before the first step: inside the loop
  // nothing that a step reads changes on the host (so a CUDA graph of it can be replayed).
  std::vector<math::StepValues> table(static_cast<size_t>(std::max<int64_t>(steps, 1)));
  for (int64_t s = 0; s < steps; ++s) {
    math::StepValues& v = table[static_cast<size_t>(s)];
    v.lr = checked_lr(schedule_lr(schedule, cfg_.optim.lr, iteration + s), iteration + s, "train");
    v.step = static_cast<uint64_t>(steps_ + s);
    math::adam_bias_corrections(cfg_.optim.beta1, cfg_.optim.beta2, steps_ + s + 1, v.bc1, v.bc2);
    v.start = s * batch_size;
  }
  out_ = nullptr;
  CudaState& c = *cuda_;
  cuda::DeviceGuard guard(cfg_.cuda_device);
  cudaStream_t st = c.ctx.stream();
  if (order_len > c.order_len) {  // once per run (the same length every epoch)
    c.order = Memory(Device::CUDA, cfg_.cuda_device, sizeof(int64_t) * order_len);
    c.order_len = order_len;
  }
  // The epoch's only uploads; they land before the host arrays may change (upload_steps waits).
  PYL_CUDA_CHECK(cudaMemcpyAsync(c.order.data(), order, sizeof(int64_t) * order_len, cudaMemcpyHostToDevice, st));
  upload_steps(c, cfg_.cuda_device, c.step_table, table);
  cuda_reset_totals();
  const BindSteps bound(dstep_, c.current_step());
  const int64_t before = steps_;
  RunStats total;
  int64_t samples = 0;
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t n = std::min(batch_size, order_len - s * batch_size);
    const float lr = table[static_cast<size_t>(s)].lr;
    if (n == batch_size && c.graphs && !profiling_) {
      if (graph_step(true, data, c.order.data(), c.step_table.data(), batch_size, [&] { device_step(data, n, lr); }))
        ++steps_;  // the host's count of the update the graph made
    } else if (n == batch_size) {
      run_eager(c.train_graph, [&] { device_step(data, n, lr); });
    } else {
      device_step(data, n, lr);
    }
    ++iteration;
    samples += n;
    if ((s + 1) % std::max<int64_t>(every, 1) == 0 || s + 1 == steps) {
      // The only synchronisation of the loop: the numbers shown to the user.
      total = cuda_read_totals(samples, "train", before);
      if (progress && !progress(s + 1, steps, total)) break;
    }
  }
  return total;
}

void Executor::device_step(const DeviceData& data, int64_t n, float lr) {
  CudaState& c = *cuda_;
  cudaStream_t st = c.ctx.stream();
  float* xb = store_->input.floats();
  auto* yb = static_cast<int64_t*>(store_->labels.data());
  cuda::begin_step(static_cast<const math::StepValues*>(c.step_table.data()), c.step_cursor(), c.current_step(), st);
  cuda::gather_batch(n, data.sample_floats, data.images.floats(), static_cast<const int64_t*>(data.labels.data()),
                     static_cast<const int64_t*>(c.order.data()), xb, yb, st, dstep_);
  run_batch(xb, yb, n);
  cuda_accumulate();
  commit_running(&c.run_totals()->bad);
  update(n, lr);
}

bool Executor::graph_step(bool training, const DeviceData& data, const void* order, const void* table, int64_t batch,
                          const std::function<void()>& run) {
  CudaState& c = *cuda_;
  CudaState::CapturedStep& slot = training ? c.train_graph : c.eval_graph;
  cudaStream_t st = c.ctx.stream();
  // What a captured step holds on to (the plan's workspace is reserved before any step).
  const CudaState::GraphKey key{data.images.data(), data.labels.data(), order, table,
                                workers_[0]->workspace(store_->workspace_bytes), batch, cfg_.seed};
  if (c.graphs && slot.graph.ready() && slot.key == key) {
    slot.graph.launch(st);
    ++slot.replayed;
    return true;
  }
  if (c.graphs && slot.warm == key) {  // (a failed capture turned graphs off: no second try)
    const int64_t before = steps_;
    try {
      slot.graph.begin(st);
      run();  // recorded, not run
      slot.graph.end(st);
      slot.graph.launch(st);
      slot.key = key;
      ++slot.captures;
      return false;  // run()'s host-side effects happened, for the step the launch runs
    } catch (const std::exception& e) {
      slot.graph.abort(st);
      steps_ = before;  // the recorded update never ran; the step runs eagerly below
      c.graphs = false;
      c.graphs_off = e.what();
    }
  }
  run_eager(slot, run);
  slot.warm = key;
  return false;
}

void Executor::set_cuda_graphs(bool on) {
  PYL_CHECK_ARG(cuda_, "cuda_graphs: this executor is not on a CUDA device");
  cuda_->graphs = on;
  if (!on) {
    cuda_->train_graph.graph.reset();
    cuda_->eval_graph.graph.reset();
  }
  if (on) cuda_->graphs_off.clear();
}

Executor::GraphStats Executor::cuda_graph_stats() const {
  GraphStats g;
  if (!cuda_) return g;
  const auto counts = [](const CudaState::CapturedStep& s) {
    return GraphCounts{s.captures, s.replayed, s.eager, s.kernels_per_step, s.graph.nodes()};
  };
  g.enabled = cuda_->graphs;
  g.train = counts(cuda_->train_graph);
  g.eval = counts(cuda_->eval_graph);
  g.off_reason = cuda_->graphs_off;
  return g;
}

RunStats Executor::evaluate_device(const DeviceData& data) {
  PYL_CHECK_ARG(cuda_, "evaluate: this network is not on a CUDA device");
  PYL_CHECK_ARG(data.device == cfg_.cuda_device, "evaluate: the dataset is on cuda:", data.device,
                ", the model on cuda:", cfg_.cuda_device);
  PYL_CHECK_ARG(data.sample_floats == g_.value(g_.input()).numel(), "evaluate: the dataset's samples hold ",
                data.sample_floats, " values, the model's input ", g_.value(g_.input()).numel());
  PYL_CHECK_ARG(g_.loss() < 0 || data.labels.data(), "evaluate: the dataset has no labels");
  out_ = nullptr;
  CudaState& c = *cuda_;
  cuda::DeviceGuard guard(cfg_.cuda_device);
  cudaStream_t st = c.ctx.stream();
  cuda_reset_totals();
  const int64_t* labels = static_cast<const int64_t*>(data.labels.data());
  const int64_t batches = (data.count + cfg_.capacity - 1) / cfg_.capacity;
  if (!c.graphs || profiling_) {  // the batches straight from the dataset
    for (int64_t base = 0; base < data.count; base += cfg_.capacity) {
      const int64_t n = std::min(cfg_.capacity, data.count - base);
      const auto run = [&] {
        run_batch(data.images.floats() + base * data.sample_floats, labels ? labels + base : nullptr, n);
        cuda_accumulate();
      };
      if (n == cfg_.capacity) run_eager(c.eval_graph, run);
      else run();
    }
    return cuda_read_totals(data.count, "evaluate", -1);
  }
  // With graphs: each batch is copied into the input buffer from the row its step says, so
  // the captured batch reads from fixed addresses.
  std::vector<math::StepValues> table(static_cast<size_t>(batches));
  for (int64_t b = 0; b < batches; ++b) {
    table[static_cast<size_t>(b)].step = static_cast<uint64_t>(steps_);
    table[static_cast<size_t>(b)].start = b * cfg_.capacity;
  }
  upload_steps(c, cfg_.cuda_device, c.eval_table, table);
  const BindSteps bound(dstep_, c.current_step());
  float* xb = store_->input.floats();
  auto* yb = static_cast<int64_t*>(store_->labels.data());
  for (int64_t b = 0; b < batches; ++b) {
    const int64_t n = std::min(cfg_.capacity, data.count - b * cfg_.capacity);
    const auto run = [&] {
      cuda::begin_step(static_cast<const math::StepValues*>(c.eval_table.data()), c.step_cursor(), c.current_step(),
                       st);
      cuda::gather_batch(n, data.sample_floats, data.images.floats(), labels, nullptr, xb, labels ? yb : nullptr, st,
                         dstep_);
      run_batch(xb, labels ? yb : nullptr, n);
      cuda_accumulate();
    };
    if (n == cfg_.capacity) graph_step(false, data, nullptr, c.eval_table.data(), n, run);
    else run();
  }
  return cuda_read_totals(data.count, "evaluate", -1);
}
#endif

}  // namespace pylenet::runtime
