#include "net/cuda_network.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "cuda/check.h"
#include "cuda/ops.h"
#include "cuda/tensor.h"

namespace pylenet {

namespace {
inline int64_t round64(int64_t n) { return (n + 63) / 64 * 64; }  // floats: 256-byte aligned slices
constexpr size_t kLossResultOffset = 64;  // bytes into totals_, after the RunTotals

ConvShape conv_at(const LayerPlan& p, int64_t n) { ConvShape s = p.conv; s.n = n; return s; }
PoolShape pool_at(const LayerPlan& p, int64_t n) { PoolShape s = p.pool; s.n = n; return s; }
LinearShape linear_at(const LayerPlan& p, int64_t n) { return LinearShape{n, p.spec.in, p.spec.out}; }
Activation activation_of(const LayerPlan& p) {
  return p.spec.kind == LayerKind::ReLU ? Activation::ReLU : Activation::Tanh;
}

void copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream) {
  if (bytes == 0) return;
  PYL_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, kind, stream));
  PYL_CUDA_CHECK(cudaStreamSynchronize(stream));
}
}  // namespace

// ------------------------------------------------------------------------------ dataset
DeviceDataset::DeviceDataset(int device, const float* images, const int64_t* labels, int64_t count,
                             int64_t sample_floats, int64_t classes)
    : count_(count), sample_floats_(sample_floats) {
  PYL_CHECK_ARG(count >= 1, "upload: no samples");
  if (labels)
    for (int64_t i = 0; i < count; ++i)
      PYL_CHECK_ARG(labels[i] >= 0 && labels[i] < classes, "label ", labels[i], " at index ", i, " is outside [0, ",
                    classes, ")");
  cuda::DeviceGuard guard(device);
  const size_t image_bytes = sizeof(float) * count * sample_floats;
  images_ = cuda::DeviceBuffer(device, image_bytes);
  // Plain synchronous copies: this runs once per dataset, not per step.
  PYL_CUDA_CHECK(cudaMemcpy(images_.data(), images, image_bytes, cudaMemcpyHostToDevice));
  if (labels) {
    labels_ = cuda::DeviceBuffer(device, sizeof(int64_t) * count);
    PYL_CUDA_CHECK(cudaMemcpy(labels_.data(), labels, sizeof(int64_t) * count, cudaMemcpyHostToDevice));
  }
}

// ------------------------------------------------------------------------------ network
// Nothing queued may still use the plan when its buffers go back to the pool (the members
// are released before ctx_, which is declared first).
CudaNetwork::~CudaNetwork() { (void)cudaStreamSynchronize(ctx_.stream()); (void)cudaGetLastError(); }

