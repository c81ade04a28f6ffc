// The executor: the one runtime. It compiles a graph (graph/graph.h, differentiated for
// training) for a backend into a list of INSTRUCTIONS, each a call into the op layer
// (csrc/ops/), grouped into PHASES, with a memory plan made before the first step; then it
// runs whole steps natively: forward, loss, backward and the optimizer update.
//
// Chunks. A batch is split into chunks of `chunk` samples (CPU: 32, so results do not depend
// on the thread count; CUDA: the whole batch). A chunk phase runs its instructions for every
// chunk, the chunks claimed by the workers as they come free (core/thread_pool.h), each chunk
// on one worker with single-threaded kernels. A batch phase runs once over the whole batch:
// the steps that need every chunk's results (batch norm's statistics and their gradients,
// combined in chunk order; the Linear layers' weight gradients, one product over the batch).
// Parameter gradients made per chunk are summed in chunk order as the optimizer update runs.
// So results are bit-identical for any thread count and any timing.
//
// Memory. Every batch tensor lives in one of two arenas, sized for `chunk` samples and laid
// out by liveness (a value occupies its slot from the instruction that writes it to the last
// that reads it; element-wise ops write over an input that dies with them):
//   - the WORKER arena, one per worker, for values used within one chunk phase (inference:
//     all of them, so a worker reuses one region, warm in its cache);
//   - the CHUNK arena, one per chunk of the largest batch, for values that live across a
//     batch phase (e.g. activations before a batch norm, read again by its backward).
// Parameters, gradients and optimizer state are flat buffers; the parameters and buffers
// are the model's own (the Python parameters are views of them), never copied per call on
// the CPU. Nothing is allocated inside a step.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/allocator.h"
#include "core/handle.h"
#include "core/simd.h"
#include "core/thread_governor.h"
#include "graph/autodiff.h"
#include "graph/graph.h"
#include "ops/batchnorm.h"
#include "ops/conv.h"
#include "ops/linear.h"
#include "ops/optim.h"
#include "ops/pool.h"
#include "runtime/memory.h"

