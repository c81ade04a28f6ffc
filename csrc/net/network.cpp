#include "net/network.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <exception>

#include "core/error.h"
#include "core/parallel.h"
#include "core/simd.h"
#include "cpu/gemm.h"
#include "ops/activation.h"
#include "ops/linear.h"
#include "ops/loss.h"
#include "ops/pool.h"

namespace pylenet {

// ------------------------------------------------------------------------------ layers
// One object per layer: it knows its shapes (per sample) and calls the op layer's
// prepared-shape entry points for a batch of n. Parameters live in the network's flat
// buffers at info.param_offset (weight, then bias).
class Layer {
 public:
  virtual ~Layer() = default;
  LayerInfo info;
  std::vector<int64_t> in_shape;
  virtual bool is_view() const { return false; }  // output is the input, reshaped
  virtual int64_t workspace_bytes(int64_t n, int threads) const { return 0; }
  virtual void choose_algorithms(Handle& h, int64_t n, const float* x, const float* w, float* y, float* dy, float* dx,
                                 float* dw) {}
  virtual void forward(Handle& h, const float* params, const float* x, float* y, int64_t n) = 0;
  // dw: this layer's gradient (weight, then bias), OVERWRITTEN; dx may be null when no
  // earlier layer needs the gradient.
  virtual void backward(Handle& h, const float* params, float* dw, const float* x, const float* y,
                        const float* dy, float* dx, int64_t n) = 0;
};

namespace {

int64_t numel(const std::vector<int64_t>& s) { return shape_numel(s); }

std::string shape_str(const std::vector<int64_t>& s) { return TensorDesc(s).str(); }

class ConvLayer : public Layer {
 public:
  ConvLayer(const LayerPlan& p, ConvAlgo algo) : shape_(p.conv), bias_(p.spec.bias), algo_(algo) {}
  ConvShape at(int64_t n) const { ConvShape s = shape_; s.n = n; return s; }
  int64_t workspace_bytes(int64_t n, int threads) const override {
    int64_t most = 0;
    for (int p = 0; p < 3; ++p)
      most = std::max<int64_t>(most, conv_workspace_size(algos_[p], static_cast<ConvPass>(p), at(n), threads));
    return most;
  }
  void choose_algorithms(Handle& h, int64_t n, const float* x, const float* w, float* y, float* dy, float* dx,
                         float* dw) override {
    const ConvShape s = at(n);
    algos_[0] = conv_resolve_algo(h, algo_, ConvPass::Forward, s, x, w, nullptr, y);
    algos_[1] = conv_resolve_algo(h, algo_, ConvPass::BackwardData, s, x, w, dy, dx);
    algos_[2] = conv_resolve_algo(h, algo_, ConvPass::BackwardFilter, s, x, w, dy, dw);
  }
  ConvAlgo forward_algo() const { return algos_[0]; }
  void forward(Handle& h, const float* params, const float* x, float* y, int64_t n) override {
    const float* w = params + info.param_offset;
    conv_run(h, algos_[0], ConvPass::Forward, at(n), x, w, bias_ ? w + info.weight_count : nullptr, nullptr, y);
  }
  void backward(Handle& h, const float* params, float* dw, const float* x, const float* y, const float* dy,
                float* dx, int64_t n) override {
    const ConvShape s = at(n);
    conv_run(h, algos_[2], ConvPass::BackwardFilter, s, x, nullptr, nullptr, dy, dw);
    if (bias_) conv_run_backward_bias(h, s, dy, dw + info.weight_count);
    if (dx) conv_run(h, algos_[1], ConvPass::BackwardData, s, nullptr, params + info.param_offset, nullptr, dy, dx);
  }

 private:
  ConvShape shape_;
  bool bias_;
  ConvAlgo algo_;
  ConvAlgo algos_[3] = {ConvAlgo::Im2col, ConvAlgo::Im2col, ConvAlgo::Im2col};
};

class PoolLayer : public Layer {
 public:
  explicit PoolLayer(const LayerPlan& p)
      : mode_(p.spec.kind == LayerKind::MaxPool2d ? PoolMode::Max : PoolMode::Avg), shape_(p.pool) {}
  PoolShape at(int64_t n) const { PoolShape s = shape_; s.n = n; return s; }
  void forward(Handle& h, const float*, const float* x, float* y, int64_t n) override {
    pool_run_forward(h, mode_, at(n), x, y);
  }
  void backward(Handle& h, const float*, float*, const float* x, const float*, const float* dy, float* dx,
                int64_t n) override {
    if (dx) pool_run_backward(h, mode_, at(n), x, dy, dx);
  }