CudaNetwork::CudaNetwork(const std::vector<LayerSpec>& specs, const std::vector<int64_t>& input_chw, int64_t capacity,
                         const OptimSpec& optim, ConvAlgo conv_algo, int device)
    : ctx_(device), input_chw_(input_chw), capacity_(capacity), optim_(optim) {
  check_batch_capacity("Network", capacity);
  check_optim_spec(optim);
  const ModelPlan plan = plan_model(specs, input_chw);
  for (const LayerPlan& p : plan.layers) {
    layers_.push_back(Layer{p});
    info_.push_back(p.info);
  }
  num_params_ = plan.num_params;
  classes_ = plan.classes;
  sample_floats_ = plan.sample_floats;
  grad_stride_ = plan.grad_stride;

  // The memory plan, allocated once on the device. The caching allocator does not track
  // streams: blocks freed by device tensors (on the default context's stream) may come
  // back here, so that stream's queued work must finish before this stream writes them.
  const int dev = ctx_.device();
  if (cuda::DefaultContext* dc = cuda::default_context_if_created(dev)) {
    std::lock_guard<std::mutex> lock(dc->mu);
    dc->ctx.synchronize();
  }
  cuda::DeviceGuard guard(dev);
  cudaStream_t st = ctx_.stream();
  const int64_t p = std::max<int64_t>(num_params_, 1);
  auto zeroed = [&](cuda::DeviceBuffer& b, size_t bytes) {
    b = cuda::DeviceBuffer(dev, bytes);
    PYL_CUDA_CHECK(cudaMemsetAsync(b.data(), 0, bytes, st));
  };
  zeroed(params_, sizeof(float) * p);
  zeroed(grads_, sizeof(float) * p);
  zeroed(state_, sizeof(float) * p * num_state_buffers());
  int64_t act_floats = round64(capacity * sample_floats_) + round64(capacity * 2);  // input + labels (int64)
  for (auto& l : layers_) act_floats += round64(capacity * l.plan.info.activation_floats);
  zeroed(acts_, sizeof(float) * act_floats);
  zeroed(grad_bufs_, sizeof(float) * 2 * round64(capacity * grad_stride_));
  zeroed(loss_ws_, static_cast<size_t>(cuda::softmax_cross_entropy_workspace_bytes(capacity)));
  zeroed(totals_, 256);
  zeroed(probs_, sizeof(float) * capacity * classes_);
  grad_a_ = grad_bufs_.floats();
  grad_b_ = grad_a_ + round64(capacity * grad_stride_);
  float* ptr = acts_.floats();
  act_.push_back(ptr);
  ptr += round64(capacity * sample_floats_);
  labels_ = reinterpret_cast<int64_t*>(ptr);
  ptr += round64(capacity * 2);
  for (auto& l : layers_) {
    if (l.plan.is_view()) {
      act_.push_back(act_.back());
    } else {
      act_.push_back(ptr);
      ptr += round64(capacity * l.plan.info.activation_floats);
    }
  }

  // Algorithms, fixed now for the planned batch ("auto" measures on these buffers), and the
  // workspace the chosen ones need at that batch.
  for (size_t i = 0; i < layers_.size(); ++i) {
    Layer& l = layers_[i];
    if (l.plan.spec.kind != LayerKind::Conv2d) continue;
    const ConvShape s = conv_at(l.plan, capacity);
    const float* x = layer_input(i, act_[0]);
    float* w = params_.floats() + l.plan.info.param_offset;
    for (int pass = 0; pass < 3; ++pass) {
      float* out = pass == 0 ? act_[i + 1] : pass == 1 ? grad_b_ : grads_.floats() + l.plan.info.param_offset;
      l.algos[pass] = cuda::conv_resolve_algo(ctx_, conv_algo, static_cast<ConvPass>(pass), s, x, w, grad_a_, out);
      workspace_bytes_ = std::max<int64_t>(
          workspace_bytes_, cuda::conv_workspace_size(l.algos[pass], static_cast<ConvPass>(pass), s));
    }
  }
  ctx_.workspace(static_cast<size_t>(workspace_bytes_));
  // "auto" ran kernels on the zeroed buffers: clear what they wrote.
  PYL_CUDA_CHECK(cudaMemsetAsync(grads_.data(), 0, sizeof(float) * p, st));
  ctx_.synchronize();
}

MemoryPlan CudaNetwork::memory_plan() const {
  MemoryPlan m;
  m.batch_capacity = capacity_;
  m.params = sizeof(float) * num_params_;
  m.grads = m.params;
  m.optimizer_state = m.params * num_state_buffers();
  m.activations = static_cast<int64_t>(acts_.bytes() + probs_.bytes());
  m.activation_grads = static_cast<int64_t>(grad_bufs_.bytes());
  m.workspace = static_cast<int64_t>(ctx_.workspace_bytes() + loss_ws_.bytes() + totals_.bytes());
  return m;
}

std::vector<std::string> CudaNetwork::conv_algorithms() const {
  std::vector<std::string> v;
  for (auto& l : layers_)
    if (l.plan.spec.kind == LayerKind::Conv2d) v.push_back(conv_algo_name(l.algos[0]));
  return v;
}

void CudaNetwork::set_params(const float* host) {
  cuda::DeviceGuard g(device());
  copy(params_.data(), host, sizeof(float) * num_params_, cudaMemcpyHostToDevice, ctx_.stream());
}
void CudaNetwork::get_params(float* host) const {
  cuda::DeviceGuard g(device());
  copy(host, params_.data(), sizeof(float) * num_params_, cudaMemcpyDeviceToHost, ctx_.stream());
}
void CudaNetwork::get_grads(float* host) const {
  cuda::DeviceGuard g(device());
  copy(host, grads_.data(), sizeof(float) * num_params_, cudaMemcpyDeviceToHost, ctx_.stream());
}
void CudaNetwork::set_state(int i, const float* host) {
  PYL_CHECK_ARG(i >= 0 && i < num_state_buffers(), "Network.set_state: index ", i, " out of range");
  cuda::DeviceGuard g(device());
  copy(state_.floats() + i * num_params_, host, sizeof(float) * num_params_, cudaMemcpyHostToDevice, ctx_.stream());
}
void CudaNetwork::get_state(int i, float* host) const {
  PYL_CHECK_ARG(i >= 0 && i < num_state_buffers(), "Network.state: index ", i, " out of range");
  cuda::DeviceGuard g(device());
  copy(host, state_.floats() + i * num_params_, sizeof(float) * num_params_, cudaMemcpyDeviceToHost, ctx_.stream());
}

