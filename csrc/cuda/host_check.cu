// Host check of the CUDA kernels' index arithmetic, for machines without a GPU (CI,
// laptops): the __host__ __device__ per-element functions and GEMM operand loaders of
// conv.cu, pool.cu and gemm.cu run on the CPU and are compared with pylenet's cpu:: kernels;
// the tiled GEMM kernel is emulated thread by thread with its own slice_index mapping.
// Pooling must match bit for bit, convolution to rounding.
// What it cannot see: launch configurations, shared-memory races, the warp/block
// reductions (loss, bias), anything that only a GPU executes.
// Built with -DPYLENET_CUDA_HOST_CHECK=ON (cmake/cuda.cmake); run ./pylenet_cuda_host_check.
// It includes the .cu files (their helpers live in anonymous namespaces), so it must not
// be linked with pylenet_cuda. The im2col call sequences below mirror conv.cu's host code.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "cuda/gemm.cu"
#include "cuda/conv.cu"
#include "cuda/pool.cu"

using namespace pylenet;
using namespace pylenet::cuda;

// Emulation of tile::gemm_kernel: same slices, same staging, same per-thread sums.
template <class A, class B, class E>
void emulate_gemm(int M, int N, int K, int batch, const A& a, const B& b, const E& e) {
  using namespace tile;
  static float As[kK][kM + 1], Bs[kK][kN + 1];
  std::vector<float> ra(kThreads * kLoads), rb(kThreads * kLoads), acc(kThreads * 16);
  for (int z = 0; z < batch; ++z)
    for (int by = 0; by < (M + kM - 1) / kM; ++by)
      for (int bx = 0; bx < (N + kN - 1) / kN; ++bx) {
        const int m0 = by * kM, n0 = bx * kN;
        std::fill(acc.begin(), acc.end(), 0.0f);
        auto fetch = [&](int k0) {
          for (int tid = 0; tid < kThreads; ++tid)
            for (int i = 0; i < kLoads; ++i) {
              int r, c;
              slice_index<A::kColsContiguous, kM, kK>(tid + i * kThreads, r, c);
              ra[tid * kLoads + i] = (m0 + r < M && k0 + c < K) ? a(z, m0 + r, k0 + c) : 0.0f;
              slice_index<B::kColsContiguous, kK, kN>(tid + i * kThreads, r, c);
              rb[tid * kLoads + i] = (k0 + r < K && n0 + c < N) ? b(z, k0 + r, n0 + c) : 0.0f;
            }
        };
        fetch(0);
        for (int k0 = 0; k0 < K; k0 += kK) {
          for (auto& row : As) for (float& v : row) v = NAN;  // catch unstaged reads
          for (auto& row : Bs) for (float& v : row) v = NAN;
          for (int tid = 0; tid < kThreads; ++tid)
            for (int i = 0; i < kLoads; ++i) {
              int r, c;
              slice_index<A::kColsContiguous, kM, kK>(tid + i * kThreads, r, c);
              As[c][r] = ra[tid * kLoads + i];
              slice_index<B::kColsContiguous, kK, kN>(tid + i * kThreads, r, c);
              Bs[r][c] = rb[tid * kLoads + i];
            }
          if (k0 + kK < K) fetch(k0 + kK);
          for (int tid = 0; tid < kThreads; ++tid) {
            const int tx = tid % 16, ty = tid / 16;
            for (int kk = 0; kk < kK; ++kk)
              for (int i = 0; i < 4; ++i)
                for (int j = 0; j < 4; ++j)
                  acc[tid * 16 + i * 4 + j] = std::fma(As[kk][ty + 16 * i], Bs[kk][tx + 16 * j], acc[tid * 16 + i * 4 + j]);
          }
        }
        for (int tid = 0; tid < kThreads; ++tid) {
          const int tx = tid % 16, ty = tid / 16;
          for (int i = 0; i < 4; ++i)
            for (int j = 0; j < 4; ++j) {
              const int m = m0 + ty + 16 * i, n = n0 + tx + 16 * j;
              if (m < M && n < N) e(z, m, n, acc[tid * 16 + i * 4 + j]);
            }
        }
      }
}