 private:
  PoolMode mode_;
  PoolShape shape_;
};

}  // namespace

// Linear layers have large weights and small activations (cudnn-training's fc1: 400k weights,
// 500 outputs per sample), so their weight gradient is ONE product over the whole batch,
// dW = dY^T X with k = the batch, written straight into the step's gradient: each chunk
// stashes its rows of X (packed for the GEMM) and of dY during its backward pass, and the
// product runs once every chunk is done, split over row blocks of dW. No per-chunk copy of a
// large gradient is written and then summed. Each element of dW is still one fixed-order sum
// over the batch, whatever the thread count.
class LinearLayer : public Layer {
 public:
  explicit LinearLayer(const LayerPlan& p) : in_(p.spec.in), out_(p.spec.out), bias_(p.spec.bias) {}
  LinearShape at(int64_t n) const { return LinearShape{n, in_, out_}; }
  int64_t in() const { return in_; }
  int64_t out() const { return out_; }
  // Rows of dW per work item of the batch product: >= ~16k weights and a multiple of the
  // GEMM's 6-row tile.
  int64_t grad_rows() const { return std::max<int64_t>(24, (16384 / in_ + 5) / 6 * 6); }
  int64_t workspace_bytes(int64_t n, int) const override { return sizeof(float) * cpu::linear_workspace_floats(at(n)); }
  int64_t grad_workspace_bytes(int64_t batch) const {
    return sizeof(float) * cpu::sgemm_workspace_floats(std::min(grad_rows(), out_), in_, batch);
  }

  // The stash of a batch of up to `capacity`: X packed, then dY.
  int64_t stash_x_floats(int64_t capacity) const { return (cpu::sgemm_packed_b_floats(capacity, in_) + 15) / 16 * 16; }
  int64_t stash_dy_floats(int64_t capacity) const { return (capacity * out_ + 15) / 16 * 16; }
  void bind(float* stash, int64_t capacity) {
    packed_x_ = stash;
    saved_dy_ = stash + stash_x_floats(capacity);
  }
  void set_level(simd::Level level) { level_ = level; }  // the packing's layout, fixed for a step

  void forward(Handle& h, const float* params, const float* x, float* y, int64_t n) override {
    const float* w = params + info.param_offset;
    linear_run_forward(h, at(n), x, w, bias_ ? w + info.weight_count : nullptr, y);
  }
  // Per chunk: only the input gradient (the weight gradient is stash + weight_grad).
  void backward(Handle& h, const float* params, float*, const float*, const float*, const float* dy, float* dx,
                int64_t n) override {
    if (dx)
      cpu::linear_backward_data(at(n), dy, params + info.param_offset, dx, h.workspace(workspace_bytes(n, 1)),
                                h.threads());
  }
  // Rows [start, start + m) of a batch of `batch`: x is the batch's input, dy the chunk's rows.
  void stash(const float* x, const float* dy, int64_t start, int64_t m, int64_t batch) {
    cpu::sgemm_pack_b(level_, false, batch, in_, x, in_, packed_x_, start, m);
    std::memcpy(saved_dy_ + start * out_, dy, sizeof(float) * m * out_);
  }
  // Rows [r0, r1) of dW (out, in) and of db, over the whole batch stashed.
  void weight_grad(Handle& h, int64_t r0, int64_t r1, int64_t batch, float* grads) {
    float* dw = grads + info.param_offset;
    cpu::sgemm_prepacked_b(level_, true, r1 - r0, in_, batch, 1.0f, saved_dy_ + r0, out_, packed_x_, 0.0f,
                           dw + r0 * in_, in_, h.workspace(grad_workspace_bytes(batch)), 1);
    if (!bias_) return;
    float* db = dw + info.weight_count;
    std::fill(db + r0, db + r1, 0.0f);
    for (int64_t i = 0; i < batch; ++i)
      for (int64_t j = r0; j < r1; ++j) db[j] += saved_dy_[i * out_ + j];
  }

 private:
  int64_t in_, out_;
  bool bias_;
  simd::Level level_ = simd::Level::Scalar;
  float* packed_x_ = nullptr;  // the batch's input, packed as the B of dW = dY^T X
  float* saved_dy_ = nullptr;  // the batch's output gradient (batch, out)
};

namespace {

class ActivationLayer : public Layer {
 public:
  explicit ActivationLayer(const LayerPlan& p)
      : act_(p.spec.kind == LayerKind::ReLU ? Activation::ReLU : Activation::Tanh), count_(numel(p.in_shape)) {}
  void forward(Handle& h, const float*, const float* x, float* y, int64_t n) override {
    activation_run_forward(h, act_, n * count_, x, y);
  }
  void backward(Handle& h, const float*, float*, const float*, const float* y, const float* dy, float* dx,
                int64_t n) override {
    if (dx) activation_run_backward(h, act_, n * count_, y, dy, dx);
  }