const float* CudaNetwork::layer_input(size_t k, const float* x) const {
  for (size_t j = k; j-- > 0;)
    if (!layers_[j].plan.is_view()) return act_[j + 1];
  return x;
}

const float* CudaNetwork::forward(const float* x, int64_t n) {
  cudaStream_t st = ctx_.stream();
  const float* params = params_.floats();
  for (size_t i = 0; i < layers_.size(); ++i) {
    const Layer& l = layers_[i];
    const LayerPlan& p = l.plan;
    const float* in = layer_input(i, x);
    float* out = act_[i + 1];
    const float* w = params + p.info.param_offset;
    const float* b = p.spec.bias ? w + p.info.weight_count : nullptr;
    switch (p.spec.kind) {
      case LayerKind::Conv2d:
        cuda::conv_run(ctx_, l.algos[0], ConvPass::Forward, conv_at(p, n), in, w, b, nullptr, out);
        break;
      case LayerKind::MaxPool2d: cuda::max_pool_forward(pool_at(p, n), in, out, st); break;
      case LayerKind::AvgPool2d: cuda::avg_pool_forward(pool_at(p, n), in, out, st); break;
      case LayerKind::Linear: cuda::linear_forward(linear_at(p, n), in, w, b, out, st); break;
      case LayerKind::ReLU:
      case LayerKind::Tanh:
        cuda::activation_forward(activation_of(p), n * shape_numel(p.in_shape), in, out, st);
        break;
      case LayerKind::Flatten: break;
    }
  }
  return layer_input(layers_.size(), x);
}

void CudaNetwork::backward(const float* x, int64_t n) {
  cudaStream_t st = ctx_.stream();
  const float* params = params_.floats();
  float* dy = grad_a_;
  float* spare = grad_b_;
  for (size_t k = layers_.size(); k-- > 0;) {
    const Layer& l = layers_[k];
    const LayerPlan& p = l.plan;
    if (p.is_view()) continue;  // the gradient passes through unchanged
    const float* in = layer_input(k, x);
    const float* y = act_[k + 1];
    float* dx = p.needs_dx ? spare : nullptr;
    const float* w = params + p.info.param_offset;
    float* dw = grads_.floats() + p.info.param_offset;
    switch (p.spec.kind) {
      case LayerKind::Conv2d: {
        const ConvShape s = conv_at(p, n);
        cuda::conv_run(ctx_, l.algos[2], ConvPass::BackwardFilter, s, in, nullptr, nullptr, dy, dw);
        if (p.spec.bias) cuda::conv_backward_bias(s, dy, dw + p.info.weight_count, st);
        if (dx) cuda::conv_run(ctx_, l.algos[1], ConvPass::BackwardData, s, nullptr, w, nullptr, dy, dx);
        break;
      }
      case LayerKind::MaxPool2d:
        if (dx) cuda::max_pool_backward(pool_at(p, n), in, dy, dx, st);
        break;
      case LayerKind::AvgPool2d:
        if (dx) cuda::avg_pool_backward(pool_at(p, n), dy, dx, st);
        break;
      case LayerKind::Linear: {
        const LinearShape s = linear_at(p, n);
        cuda::linear_backward_weight(s, dy, in, dw, st);
        if (p.spec.bias) cuda::linear_backward_bias(s, dy, dw + p.info.weight_count, st);
        if (dx) cuda::linear_backward_data(s, dy, w, dx, st);
        break;
      }
      case LayerKind::ReLU:
      case LayerKind::Tanh:
        if (dx) cuda::activation_backward(activation_of(p), n * shape_numel(p.in_shape), y, dy, dx, st);
        break;
      case LayerKind::Flatten: break;
    }
    if (!p.needs_dx) break;  // nothing below has parameters
    std::swap(dy, spare);
  }
}