namespace pylenet::runtime {

// CPU chunks: at most kCpuChunk samples, and a batch of up to 2 kCpuChunk is split in two
// halves of at least kCpuMinChunk, so that a batch of 32 keeps two cores busy (in one chunk it
// trained at half the speed of a batch of 64). The size depends on the executor's capacity
// only, never on the thread count: the chunks fix the order of the gradient sums.
constexpr int64_t kCpuChunk = 32, kCpuMinChunk = 8;
int64_t cpu_chunk(int64_t capacity);
struct CudaState;  // runtime/cuda_state.h: the device side of a CUDA executor

struct Config {
  Device device = Device::CPU;
  int cuda_device = 0;
  int threads = 1;                 // CPU workers
  int64_t capacity = 1;            // the largest batch a call may pass
  ConvAlgo conv_algo = ConvAlgo::Heuristic;
  bool train = false;              // differentiate the loss and update the parameters
  OptimSpec optim;
  uint64_t seed = 0;               // dropout masks
  // The CUDA backend's lowering rules (fuse_relu, fuse_loss_head) applied on the CPU
  // too: for tests on machines without a GPU, which check that the rewritten instruction list
  // trains bit for bit like the plain one. No faster on the CPU (its folded ReLU is a second pass).
  bool device_rules = false;
  bool fuse = true;  // CUDA: apply those rules (off: the unfused kernels, for comparing bits)
};

// Where the model state lives (host memory, owned by the caller, who keeps it alive). The
// parameters are computed on where they are (a model's flat buffer, normally all of them);
// gradients and optimizer state are flat, laid out by the model's parameter order.
struct Bindings {
  int64_t num_params = 0;              // floats in the model's parameter layout
  std::vector<float*> param_ptr;       // per graph value: a parameter's memory (null: not one)
  std::vector<int64_t> param_offset;   // per graph value: its place in the layout (-1: not one)
  std::vector<void*> buffer_ptr;       // per graph value: a buffer's host memory (float or int64)
  std::vector<float*> state;           // the optimizer's state buffers, num_params floats each
};

// Per-run totals: loss summed over samples, correct argmax predictions, samples, steps.
struct RunStats {
  double loss_sum = 0;
  int64_t correct = 0, samples = 0, steps = 0;
};
using ProgressFn = std::function<bool(int64_t, int64_t, const RunStats&)>;

struct ScheduleSpec {
  enum Kind { Constant = 0, Step = 1, Cosine = 2, Inv = 3, Table = 4, OneCycle = 5 } kind = Constant;
  double gamma = 0.1, power = 0.75, min_lr = 0.0;
  int64_t step_iters = 1, total_iters = 1;
  double pct_start = 0.3, div_factor = 25.0, final_div_factor = 1e4;  // one-cycle
  int64_t warmup_iters = 0;  // any kind: scaled by (iter + 1) / warmup_iters before that
  // Table: the rate of each iteration from first_iter on, computed ahead by the caller (a
  // schedule written as a Python function, evaluated one epoch at a time so the steps stay native).
  std::vector<double> table;
  int64_t first_iter = 0;
};
// Learning rate at iteration `iter` (counted from 0 over the whole run):
//   step: lr * gamma^floor(iter / step_iters)       cosine: min + (lr - min)(1 + cos(pi iter/total))/2
//   inv (Caffe): lr * (1 + gamma * iter)^-power     table: table[iter - first_iter] (base lr unused)
//   one-cycle (PyTorch's OneCycleLR, two phases, cosine): from lr / div up to lr over the first
//   pct_start of total_iters, then down to lr / div / final_div at the last iteration
// With warmup_iters > 0, iteration i < warmup_iters has (i + 1) / warmup_iters of that rate.
double schedule_lr(const ScheduleSpec& s, double base_lr, int64_t iter);

// Memory the plan holds, in bytes.
struct MemoryPlan {
  int64_t params = 0, grads = 0, grad_slots = 0, optimizer_state = 0, buffers = 0;
  int64_t input = 0;               // the gathered batch and its labels
  int64_t activations = 0;         // both arenas, the Linear stash and the batch statistics
  int64_t activations_unshared = 0;  // what the activations would take without reuse
  int64_t workspace = 0;
  int64_t prepared = 0;            // inference: filters prepared once (conv_prepare_filter)
  int64_t total() const {
    return params + grads + grad_slots + optimizer_state + buffers + input + activations + workspace + prepared;
  }
};

// One step of the compiled graph (see the file comment).
struct Instr {
  enum Kind {
    ConvFwd, ConvBwdData, ConvBwdFilter, ConvBwdBias,
    ConvBwd,  // a layer's backward passes at once: in (x, w, dy), out (dx, dw, db) (ops conv_run_backward)
    LinearFwd, LinearBwdData, LinearBwdWeight, LinearBwdBias, LinearStash, LinearGradJob,
    PoolFwd, PoolBwd, ActFwd, ActBwd, Add, Cat, Slice, DropoutFwd, DropoutBwd,
    BnStats, BnStatsFinalize, BnApply, BnInference, BnBwdPartial, BnBwdFinalize, BnBwdApply, BnInferenceBwd,
    SoftmaxFwd, SoftmaxBwd, CrossEntropy, CrossEntropyBwd, Nll, NllBwd, Classify,
    LossHead,  // CUDA: the loss, its gradient and Classify at once; in (scores, labels, output), b = nll
  };
  Kind kind;
  int node = -1;                   // the graph node it comes from
  std::vector<int> in, out;        // graph values (-1: absent); out[k] < 0: not needed
  bool batch = false;              // runs once per batch (a batch phase), not per chunk
  ConvShape conv{};                // n = 1; set per call
  PoolShape pool{};
  int64_t a = 0, b = 0;            // per-op sizes: rows/cols, count per sample, channels, ...
  ConvAlgo algo = ConvAlgo::Naive;      // ConvBwd: backward filter's
  ConvAlgo algo_data = ConvAlgo::Naive; // ConvBwd: backward data's
  int linear = -1;                 // LinearStash / LinearGradJob: the stash group
  int64_t r0 = 0, r1 = 0;          // LinearGradJob: rows of dW; batch-norm finalize: r0 = the
                                   // chunks' partials in the fixed arena
  int64_t fixed = -1;              // a scratch area of the fixed arena (BN partials, coefficients)
  bool relu = false;               // PoolFwd / PoolBwd / ConvFwd / LinearFwd (CUDA): a ReLU folded
                                   // in (fuse_relu); PoolBwd's in[2] is then the ReLU's output
  int prepared = -1;               // ConvFwd (CPU inference): its prepared filter (Store::Prepared)
  bool max_pool = false;           // ConvFwd (CPU): a 2x2 max pooling folded in (fuse_conv_max_pool);
                                   // out = (pooled, the convolution's own, which in training then
                                   // holds the windows' winners)
  int fused_conv = -1;             // PoolBwd / ConvBwd (CPU training): the ConvFwd a pooling was
                                   // folded into; PoolBwd's in[0] then holds the winners. A
                                   // ConvBwd that took the pooling's backward in too
                                   // reads (x, w, the pooling's dy, that output) and has out[3]
  bool wide = false;               // CPU: runs on all workers when the batch is one chunk
  std::string label;               // for profiles
};

struct Phase {
  bool batch = false;
  std::vector<int> instrs;
};

class Executor {
 public:
  Executor(const graph::Graph& g, const Config& cfg, Bindings bind);
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  const Config& config() const { return cfg_; }
  const graph::Graph& graph() const { return g_; }
  int64_t num_params() const { return bind_.num_params; }
  int threads() const { return static_cast<int>(workers_.size()); }
  int64_t chunk() const { return chunk_; }  // samples per chunk (CUDA: the whole batch)
  // How many of the workers the steps use, step by step (core/thread_governor.h): training
  // steps and forward batches each have their own.
  const ThreadGovernor& governor(bool training) const { return training ? train_gov_ : infer_gov_; }
  MemoryPlan memory_plan() const;
  const std::vector<Instr>& instrs() const { return instrs_; }
  const std::vector<Phase>& phases() const { return phases_; }
  std::vector<std::string> conv_algorithms() const;   // forward pass of each conv, in node order
  int64_t optimizer_steps() const { return steps_; }
  void set_optimizer_steps(int64_t n) { steps_ = n; }
  void set_seed(uint64_t seed) { cfg_.seed = seed; }
  float* grads();                                     // the last step's summed gradient (CPU)
  void copy_grads(float* host) const;                 // a host copy of it (any device; synchronises)