 private:
  Activation act_;
  int64_t count_;
};

class FlattenLayer : public Layer {
 public:
  bool is_view() const override { return true; }
  void forward(Handle&, const float*, const float*, float*, int64_t) override {}
  void backward(Handle&, const float*, float*, const float*, const float*, const float*, float*, int64_t) override {}
};

const char* kind_name(LayerKind k) {
  switch (k) {
    case LayerKind::Conv2d: return "Conv2d";
    case LayerKind::MaxPool2d: return "MaxPool2d";
    case LayerKind::AvgPool2d: return "AvgPool2d";
    case LayerKind::Linear: return "Linear";
    case LayerKind::ReLU: return "ReLU";
    case LayerKind::Tanh: return "Tanh";
    case LayerKind::Flatten: return "Flatten";
  }
  return "?";
}

// Shape inference for one layer: checks `in` against the spec and fills info and the op shape.
LayerPlan plan_layer(const LayerSpec& spec, const std::vector<int64_t>& in) {
  LayerPlan p;
  p.spec = spec;
  p.in_shape = in;
  LayerInfo& info = p.info;
  info.kind = kind_name(spec.kind);
  switch (spec.kind) {
    case LayerKind::Conv2d: {
      PYL_CHECK_ARG(in.size() == 3, "expects an image input (C, H, W), got ", shape_str(in));
      PYL_CHECK_ARG(spec.in == in[0], "has in_channels=", spec.in, " but its input has ", in[0], " channels, shape ",
                    shape_str(in));
      PYL_CHECK_ARG(spec.out >= 1, "out_channels must be >= 1, got ", spec.out);
      const ConvShape& c = p.conv = ConvShape::make("conv2d", TensorDesc{1, in[0], in[1], in[2]},
                                                    TensorDesc{spec.out, spec.in, spec.kernel.h, spec.kernel.w},
                                                    ConvDesc{spec.stride, spec.pad});
      info.out_shape = {c.k, c.oh, c.ow};
      info.weight_count = c.k * c.c * c.r * c.s;
      info.bias_count = spec.bias ? c.k : 0;
      info.flops = c.forward_flops() + (spec.bias ? c.k * c.oh * c.ow : 0);
      break;
    }
    case LayerKind::MaxPool2d:
    case LayerKind::AvgPool2d: {
      const PoolMode mode = spec.kind == LayerKind::MaxPool2d ? PoolMode::Max : PoolMode::Avg;
      PYL_CHECK_ARG(in.size() == 3, "expects an image input (C, H, W), got ", shape_str(in));
      const PoolShape& s = p.pool = PoolShape::make(pool_op_name(mode, false), TensorDesc{1, in[0], in[1], in[2]},
                                                    PoolDesc{mode, spec.kernel, spec.stride, spec.pad});
      info.out_shape = {s.c, s.oh, s.ow};
      info.flops = static_cast<double>(s.kh * s.kw * s.c * s.oh * s.ow);
      break;
    }
    case LayerKind::Linear:
      PYL_CHECK_ARG(in.size() == 1, "expects a flat input (features,); got ", shape_str(in),
                    " (add a Flatten layer before it)");
      PYL_CHECK_ARG(spec.in == in[0], "has in_features=", spec.in, " but its input has ", in[0], " features");
      PYL_CHECK_ARG(spec.out >= 1, "out_features must be >= 1, got ", spec.out);
      info.out_shape = {spec.out};
      info.weight_count = spec.in * spec.out;
      info.bias_count = spec.bias ? spec.out : 0;
      info.flops = 2.0 * spec.in * spec.out + (spec.bias ? spec.out : 0);
      break;
    case LayerKind::ReLU:
    case LayerKind::Tanh:
      info.out_shape = in;
      info.flops = static_cast<double>(numel(in));
      break;
    case LayerKind::Flatten:
      info.out_shape = {numel(in)};
      break;
  }
  info.activation_floats = p.is_view() ? 0 : numel(info.out_shape);
  return p;
}

std::unique_ptr<Layer> make_layer(const LayerPlan& p, ConvAlgo algo) {
  std::unique_ptr<Layer> l;
  switch (p.spec.kind) {
    case LayerKind::Conv2d: l = std::make_unique<ConvLayer>(p, algo); break;
    case LayerKind::MaxPool2d:
    case LayerKind::AvgPool2d: l = std::make_unique<PoolLayer>(p); break;
    case LayerKind::Linear: l = std::make_unique<LinearLayer>(p); break;
    case LayerKind::ReLU:
    case LayerKind::Tanh: l = std::make_unique<ActivationLayer>(p); break;
    case LayerKind::Flatten: l = std::make_unique<FlattenLayer>(); break;
  }
  l->info = p.info;
  l->in_shape = p.in_shape;
  return l;
}

inline int64_t round16(int64_t n) { return (n + 15) / 16 * 16; }

}  // namespace

// ------------------------------------------------------------------------------ model plan
int64_t shape_numel(const std::vector<int64_t>& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

ModelPlan plan_model(const std::vector<LayerSpec>& specs, const std::vector<int64_t>& input_chw) {
  TensorDesc(input_chw).check("Network", "input shape", -1);
  PYL_CHECK_ARG(input_chw.size() == 3 || input_chw.size() == 1, "Network: input shape must be (C, H, W) or (features,), got ",
                shape_str(input_chw));
  PYL_CHECK_ARG(!specs.empty(), "Network: the model has no layers");
  ModelPlan m;
  std::vector<int64_t> shape = input_chw;
  m.sample_floats = m.grad_stride = numel(input_chw);
  bool params_below = false;
  for (size_t i = 0; i < specs.size(); ++i) {
    try {
      m.layers.push_back(plan_layer(specs[i], shape));
    } catch (const Error& e) {
      fail(e.kind(), "layer ", i, " (", kind_name(specs[i].kind), ") with input ", shape_str(shape), ": ", e.what());
    }
    LayerPlan& l = m.layers.back();
    l.info.param_offset = m.num_params;
    m.num_params += l.info.weight_count + l.info.bias_count;
    // A layer computes its input gradient only if some earlier layer has parameters.
    l.needs_dx = params_below;
    params_below |= l.info.weight_count > 0;
    shape = l.info.out_shape;
    m.grad_stride = std::max(m.grad_stride, numel(shape));
  }
  PYL_CHECK_ARG(shape.size() == 1, "Network: the last layer must output class scores (classes,), got ", shape_str(shape),
                " (end the model with Flatten/Linear)");
  m.classes = shape[0];
  PYL_CHECK_ARG(m.classes >= 2, "Network: the model must output at least 2 classes, got ", m.classes);
  return m;
}

void check_optim_spec(const OptimSpec& optim) {
  switch (optim.kind) {
    case OptimKind::SGD: check_sgd_params(SgdParams{optim.lr, optim.momentum, optim.weight_decay, optim.nesterov}); break;
    case OptimKind::Adam: check_adam_params(AdamParams{optim.lr, optim.beta1, optim.beta2, optim.eps, optim.weight_decay}); break;
    case OptimKind::Adadelta: check_adadelta_params(AdadeltaParams{optim.lr, optim.rho, optim.eps, optim.weight_decay}); break;
  }
}

void check_batch_capacity(const char* op, int64_t capacity) {
  PYL_CHECK_ARG(capacity >= 1 && capacity <= (1 << 20), op, ": batch size must be 1 to 1048576, got ", capacity);
}

// ------------------------------------------------------------------------------ schedules
int optimizer_state_buffers(OptimKind kind) { return kind == OptimKind::SGD ? 1 : 2; }

double schedule_lr(const ScheduleSpec& s, double lr, int64_t iter) {
  switch (s.kind) {
    case ScheduleKind::Constant: return lr;
    case ScheduleKind::Step: return lr * std::pow(s.gamma, static_cast<double>(iter / std::max<int64_t>(s.step_iters, 1)));
    case ScheduleKind::Cosine: {
      const double t = std::min<double>(static_cast<double>(iter) / std::max<int64_t>(s.total_iters, 1), 1.0);
      return s.min_lr + (lr - s.min_lr) * 0.5 * (1.0 + std::cos(M_PI * t));
    }
    case ScheduleKind::Inv: return lr * std::pow(1.0 + s.gamma * static_cast<double>(iter), -s.power);
  }
  return lr;
}

// ------------------------------------------------------------------------------ network
Network::~Network() = default;

Network::Network(const std::vector<LayerSpec>& specs, const std::vector<int64_t>& input_chw, int64_t capacity,
                 const OptimSpec& optim, ConvAlgo conv_algo, int threads)
    : input_chw_(input_chw), capacity_(capacity), optim_(optim) {
  PYL_CHECK_ARG(threads >= 1 && threads <= 4096, "Network: threads must be 1 to 4096, got ", threads);
  check_batch_capacity("Network", capacity);
  check_optim_spec(optim);
  const ModelPlan plan = plan_model(specs, input_chw);
  for (const LayerPlan& p : plan.layers) {
    layers_.push_back(make_layer(p, conv_algo));
    info_.push_back(p.info);
    in_floats_.push_back(numel(p.in_shape));
    out_floats_.push_back(numel(p.info.out_shape));
    needs_dx_.push_back(p.needs_dx);
  }
  num_params_ = plan.num_params;
  classes_ = plan.classes;
  sample_floats_ = plan.sample_floats;
  // ReLU then max pool == max pool then ReLU, value for value (both are monotonic; NaN
  // propagates through either), and the gradients agree too: only a positive pooled value
  // passes a gradient, and it sits at the same first maximum either way. After the pool the
  // ReLU touches a quarter of the values (LeNet: 3.6 us less per sample). In the buffer
  // layout the deferred ReLU is a view: the pool reads the ReLU's input, and the ReLU runs in
  // place on the pool's output.
  relu_after_pool_.assign(layers_.size(), 0);
  for (size_t i = 0; i + 1 < layers_.size(); ++i)
    if (plan.layers[i].spec.kind == LayerKind::ReLU && plan.layers[i + 1].spec.kind == LayerKind::MaxPool2d &&
        needs_dx_[i + 1]) {
      relu_after_pool_[i] = 1;
      layers_[i]->info.activation_floats = info_[i].activation_floats = 0;
    }

  // Gradients: Linear layers write theirs once per batch (LinearLayer); the others one per
  // chunk, packed one after another in a chunk's buffer.
  chunk_offset_.assign(layers_.size(), -1);
  for (size_t i = 0; i < layers_.size(); ++i) {
    const int64_t count = info_[i].weight_count + info_[i].bias_count;
    if (auto* lin = dynamic_cast<LinearLayer*>(layers_[i].get())) {
      linears_.push_back(lin);
      const int64_t rows = lin->grad_rows();
      for (int64_t r = 0; r < lin->out(); r += rows) grad_jobs_.push_back({lin, r, std::min(r + rows, lin->out())});
    } else if (count > 0) {
      chunk_offset_[i] = chunk_params_;
      chunk_params_ += count;
    }
  }

  // The memory plan: everything the training loop touches is allocated here, once.
  const int64_t chunks = (capacity + kChunk - 1) / kChunk;
  const int64_t p = std::max<int64_t>(num_params_, 1);
  auto zeroed = [](AlignedBuffer& b, int64_t floats) {
    b.reserve(sizeof(float) * floats);
    std::fill(b.floats(), b.floats() + floats, 0.0f);
  };
  zeroed(params_, p);
  zeroed(grads_, p);
  zeroed(state_, p * num_state_buffers());
  if (chunks > 1 && chunk_params_ > 0) zeroed(chunk_grads_, chunks * round16(chunk_params_));
  for (LinearLayer* l : linears_) {
    stash_x_floats_ += l->stash_x_floats(capacity);
    stash_dy_floats_ += l->stash_dy_floats(capacity);
  }
  if (!linears_.empty()) {
    zeroed(stash_, stash_x_floats_ + stash_dy_floats_);
    float* st = stash_.floats();
    for (LinearLayer* l : linears_) {
      l->bind(st, capacity);
      st += l->stash_x_floats(capacity) + l->stash_dy_floats(capacity);
    }
  }
  chunk_loss_.assign(chunks, 0.0);
  chunk_correct_.assign(chunks, 0);
  chunk_bad_.assign(chunks, 0);
  chunk_errors_.assign(chunks, nullptr);

  int64_t act_floats = round16(capacity * sample_floats_) + round16(capacity * 2);  // input + labels (int64)
  grad_stride_ = plan.grad_stride;
  for (auto& l : layers_) act_floats += round16(capacity * l->info.activation_floats);
  zeroed(acts_, act_floats);
  zeroed(grad_bufs_, 2 * round16(capacity * grad_stride_));
  grad_a_ = grad_bufs_.floats();
  grad_b_ = grad_a_ + round16(capacity * grad_stride_);

  float* ptr = acts_.floats();
  act_.push_back(ptr);
  ptr += round16(capacity * sample_floats_);
  labels_ = reinterpret_cast<int64_t*>(ptr);
  ptr += round16(capacity * 2);
  for (size_t i = 0; i < layers_.size(); ++i) {
    const auto& l = layers_[i];
    if (passes_through(i)) {
      act_.push_back(act_.back());
    } else {
      act_.push_back(ptr);
      ptr += round16(capacity * l->info.activation_floats);
    }
  }

  // One single-threaded handle (and workspace) per worker. Algorithms are fixed now, for a
  // chunk ("auto" measures on these buffers, as a worker will run them).
  for (int t = 0; t < threads; ++t) {
    workers_.push_back(std::make_unique<Handle>());
    workers_.back()->set_threads(1);
  }
  const int64_t g = std::min(capacity, kChunk);
  for (size_t i = 0; i < layers_.size(); ++i)
    layers_[i]->choose_algorithms(*workers_[0], g, act_[i], params_.floats() + info_[i].param_offset, act_[i + 1],
                                  grad_a_, grad_b_, grads_.floats() + info_[i].param_offset);
  for (auto& l : layers_) workspace_bytes_ = std::max(workspace_bytes_, l->workspace_bytes(g, 1));
  for (LinearLayer* l : linears_) workspace_bytes_ = std::max(workspace_bytes_, l->grad_workspace_bytes(capacity));
  for (auto& w : workers_) w->workspace(static_cast<size_t>(workspace_bytes_));
  std::fill(grads_.floats(), grads_.floats() + num_params_, 0.0f);
  set_profiling(false);
}

MemoryPlan Network::memory_plan() const {
  MemoryPlan m;
  m.batch_capacity = capacity_;
  m.params = sizeof(float) * num_params_;
  m.grads = m.params;
  m.chunk_grads = static_cast<int64_t>(chunk_grads_.bytes());
  m.optimizer_state = m.params * num_state_buffers();
  // A batch's stashed Linear inputs (packed) and output gradients count as activations and
  // activation gradients.
  m.activations = static_cast<int64_t>(acts_.bytes() + sizeof(float) * stash_x_floats_);
  m.activation_grads = static_cast<int64_t>(grad_bufs_.bytes() + sizeof(float) * stash_dy_floats_);
  for (auto& w : workers_) m.workspace += static_cast<int64_t>(w->workspace_bytes());
  return m;
}

std::vector<std::string> Network::conv_algorithms() const {
  std::vector<std::string> v;
  for (auto& l : layers_)
    if (auto* c = dynamic_cast<const ConvLayer*>(l.get())) v.push_back(conv_algo_name(c->forward_algo()));
  return v;
}

template <class F>
void Network::for_chunks(int64_t n, F&& fn) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  const int workers = static_cast<int>(std::min<int64_t>(threads(), chunks));
  std::vector<std::exception_ptr>& errors = chunk_errors_;  // per chunk: the first by chunk order is reported
  std::fill(errors.begin(), errors.begin() + chunks, nullptr);
  parallel_region(workers, [&](int tid, int nt) {
    // Contiguous runs of chunks per worker; which worker runs a chunk never changes its result.
    const int64_t per = (chunks + nt - 1) / nt;
    for (int64_t c = tid * per; c < std::min(chunks, (tid + 1) * per); ++c) {
      try {
        const int64_t start = c * kChunk;
        fn(*workers_[tid], c, start, std::min(kChunk, n - start), tid * per * kChunk);
      } catch (...) {
        errors[c] = std::current_exception();
      }
    }
  });
  for (int64_t c = 0; c < chunks; ++c)
    if (errors[c]) std::rethrow_exception(errors[c]);
}

bool Network::passes_through(size_t k) const { return layers_[k]->is_view() || relu_after_pool_[k]; }

const float* Network::layer_input(size_t k, const float* x) const {
  // The input of layer k is the output of the nearest earlier non-view layer (or the batch).
  for (size_t j = k; j-- > 0;)
    if (!passes_through(j)) return act_[j + 1];
  return x;
}

namespace {
using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }
}  // namespace

