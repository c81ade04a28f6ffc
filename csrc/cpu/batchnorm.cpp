// CPU batch normalisation: per-channel loops over (N, C, HW); row sums in float lanes, totals in double.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/parallel.h"
#include "ops/batchnorm.h"

namespace pylenet::cpu {

namespace {
// The channel sums: within one row (one sample's plane of one channel, at most a few thousand
// floats) kLanes float partial sums run side by side, so the adds pipeline and vectorise;
// each row's lanes are then added to the channel's double totals. Every sum is taken in a
// fixed order, so the statistics depend only on the data, not on timing or thread count.
constexpr int kVec = 4;                // floats per vector: the SSE2 baseline this file is built for
constexpr int kVecs = 4;               // vectors of partial sums per quantity
constexpr int kLanes = kVec * kVecs;  // 16 lanes
typedef float v4f __attribute__((vector_size(kVec * sizeof(float))));

inline v4f load4(const float* p) { v4f v; std::memcpy(&v, p, sizeof v); return v; }

struct Lanes {
  double a = 0.0, b = 0.0;
  void combine(double& sa, double& sb) const { sa += a, sb += b; }
};

// The row's lane sums (and the scalar tail's) added to the channel's double totals.
inline void add_row(Lanes& acc, const v4f (&ra)[kVecs], const v4f (&rb)[kVecs], float ta, float tb) {
  double a = ta, b = tb;
  for (int v = 0; v < kVecs; ++v)
    for (int l = 0; l < kVec; ++l) a += ra[v][l], b += rb[v][l];
  acc.a += a;
  acc.b += b;
}

// a += x, b += x * x over one row of n floats.
inline void add_moments(Lanes& acc, const float* p, int64_t n) {
  v4f ra[kVecs] = {}, rb[kVecs] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int v = 0; v < kVecs; ++v) {
      const v4f x = load4(p + j + v * kVec);
      ra[v] += x;
      rb[v] += x * x;
    }
  float ta = 0.0f, tb = 0.0f;
  for (; j < n; ++j) ta += p[j], tb += p[j] * p[j];
  add_row(acc, ra, rb, ta, tb);
}

// a += dy, b += dy * (x - m) * is over one row of n floats.
inline void add_grad_moments(Lanes& acc, const float* p, const float* g, int64_t n, float m, float is) {
  v4f ra[kVecs] = {}, rb[kVecs] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int v = 0; v < kVecs; ++v) {
      const v4f d = load4(g + j + v * kVec);
      ra[v] += d;
      rb[v] += d * ((load4(p + j + v * kVec) - m) * is);
    }
  float ta = 0.0f, tb = 0.0f;
  for (; j < n; ++j) ta += g[j], tb += g[j] * ((p[j] - m) * is);
  add_row(acc, ra, rb, ta, tb);
}
}  // namespace

void batch_norm_stats_partial(const BatchNormShape& s, const float* x, double* partial) {
  double* sum = partial;
  double* sq = partial + s.c;
  for (int64_t ch = 0; ch < s.c; ++ch) {
    Lanes acc;
    for (int64_t i = 0; i < s.n; ++i) add_moments(acc, x + (i * s.c + ch) * s.hw, s.hw);
    double a = 0.0, b = 0.0;
    acc.combine(a, b);
    sum[ch] = a;
    sq[ch] = b;
  }
}

void batch_norm_stats_finalize(int64_t c, int64_t chunks, const double* partials, int64_t count, double eps,
                               float* mean, float* invstd, float* var_unbiased) {
  for (int64_t ch = 0; ch < c; ++ch) {
    double sum = 0.0, sq = 0.0;
    for (int64_t k = 0; k < chunks; ++k) {  // chunk order: the same sums for any thread count
      sum += partials[k * 2 * c + ch];
      sq += partials[k * 2 * c + c + ch];
    }
    const double m = sum / static_cast<double>(count);
    const double var = std::max(sq / static_cast<double>(count) - m * m, 0.0);
    mean[ch] = static_cast<float>(m);
    invstd[ch] = static_cast<float>(1.0 / std::sqrt(var + eps));
    var_unbiased[ch] =
        static_cast<float>(count > 1 ? var * static_cast<double>(count) / static_cast<double>(count - 1) : var);
  }
}

void batch_norm_update_running(int64_t c, const float* mean, const float* var_unbiased, double momentum,
                               float* running_mean, float* running_var, int64_t* num_batches_tracked) {
  double factor = momentum;
  if (num_batches_tracked) {
    *num_batches_tracked += 1;
    if (momentum < 0) factor = 1.0 / static_cast<double>(*num_batches_tracked);
  }
  for (int64_t ch = 0; ch < c; ++ch) {
    running_mean[ch] = static_cast<float>((1.0 - factor) * running_mean[ch] + factor * mean[ch]);
    running_var[ch] = static_cast<float>((1.0 - factor) * running_var[ch] + factor * var_unbiased[ch]);
  }
}