  // One training step on a batch in host memory: x (n, *input), labels (n,), n <= capacity.
  RunStats train_step(const float* x, const int64_t* labels, int64_t n, float lr);
  // Steps over images[order[i]] in batches (host data); `iteration` (the schedule's clock) advances.
  RunStats train_epoch(const float* images, const int64_t* labels, int64_t count, const int64_t* order,
                       int64_t order_len, int64_t batch_size, const ScheduleSpec& schedule, int64_t& iteration,
                       const ProgressFn& progress, int64_t every);
  // Forward over any number of samples, in batches of the capacity: out (count, *output).
  // With labels (and a loss in the graph), also the loss and accuracy totals.
  RunStats forward(const float* x, const int64_t* labels, int64_t count, float* out);

  // CUDA: the device copies of the parameters, buffers and optimizer state are the ones the
  // steps use; these copy them from and to the host bindings (they synchronise).
  void upload_state();
  void download_state();
  bool on_device() const { return cfg_.device == Device::CUDA; }
#ifdef PYLENET_HAVE_CUDA
  // A dataset resident on the device: batches of an epoch are gathered there by index.
  struct DeviceData {
    Memory images, labels;
    int64_t count = 0, sample_floats = 0;
    int device = 0;
  };
  std::shared_ptr<DeviceData> upload(const float* images, const int64_t* labels, int64_t count);
  RunStats train_epoch_device(const DeviceData& data, const int64_t* order, int64_t order_len, int64_t batch_size,
                              const ScheduleSpec& schedule, int64_t& iteration, const ProgressFn& progress,
                              int64_t every);
  RunStats evaluate_device(const DeviceData& data);

