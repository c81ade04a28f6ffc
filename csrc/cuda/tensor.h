// Device tensors: a shape, a dtype, a device and a pointer to contiguous row-major device
// memory, either owned (a block of the caching allocator, shared so that views and exports
// keep it alive) or borrowed from another library (CuPy, PyTorch, ...) and kept alive by an
// opaque keep-alive that the bindings fill in (a Python reference).
//
// Streams: a device tensor belongs to its device's default context (default_context()), the
// one stream that pylenet's functional ops and copies run on. Its memory goes back to the
// allocator when the last owner drops it and is handed out again in that stream's order
// (see allocator.h). Work that another library queued on another stream is ordered with
// ours through stream_wait() at the boundaries: before an op reads a borrowed array, and
// before a consumer reads an exported one.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cuda/context.h"
#include "ops/tensor.h"

namespace pylenet::cuda {

enum class DType { Float32, Float64, Int32, Int64, UInt8 };
size_t dtype_size(DType d);
const char* dtype_name(DType d);     // NumPy's names: "float32", "int64", ...
const char* dtype_typestr(DType d);  // __cuda_array_interface__ / NumPy typestr: "<f4", "<i8", "|u1", ...
// Parses a typestr ("<f4", "|u1", also "=f4" on this little-endian host); false if unsupported.
bool dtype_from_typestr(const std::string& typestr, DType* out);

class DeviceTensor {
 public:
  DeviceTensor() = default;

  // A new, uninitialised tensor from the device's caching allocator. Checks the device id
  // and the shape (InvalidArgument for a negative dimension or an impossible size;
  // OutOfMemory, naming the bytes, when the device has too little memory).
  static DeviceTensor empty(const std::vector<int64_t>& shape, DType dtype, int device);
  // A view of memory owned elsewhere: `keep_alive` holds its owner for as long as this
  // tensor, its copies and its exports live. `data` may be null only when the tensor is empty.
  static DeviceTensor borrow(void* data, std::vector<int64_t> shape, DType dtype, int device,
                             std::shared_ptr<void> keep_alive, bool readonly);

  const std::vector<int64_t>& shape() const { return shape_; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t numel() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  int device() const { return device_; }
  void* data() const { return data_; }
  template <class T>
  T* data_as() const { return static_cast<T*>(data_); }
  bool owns_memory() const { return owned_; }
  bool readonly() const { return readonly_; }
  // Whatever keeps the memory alive; copying it extends the memory's life (DLPack exports).
  const std::shared_ptr<void>& storage() const { return storage_; }
  TensorDesc desc() const { return TensorDesc(shape_); }
  std::string str() const;  // "Tensor(shape=(2, 3), dtype=float32, device=cuda:0)"

 private:
  std::shared_ptr<void> storage_;
  void* data_ = nullptr;
  std::vector<int64_t> shape_;
  DType dtype_ = DType::Float32;
  int device_ = 0;
  bool owned_ = false;
  bool readonly_ = false;
};

// Number of elements of `shape`; InvalidArgument naming `op` when a dimension is negative or
// the size in bytes does not fit in int64.
int64_t checked_numel(const char* op, const std::vector<int64_t>& shape, DType dtype);

// ---------------------------------------------------------------- the default contexts
// One CudaContext per device for everything that is not a compiled network: functional
// ops, copies, exports. Created on first use and never destroyed (see allocator.h: CUDA may
// be torn down before static destructors run). A CudaContext is not thread-safe, and the
// bindings release the GIL, so every user of `ctx`'s workspace, scratch, algorithm cache or
// `event` holds `mu` (take it only after releasing the GIL, and never take the GIL under it).
struct DefaultContext {
  explicit DefaultContext(int device);
  std::mutex mu;
  CudaContext ctx;
  cudaEvent_t event = nullptr;  // for stream_wait(); no timing
};
// Checks the id (InvalidArgument; Runtime without a GPU) and creates the context on first use.
DefaultContext& default_context(int device);
// The context if it was created already, else null (creates nothing).
DefaultContext* default_context_if_created(int device);

// Makes `waiter` wait, on the device and without blocking the host, for the work queued on
// `signaller` so far: records `event` on signaller, then cudaStreamWaitEvent. Both streams
// must be usable from `device`, which is made current for the calls; the caller owns
// `event` for the duration (DefaultContext::mu). Nothing is done when the streams are equal.
void stream_wait(int device, cudaStream_t waiter, cudaStream_t signaller, cudaEvent_t event);

// A stream handle from Python, in the convention of __cuda_array_interface__ and DLPack:
// 1 is the legacy default stream, 2 the per-thread default stream, anything else a
// cudaStream_t. 0 (ambiguous in those protocols) means the legacy default stream here, as
// it does for a raw cudaStream_t in code built without per-thread default streams (CuPy's
// null stream reports pointer 0).
cudaStream_t stream_from_handle(uintptr_t handle);

// ---------------------------------------------------------------- copies
// Host -> device, `dst.nbytes()` bytes from `src`, on the default context's stream; returns
// once the copy has completed (src may be pinned memory that the caller frees next).
void copy_from_host(const DeviceTensor& dst, const void* src);
// Device -> host, `src.nbytes()` bytes into `dst`, on the default context's stream, then
// synchronises it: the host sees everything queued before.
void copy_to_host(const DeviceTensor& src, void* dst);
// A new owned tensor with the same contents, copied on the default context's stream.
DeviceTensor clone(const DeviceTensor& src);

}  // namespace pylenet::cuda
