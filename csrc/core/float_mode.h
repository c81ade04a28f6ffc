// Denormal floats (|x| < 2^-126) flushed to zero inside pylenet's steps.
//
// x86 CPUs take a microcode assist, about a hundred cycles, for every operation that reads or
// makes a denormal. Training makes them as it converges: a confident classifier's
// log-softmax gradients for the wrong classes fall below 2^-126 and flow back through every
// layer, and Adadelta's running averages of a weight that stops getting gradient decay into
// that range. PyTorch's examples/mnist net on pylenet ran its third epoch 60 % slower than its
// first (an Intel Xeon). Flushing changes only values below 1.2e-38, which count for
// nothing next to the others; TensorFlow's CPU threads flush too. CUDA kernels run
// denormals at full speed and keep them.
//
// FlushDenormals sets FTZ and DAZ on the calling thread for its scope (the executor's steps
// and forward passes; eager ops keep the IEEE default). The thread pool runs every item in
// the caller's mode (thread_pool.cpp), so the results do not depend on the thread count.
#pragma once

#include <cstdint>

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <xmmintrin.h>
#define PYL_HAVE_MXCSR 1
#endif

namespace pylenet {

// The calling thread's floating-point control word (0 where there is none).
inline uint32_t float_mode() {
#ifdef PYL_HAVE_MXCSR
  return _mm_getcsr();
#else
  return 0;
#endif
}
inline void set_float_mode(uint32_t mode) {
#ifdef PYL_HAVE_MXCSR
  _mm_setcsr(mode);
#else
  (void)mode;
#endif
}

// Sets `mode` on the calling thread for its scope, then restores the thread's own.
class FloatModeScope {
 public:
  explicit FloatModeScope(uint32_t mode) : saved_(float_mode()) { set_float_mode(mode); }
  ~FloatModeScope() { set_float_mode(saved_); }
  FloatModeScope(const FloatModeScope&) = delete;
  FloatModeScope& operator=(const FloatModeScope&) = delete;
  uint32_t saved() const { return saved_; }

 private:
  uint32_t saved_;
};

#ifdef PYL_HAVE_MXCSR
constexpr uint32_t kFlushDenormalBits = 0x8040;  // MXCSR's FTZ (bit 15) and DAZ (bit 6)
#else
constexpr uint32_t kFlushDenormalBits = 0;
#endif

// FTZ and DAZ on for its scope. Code that calls back into the user's Python from inside it
// (a progress callback) runs that in FloatModeScope(saved()).
class FlushDenormals : public FloatModeScope {
 public:
  FlushDenormals() : FloatModeScope(float_mode() | kFlushDenormalBits) {}
};

}  // namespace pylenet
