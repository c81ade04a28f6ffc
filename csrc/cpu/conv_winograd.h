// Winograd convolution at stride 1 (Lavin & Gray, 2015): F(4x4, 3x3) for 3x3 filters and
// F(2x2, 5x5) for 5x5 ones. Both use 6x6 patches and the same six points (0, 1, -1, 2, -2 and
// infinity), so they share B and the whole pipeline; only G and A depend on the filter size.
//
// An m x m block of outputs of one channel pair is  Y = A^T [ (G g G^T) (.) (B^T d B) ] A,
// with g the r x r filter, d the 6x6 input patch that covers the block and (.) the element-wise
// product: 36 multiplications where the direct sum takes 144 (3x3) or 100 (5x5). Summed over
// input channels, each of the 36 positions xi of the 6x6 transformed tile is a matrix product
//     M[xi](tiles, K) = V[xi](tiles, C) . U[xi](C, K)
// which is where the time goes; the transforms are adds and a few scalings.
//  - forward:         V from the input, U from the filter, y = A^T M A (+ bias);
//  - backward data:   the adjoint of the forward, on the same tiles: each tile's dy becomes
//                     A dy A^T, is multiplied by U^T and the patch's gradient B (.) B^T is
//                     added into the overlapping 6x6 patches, tile after tile;
//  - backward filter: dw = G^T S G with S[xi](C, K) = sum over tiles of V[xi]^T . (A dy A^T)[xi],
//                     summed per fixed chunk of images, then over the chunks in order.
// Work is split over images (and, forward, bands of tile rows) and fixed chunks of images, so
// results do not depend on the thread count. Channels are the vector lanes of every
// buffer (padded to 16 floats, whatever SIMD level runs, so a workspace sized earlier stays
// valid if the level changes). The rounding differs from the direct sum: errors up to about
// 1e-5 of the largest output (3x3) and a few times that in 5x5 filter gradients, whose
// transforms scale values by up to 16/24 and 1/24 before the long sums over tiles.
#pragma once

#include <cstdint>

#include "ops/conv.h"