// The host side of sgemm_strided_batched, with the emulated kernel.
void host_sgemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                int64_t sa, const float* b, int64_t ldb, int64_t sb, float beta, float* c, int64_t ldc, int64_t sc,
                int64_t batch, const float* row_bias = nullptr, const float* col_bias = nullptr) {
  const StoreC out{c, ldc, sc, alpha, beta, row_bias, col_bias};
  const int M = m, N = n, K = k, B = batch;
  if (!ta && !tb) emulate_gemm(M, N, K, B, MatrixA<false>{a, lda, sa}, MatrixB<false>{b, ldb, sb}, out);
  else if (!ta && tb) emulate_gemm(M, N, K, B, MatrixA<false>{a, lda, sa}, MatrixB<true>{b, ldb, sb}, out);
  else if (ta && !tb) emulate_gemm(M, N, K, B, MatrixA<true>{a, lda, sa}, MatrixB<false>{b, ldb, sb}, out);
  else emulate_gemm(M, N, K, B, MatrixA<true>{a, lda, sa}, MatrixB<true>{b, ldb, sb}, out);
}

int failures = 0;
void compare(const char* what, const std::vector<float>& got, const std::vector<float>& ref, double tol) {
  double worst = 0, scale = 0;
  size_t at = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    scale = std::max(scale, (double)std::fabs(ref[i]));
    const double e = std::isnan(ref[i]) ? (std::isnan(got[i]) ? 0.0 : INFINITY) : std::fabs((double)got[i] - ref[i]);
    if (!(e <= worst)) { worst = e; at = i; }
  }
  const bool ok = worst <= tol * std::max(scale, 1.0);
  if (!ok) { ++failures; std::printf("FAIL %s: worst %.3g at %zu (got %g ref %g)\n", what, worst, at, got[at], ref[at]); }
}

