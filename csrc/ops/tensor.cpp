#include "ops/tensor.h"

#include <limits>

#include "core/error.h"

namespace pylenet {

int64_t TensorDesc::numel() const {
  int64_t n = 1;
  for (int64_t d : dims_) n *= d;
  return n;
}

std::string TensorDesc::str() const {
  std::string s = "(";
  for (size_t i = 0; i < dims_.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(dims_[i]);
  }
  if (dims_.size() == 1) s += ",";
  return s + ")";
}

void TensorDesc::check(const char* op, const char* what, int rank, const char* layout) const {
  if (rank >= 0 && this->rank() != rank)
    fail(ErrorKind::InvalidArgument, op, ": ", what, " must be ", rank, "-D", *layout ? " " : "", layout,
         ", got shape ", str());
  int64_t n = 1;
  for (int64_t d : dims_) {
    if (d <= 0)
      fail(ErrorKind::InvalidArgument, op, ": ", what, " has an empty or negative dimension, shape ", str());
    if (d > kMaxExtent)
      fail(ErrorKind::InvalidArgument, op, ": ", what, " shape ", str(), " has a dimension above ", kMaxExtent);
    // 2^40 floats (4 TiB) is far beyond any real tensor: treat it as corrupt input.
    if (n > (int64_t(1) << 40) / d)
      fail(ErrorKind::InvalidArgument, op, ": ", what, " shape ", str(), " is too large");
    n *= d;
  }
}

void check_extent(const char* op, const char* what, const Pair& p, int64_t lo) {
  if (p.h < lo || p.w < lo || p.h > kMaxExtent || p.w > kMaxExtent)
    fail(ErrorKind::InvalidArgument, op, ": ", what, " must be between ", lo, " and ", kMaxExtent, ", got (", p.h,
         ", ", p.w, ")");
}

FilterDesc FilterDesc::from(const TensorDesc& t, const char* op) {
  t.check(op, "weight", 4, "(out_channels, in_channels, kh, kw)");
  return FilterDesc{t.dim(0), t.dim(1), t.dim(2), t.dim(3)};
}

}  // namespace pylenet
