#include "core/simd.h"

#include <atomic>
#include <cstdlib>

#include "core/error.h"

namespace pylenet::simd {
namespace {

Level best_available() {
  auto levels = available();
  return levels.back();
}

Level initial_level() {
  const char* env = std::getenv("PYLENET_SIMD");
  if (env && *env) {
    Level want = parse(env);
    if (!cpu_supports(want))
      fail(ErrorKind::InvalidArgument, "PYLENET_SIMD=", env, " is not supported by this processor or build");
    return want;
  }
  return best_available();
}

std::atomic<int>& active_slot() {
  static std::atomic<int> slot{static_cast<int>(initial_level())};
  return slot;
}

}  // namespace

const char* name(Level level) {
  switch (level) {
    case Level::Scalar: return "scalar";
    case Level::AVX2: return "avx2";
    case Level::AVX512: return "avx512";
  }
  return "?";
}

Level parse(const std::string& s) {
  if (s == "scalar") return Level::Scalar;
  if (s == "avx2") return Level::AVX2;
  if (s == "avx512") return Level::AVX512;
  fail(ErrorKind::InvalidArgument, "unknown SIMD level '", s, "' (expected scalar, avx2 or avx512)");
}

std::vector<Level> compiled() {
  std::vector<Level> v{Level::Scalar};
#ifdef PYLENET_HAVE_AVX2
  v.push_back(Level::AVX2);
#endif
#ifdef PYLENET_HAVE_AVX512
  v.push_back(Level::AVX512);
#endif
  return v;
}

bool cpu_supports(Level level) {
  bool compiled_in = false;
  for (Level l : compiled()) compiled_in |= (l == level);
  if (!compiled_in) return false;
  switch (level) {
    case Level::Scalar: return true;
#if defined(__x86_64__) || defined(__i386__)
    case Level::AVX2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Level::AVX512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx2") &&
             __builtin_cpu_supports("fma");
#else
    default: return false;
#endif
  }
  return false;
}

std::vector<Level> available() {
  std::vector<Level> v;
  for (Level l : compiled())
    if (cpu_supports(l)) v.push_back(l);
  return v;
}

Level active() { return static_cast<Level>(active_slot().load()); }

void set_active(Level level) {
  if (!cpu_supports(level))
    fail(ErrorKind::InvalidArgument, "SIMD level '", name(level), "' is not available on this machine");
  active_slot().store(static_cast<int>(level));
}

}  // namespace pylenet::simd
