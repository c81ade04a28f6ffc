// The network runtime on a CUDA device: the twin of Network (net/network.h) with the same
// model plan (plan_model), optimizer and schedule semantics, run as the cudnn-training
// sample runs LeNet, but with every kernel ours:
//   - one CudaContext (device, stream, workspace) per network; the memory plan (params,
//     grads, optimizer state, activations, activation gradients, workspace) is allocated
//     once, on construction, from the caching allocator;
//   - the dataset is uploaded once (DeviceDataset) and batches are gathered on the device
//     by index; a step is queued on the stream with no synchronisation;
//   - loss and accuracy are summed on the device (cuda::RunTotals) and read by the host
//     only when it shows progress or ends the epoch; a rejected batch (non-finite logits)
//     sets a sticky flag that makes every later optimizer launch a no-op, and the host
//     raises at its next read, so diverged weights never reach the model.
// The whole batch runs as one launch per layer and pass (no CPU-style chunks).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cuda/allocator.h"
#include "cuda/context.h"
#include "cuda/kernels.h"
#include "net/network.h"

namespace pylenet {

// Images (count, sample_floats) and labels (count,) resident on a device.
class DeviceDataset {
 public:
  // Labels are checked on the host against [0, classes) here, once, so the training loop
  // never needs to; pass labels = nullptr for images only.
  DeviceDataset(int device, const float* images, const int64_t* labels, int64_t count, int64_t sample_floats,
                int64_t classes);
  int device() const { return images_.device(); }
  int64_t count() const { return count_; }
  int64_t sample_floats() const { return sample_floats_; }
  bool has_labels() const { return labels_.data() != nullptr; }
  const float* images() const { return images_.floats(); }
  const int64_t* labels() const { return static_cast<const int64_t*>(labels_.data()); }
  int64_t bytes() const { return static_cast<int64_t>(images_.bytes() + labels_.bytes()); }

 private:
  int64_t count_, sample_floats_;
  cuda::DeviceBuffer images_, labels_;
};

class CudaNetwork {
 public:
  CudaNetwork(const std::vector<LayerSpec>& layers, const std::vector<int64_t>& input_chw, int64_t batch_capacity,
              const OptimSpec& optim, ConvAlgo conv_algo, int device);
  ~CudaNetwork();
  CudaNetwork(const CudaNetwork&) = delete;
  CudaNetwork& operator=(const CudaNetwork&) = delete;

  int device() const { return ctx_.device(); }
  const std::vector<LayerInfo>& layers() const { return info_; }
  const std::vector<int64_t>& input_shape() const { return input_chw_; }
  int64_t num_classes() const { return classes_; }
  int64_t batch_capacity() const { return capacity_; }
  int64_t sample_floats() const { return sample_floats_; }
  MemoryPlan memory_plan() const;
  std::vector<std::string> conv_algorithms() const;  // per conv layer (forward pass)

  int64_t num_params() const { return num_params_; }
  int num_state_buffers() const { return optimizer_state_buffers(optim_.kind); }
  int64_t optimizer_steps() const { return optimizer_steps_; }
  void set_optimizer_steps(int64_t n) { optimizer_steps_ = n; }
  // Host <-> device copies of the flat parameter / gradient / optimizer-state buffers
  // (num_params floats each); they synchronise.
  void set_params(const float* host);
  void get_params(float* host) const;
  void get_grads(float* host) const;
  void set_state(int i, const float* host);
  void get_state(int i, float* host) const;

  // One step on a host batch (copied in): x (n, *input), labels (n,), n <= capacity.
  RunStats train_step(const float* x, const int64_t* labels, int64_t n, float lr);
  // Steps over data[order[i]] in batches (order: host indices, copied to the device once).
  RunStats train_epoch(const DeviceDataset& data, const int64_t* order, int64_t order_len, int64_t batch_size,
                       const ScheduleSpec& schedule, int64_t& iteration, const ProgressFn& progress, int64_t every);
  RunStats evaluate(const DeviceDataset& data);
  // probs (count, classes) on the host: the softmax of the logits.
  void predict(const DeviceDataset& data, float* probs);

 private:
  struct Layer {
    LayerPlan plan;
    ConvAlgo algos[3] = {ConvAlgo::ImplicitGemm, ConvAlgo::ImplicitGemm, ConvAlgo::ImplicitGemm};
  };
  // Queues the forward pass over n samples at x; returns the logits.
  const float* forward(const float* x, int64_t n);
  // Queues backward from the dlogits in grad_a_; parameter gradients OVERWRITE grads_.
  void backward(const float* x, int64_t n);
  // Queues loss, totals, backward and the optimizer update for the batch in act_[0]/labels_.
  void step(int64_t n, float lr);
  void check_device_of(const DeviceDataset& data, const char* op) const;
  const float* layer_input(size_t k, const float* x) const;
  cuda::RunTotals read_totals();  // synchronises
  RunStats stats_of(const cuda::RunTotals& t, int64_t samples, const char* op) const;

  cuda::CudaContext ctx_;
  std::vector<int64_t> input_chw_;
  int64_t capacity_, classes_ = 0, num_params_ = 0, sample_floats_ = 0, grad_stride_ = 0;
  OptimSpec optim_;
  int64_t optimizer_steps_ = 0;
  std::vector<Layer> layers_;
  std::vector<LayerInfo> info_;
  cuda::DeviceBuffer params_, grads_, state_;
  cuda::DeviceBuffer acts_;       // input batch, labels, every non-view layer's output
  cuda::DeviceBuffer grad_bufs_;  // two ping-pong buffers for activation gradients
  cuda::DeviceBuffer loss_ws_;    // one double per row, for the loss's mean
  cuda::DeviceBuffer totals_;     // cuda::RunTotals, then cuda::LossResult
  cuda::DeviceBuffer order_;      // the epoch's sample order
  cuda::DeviceBuffer probs_;      // (capacity, classes), for predict
  std::vector<float*> act_;       // act_[0] = input batch, act_[i + 1] = output of layer i
  int64_t* labels_ = nullptr;
  float* grad_a_ = nullptr;
  float* grad_b_ = nullptr;
  int64_t workspace_bytes_ = 0;
};

}  // namespace pylenet