void Network::set_profiling(bool on) {
  profiling_ = on;
  times_.assign(workers_.size(), std::vector<double>(2 * layers_.size() + 1, 0.0));
}

std::vector<std::pair<double, double>> Network::profile() const {
  std::vector<std::pair<double, double>> out(layers_.size(), {0.0, 0.0});
  for (auto& w : times_)
    for (size_t i = 0; i < layers_.size(); ++i) {
      out[i].first += w[2 * i];
      out[i].second += w[2 * i + 1];
    }
  return out;
}

double Network::loss_seconds() const {
  double t = 0;
  for (auto& w : times_) t += w.back();
  return t;
}

// The worker running on handle h (handles are owned by workers_).
static size_t worker_index(const std::vector<std::unique_ptr<Handle>>& workers, const Handle& h) {
  for (size_t i = 0; i < workers.size(); ++i)
    if (workers[i].get() == &h) return i;
  return 0;
}

const float* Network::forward(Handle& h, const float* x, int64_t start, int64_t m, int64_t slot) {
  double* t = profiling_ ? times_[worker_index(workers_, h)].data() : nullptr;
  // The batch's rows of x at start; an activation's at slot.
  const auto rows = [&](size_t k) {
    const float* in = layer_input(k, x);
    return in + (in == x ? start : slot) * (k < layers_.size() ? in_floats_[k] : classes_);
  };
  for (size_t i = 0; i < layers_.size(); ++i) {
    if (passes_through(i)) continue;  // views, and a deferred ReLU (run with its pool)
    const auto t0 = Clock::now();
    float* y = act_[i + 1] + slot * out_floats_[i];
    layers_[i]->forward(h, params_.floats(), rows(i), y, m);
    if (i > 0 && relu_after_pool_[i - 1]) activation_run_forward(h, Activation::ReLU, m * out_floats_[i], y, y);
    if (t) t[2 * i] += since(t0);
  }
  return rows(layers_.size());
}