  // CUDA graphs for train_epoch_device and evaluate_device: with them on, the first full step
  // (a full batch) of a run goes eagerly (lazy allocations and algorithm choices happen outside
  // capture), the next is captured as one CUDA graph, and every later full step of this and
  // later runs replays it (a last, partial batch runs eagerly). The results are the eager
  // steps' bit for bit: the same kernels with the same arguments, the per-step values read on
  // the device (an evaluation batch is copied from the dataset into the input buffer first,
  // at the row its step says). If a capture fails, graphs turn off for this executor and the
  // step runs eagerly. Off while profiling.
  void set_cuda_graphs(bool on);
  struct GraphCounts {
    int64_t captures = 0, replayed = 0, eager = 0;  // full steps (eager: run without a graph)
    uint64_t kernels_per_step = 0;  // kernel launches of an eager full step (0: none yet)
    size_t graph_nodes = 0;         // kernels, copies and memsets of the captured step
  };
  struct GraphStats {
    bool enabled = false;
    GraphCounts train, eval;        // training steps, evaluation batches
    std::string off_reason;         // why a capture failed ("" if none did)
  };
  GraphStats cuda_graph_stats() const;
#endif

  // While profiling is on: seconds per instruction (summed over the workers, so on the CPU it
  // is thread time), then one more entry for the update (gradient sums and optimizer). On
  // CUDA each instruction is followed by a stream synchronisation, so the times are the
  // device's (and the step is slower than without profiling). set_profiling resets them.
  void set_profiling(bool on);
  std::vector<double> profile() const;