void CudaNetwork::step(int64_t n, float lr) {
  cudaStream_t st = ctx_.stream();
  auto* totals = static_cast<cuda::RunTotals*>(totals_.data());
  auto* result = reinterpret_cast<cuda::LossResult*>(static_cast<char*>(totals_.data()) + kLossResultOffset);
  const float* logits = forward(act_[0], n);
  cuda::softmax_cross_entropy_async(n, classes_, logits, labels_, grad_a_, 1.0f / static_cast<float>(n), result,
                                    loss_ws_.data(), st);
  cuda::accumulate_step(n, classes_, logits, labels_, result, totals, st);
  backward(act_[0], n);
  ++optimizer_steps_;
  const int* skip = &totals->bad;  // a rejected batch (or any before it) leaves the parameters alone
  float* state0 = state_.floats();
  float* state1 = state_.floats() + num_params_;
  switch (optim_.kind) {
    case OptimKind::SGD:
      cuda::sgd_step(num_params_, params_.floats(), grads_.floats(), optim_.momentum != 0.0f ? state0 : nullptr,
                     SgdParams{lr, optim_.momentum, optim_.weight_decay, optim_.nesterov}, st, skip);
      break;
    case OptimKind::Adam: {
      AdamParams a{lr, optim_.beta1, optim_.beta2, optim_.eps, optim_.weight_decay};
      a.bc1 = 1.0f - std::pow(optim_.beta1, static_cast<float>(optimizer_steps_));
      a.bc2 = 1.0f - std::pow(optim_.beta2, static_cast<float>(optimizer_steps_));
      cuda::adam_step(num_params_, params_.floats(), grads_.floats(), state0, state1, a, st, skip);
      break;
    }
    case OptimKind::Adadelta:
      cuda::adadelta_step(num_params_, params_.floats(), grads_.floats(), state0, state1,
                          AdadeltaParams{lr, optim_.rho, optim_.eps, optim_.weight_decay}, st, skip);
      break;
  }
}

cuda::RunTotals CudaNetwork::read_totals() {
  cuda::RunTotals t{};
  copy(&t, totals_.data(), sizeof t, cudaMemcpyDeviceToHost, ctx_.stream());
  return t;
}

RunStats CudaNetwork::stats_of(const cuda::RunTotals& t, int64_t samples, const char* op) const {
  if (t.bad) {
    if (std::string(op) == "evaluate")
      fail(ErrorKind::Runtime, "evaluate: the model produced a non-finite logit; its weights or the input hold NaN/inf");
    fail(ErrorKind::Runtime, "training diverged: the network produced a non-finite logit after ", t.steps,
         " good steps of this epoch (no later step was applied); try a smaller learning rate");
  }
  RunStats s;
  s.loss_sum = t.loss_sum;
  s.correct = static_cast<int64_t>(t.correct);
  s.samples = samples;
  s.steps = static_cast<int64_t>(t.steps);
  return s;
}

void CudaNetwork::check_device_of(const DeviceDataset& data, const char* op) const {
  PYL_CHECK_ARG(data.device() == device(), op, ": the dataset is on cuda:", data.device(), ", the model on cuda:",
                device());
  PYL_CHECK_ARG(data.sample_floats() == sample_floats_, op, ": the dataset's samples hold ", data.sample_floats(),
                " values, the model's input ", sample_floats_);
}

RunStats CudaNetwork::train_step(const float* x, const int64_t* labels, int64_t n, float lr) {
  PYL_CHECK_ARG(n >= 1 && n <= capacity_, "train_step: batch of ", n, " exceeds the planned batch size ", capacity_);
  for (int64_t i = 0; i < n; ++i)
    PYL_CHECK_ARG(labels[i] >= 0 && labels[i] < classes_, "train_step: label ", labels[i], " at index ", i,
                  " is outside [0, ", classes_, ")");
  cuda::DeviceGuard g(device());
  cudaStream_t st = ctx_.stream();
  PYL_CUDA_CHECK(cudaMemcpyAsync(act_[0], x, sizeof(float) * n * sample_floats_, cudaMemcpyHostToDevice, st));
  PYL_CUDA_CHECK(cudaMemcpyAsync(labels_, labels, sizeof(int64_t) * n, cudaMemcpyHostToDevice, st));
  PYL_CUDA_CHECK(cudaMemsetAsync(totals_.data(), 0, sizeof(cuda::RunTotals), st));
  step(n, lr);
  return stats_of(read_totals(), n, "train_step");
}