void Network::backward(Handle& h, const float* x, int64_t start, int64_t m, int64_t batch, float* chunk_grads) {
  // grad_a_ holds dlogits; each layer writes its input gradient into the other buffer. A
  // chunk owns the region at start * grad_stride_ of both buffers, whatever the layer.
  float* dy = grad_a_ + start * grad_stride_;
  float* spare = grad_b_ + start * grad_stride_;
  double* t = profiling_ ? times_[worker_index(workers_, h)].data() : nullptr;
  for (size_t k = layers_.size(); k-- > 0;) {
    Layer& l = *layers_[k];
    if (passes_through(k)) continue;  // views pass the gradient; a deferred ReLU runs with its pool
    const bool need_dx = needs_dx_[k];
    const auto t0 = Clock::now();
    const float* y = act_[k + 1] + start * out_floats_[k];
    if (k > 0 && relu_after_pool_[k - 1])
      activation_run_backward(h, Activation::ReLU, m * out_floats_[k], y, dy, dy);  // in place
    const float* in = layer_input(k, x);
    float* dw = chunk_offset_[k] < 0 ? nullptr
                : chunk_grads        ? chunk_grads + chunk_offset_[k]
                                     : grads_.floats() + info_[k].param_offset;
    if (auto* lin = dynamic_cast<LinearLayer*>(&l)) lin->stash(in, dy, start, m, batch);
    l.backward(h, params_.floats(), dw, in + start * in_floats_[k], y, dy, need_dx ? spare : nullptr, m);
    if (t) t[2 * k + 1] += since(t0);
    if (!need_dx) break;  // nothing below has parameters
    std::swap(dy, spare);
  }
}

