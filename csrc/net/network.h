// The network runtime: a compiled Sequential. Built once from layer specs and an input
// shape, it infers every shape, lays out one flat buffer each for parameters, gradients
// and optimizer state, sizes activations and workspace for a batch capacity (the memory
// plan), and then runs whole training steps and epochs natively: forward, softmax
// cross-entropy, backward and the optimizer update, with no allocation inside the loop.
#pragma once

#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/allocator.h"
#include "core/handle.h"
#include "ops/conv.h"
#include "ops/optim.h"
#include "ops/pool.h"
#include "ops/tensor.h"

namespace pylenet {

enum class LayerKind { Conv2d, MaxPool2d, AvgPool2d, Linear, ReLU, Tanh, Flatten };

struct LayerSpec {
  LayerKind kind = LayerKind::ReLU;
  int64_t in = 0, out = 0;  // channels (Conv2d) or features (Linear)
  Pair kernel{1, 1}, stride{1, 1}, pad{0, 0};
  bool bias = true;
};

// What one layer is and costs, per sample (the batch dimension is left out of shapes).
struct LayerInfo {
  std::string kind;
  std::vector<int64_t> out_shape;
  int64_t weight_count = 0, bias_count = 0;
  int64_t param_offset = 0;  // where the weight starts in the flat parameter buffer
  double flops = 0;          // forward, per sample
  int64_t activation_floats = 0;  // per sample; 0 when the layer is a view of its input
};

// A model after shape inference, shared by the CPU Network and the CUDA CudaNetwork: per
// layer what it is, its shapes and costs per sample, and the op shape it runs with (batch 1;
// a backend sets n). plan_model checks every layer against its input and names the layer
// in any error; it allocates nothing, so it is also how Python checks a model it builds.
struct LayerPlan {
  LayerSpec spec;
  LayerInfo info;
  std::vector<int64_t> in_shape;
  ConvShape conv{};  // Conv2d
  PoolShape pool{};  // MaxPool2d, AvgPool2d
  bool needs_dx = false;  // does an earlier layer have parameters (so the input gradient is needed)
  bool is_view() const { return spec.kind == LayerKind::Flatten; }
};
struct ModelPlan {
  std::vector<LayerPlan> layers;
  int64_t num_params = 0, classes = 0;
  int64_t sample_floats = 0;  // input floats per sample
  int64_t grad_stride = 0;    // floats per sample of the largest tensor (input or any output)
};
ModelPlan plan_model(const std::vector<LayerSpec>& specs, const std::vector<int64_t>& input_chw);
int64_t shape_numel(const std::vector<int64_t>& s);

struct MemoryPlan {
  int64_t batch_capacity = 0;
  int64_t params = 0, grads = 0, optimizer_state = 0;  // bytes
  int64_t chunk_grads = 0;  // per chunk of the batch, the gradient of the non-Linear layers (see kChunk)
  int64_t activations = 0, activation_grads = 0, workspace = 0;
  int64_t total() const {
    return params + grads + chunk_grads + optimizer_state + activations + activation_grads + workspace;
  }
};

enum class OptimKind { SGD = 0, Adam = 1, Adadelta = 2 };
struct OptimSpec {
  OptimKind kind = OptimKind::SGD;
  float lr = 0.01f, momentum = 0.0f, weight_decay = 0.0f;
  bool nesterov = false;
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, rho = 0.9f;
};
int optimizer_state_buffers(OptimKind kind);  // SGD: 1 (velocity), Adam: 2, Adadelta: 2
void check_optim_spec(const OptimSpec& optim);  // InvalidArgument for bad hyper-parameters
void check_batch_capacity(const char* op, int64_t capacity);
// Checks that images are (N, *input_chw) [and labels (N,)]; `op` names the caller.
void check_batch_shapes(const char* op, const std::vector<int64_t>& input_chw, const TensorDesc& images,
                        const TensorDesc* labels);

enum class ScheduleKind { Constant = 0, Step = 1, Cosine = 2, Inv = 3 };
struct ScheduleSpec {
  ScheduleKind kind = ScheduleKind::Constant;
  double gamma = 0.1, power = 0.75, min_lr = 0.0;
  int64_t step_iters = 1, total_iters = 1;
};
// Learning rate at iteration `iter` (counted from 0 over the whole run):
//   step: lr * gamma^floor(iter / step_iters)       cosine: min + (lr - min)(1 + cos(pi iter/total))/2
//   inv (Caffe): lr * (1 + gamma * iter)^-power
double schedule_lr(const ScheduleSpec& s, double base_lr, int64_t iter);

struct RunStats {
  double loss_sum = 0;  // summed over samples
  int64_t correct = 0, samples = 0, steps = 0;
};

// progress(steps_done, steps_total, stats so far) -> false to stop early. Called from the
// training thread every `every` steps; it is the only way back into the caller.
using ProgressFn = std::function<bool(int64_t, int64_t, const RunStats&)>;

class Layer;
class LinearLayer;

// Threads split a batch into fixed chunks of kChunk samples: each chunk runs forward, loss
// and backward serially on one worker, into its own gradient buffer; the chunk gradients
// are then summed in chunk order together with the optimizer update. The chunk size does
// not depend on the thread count, so neither do the results (bit for bit). Linear layers'
// weight gradients are buffered differently, as one product over the whole batch (see
// LinearLayer); their results do not depend on the thread count either.
constexpr int64_t kChunk = 32;

class Network {
 public:
  Network(const std::vector<LayerSpec>& layers, const std::vector<int64_t>& input_chw, int64_t batch_capacity,
          const OptimSpec& optim, ConvAlgo conv_algo, int threads);
  ~Network();
  Network(const Network&) = delete;
  Network& operator=(const Network&) = delete;

