// The device side of a CUDA executor (implemented in runtime/executor.cpp, beside the memory
// plan it mirrors): its context and stream, the device copies of the parameters, buffers and
// optimizer state (the host ones are the model's, copied in by upload_state() and back by
// download_state()), the per-step results and the running totals kept on the device, and an
// epoch's sample order. (The batch's input and labels live in the memory plan's Store.) An
// empty struct in a build without CUDA. For training epochs: the epoch's per-step values
// (ops/math.h StepValues) with the device cursor into them, and the step captured as a CUDA
// graph with what it was captured for.
#pragma once

#ifdef PYLENET_HAVE_CUDA
#include <map>
#include <string>
#include <vector>

#include "cuda/context.h"
#include "cuda/graph.h"
#include "cuda/kernels.h"
#include "runtime/memory.h"

namespace pylenet::runtime {

struct CudaState {
  explicit CudaState(int device) : ctx(device) {}
  cuda::CudaContext ctx;
  Memory params;                 // the flat parameter buffer
  std::vector<Memory> state;     // the optimizer's state buffers
  std::map<int, Memory> buffers; // per buffer value (running statistics)
  Memory step;                   // loss sum (double), correct (int64), non-finite flag (int)
  Memory totals;                 // cuda::RunTotals
  Memory order;                  // an epoch's sample order
  int64_t order_len = 0;
  Memory step_table;             // an epoch's StepValues, one per step
  Memory step_slot;              // the cursor into step_table (int64), then the current StepValues

  // What a captured step was captured with: valid while every pointer and value here is.
  struct GraphKey {
    const void *images = nullptr, *labels = nullptr, *order = nullptr, *table = nullptr, *workspace = nullptr;
    int64_t batch = 0;
    uint64_t seed = 0;  // in the dropout ops' base keys
    bool operator==(const GraphKey& o) const {
      return images == o.images && labels == o.labels && order == o.order && table == o.table &&
             workspace == o.workspace && batch == o.batch && seed == o.seed;
    }
  };
  // One kind of step (a training step, an evaluation batch) as a CUDA graph, and its counts.
  struct CapturedStep {
    cuda::StreamGraph graph;
    GraphKey key{}, warm{};          // what the graph was captured for; the last eager full step's
    int64_t captures = 0, replayed = 0, eager = 0;  // full steps, since the executor was made
    uint64_t kernels_per_step = 0;   // kernel launches of the last eager full step
  };
  CapturedStep train_graph, eval_graph;
  Memory eval_table;                 // an evaluation's StepValues (the batches' first rows)
  bool graphs = false;               // capture and replay full steps (Executor::set_cuda_graphs)
  std::string graphs_off;            // why a capture failed, turning graphs off ("" if none did)

  double* loss_slot() const { return static_cast<double*>(step.data()); }
  int64_t* correct_slot() const { return static_cast<int64_t*>(step.data()) + 1; }
  int* bad_slot() const { return reinterpret_cast<int*>(static_cast<int64_t*>(step.data()) + 2); }
  cuda::RunTotals* run_totals() const { return static_cast<cuda::RunTotals*>(totals.data()); }
  int64_t* step_cursor() const { return static_cast<int64_t*>(step_slot.data()); }
  math::StepValues* current_step() const {
    return reinterpret_cast<math::StepValues*>(static_cast<char*>(step_slot.data()) + 16);
  }
  void* buffer(int v) const { return buffers.at(v).data(); }
  void synchronize() const { ctx.synchronize(); }
};

}  // namespace pylenet::runtime
#else
namespace pylenet::runtime {
struct CudaState {};
}  // namespace pylenet::runtime
#endif