void Network::linear_weight_grads(int64_t batch) {
  // The jobs differ in size (LeNet-5: three row blocks of fc1, then all of fc2 and of fc3;
  // split in contiguous halves, one worker got 30 us and the other 7 us), so they are dealt
  // out greedily: largest first, each to the least-loaded worker. Which worker runs a job
  // never changes its result: each writes its own rows of dW.
  const int jobs = static_cast<int>(grad_jobs_.size());
  const int workers = static_cast<int>(std::min<int64_t>(threads(), jobs));
  if (workers != grad_sched_workers_) {  // once per thread count
    std::vector<int> order(jobs);
    for (int j = 0; j < jobs; ++j) order[j] = j;
    const auto cost = [&](int j) { return (grad_jobs_[j].r1 - grad_jobs_[j].r0) * grad_jobs_[j].layer->in(); };
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return cost(a) > cost(b); });
    std::vector<int64_t> load(std::max(workers, 1), 0);
    grad_job_worker_.assign(jobs, 0);
    for (int j : order) {
      const int w = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
      grad_job_worker_[j] = w;
      load[w] += cost(j);
    }
    grad_sched_workers_ = workers;
  }
  parallel_region(workers, [&](int tid, int nt) {
    for (int j = 0; j < jobs; ++j) {
      // (With fewer threads than asked for, deal the jobs round robin instead.)
      if ((nt == grad_sched_workers_ ? grad_job_worker_[j] : j % nt) != tid) continue;
      const GradJob& job = grad_jobs_[j];
      const auto t0 = Clock::now();
      job.layer->weight_grad(*workers_[tid], job.r0, job.r1, batch, grads_.floats());
      if (profiling_) times_[tid][2 * layer_index(job.layer) + 1] += since(t0);
    }
  });
}

