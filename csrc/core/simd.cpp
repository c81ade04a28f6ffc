#include "core/simd.h"

#include <atomic>
#include <cstdlib>
#include <utility>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "core/error.h"

namespace pylenet::simd {
namespace {

Level best_available() {
  auto levels = available();
  return levels.back();
}

// A path name split into its level and its AVX-512 lanes ("avx512:8" -> AVX512, 8).
std::pair<Level, int> parse_path(const std::string& s) {
  const size_t colon = s.find(':');
  const Level level = parse(s.substr(0, colon));
  if (colon == std::string::npos) return {level, 0};
  const std::string lanes = s.substr(colon + 1);
  if (level != Level::AVX512 || (lanes != "8" && lanes != "16"))
    fail(ErrorKind::InvalidArgument, "unknown SIMD path '", s, "' (only avx512 takes a width: avx512:8 or avx512:16)");
  return {level, lanes == "8" ? 8 : 16};
}

std::pair<Level, int> read_env_path() {
  const char* env = std::getenv("PYLENET_SIMD");
  if (env && *env) {
    const auto want = parse_path(env);
    if (!cpu_supports(want.first))
      fail(ErrorKind::InvalidArgument, "PYLENET_SIMD=", env, " is not supported by this processor or build");
    return want;
  }
  return {best_available(), 0};
}

const std::pair<Level, int>& initial_path() {
  static const std::pair<Level, int> path = read_env_path();  // the environment, read once
  return path;
}

std::atomic<int>& active_slot() {
  static std::atomic<int> slot{static_cast<int>(initial_path().first)};
  return slot;
}

std::atomic<int>& lanes_slot() {
  static std::atomic<int> slot{initial_path().second};
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
  fail(ErrorKind::InvalidArgument, "unknown SIMD level '", s, "' (expected scalar, avx2, avx512, avx512:16 or avx512:8)");
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

int lanes512() { return lanes_slot().load(); }

void set_lanes512(int lanes) {
  if (lanes != 0 && lanes != 8 && lanes != 16)
    fail(ErrorKind::InvalidArgument, "AVX-512 lanes must be 0 (per shape), 8 or 16, got ", lanes);
  lanes_slot().store(lanes);
}

bool split_fma512() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool split = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid(0, &a, &b, &c, &d)) return false;
    const bool amd = b == 0x68747541 && d == 0x69746e65 && c == 0x444d4163;  // "AuthenticAMD"
    if (!amd || !__get_cpuid(1, &a, &b, &c, &d)) return false;
    const unsigned base = (a >> 8) & 0xf, family = base == 0xf ? base + ((a >> 20) & 0xff) : base;
    return family == 0x19 && __builtin_cpu_supports("avx512f");  // Zen 4; Zen 5 (1Ah) has full-width units
  }();
  return split;
#else
  return false;
#endif
}

std::string path_name() {
  std::string n = name(active());
  if (active() == Level::AVX512 && lanes512() != 0) n += ":" + std::to_string(lanes512());
  return n;
}

void set_path(const std::string& s) {
  const auto want = parse_path(s);
  set_active(want.first);
  set_lanes512(want.second);
}

}  // namespace pylenet::simd