  const std::vector<LayerInfo>& layers() const { return info_; }
  const std::vector<int64_t>& input_shape() const { return input_chw_; }
  int64_t num_classes() const { return classes_; }
  int64_t batch_capacity() const { return capacity_; }
  int threads() const { return static_cast<int>(workers_.size()); }
  MemoryPlan memory_plan() const;
  std::vector<std::string> conv_algorithms() const;  // chosen per conv layer (forward pass)

  int64_t num_params() const { return num_params_; }
  float* params() { return params_.floats(); }
  float* grads() { return grads_.floats(); }  // the summed gradient of the last step
  int num_state_buffers() const { return optimizer_state_buffers(optim_.kind); }
  float* state(int i) { return state_.floats() + static_cast<int64_t>(i) * num_params_; }
  int64_t optimizer_steps() const { return optimizer_steps_; }
  void set_optimizer_steps(int64_t n) { optimizer_steps_ = n; }
  const OptimSpec& optimizer() const { return optim_; }

  // Per-layer timing (seconds summed over workers, i.e. CPU time) of forward and backward,
  // collected while profiling is on; for finding where a step spends its time.
  void set_profiling(bool on);
  std::vector<std::pair<double, double>> profile() const;  // (forward, backward) per layer
  double loss_seconds() const;  // softmax cross-entropy, summed over workers

  // Checks that images are (N, *input_shape) [and labels (N,)]; `op` names the caller.
  void check_batch(const char* op, const TensorDesc& images, const TensorDesc* labels) const {
    check_batch_shapes(op, input_chw_, images, labels);
  }

  // One step on a batch already in memory: x (n, C, H, W), labels (n,), n <= capacity.
  RunStats train_step(const float* x, const int64_t* labels, int64_t n, float lr);
  // Steps over images[order[i]] in batches; `iteration` (the schedule's clock) advances.
  RunStats train_epoch(const float* images, const int64_t* labels, int64_t count, const int64_t* order,
                       int64_t order_len, int64_t batch_size, const ScheduleSpec& schedule, int64_t& iteration,
                       const ProgressFn& progress, int64_t every);
  // Inference over any number of images, in batches of the capacity.
  RunStats evaluate(const float* images, const int64_t* labels, int64_t count);
  void predict(const float* images, int64_t count, float* probs /* (count, classes) softmax */);