std::mt19937 rng(42);
std::vector<float> randn(size_t n) {
  std::normal_distribution<float> d;
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

void check_conv(int n, int c, int h, int w, int k, int r, int s, int ph, int pw, int sh, int sw) {
  ConvShape S = ConvShape::make("t", TensorDesc{n, c, h, w}, TensorDesc{k, c, r, s}, ConvDesc{{sh, sw}, {ph, pw}});
  const Dims d = dims_of("t", S);
  const int64_t xs = S.n * S.c * S.h * S.w, ys = S.n * S.k * S.oh * S.ow, ws = S.k * S.c * S.r * S.s;
  auto x = randn(xs), wt = randn(ws), b = randn(S.k), dy = randn(ys);
  std::vector<float> y_ref(ys), dx_ref(xs), dw_ref(ws), db_ref(S.k);
  cpu::conv_forward_naive(S, x.data(), wt.data(), b.data(), y_ref.data(), 1);
  cpu::conv_backward_data_naive(S, wt.data(), dy.data(), dx_ref.data(), 1);
  cpu::conv_backward_filter_naive(S, x.data(), dy.data(), dw_ref.data(), 1);
  const double tol = 1e-5;
  std::vector<float> out;
  // naive
  out.assign(ys, 0); for (int i = 0; i < ys; ++i) out[i] = conv_forward_naive_at(d, x.data(), wt.data(), b.data(), i);
  compare("fwd naive", out, y_ref, tol);
  out.assign(xs, 0); for (int i = 0; i < xs; ++i) out[i] = conv_backward_data_naive_at(d, wt.data(), dy.data(), i);
  compare("bwd data naive", out, dx_ref, tol);
  out.assign(ws, 0); for (int i = 0; i < ws; ++i) out[i] = conv_backward_filter_naive_at(d, x.data(), dy.data(), i);
  compare("bwd filter naive", out, dw_ref, tol);
  // im2col (the host functions' argument lists, copied from conv.cu)
  const int64_t crs = S.col_rows(), ohw = S.col_cols();
  for (ConvPass pass : {ConvPass::Forward, ConvPass::BackwardData, ConvPass::BackwardFilter}) {
    const int64_t group = std::min<int64_t>(im2col_group(pass, S), 3);  // small groups: exercise the loop
    std::vector<float> wsp(group * im2col_floats_per_image(pass, S), NAN);
    if (pass == ConvPass::Forward) {
      out.assign(ys, NAN);
      for (int64_t n0 = 0; n0 < S.n; n0 += group) {
        const int g = std::min(group, S.n - n0);
        for (int64_t i = 0; i < g * crs * ohw; ++i) wsp[i] = im2col_at(d, x.data() + n0 * S.c * S.h * S.w, i);
        host_sgemm(false, false, S.k, ohw, crs, 1.0f, wt.data(), crs, 0, wsp.data(), ohw, crs * ohw, 0.0f,
                   out.data() + n0 * S.k * ohw, ohw, S.k * ohw, g, b.data(), nullptr);
      }
      compare("fwd im2col", out, y_ref, tol);
    } else if (pass == ConvPass::BackwardData) {
      out.assign(xs, NAN);
      const int64_t chw = S.c * S.h * S.w;
      for (int64_t n0 = 0; n0 < S.n; n0 += group) {
        const int g = std::min(group, S.n - n0);
        host_sgemm(true, false, crs, ohw, S.k, 1.0f, wt.data(), crs, 0, dy.data() + n0 * S.k * ohw, ohw, S.k * ohw,
                   0.0f, wsp.data(), ohw, crs * ohw, g);
        for (int64_t i = 0; i < g * chw; ++i) out[n0 * chw + i] = col2im_at(d, wsp.data(), i);
      }
      compare("bwd data im2col", out, dx_ref, tol);
    } else {
      out.assign(ws, NAN);
      const int64_t kcrs = S.k * crs;
      float* cols = wsp.data();
      float* partials = wsp.data() + group * crs * ohw;
      for (int64_t n0 = 0; n0 < S.n; n0 += group) {
        const int g = std::min(group, S.n - n0);
        for (int64_t i = 0; i < g * crs * ohw; ++i) cols[i] = im2col_at(d, x.data() + n0 * S.c * S.h * S.w, i);
        host_sgemm(false, true, S.k, crs, ohw, 1.0f, dy.data() + n0 * S.k * ohw, ohw, S.k * ohw, cols, ohw,
                   crs * ohw, 0.0f, partials, crs, kcrs, g);
        for (int64_t i = 0; i < kcrs; ++i) {
          float acc = n0 > 0 ? out[i] : 0.0f;
          for (int z = 0; z < g; ++z) acc += partials[z * kcrs + i];
          out[i] = acc;
        }
      }
      compare("bwd filter im2col", out, dw_ref, tol);
    }
  }
  // implicit GEMM (the loaders of conv.cu, the launch arguments copied from it)
  out.assign(ys, NAN);
  emulate_gemm(S.k, S.n * S.oh * S.ow, crs, 1, FwdFilter{wt.data(), d.crs()}, FwdPatches{d, x.data()},
               FwdStore{d, b.data(), out.data(), false});
  compare("fwd implicit", out, y_ref, tol);
  {  // a ReLU folded into the epilogue (Executor::fuse_relu): relu of the same values
    std::vector<float> relu_ref(y_ref.begin(), y_ref.end());
    for (float& v : relu_ref) v = math::relu(v);
    out.assign(ys, NAN);
    emulate_gemm(S.k, S.n * S.oh * S.ow, crs, 1, FwdFilter{wt.data(), d.crs()}, FwdPatches{d, x.data()},
                 FwdStore{d, b.data(), out.data(), true});
    compare("fwd implicit + relu", out, relu_ref, tol);
  }
  out.assign(xs, NAN);
  emulate_gemm(S.c, S.n * S.h * S.w, S.k * S.r * S.s, 1, BwdDataFilter{wt.data(), d.c, d.rs()},
               BwdDataGrad{d, dy.data()}, BwdDataStore{d, out.data()});
  compare("bwd data implicit", out, dx_ref, tol);
  {
    const int chunks = filter_chunks(S);
    const int64_t kcrs = S.k * crs;
    std::vector<float> wsp(conv_implicit_gemm_workspace_floats(ConvPass::BackwardFilter, S), NAN);
    out.assign(ws, NAN);
    float* dst = chunks > 1 ? wsp.data() : out.data();
    emulate_gemm(S.k, crs, std::min<int64_t>(S.n, kFilterChunk) * S.oh * S.ow, chunks, BwdFilterGrad{d, dy.data()},
                 BwdFilterPatches{d, x.data()}, BwdFilterStore{dst, d.crs(), kcrs});
    if (chunks > 1)
      for (int64_t i = 0; i < kcrs; ++i) {
        float acc = 0.0f;
        for (int z = 0; z < chunks; ++z) acc += wsp[z * kcrs + i];
        out[i] = acc;
      }
    compare("bwd filter implicit", out, dw_ref, tol);
  }
  if (failures) std::printf("  ^ conv n%d c%d %dx%d k%d %dx%d pad %d,%d stride %d,%d\n", n, c, h, w, k, r, s, ph, pw, sh, sw);
}

void check_pool(int n, int c, int h, int w, int kh, int kw, int sh, int sw, int ph, int pw, bool ties) {
  PoolShape S = PoolShape::make("t", TensorDesc{n, c, h, w}, PoolDesc{PoolMode::Max, {kh, kw}, {sh, sw}, {ph, pw}});
  const Geom g = geom_of("t", S);
  const int64_t xs = S.n * S.c * S.h * S.w, ys = S.n * S.c * S.oh * S.ow;
  auto x = randn(xs), dy = randn(ys);
  if (ties) { for (float& v : x) v = std::round(v); x[xs / 2] = NAN; x[0] = NAN; }
  std::vector<float> ref(ys), refb(xs), out(ys), outb(xs);
  cpu::max_pool_forward(S, x.data(), ref.data(), 1);
  for (int64_t i = 0; i < ys; ++i) out[i] = max_pool_forward_at(g, x.data(), i);
  cpu::max_pool_backward(S, x.data(), dy.data(), refb.data(), 1);
  for (int64_t i = 0; i < xs; ++i) outb[i] = max_pool_backward_at(g, x.data(), dy.data(), nullptr, i);
  const bool same1 = std::memcmp(out.data(), ref.data(), ys * 4) == 0, same2 = std::memcmp(outb.data(), refb.data(), xs * 4) == 0;
  cpu::avg_pool_forward(S, x.data(), ref.data(), 1);
  for (int64_t i = 0; i < ys; ++i) out[i] = avg_pool_forward_at(g, x.data(), i);
  cpu::avg_pool_backward(S, dy.data(), refb.data(), 1);
  for (int64_t i = 0; i < xs; ++i) outb[i] = avg_pool_backward_at(g, dy.data(), nullptr, i);
  const bool same3 = std::memcmp(out.data(), ref.data(), ys * 4) == 0, same4 = std::memcmp(outb.data(), refb.data(), xs * 4) == 0;
  if (!(same1 && same2 && same3 && same4)) {
    ++failures;
    std::printf("FAIL pool n%d c%d %dx%d k%dx%d s%d,%d p%d,%d ties=%d: bitwise max fwd %d bwd %d avg fwd %d bwd %d\n", n, c, h,
                w, kh, kw, sh, sw, ph, pw, ties, same1, same2, same3, same4);
  }
  // A folded ReLU (Executor::fuse_relu) against the CPU's pooling and ReLU run apart.
  for (PoolMode mode : {PoolMode::Max, PoolMode::Avg}) {
    const bool max = mode == PoolMode::Max;
    std::vector<float> ry(ys), dz(ys);
    if (max) cpu::max_pool_forward(S, x.data(), ref.data(), 1);
    else cpu::avg_pool_forward(S, x.data(), ref.data(), 1);
    cpu::activation_forward(Activation::ReLU, ys, ref.data(), ry.data(), 0.0f, 1);
    for (int64_t i = 0; i < ys; ++i) out[i] = epilogue(max ? max_pool_forward_at(g, x.data(), i) : avg_pool_forward_at(g, x.data(), i), true);
    cpu::activation_backward(Activation::ReLU, ys, ry.data(), dy.data(), dz.data(), 0.0f, 1);
    if (max) cpu::max_pool_backward(S, x.data(), dz.data(), refb.data(), 1);
    else cpu::avg_pool_backward(S, dz.data(), refb.data(), 1);
    for (int64_t i = 0; i < xs; ++i)
      outb[i] = max ? max_pool_backward_at(g, x.data(), dy.data(), ry.data(), i) : avg_pool_backward_at(g, dy.data(), ry.data(), i);
    const bool f = std::memcmp(out.data(), ry.data(), ys * 4) == 0, b = std::memcmp(outb.data(), refb.data(), xs * 4) == 0;
    if (!(f && b)) {
      ++failures;
      std::printf("FAIL pool+relu %s n%d c%d %dx%d k%dx%d s%d,%d p%d,%d ties=%d: bitwise fwd %d bwd %d\n", max ? "max" : "avg",
                  n, c, h, w, kh, kw, sh, sw, ph, pw, ties, f, b);
    }
  }
}

int main() {
  // n c h w k r s ph pw sh sw
  check_conv(1, 1, 5, 5, 1, 3, 3, 0, 0, 1, 1);
  check_conv(2, 3, 7, 11, 4, 3, 5, 1, 2, 2, 1);
  check_conv(11, 1, 28, 28, 20, 5, 5, 0, 0, 1, 1);   // LeNet conv1, more than one filter chunk
  check_conv(9, 20, 12, 12, 50, 5, 5, 0, 0, 1, 1);   // LeNet conv2
  check_conv(3, 2, 9, 6, 70, 1, 4, 0, 2, 1, 3);      // K > one tile
  check_conv(17, 5, 10, 9, 3, 3, 3, 1, 1, 3, 2);     // stride 3 x 2, 3 chunks
  check_conv(2, 66, 4, 4, 3, 2, 2, 1, 1, 2, 2);      // C > one tile (backward data M)
  check_conv(1, 2, 3, 3, 2, 3, 3, 1, 1, 1, 1);
  check_conv(2, 1, 1, 9, 2, 1, 3, 0, 1, 1, 2);       // one-row image
  // n c h w kh kw sh sw ph pw
  for (bool ties : {false, true}) {
    check_pool(2, 3, 7, 11, 2, 2, 2, 2, 0, 0, ties);
    check_pool(3, 3, 7, 11, 3, 5, 2, 1, 1, 2, ties);
    check_pool(1, 3, 9, 6, 1, 4, 1, 3, 0, 2, ties);
    check_pool(3, 2, 10, 9, 3, 3, 2, 2, 1, 1, ties);
    check_pool(1, 1, 3, 3, 3, 3, 1, 1, 1, 1, ties);
    check_pool(1, 2, 11, 7, 2, 2, 3, 3, 0, 0, ties);
    check_pool(1, 1, 2, 2, 3, 3, 3, 3, 1, 1, ties);
    check_pool(2, 6, 28, 28, 2, 2, 2, 2, 0, 0, ties);
  }
  std::printf("%s (%d failures)\n", failures ? "FAILED" : "all host checks passed", failures);
  return failures != 0;
}