namespace pylenet::cpu {

// 3x3 or 5x5 kernel, stride 1, padding smaller than the kernel.
bool conv_winograd_supported(const ConvShape& s);
int64_t conv_winograd_workspace_floats(ConvPass pass, const ConvShape& s, int threads);

void conv_forward_winograd(const ConvShape& s, const float* x, const float* w, const float* b, float* y, float* ws,
                           int threads);
// The forward pass in two steps, for callers that keep the filter's transform between calls
// (an inference executor): U = G w G^T and the bias, once per filter, then passes reading
// them (ws: the forward workspace less conv_winograd_prepared_floats). Same bits as the one
// call. U's zero lanes depend on the SIMD level: prepare again when it changes.
int64_t conv_winograd_prepared_floats(const ConvShape& s);
void conv_winograd_prepare(const ConvShape& s, const float* w, const float* b, float* prepared, int threads);
void conv_forward_winograd_prepared(const ConvShape& s, const float* x, const float* prepared, bool bias, float* y,
                                    float* ws, int threads);
// The same followed by a 2 x 2, stride 2 max pooling, done on the output tiles in registers:
// y (n, k, oh / 2, ow / 2), the bits of conv_forward_winograd_prepared then cpu's max pooling
// (its first-maximum and NaN rules), without writing the convolution's output. Unless index
// is null, index (shaped as y) = each window's winner, 0.0 (top left) to 3.0 (bottom right),
// for max_pool2x2_backward_from_indices.
void conv_forward_winograd_prepared_max_pool(const ConvShape& s, const float* x, const float* prepared, bool bias,
                                             float* y, float* index, float* ws, int threads);
// The same from the filter itself (transformed into ws first, as conv_forward_winograd does).
void conv_forward_winograd_max_pool(const ConvShape& s, const float* x, const float* w, const float* b, float* y,
                                    float* index, float* ws, int threads);
void conv_backward_data_winograd(const ConvShape& s, const float* w, const float* dy, float* dx, float* ws,
                                 int threads);
void conv_backward_filter_winograd(const ConvShape& s, const float* x, const float* dy, float* dw, float* ws,
                                   int threads);
// All backward passes of a layer in one pass over dy: dw, and dx and db unless null. Each
// image's dy is transposed and transformed once for both products (the separate passes do it
// once each) and db is summed from the transposed copy, in the same order as the separate
// passes, so every bit equals theirs (db: cpu::conv_backward_bias's).
int64_t conv_winograd_backward_workspace_floats(const ConvShape& s, int threads);
// winners (unless null): dy is then the gradient of the 2 x 2, stride 2 max pooling of the
// output, (n, k, oh / 2, ow / 2), and winners the windows' winners that
// conv_forward_winograd_max_pool left: the bits of max_pool2x2_backward_from_indices first.
void conv_backward_winograd(const ConvShape& s, const float* x, const float* w, const float* dy, float* dx, float* dw,
                            float* db, float* ws, int threads, const float* winners = nullptr);

namespace winograd {

constexpr int64_t kPatch = 6;       // inputs per tile side: m + r - 1 for m outputs of an r x r filter
constexpr int64_t kPoints = 36;     // kPatch * kPatch transformed positions
constexpr int64_t kLanes = 16;      // channel padding of every buffer
constexpr int64_t kFilterChunk = 8; // images per partial S of backward filter (fixed: thread-independent)

inline int64_t pad_lanes(int64_t c) { return (c + kLanes - 1) / kLanes * kLanes; }
inline int64_t round16(int64_t v) { return (v + 15) / 16 * 16; }  // keeps buffers 64-byte aligned

// One stride-1 convolution as the kernels see it: input (n, cin, h, w) padded by (ph, pw) and
// an r x r filter (r = 3 or 5) give output (n, cout, oh, ow), covered by th x tw tiles of
// m x m outputs per image (m = 7 - r: the 6x6 patch of every tile).
struct Geometry {
  int64_t n, cin, h, w, cout, oh, ow, ph, pw;
  int64_t r, m;        // filter size, outputs per tile side
  int64_t th, tw;      // tiles per column and row
  int64_t cinp, coutp; // channel counts padded to kLanes
  int64_t block;       // tiles per block (the rows of each product)
  int64_t xt_rows() const { return m * th + r - 1; }  // the input, channels in the lanes,
  int64_t xt_cols() const { return m * tw + r - 1; }  //   zero-padded to whole tiles
  static Geometry make(int64_t n, int64_t cin, int64_t h, int64_t w, int64_t cout, int64_t oh, int64_t ow,
                       int64_t ph, int64_t pw, int64_t r);
  // The forward pass splits each image into this many bands of tile rows: one per image
  // when there are images enough for the threads, more for small batches. (Each output is
  // computed the same way whatever the split.)
  int64_t bands(int threads) const;
  // Floats of one worker's buffers: the input and output (or output gradient) of one image
  // with channels in the lanes, V and M (or A dy A^T) of a block of tiles.
  int64_t worker_floats() const;
  // The fused backward pass's: those and the input gradient with channels in the lanes.
  int64_t backward_worker_floats() const;
};

// Per-SIMD-level kernels (conv_winograd_kernel.inc).
#define PYL_DECLARE_WINOGRAD(ns)                                                                     \
  namespace ns {                                                                                     \
  /* y (n, cout, oh, ow) = the convolution of x (n, cin, h, w) whose transformed filter is U      */ \
  /* (36, cinp, coutp); bias (coutp,) zero-padded, or null. ws: workers x worker_floats().       */ \
  /* max_pool: y (n, cout, oh / 2, ow / 2) = its 2 x 2 max pooling (stride 2) instead, and unless */ \
  /* index is null, index (the same shape) = each window's winner, 0.0 to 3.0 (row-major).        */ \
  void forward(const Geometry& g, const float* x, const float* u, const float* bias, float* y, float* ws,      \
               int threads, bool max_pool, float* index);                                            \
  /* S[chunk] (36, cinp, coutp) = sum over the chunk's tiles of V^T (A dy A^T), for x the input    */ \
  /* (n, cin, h, w) and dy the output gradient (n, cout, oh, ow).                                 */ \
  void filter_sums(const Geometry& g, const float* x, const float* dy, float* sums, float* ws, int threads);  \
  /* filter_sums and, unless dx is null, backward_data in one pass; planes (n, coutp), unless   */ \
  /* null: each image's per-channel sum of dy. ws: workers x backward_worker_floats().          */ \
  /* winners: dy is the gradient of a 2 x 2 max pooling of the output (n, cout, oh / 2, ow / 2)  */ \
  /* and winners its windows' winners (the fused forward's), unless null.                        */ \
  void backward(const Geometry& g, const float* x, const float* dy, const float* ut, float* dx, float* sums,   \
                float* planes, float* ws, int threads, const float* winners);                        \
  /* dx (n, cin, h, w) from dy (n, cout, oh, ow): sum over tiles of B (U^T . A dy A^T) B^T, added */ \
  /* into the overlapping patches tile after tile; ut (36, coutp, cinp) is U transposed.        */ \
  void backward_data(const Geometry& g, const float* dy, const float* ut, float* dx, float* ws, int threads); \
  /* u (36, cinp, coutp) = G w G^T of the filter w (k, c, r, r), rows c, lanes k; transposed:   */ \
  /* (36, coutp, cinp), rows k, lanes c. Lanes past the channel count (to the next multiple of   */ \
  /* W) get zeros; rows past it are not written.                                                */ \
  void filter_transform(const float* w, int64_t k, int64_t c, bool transposed, const Geometry& g, float* u,  \
                        int threads);                                                                \
  /* dw (cout, cin, r, r) = G^T S G for the summed S (36, cinp, coutp) of backward filter       */ \
  void filter_adjoint(const float* sums, const Geometry& g, float* dw, int threads);                  \
  }
PYL_DECLARE_WINOGRAD(scalar)
PYL_DECLARE_WINOGRAD(avx2)
PYL_DECLARE_WINOGRAD(avx512)
#undef PYL_DECLARE_WINOGRAD

}  // namespace winograd
}  // namespace pylenet::cpu
