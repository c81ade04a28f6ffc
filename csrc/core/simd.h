// Run-time SIMD dispatch. Hot kernels are compiled several times with different
// instruction sets (never tuned to the build machine); the active level picks which copy runs.
// PYLENET_SIMD=scalar|avx2|avx512|avx512:16|avx512:8 in the environment (or set_simd) forces
// a path, which is how the tests check every path the machine supports.
#pragma once

#include <string>
#include <vector>

namespace pylenet::simd {

enum class Level { Scalar = 0, AVX2 = 1, AVX512 = 2 };

const char* name(Level level);
Level parse(const std::string& name);        // throws InvalidArgument on unknown names
std::vector<Level> compiled();               // copies built into this binary
bool cpu_supports(Level level);              // what the processor can run
std::vector<Level> available();              // compiled and supported
Level active();
void set_active(Level level);                // throws InvalidArgument if not available

// Lanes of the AVX-512 level's direct-convolution kernels. They are also compiled 8 lanes
// wide with AVX-512VL (ymm registers, all 32 of them, mask registers for row tails). 0 (the
// default) chooses per shape: 8 lanes where they leave fewer lanes idle than 16 on a CPU that
// splits each 512-bit FMA into two 256-bit halves (AMD Zen 4), where 8-lane FMAs do as much
// arithmetic per cycle (cudnn_lenet's 8- and 24-column rows fill 8 lanes, not 16). 8 or 16
// forces that width (the tests run both).
int lanes512();
void set_lanes512(int lanes);                // 0, 8 or 16; throws InvalidArgument otherwise
bool split_fma512();                         // from CPUID: AMD family 19h with AVX-512

// The whole choice as one name, "avx2" or "avx512:8": what PYLENET_SIMD and set_simd accept
// and get_simd reports (a level, and for avx512 optionally ":8" or ":16").
std::string path_name();
void set_path(const std::string& name);      // throws InvalidArgument on unknown or unsupported names

}  // namespace pylenet::simd

// Calls fn(args...) from the copy compiled for `level`: avx512::fn, avx2::fn or scalar::fn of
// the enclosing namespace (levels not compiled into this build fall back to scalar::).
#if defined(PYLENET_HAVE_AVX512) && defined(PYLENET_HAVE_AVX2)
#define PYL_SIMD_DISPATCH(level, fn, ...)                                  \
  ((level) == ::pylenet::simd::Level::AVX512 ? avx512::fn(__VA_ARGS__)     \
   : (level) == ::pylenet::simd::Level::AVX2 ? avx2::fn(__VA_ARGS__)       \
                                              : scalar::fn(__VA_ARGS__))
#else
#define PYL_SIMD_DISPATCH(level, fn, ...) (static_cast<void>(level), scalar::fn(__VA_ARGS__))
#endif
