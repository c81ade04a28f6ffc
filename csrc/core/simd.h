// Run-time SIMD dispatch. Hot kernels are compiled several times with different
// instruction sets (never tuned to the build machine); the active level picks which copy runs.
// PYLENET_SIMD=scalar|avx2|avx512 in the environment (or set_simd) forces a level,
// which is how the tests check every path the machine supports.
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