size_t Network::layer_index(const Layer* l) const {
  for (size_t i = 0; i < layers_.size(); ++i)
    if (layers_[i].get() == l) return i;
  return 0;
}

void check_batch_shapes(const char* op, const std::vector<int64_t>& input_chw_, const TensorDesc& images,
                        const TensorDesc* labels) {
  images.check(op, "images", static_cast<int>(input_chw_.size()) + 1);
  std::vector<int64_t> per_sample(images.dims().begin() + 1, images.dims().end());
  PYL_CHECK_ARG(per_sample == input_chw_, op, ": images of shape ", images.str(), " do not match the model input ",
                shape_str(input_chw_), " (expected (N, ", shape_str(input_chw_).substr(1));
  if (labels) {
    labels->check(op, "labels", 1, "(N,)");
    PYL_CHECK_ARG(labels->dim(0) == images.dim(0), op, ": ", labels->dim(0), " labels for ", images.dim(0), " images");
  }
}

void Network::check_labels(const int64_t* labels, int64_t n, const char* op) const {
  for (int64_t i = 0; i < n; ++i)
    PYL_CHECK_ARG(labels[i] >= 0 && labels[i] < classes_, op, ": label ", labels[i], " at index ", i,
                  " is outside [0, ", classes_, ")");
}

namespace {
int64_t count_correct(const float* logits, const int64_t* labels, int64_t n, int64_t c) {
  int64_t correct = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float* z = logits + i * c;
    correct += (std::max_element(z, z + c) - z) == labels[i];
  }
  return correct;
}

bool all_finite(const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(x[i])) return false;
  return true;
}
}  // namespace

RunStats Network::train_step(const float* x, const int64_t* labels, int64_t n, float lr) {
  PYL_CHECK_ARG(n >= 1 && n <= capacity_, "train_step: batch of ", n, " exceeds the planned batch size ", capacity_);
  check_labels(labels, n, "train_step");  // the loss indexes logits by label
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  const float grad_scale = 1.0f / static_cast<float>(n);  // the loss is the mean over the whole batch
  for (LinearLayer* l : linears_) l->set_level(simd::active());  // the stash's layout for this step
  // Phase 1: every chunk forward, loss, backward into its own gradient buffer (Linear layers:
  // into the stash).
  for_chunks(n, [&](Handle& h, int64_t c, int64_t start, int64_t m, int64_t) {
    const float* logits = forward(h, x, start, m, start);  // kept for backward
    chunk_bad_[c] = !all_finite(logits, m * classes_);
    if (chunk_bad_[c]) return;
    const auto t0 = Clock::now();
    chunk_loss_[c] = cpu::softmax_cross_entropy(m, classes_, logits, labels + start, grad_a_ + start * grad_stride_,
                                                grad_scale) * static_cast<double>(m);
    if (profiling_) times_[worker_index(workers_, h)].back() += since(t0);
    chunk_correct_[c] = count_correct(logits, labels + start, m, classes_);
    backward(h, x, start, m, n, chunks > 1 ? chunk_grads_.floats() + c * round16(chunk_params_) : nullptr);
  });
  RunStats st;
  for (int64_t c = 0; c < chunks; ++c) {
    if (chunk_bad_[c])
      fail(ErrorKind::Runtime, "training diverged: the network produced a non-finite logit after ", optimizer_steps_,
           " optimizer steps (the parameters were not updated); try a smaller learning rate");
    st.loss_sum += chunk_loss_[c];
    st.correct += chunk_correct_[c];
  }
  st.samples = n;
  st.steps = 1;
  // Phase 2: the Linear weight gradients over the whole batch; phase 3: sum the chunk
  // gradients in chunk order and update the parameters.
  linear_weight_grads(n);
  reduce_and_update(chunks, lr);
  return st;
}

void Network::reduce_and_update(int64_t chunks, float lr) {
  ++optimizer_steps_;
  AdamParams adam{lr, optim_.beta1, optim_.beta2, optim_.eps, optim_.weight_decay};
  adam.bc1 = 1.0f - std::pow(optim_.beta1, static_cast<float>(optimizer_steps_));
  adam.bc2 = 1.0f - std::pow(optim_.beta2, static_cast<float>(optimizer_steps_));
  const SgdParams sgd{lr, optim_.momentum, optim_.weight_decay, optim_.nesterov};
  const AdadeltaParams adadelta{lr, optim_.rho, optim_.eps, optim_.weight_decay};
  constexpr int64_t kBlock = 4096;  // parameters per work item
  const int64_t blocks = (num_params_ + kBlock - 1) / kBlock;
  const int64_t stride = round16(chunk_params_);
  parallel_for(threads(), blocks, [&](int64_t b, int) {
    const int64_t lo = b * kBlock, len = std::min(kBlock, num_params_ - lo);
    float* g = grads_.floats() + lo;
    // The chunked layers' share of this block: their chunk gradients summed in chunk order.
    for (size_t k = 0; chunks > 1 && k < layers_.size(); ++k) {
      if (chunk_offset_[k] < 0) continue;
      const int64_t p0 = info_[k].param_offset, p1 = p0 + info_[k].weight_count + info_[k].bias_count;
      const int64_t a = std::max(lo, p0), e = std::min(lo + len, p1);
      if (a >= e) continue;
      const float* parts = chunk_grads_.floats() + chunk_offset_[k] + (a - p0);
      float* gk = grads_.floats() + a;
      for (int64_t i = 0; i < e - a; ++i) gk[i] = parts[i];
      for (int64_t c = 1; c < chunks; ++c)
        for (int64_t i = 0; i < e - a; ++i) gk[i] += parts[c * stride + i];
    }
    float* p = params_.floats() + lo;
    switch (optim_.kind) {
      case OptimKind::SGD:
        cpu::sgd_step(len, p, g, optim_.momentum != 0.0f ? state(0) + lo : nullptr, sgd, 1);
        return;
      case OptimKind::Adam:
        cpu::adam_step(len, p, g, state(0) + lo, state(1) + lo, adam, 1);
        return;
      case OptimKind::Adadelta:
        cpu::adadelta_step(len, p, g, state(0) + lo, state(1) + lo, adadelta, 1);
        return;
    }
  });
}

