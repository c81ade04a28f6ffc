// Tensor descriptors, cuDNN style: a descriptor says what a buffer holds (its dims);
// the buffer itself is a plain pointer owned elsewhere. All tensors are float32,
// contiguous, NCHW. Descriptors check themselves, so an op can trust what it is given.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

namespace pylenet {

class TensorDesc {
 public:
  TensorDesc() = default;
  TensorDesc(std::initializer_list<int64_t> dims) : dims_(dims) {}
  explicit TensorDesc(std::vector<int64_t> dims) : dims_(std::move(dims)) {}

  int rank() const { return static_cast<int>(dims_.size()); }
  int64_t dim(int i) const { return dims_.at(static_cast<size_t>(i)); }
  const std::vector<int64_t>& dims() const { return dims_; }
  int64_t numel() const;
  std::string str() const;  // "(2, 3, 28, 28)"
  bool operator==(const TensorDesc& o) const { return dims_ == o.dims_; }
  bool operator!=(const TensorDesc& o) const { return !(*this == o); }

  // NCHW accessors (rank 4); for rank 2 (N, F), n() and c() are the two dims.
  int64_t n() const { return dims_[0]; }
  int64_t c() const { return dims_[1]; }
  int64_t h() const { return dims_[2]; }
  int64_t w() const { return dims_[3]; }

  // Throws InvalidArgument "<op>: <what> must be <rank>-D <layout>, got <shape>" when the
  // rank is wrong (rank < 0 accepts any), or when any dimension is zero, negative or the
  // element count overflows.
  void check(const char* op, const char* what, int rank, const char* layout = "") const;

 private:
  std::vector<int64_t> dims_;
};

// Filter (convolution weight) descriptor: (out_c, in_c, kh, kw), as PyTorch stores it.
struct FilterDesc {
  int64_t k = 0, c = 0, r = 0, s = 0;
  static FilterDesc from(const TensorDesc& t, const char* op);  // checks rank 4 and positivity
  TensorDesc tensor() const { return TensorDesc{k, c, r, s}; }
  std::string str() const { return tensor().str(); }
};

// Per-axis pair for stride, padding and kernel sizes.
struct Pair {
  int64_t h = 0, w = 0;
};

// The bound on every size argument (kernel, stride, padding) and tensor dimension that
// enters shape arithmetic: with all of them below 2^31, sums and products such as
// h + 2 * pad, oh * stride or kh * kw cannot overflow int64, and CUDA's 32-bit index
// arithmetic stays exact. Real LeNet shapes are many orders of magnitude smaller.
constexpr int64_t kMaxExtent = (int64_t(1) << 31) - 1;

// The one check of a size argument pair: throws InvalidArgument
// "<op>: <what> must be between <lo> and 2147483647, got (h, w)" otherwise.
void check_extent(const char* op, const char* what, const Pair& p, int64_t lo);

}  // namespace pylenet
