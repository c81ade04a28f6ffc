// A CUDA graph of the work queued on one stream: captured once, replayed with one launch.
// The training step of runtime/executor.cpp (30-odd kernels and copies at LeNet sizes, each
// a few microseconds of host time) becomes one cudaGraphLaunch per step.
//
// Capture records the stream's work without running it, with the launch arguments frozen:
// what changes from step to step must live in device memory (ops/math.h StepValues), and
// every pointer the step uses must stay valid while the graph is kept (the caller keys the
// graph on them and captures again when one changes). Capture uses the thread-local mode:
// other host threads' CUDA calls are not disturbed, while a call of this thread that is
// unsafe during capture (a synchronisation, a cudaMalloc) invalidates it, and the caching
// allocator refuses to hand out blocks meanwhile (device_memory::set_capturing); end() then
// throws and the caller runs the step without a graph. One limit the mode cannot lift: the
// context's stream is a blocking one (cuda/context.h), so another host thread that queues
// work on the legacy default stream during a capture (a synchronous cudaMemcpy, CuPy or
// PyTorch on stream 0) fails the capture; the step then simply runs eagerly.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

namespace pylenet::cuda {

class StreamGraph {
 public:
  StreamGraph() = default;
  ~StreamGraph() { reset(); }
  StreamGraph(const StreamGraph&) = delete;
  StreamGraph& operator=(const StreamGraph&) = delete;

  void begin(cudaStream_t stream);           // starts capturing the stream (drops a previous graph)
  void end(cudaStream_t stream);             // ends the capture and instantiates; throws if it failed
  void abort(cudaStream_t stream) noexcept;  // ends a capture that threw midway, keeps nothing
  void launch(cudaStream_t stream) const;    // queues one replay
  bool ready() const { return exec_ != nullptr; }
  size_t nodes() const { return nodes_; }    // kernels, copies and memsets in the graph
  void reset() noexcept;

 private:
  cudaGraph_t graph_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
  size_t nodes_ = 0;
};

}  // namespace pylenet::cuda