RunStats CudaNetwork::train_epoch(const DeviceDataset& data, const int64_t* order, int64_t order_len,
                                  int64_t batch_size, const ScheduleSpec& schedule, int64_t& iteration,
                                  const ProgressFn& progress, int64_t every) {
  check_device_of(data, "train");
  PYL_CHECK_ARG(data.has_labels(), "train: the dataset has no labels");
  PYL_CHECK_ARG(batch_size >= 1 && batch_size <= capacity_, "train: batch size ", batch_size,
                " exceeds the planned batch size ", capacity_);
  for (int64_t i = 0; i < order_len; ++i)
    PYL_CHECK_ARG(order[i] >= 0 && order[i] < data.count(), "train: sample index ", order[i], " is outside [0, ",
                  data.count(), ")");
  cuda::DeviceGuard g(device());
  cudaStream_t st = ctx_.stream();
  order_.reserve(sizeof(int64_t) * std::max<int64_t>(order_len, 1));
  // The order is the only upload of the epoch; it must land before the host array may change.
  copy(order_.data(), order, sizeof(int64_t) * order_len, cudaMemcpyHostToDevice, st);
  PYL_CUDA_CHECK(cudaMemsetAsync(totals_.data(), 0, sizeof(cuda::RunTotals), st));
  const int64_t* dorder = static_cast<const int64_t*>(order_.data());
  const int64_t steps = (order_len + batch_size - 1) / batch_size;
  int64_t samples = 0;
  RunStats total;
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t start = s * batch_size, n = std::min(batch_size, order_len - start);
    cuda::gather_batch(n, sample_floats_, data.images(), data.labels(), dorder + start, act_[0], labels_, st);
    step(n, static_cast<float>(schedule_lr(schedule, optim_.lr, iteration)));
    ++iteration;
    samples += n;
    if ((s + 1) % std::max<int64_t>(every, 1) == 0 || s + 1 == steps) {
      // The only synchronisation of the loop: the numbers shown to the user.
      total = stats_of(read_totals(), samples, "train");
      if (progress && !progress(s + 1, steps, total)) break;
    }
  }
  if (steps == 0) total = stats_of(read_totals(), 0, "train");
  return total;
}

RunStats CudaNetwork::evaluate(const DeviceDataset& data) {
  check_device_of(data, "evaluate");
  PYL_CHECK_ARG(data.has_labels(), "evaluate: the dataset has no labels");
  cuda::DeviceGuard g(device());
  cudaStream_t st = ctx_.stream();
  auto* totals = static_cast<cuda::RunTotals*>(totals_.data());
  auto* result = reinterpret_cast<cuda::LossResult*>(static_cast<char*>(totals_.data()) + kLossResultOffset);
  PYL_CUDA_CHECK(cudaMemsetAsync(totals, 0, sizeof(cuda::RunTotals), st));
  for (int64_t base = 0; base < data.count(); base += capacity_) {
    const int64_t n = std::min(capacity_, data.count() - base);
    const float* logits = forward(data.images() + base * sample_floats_, n);
    const int64_t* labels = data.labels() + base;
    cuda::softmax_cross_entropy_async(n, classes_, logits, labels, nullptr, 1.0f, result, loss_ws_.data(), st);
    cuda::accumulate_step(n, classes_, logits, labels, result, totals, st);
  }
  return stats_of(read_totals(), data.count(), "evaluate");
}

void CudaNetwork::predict(const DeviceDataset& data, float* probs) {
  check_device_of(data, "predict");
  cuda::DeviceGuard g(device());
  cudaStream_t st = ctx_.stream();
  for (int64_t base = 0; base < data.count(); base += capacity_) {
    const int64_t n = std::min(capacity_, data.count() - base);
    const float* logits = forward(data.images() + base * sample_floats_, n);
    cuda::softmax_rows(n, classes_, logits, probs_.floats(), st);
    PYL_CUDA_CHECK(cudaMemcpyAsync(probs + base * classes_, probs_.floats(), sizeof(float) * n * classes_,
                                   cudaMemcpyDeviceToHost, st));
  }
  ctx_.synchronize();
}

}  // namespace pylenet