 private:
  struct Store;  // where each value lives (memory plan)
  void lower();
  // Lowering rewrites: a value's root through views (Reshape), how many instructions read
  // each root, and removing the instructions a rewrite absorbed.
  int view_root(int v) const;
  std::vector<int> readers_by_root() const;
  void drop_instrs(const std::vector<char>& drop);
  void fuse_relu();       // CUDA: a ReLU after a pooling, conv or Linear becomes its epilogue
  void fuse_conv_max_pool();  // CPU: a 2x2 max pooling after a convolution joins it
  void fuse_loss_head();  // CUDA training: loss, gradient and accuracy in one launch
  void copy_output(const float* scores, int64_t start, int64_t m);  // output rows -> forward()'s out
  void plan_memory();
  void choose_algorithms();
  void plan_prepared_filters();  // CPU inference: which convolutions keep a prepared filter
  void refresh_prepared_filters();  // prepares those whose weights, bias or SIMD level changed
  void plan_wide_ops();  // CPU: which ops of a one-chunk batch run on all workers (Instr::wide)
  void check_labels(const int64_t* labels, int64_t n, const char* op) const;
  // Around one step (a training step, or one forward batch) on the CPU: begin sets the
  // workers it uses from the governor, end tells the governor how long it took.
  std::chrono::steady_clock::time_point begin_step(ThreadGovernor& gov);
  void end_step(ThreadGovernor& gov, std::chrono::steady_clock::time_point t0, int64_t n);
  // Runs every phase for a batch of n at x (host or device memory of the backend).
  void run_batch(const float* x, const int64_t* labels, int64_t n);
  void exec(const Instr& ins, Handle& h, int64_t c, int worker, int64_t start, int64_t m, int64_t n);
  // The algorithm a convolution instruction runs for this call (s.n: the chunk's images):
  // under "heuristic" the rule is applied per call, otherwise the one chosen for a chunk.
  ConvAlgo conv_algo_for(const Instr& ins, ConvPass pass, const ConvShape& s) const;
  float* ptr(int v, int64_t c, int worker) const;
  float* grad_ptr(int v, int64_t c) const;
  RunStats collect(int64_t n, const char* op);
  // Batch norm's running statistics, from the step's batch statistics, once the step is
  // accepted (on CUDA: unless *skip, the flag a non-finite step sets).
  void commit_running(const int* skip);
  void plan_update();
  void update(int64_t n, float lr);      // update_now, timed while profiling
  void update_now(int64_t n, float lr);  // sums the gradients in a fixed order, runs the optimizer
  void profile_sync();                   // on CUDA: waits for the stream (profiled times are real)
  // Per chunk: its loss sum, correct count and non-finite flag (host memory, or device
  // memory on CUDA).
  double* loss_slot(int64_t c);
  int64_t* correct_slot(int64_t c);
  int* bad_slot(int64_t c);
#ifdef PYLENET_HAVE_CUDA
  // The CUDA side of the loop (executor.cpp).
  void cuda_allocate();
  void cuda_stage(const float* x, const int64_t* y, int64_t n);   // host batch -> the input buffers
  void cuda_accumulate();                                          // this step's results -> totals
  RunStats cuda_read_totals(int64_t samples, const char* op, int64_t steps_before);  // synchronises
  void cuda_update(int64_t chunks, float lr);
  void copy_state(bool to_device);  // upload_state / download_state
  void cuda_reset_totals();
  // One training step of train_epoch_device on the device's batch: begin_step, gather, the
  // phases, totals, running statistics and the update (queued, or recorded while capturing).
  void device_step(const DeviceData& data, int64_t n, float lr);
  // The full step `run` queues (a training step, or an evaluation batch): replayed from the
  // kind's graph when that was captured for the same data, order, table, batch and seed, else
  // captured (after one eager run for the same), else run eagerly. Returns true when it
  // replayed (then the host-side effects of `run` did not happen).
  bool graph_step(bool training, const DeviceData& data, const void* order, const void* table, int64_t batch,
                  const std::function<void()>& run);
#endif

  graph::Graph g_;
  Config cfg_;
  Bindings bind_;
  int64_t chunk_ = kCpuChunk, max_chunks_ = 1;
  int64_t steps_ = 0;
  std::vector<graph::ParamGradient> param_grads_;
  std::vector<Instr> instrs_;
  std::vector<Phase> phases_;
  std::unique_ptr<Store> store_;
  std::vector<std::unique_ptr<Handle>> workers_;  // CPU: one single-threaded handle per worker
  std::unique_ptr<Handle> wide_;                   // CPU: a batch of one chunk, all workers inside its ops
  ThreadGovernor train_gov_, infer_gov_;
  int active_ = 1;                                // the workers this step uses (<= threads())
  std::unique_ptr<CudaState> cuda_;
  // Per step, bound by run_batch: the batch's input and labels, and where forward() puts
  // the output rows (host memory).
  const float* x_ = nullptr;
  const int64_t* y_ = nullptr;
  float* out_ = nullptr;
  // CUDA, inside train_epoch_device: the step's values on the device (ops/math.h StepValues),
  // which the gather, dropout and optimizer kernels read instead of host arguments; else null.
  const math::StepValues* dstep_ = nullptr;
  // The update's layout, made by plan_update() at the first step: per parameter with a
  // gradient its range, the blocks the workers take, and the runs of adjacent ranges (CUDA).
  struct Range { int64_t lo, hi; size_t grad; };
  struct Block { int64_t lo, hi; size_t range; };
  std::vector<Range> ranges_;
  std::vector<Block> blocks_;
  std::vector<std::pair<int64_t, int64_t>> runs_;
  bool update_planned_ = false;
  simd::Level level_ = simd::Level::Scalar;
  bool profiling_ = false;
  std::vector<std::vector<double>> times_;
};

}  // namespace pylenet::runtime