void batch_norm_apply(const BatchNormShape& s, const float* x, const float* mean, const float* invstd,
                      const float* gamma, const float* beta, float* y) {
  // y = (x - mean) * invstd * gamma + beta = x * scale + shift, per channel.
  for (int64_t i = 0; i < s.n; ++i)
    for (int64_t ch = 0; ch < s.c; ++ch) {
      const float scale = invstd[ch] * (gamma ? gamma[ch] : 1.0f);
      const float shift = (beta ? beta[ch] : 0.0f) - mean[ch] * scale;
      const float* p = x + (i * s.c + ch) * s.hw;
      float* q = y + (i * s.c + ch) * s.hw;
      for (int64_t j = 0; j < s.hw; ++j) q[j] = p[j] * scale + shift;
    }
}

void batch_norm_inference(const BatchNormShape& s, const float* x, const float* running_mean,
                          const float* running_var, double eps, const float* gamma, const float* beta, float* y) {
  for (int64_t i = 0; i < s.n; ++i)
    for (int64_t ch = 0; ch < s.c; ++ch) {
      const float invstd = static_cast<float>(1.0 / std::sqrt(running_var[ch] + eps));
      const float scale = invstd * (gamma ? gamma[ch] : 1.0f);
      const float shift = (beta ? beta[ch] : 0.0f) - running_mean[ch] * scale;
      const float* p = x + (i * s.c + ch) * s.hw;
      float* q = y + (i * s.c + ch) * s.hw;
      for (int64_t j = 0; j < s.hw; ++j) q[j] = p[j] * scale + shift;
    }
}

void batch_norm_backward_partial(const BatchNormShape& s, const float* x, const float* dy, const float* mean,
                                 const float* invstd, double* partial) {
  double* sdy = partial;
  double* sdyx = partial + s.c;
  for (int64_t ch = 0; ch < s.c; ++ch) {
    const float m = mean[ch], is = invstd[ch];
    Lanes acc;
    for (int64_t i = 0; i < s.n; ++i)
      add_grad_moments(acc, x + (i * s.c + ch) * s.hw, dy + (i * s.c + ch) * s.hw, s.hw, m, is);
    double a = 0.0, b = 0.0;
    acc.combine(a, b);
    sdy[ch] = a;
    sdyx[ch] = b;
  }
}

void batch_norm_backward_finalize(int64_t c, int64_t chunks, const double* partials, int64_t count, float* dgamma,
                                  float* dbeta, float* coef) {
  for (int64_t ch = 0; ch < c; ++ch) {
    double sdy = 0.0, sdyx = 0.0;
    for (int64_t k = 0; k < chunks; ++k) {
      sdy += partials[k * 2 * c + ch];
      sdyx += partials[k * 2 * c + c + ch];
    }
    if (dgamma) dgamma[ch] = static_cast<float>(sdyx);
    if (dbeta) dbeta[ch] = static_cast<float>(sdy);
    coef[ch] = static_cast<float>(sdy / static_cast<double>(count));
    coef[c + ch] = static_cast<float>(sdyx / static_cast<double>(count));
  }
}

void batch_norm_backward_apply(const BatchNormShape& s, const float* x, const float* dy, const float* mean,
                               const float* invstd, const float* gamma, const float* coef, float* dx) {
  for (int64_t i = 0; i < s.n; ++i)
    for (int64_t ch = 0; ch < s.c; ++ch) {
      const float m = mean[ch], is = invstd[ch], k = is * (gamma ? gamma[ch] : 1.0f);
      const float mdy = coef[ch], mdyx = coef[s.c + ch];
      const float* p = x + (i * s.c + ch) * s.hw;
      const float* g = dy + (i * s.c + ch) * s.hw;
      float* q = dx + (i * s.c + ch) * s.hw;
      for (int64_t j = 0; j < s.hw; ++j) q[j] = k * (g[j] - mdy - (p[j] - m) * is * mdyx);
    }
}

void batch_norm_inference_backward(const BatchNormShape& s, const float* x, const float* dy,
                                   const float* running_mean, const float* running_var, double eps,
                                   const float* gamma, float* dx, float* dgamma, float* dbeta) {
  for (int64_t ch = 0; ch < s.c; ++ch) {
    const float m = running_mean[ch];
    const float is = static_cast<float>(1.0 / std::sqrt(running_var[ch] + eps));
    const float k = is * (gamma ? gamma[ch] : 1.0f);
    double a = 0.0, b = 0.0;
    for (int64_t i = 0; i < s.n; ++i) {
      const float* p = x + (i * s.c + ch) * s.hw;
      const float* g = dy + (i * s.c + ch) * s.hw;
      float* q = dx ? dx + (i * s.c + ch) * s.hw : nullptr;
      for (int64_t j = 0; j < s.hw; ++j) {
        if (q) q[j] = g[j] * k;
        a += g[j];
        b += static_cast<double>(g[j]) * ((p[j] - m) * is);
      }
    }
    if (dbeta) dbeta[ch] = static_cast<float>(a);
    if (dgamma) dgamma[ch] = static_cast<float>(b);
  }
}

}  // namespace pylenet::cpu
