// The CUDA op layer: the twin of the prepared-shape entry points of csrc/ops/conv.h
// (conv_run, conv_resolve_algo, conv_find_algorithms), with a CudaContext in place of the
// CPU Handle. Shapes come already checked by the shared descriptors (ConvShape::make, ...);
// this layer picks the algorithm, sizes and draws the workspace from the context, and
// queues the kernels of csrc/cuda/kernels.h on the context's stream.
//
// Convolution algorithms on CUDA: naive, im2col and implicit_gemm (direct is CPU only).
// Heuristic (like cudnnGet*Algorithm) = implicit_gemm, which needs no column buffer and is
// one launch per pass; Auto (like cudnnFind*Algorithm) times each once per shape with CUDA
// events and caches the winner in the context.
#pragma once

#include <cstddef>
#include <vector>

#include "cuda/context.h"
#include "ops/conv.h"

namespace pylenet::cuda {

constexpr ConvAlgo kCudaConvAlgos[] = {ConvAlgo::Naive, ConvAlgo::Im2col, ConvAlgo::ImplicitGemm};

bool conv_algo_supported(ConvAlgo algo, const ConvShape& s);
ConvAlgo conv_heuristic_algo(ConvPass pass, const ConvShape& s);
// Bytes of device workspace `algo` needs for this pass (Auto: the most of any algorithm).
size_t conv_workspace_size(ConvAlgo algo, ConvPass pass, const ConvShape& s);

// `algo` must be concrete (see conv_resolve_algo); `out` is y, dx or dw; `bias` is read
// by the forward pass only. Queued on ctx.stream(); the workspace comes from ctx.
void conv_run(CudaContext& ctx, ConvAlgo algo, ConvPass pass, const ConvShape& s, const float* x, const float* w,
              const float* bias, const float* dy, float* out);
// Heuristic -> its rule; Auto -> measured once per (pass, shape) on the given buffers (whose
// output is overwritten) and cached in ctx; a concrete one is checked and returned.
ConvAlgo conv_resolve_algo(CudaContext& ctx, ConvAlgo algo, ConvPass pass, const ConvShape& s, const float* x,
                           const float* w, const float* dy, float* out);
// Times every algorithm for this pass (CUDA events, after a warm-up run), fastest first.
// Synchronises the stream.
std::vector<ConvAlgoPerf> conv_find_algorithms(CudaContext& ctx, ConvPass pass, const ConvShape& s, const float* x,
                                               const float* w, const float* dy, float* out);

}  // namespace pylenet::cuda
