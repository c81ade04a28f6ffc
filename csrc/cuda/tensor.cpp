// Device tensors, the per-device default contexts and the stream boundaries (see tensor.h).
#include "cuda/tensor.h"

#include <limits>
#include <utility>

#include "core/error.h"
#include "cuda/check.h"

namespace pylenet::cuda {

size_t dtype_size(DType d) {
  switch (d) {
    case DType::Float32: return 4;
    case DType::Float64: return 8;
    case DType::Int32: return 4;
    case DType::Int64: return 8;
    case DType::UInt8: return 1;
  }
  return 0;
}

const char* dtype_name(DType d) {
  switch (d) {
    case DType::Float32: return "float32";
    case DType::Float64: return "float64";
    case DType::Int32: return "int32";
    case DType::Int64: return "int64";
    case DType::UInt8: return "uint8";
  }
  return "?";
}

const char* dtype_typestr(DType d) {
  switch (d) {
    case DType::Float32: return "<f4";
    case DType::Float64: return "<f8";
    case DType::Int32: return "<i4";
    case DType::Int64: return "<i8";
    case DType::UInt8: return "|u1";
  }
  return "?";
}

bool dtype_from_typestr(const std::string& t, DType* out) {
  // Byte order: '<' little, '|' not applicable, '=' native (little on every CUDA host).
  if (t.size() < 3 || (t[0] != '<' && t[0] != '|' && t[0] != '=')) return false;
  const std::string body = t.substr(1);
  if (body == "f4") *out = DType::Float32;
  else if (body == "f8") *out = DType::Float64;
  else if (body == "i4") *out = DType::Int32;
  else if (body == "i8") *out = DType::Int64;
  else if (body == "u1") *out = DType::UInt8;
  else return false;
  return true;
}

int64_t checked_numel(const char* op, const std::vector<int64_t>& shape, DType dtype) {
  const int64_t limit = std::numeric_limits<int64_t>::max() / static_cast<int64_t>(dtype_size(dtype));
  int64_t n = 1;
  bool zero = false;
  for (int64_t d : shape) {
    PYL_CHECK_ARG(d >= 0, op, ": negative dimension in shape ", TensorDesc(shape).str());
    if (d == 0) zero = true;
    else if (!zero) {
      PYL_CHECK_ARG(n <= limit / d, op, ": shape ", TensorDesc(shape).str(), " of ", dtype_name(dtype),
                    " is too large");
      n *= d;
    }
  }
  return zero ? 0 : n;
}

int64_t DeviceTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape_) n *= d;
  return n;
}

DeviceTensor DeviceTensor::empty(const std::vector<int64_t>& shape, DType dtype, int device) {
  const int64_t n = checked_numel("empty", shape, dtype);
  check_device(device);
  auto buffer = std::make_shared<DeviceBuffer>(device, static_cast<size_t>(n) * dtype_size(dtype));
  DeviceTensor t;
  t.data_ = buffer->data();
  t.storage_ = std::move(buffer);
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.device_ = device;
  t.owned_ = true;
  return t;
}

DeviceTensor DeviceTensor::borrow(void* data, std::vector<int64_t> shape, DType dtype, int device,
                                  std::shared_ptr<void> keep_alive, bool readonly) {
  const int64_t n = checked_numel("borrow", shape, dtype);
  PYL_CHECK_ARG(data || n == 0, "borrow: null data pointer for a non-empty array of shape ",
                TensorDesc(shape).str());
  DeviceTensor t;
  t.data_ = data;
  t.storage_ = std::move(keep_alive);
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  t.owned_ = false;
  t.readonly_ = readonly;
  return t;
}

std::string DeviceTensor::str() const {
  return str_cat("Tensor(shape=", TensorDesc(shape_).str(), ", dtype=", dtype_name(dtype_), ", device=cuda:", device_,
                 owned_ ? "" : ", borrowed", ")");
}

// ---------------------------------------------------------------- default contexts
DefaultContext::DefaultContext(int device) : ctx(device) {
  DeviceGuard guard(device);
  PYL_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
}

namespace {
std::mutex& contexts_mu() {
  static std::mutex* mu = new std::mutex();
  return *mu;
}
// Never destroyed (see tensor.h).
std::vector<DefaultContext*>& contexts() {
  static auto* v = new std::vector<DefaultContext*>();
  return *v;
}
}  // namespace

DefaultContext& default_context(int device) {
  check_device(device);
  std::lock_guard<std::mutex> lock(contexts_mu());
  auto& v = contexts();
  if (static_cast<size_t>(device) >= v.size()) v.resize(static_cast<size_t>(device) + 1, nullptr);
  if (!v[static_cast<size_t>(device)]) v[static_cast<size_t>(device)] = new DefaultContext(device);
  return *v[static_cast<size_t>(device)];
}

DefaultContext* default_context_if_created(int device) {
  std::lock_guard<std::mutex> lock(contexts_mu());
  auto& v = contexts();
  return device >= 0 && static_cast<size_t>(device) < v.size() ? v[static_cast<size_t>(device)] : nullptr;
}

void stream_wait(int device, cudaStream_t waiter, cudaStream_t signaller, cudaEvent_t event) {
  if (waiter == signaller) return;
  DeviceGuard guard(device);
  const cudaError_t err = cudaEventRecord(event, signaller);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    // The usual cause: a stream created on another device than the tensors'.
    fail(ErrorKind::Runtime, "CUDA: cannot order work with stream ", reinterpret_cast<void*>(signaller),
         " on device ", device, " (", cudaGetErrorName(err), ": ", cudaGetErrorString(err),
         "); is the stream on another device than the arrays?");
  }
  PYL_CUDA_CHECK(cudaStreamWaitEvent(waiter, event, 0));
}

cudaStream_t stream_from_handle(uintptr_t handle) {
  if (handle == 0 || handle == 1) return cudaStreamLegacy;
  if (handle == 2) return cudaStreamPerThread;
  return reinterpret_cast<cudaStream_t>(handle);
}

// ---------------------------------------------------------------- copies
void copy_from_host(const DeviceTensor& dst, const void* src) {
  const size_t bytes = dst.nbytes();
  if (bytes == 0) return;
  PYL_CHECK_ARG(!dst.readonly(), "copy_from_host: the destination tensor is read-only");
  DefaultContext& dc = default_context(dst.device());
  DeviceGuard guard(dst.device());
  PYL_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src, bytes, cudaMemcpyHostToDevice, dc.ctx.stream()));
  dc.ctx.synchronize();
}

void copy_to_host(const DeviceTensor& src, void* dst) {
  const size_t bytes = src.nbytes();
  if (bytes == 0) return;
  DefaultContext& dc = default_context(src.device());
  DeviceGuard guard(src.device());
  PYL_CUDA_CHECK(cudaMemcpyAsync(dst, src.data(), bytes, cudaMemcpyDeviceToHost, dc.ctx.stream()));
  dc.ctx.synchronize();
}

DeviceTensor clone(const DeviceTensor& src) {
  DeviceTensor out = DeviceTensor::empty(src.shape(), src.dtype(), src.device());
  if (out.nbytes() == 0) return out;
  DefaultContext& dc = default_context(src.device());
  DeviceGuard guard(src.device());
  PYL_CUDA_CHECK(cudaMemcpyAsync(out.data(), src.data(), src.nbytes(), cudaMemcpyDeviceToDevice, dc.ctx.stream()));
  return out;
}

}  // namespace pylenet::cuda