 private:
  // Runs `fn(handle, chunk, start, m, slot)` for every chunk of [0, n) on the workers; slot
  // is the start of the worker's first chunk (see forward). The first exception thrown by
  // any chunk is rethrown here.
  template <class F>
  void for_chunks(int64_t n, F&& fn);
  // Forward over samples [start, start + m) of the batch at x; returns that slice's logits.
  // Activations go to the buffers' rows at `slot` (training: start, kept for backward).
  // Inference passes the worker's first chunk, so a worker reuses one region, warm in its
  // cache, instead of streaming through the whole batch's buffers (cudnn_lenet predict at
  // batch 256: 12 MB of activations).
  const float* forward(Handle& h, const float* x, int64_t start, int64_t m, int64_t slot);
  // Backward for samples [start, start + m) of a batch of `batch`, dlogits already in the
  // first gradient buffer. Per-chunk parameter gradients OVERWRITE the chunk's slots in
  // `chunk_grads` (at chunk_offset_), or grads_ itself when it is null (a one-chunk batch).
  void backward(Handle& h, const float* x, int64_t start, int64_t m, int64_t batch, float* chunk_grads);
  void linear_weight_grads(int64_t batch);  // after every chunk's backward
  void reduce_and_update(int64_t chunks, float lr);
  void check_labels(const int64_t* labels, int64_t n, const char* op) const;
  const float* layer_input(size_t k, const float* x) const;  // batch-start pointer
  size_t layer_index(const Layer* l) const;
  // Layers with no buffer of their own: views (Flatten) and a ReLU deferred past its pool.
  bool passes_through(size_t k) const;

  std::vector<std::unique_ptr<Handle>> workers_;  // one single-threaded handle per worker
  std::vector<int64_t> input_chw_;
  int64_t capacity_, classes_ = 0, num_params_ = 0, sample_floats_ = 0;
  OptimSpec optim_;
  int64_t optimizer_steps_ = 0;
  std::vector<std::unique_ptr<Layer>> layers_;
  std::vector<LinearLayer*> linears_;  // the Linear layers among layers_
  struct GradJob { LinearLayer* layer; int64_t r0, r1; };  // rows of one Linear weight gradient
  std::vector<GradJob> grad_jobs_;
  std::vector<int> grad_job_worker_;  // which worker runs each job, for grad_sched_workers_ workers
  int grad_sched_workers_ = 0;
  std::vector<int64_t> chunk_offset_;  // per layer: its gradient's place in a chunk buffer (-1: none)
  int64_t chunk_params_ = 0;           // floats of one chunk's gradient (layers other than Linear)
  AlignedBuffer stash_;                // per Linear layer: a batch's X (packed) and dY (see LinearLayer)
  int64_t stash_x_floats_ = 0, stash_dy_floats_ = 0;
  std::vector<LayerInfo> info_;
  std::vector<int64_t> in_floats_, out_floats_;  // per sample, per layer
  AlignedBuffer params_, grads_, state_;
  AlignedBuffer chunk_grads_;  // (chunks, round16(chunk_params_)): per chunk, the non-Linear layers' gradients
  AlignedBuffer acts_;         // input batch + every layer's output, capacity x per-sample size
  AlignedBuffer grad_bufs_;    // two ping-pong buffers for activation gradients
  std::vector<float*> act_;    // act_[0] = gathered input batch, act_[i + 1] = output of layer i
  int64_t* labels_ = nullptr;  // gathered labels (capacity,)
  std::vector<double> chunk_loss_;  // per chunk: loss sum, correct count, non-finite flag
  std::vector<int64_t> chunk_correct_;
  std::vector<char> chunk_bad_;
  std::vector<std::exception_ptr> chunk_errors_;  // sized once, so a step allocates nothing
  std::vector<char> needs_dx_;  // per layer: does any earlier layer have parameters
  // Per layer: a ReLU followed by a max pool, run after the pool instead (see forward()).
  std::vector<char> relu_after_pool_;
  float* grad_a_ = nullptr;
  float* grad_b_ = nullptr;
  int64_t grad_stride_ = 0;  // floats per sample in the gradient buffers (the largest tensor)
  int64_t workspace_bytes_ = 0;  // per worker
  bool profiling_ = false;
  std::vector<std::vector<double>> times_;  // [worker][2 * layer + pass], plus loss at the end
};

}  // namespace pylenet
