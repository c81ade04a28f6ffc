// One exception type for the whole C++ side. The bindings map its kind onto a Python
// exception: InvalidArgument -> ValueError, OutOfMemory -> MemoryError,
// Runtime -> RuntimeError. Nothing in pylenet calls exit() or abort().
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace pylenet {

enum class ErrorKind { InvalidArgument, OutOfMemory, Runtime };

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& msg) : std::runtime_error(msg), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

template <class... Args>
std::string str_cat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}

template <class... Args>
[[noreturn]] void fail(ErrorKind kind, Args&&... args) {
  throw Error(kind, str_cat(std::forward<Args>(args)...));
}

}  // namespace pylenet

// Argument checks: the message should name the op and the offending shapes.
#define PYL_CHECK_ARG(cond, ...) \
  do {                           \
    if (!(cond)) ::pylenet::fail(::pylenet::ErrorKind::InvalidArgument, __VA_ARGS__); \
  } while (0)

// Internal invariants: reaching one is a pylenet bug, reported with file and line.
#define PYL_CHECK_INTERNAL(cond)                                                      \
  do {                                                                                \
    if (!(cond))                                                                      \
      ::pylenet::fail(::pylenet::ErrorKind::Runtime, "internal error: ", #cond, " at ", \
                      __FILE__, ":", __LINE__);                                       \
  } while (0)
