#include "cuda/graph.h"

#include "cuda/allocator.h"
#include "cuda/check.h"

namespace pylenet::cuda {

void StreamGraph::reset() noexcept {
  if (exec_) (void)cudaGraphExecDestroy(exec_);
  if (graph_) (void)cudaGraphDestroy(graph_);
  exec_ = nullptr;
  graph_ = nullptr;
  nodes_ = 0;
}

void StreamGraph::begin(cudaStream_t stream) {
  reset();
  PYL_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  device_memory::set_capturing(true);
}

void StreamGraph::end(cudaStream_t stream) {
  device_memory::set_capturing(false);
  cudaGraph_t g = nullptr;
  const cudaError_t err = cudaStreamEndCapture(stream, &g);  // fails when the capture was invalidated
  if (err != cudaSuccess) {
    if (g) (void)cudaGraphDestroy(g);
    throw_cuda_error(err, "cudaStreamEndCapture", __FILE__, __LINE__);
  }
  graph_ = g;
  const cudaError_t inst = cudaGraphInstantiateWithFlags(&exec_, graph_, 0);  // CUDA 11.4+ (the 3-argument
                                                                             // cudaGraphInstantiate is 12+)
  if (inst != cudaSuccess) {
    exec_ = nullptr;
    reset();
    throw_cuda_error(inst, "cudaGraphInstantiate", __FILE__, __LINE__);
  }
  PYL_CUDA_CHECK(cudaGraphGetNodes(graph_, nullptr, &nodes_));
}

void StreamGraph::abort(cudaStream_t stream) noexcept {
  device_memory::set_capturing(false);
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &status) == cudaSuccess && status != cudaStreamCaptureStatusNone) {
    cudaGraph_t g = nullptr;
    (void)cudaStreamEndCapture(stream, &g);
    if (g) (void)cudaGraphDestroy(g);
  }
  (void)cudaGetLastError();
  reset();
}

void StreamGraph::launch(cudaStream_t stream) const {
  PYL_CUDA_CHECK(cudaGraphLaunch(exec_, stream));
}

}  // namespace pylenet::cuda