RunStats Network::train_epoch(const float* images, const int64_t* labels, int64_t count, const int64_t* order,
                              int64_t order_len, int64_t batch_size, const ScheduleSpec& schedule, int64_t& iteration,
                              const ProgressFn& progress, int64_t every) {
  PYL_CHECK_ARG(batch_size >= 1 && batch_size <= capacity_, "train: batch size ", batch_size,
                " exceeds the planned batch size ", capacity_);
  for (int64_t i = 0; i < order_len; ++i)
    PYL_CHECK_ARG(order[i] >= 0 && order[i] < count, "train: sample index ", order[i], " is outside [0, ", count, ")");
  check_labels(labels, count, "train");
  RunStats total;
  const int64_t steps = (order_len + batch_size - 1) / batch_size;
  for (int64_t step = 0; step < steps; ++step) {
    const int64_t start = step * batch_size, n = std::min(batch_size, order_len - start);
    // Gather the batch by index into the planned input buffer, a chunk per work item (one
    // thread alone spent 2-4 % of a LeNet-5 step on it, reading scattered images).
    parallel_for(threads(), (n + kChunk - 1) / kChunk, [&](int64_t c, int) {
      for (int64_t i = c * kChunk; i < std::min(n, (c + 1) * kChunk); ++i) {
        const int64_t src = order[start + i];
        std::memcpy(act_[0] + i * sample_floats_, images + src * sample_floats_, sizeof(float) * sample_floats_);
        labels_[i] = labels[src];
      }
    });
    const float lr = static_cast<float>(schedule_lr(schedule, optim_.lr, iteration));
    RunStats st = train_step(act_[0], labels_, n, lr);
    ++iteration;
    total.loss_sum += st.loss_sum;
    total.correct += st.correct;
    total.samples += st.samples;
    total.steps += 1;
    if (progress && ((step + 1) % std::max<int64_t>(every, 1) == 0 || step + 1 == steps))
      if (!progress(step + 1, steps, total)) break;
  }
  return total;
}

RunStats Network::evaluate(const float* images, const int64_t* labels, int64_t count) {
  check_labels(labels, count, "evaluate");
  RunStats total;
  for (int64_t base = 0; base < count; base += capacity_) {
    const int64_t n = std::min(capacity_, count - base);
    const float* x = images + base * sample_floats_;
    for_chunks(n, [&](Handle& h, int64_t c, int64_t start, int64_t m, int64_t slot) {
      const float* logits = forward(h, x, start, m, slot);
      chunk_bad_[c] = !all_finite(logits, m * classes_);
      if (chunk_bad_[c]) return;
      chunk_loss_[c] = cpu::softmax_cross_entropy(m, classes_, logits, labels + base + start, nullptr, 1.0f) *
                       static_cast<double>(m);
      chunk_correct_[c] = count_correct(logits, labels + base + start, m, classes_);
    });
    for (int64_t c = 0; c < (n + kChunk - 1) / kChunk; ++c) {
      if (chunk_bad_[c])
        fail(ErrorKind::Runtime, "evaluate: the model produced a non-finite logit; its weights or the input hold NaN/inf");
      total.loss_sum += chunk_loss_[c];
      total.correct += chunk_correct_[c];
    }
    total.samples += n;
    total.steps += 1;
  }
  return total;
}

void Network::predict(const float* images, int64_t count, float* probs) {
  for (int64_t base = 0; base < count; base += capacity_) {
    const int64_t n = std::min(capacity_, count - base);
    const float* x = images + base * sample_floats_;
    for_chunks(n, [&](Handle& h, int64_t, int64_t start, int64_t m, int64_t slot) {
      const float* logits = forward(h, x, start, m, slot);
      for (int64_t i = 0; i < m; ++i) {
        const float* z = logits + i * classes_;
        float* p = probs + (base + start + i) * classes_;
        const float zmax = *std::max_element(z, z + classes_);
        double sum = 0.0;
        for (int64_t j = 0; j < classes_; ++j) sum += std::exp(static_cast<double>(z[j] - zmax));
        for (int64_t j = 0; j < classes_; ++j)
          p[j] = static_cast<float>(std::exp(static_cast<double>(z[j] - zmax)) / sum);
      }
    });
  }
}

}  // namespace pylenet
