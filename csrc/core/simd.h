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
