// The device side of a CUDA executor (implemented in runtime/executor.cpp, beside the memory
// plan it mirrors): its context and stream, the device copies of the parameters, buffers and
// optimizer state (the host ones are the model's, copied in by upload_state() and back by
// download_state()), the per-step results and the running totals kept on the device, and an
// epoch's sample order. (The batch's input and labels live in the memory plan's Store.) An
// empty struct in a build without CUDA.
#pragma once

#ifdef PYLENET_HAVE_CUDA
#include <map>
#include <vector>

#include "cuda/context.h"
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

  double* loss_slot() const { return static_cast<double*>(step.data()); }
  int64_t* correct_slot() const { return static_cast<int64_t*>(step.data()) + 1; }
  int* bad_slot() const { return reinterpret_cast<int*>(static_cast<int64_t*>(step.data()) + 2); }
  cuda::RunTotals* run_totals() const { return static_cast<cuda::RunTotals*>(totals.data()); }
  void* buffer(int v) const { return buffers.at(v).data(); }
  void synchronize() const { ctx.synchronize(); }
};

}  // namespace pylenet::runtime
#else
namespace pylenet::runtime {
struct CudaState {};
}  // namespace pylenet::runtime
#endif
