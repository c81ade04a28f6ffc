// pybind11 bindings of the CUDA backend, the submodule pylenet._C.cuda: device tensors and
// their exchange with other libraries (__cuda_array_interface__ v3 and DLPack, both ways),
// every functional op on device tensors, memory statistics and device queries.
//
// The ops mirror the CPU bindings of module.cpp (same names, same arguments without the
// handle, same shape checks through the shared descriptors of csrc/ops/, so the same
// ValueErrors), plus an optional `stream`: the caller's stream handle (an int, e.g. CuPy's
// current stream). Each op runs on its device's default context (cuda/tensor.h) with the
// GIL released and the context locked; with a `stream`, the context's stream first waits
// for the work queued on it, and it then waits for the op, so the caller may use inputs and
// outputs on its own stream at once. Outputs are new tensors owned by pylenet.
#include <Python.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cuda_runtime_api.h>

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/error.h"
#include "cuda/allocator.h"
#include "cuda/check.h"
#include "cuda/context.h"
#include "cuda/kernels.h"
#include "cuda/tensor.h"
#include "ops/activation.h"
#include "ops/batchnorm.h"
#include "ops/dropout.h"
#include "ops/elementwise.h"
#include "ops/loss.h"
#include "ops/softmax.h"
#include "ops/conv.h"
#include "ops/linear.h"
#include "ops/optim.h"
#include "ops/pool.h"
#include "python/convert.h"

namespace py = pybind11;
using namespace pylenet;
using namespace pylenet::python;
using cuda::DeviceTensor;
using cuda::DType;

namespace {

// ---------------------------------------------------------------- DLPack (public spec, v1.0)
// The C structs of dlpack.h, written out: the ABI is fixed by the spec.
namespace dlpack {
constexpr int32_t kDLCUDA = 2;
constexpr uint8_t kDLInt = 0, kDLUInt = 1, kDLFloat = 2;
constexpr uint64_t kFlagReadOnly = 1ull << 0, kFlagIsCopied = 1ull << 1;
struct DLDevice {
  int32_t device_type;  // DLDeviceType, an int-sized C enum
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;  // in elements; NULL means compact row-major
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};
struct DLPackVersion {
  uint32_t major;
  uint32_t minor;
};
struct DLManagedTensorVersioned {
  DLPackVersion version;
  void* manager_ctx;
  void (*deleter)(DLManagedTensorVersioned* self);
  uint64_t flags;
  DLTensor dl_tensor;
};
constexpr const char* kCapsule = "dltensor";
constexpr const char* kUsedCapsule = "used_dltensor";
constexpr const char* kCapsuleVersioned = "dltensor_versioned";
constexpr const char* kUsedCapsuleVersioned = "used_dltensor_versioned";
}  // namespace dlpack

using Shape = std::vector<int64_t>;
using OptTensor = std::optional<DeviceTensor>;

// ---------------------------------------------------------------- small conversions
[[noreturn]] void type_error(const std::string& msg) { throw py::type_error(msg); }
[[noreturn]] void buffer_error(const std::string& msg) {
  PyErr_SetString(PyExc_BufferError, msg.c_str());
  throw py::error_already_set();
}


DType dtype_from_name(const std::string& name) {
  for (DType d : {DType::Float32, DType::Float64, DType::Int32, DType::Int64, DType::UInt8})
    if (name == cuda::dtype_name(d)) return d;
  type_error("pylenet.cuda: unsupported dtype '" + name + "' (supported: float32, float64, int32, int64, uint8)");
}
py::dtype numpy_dtype(DType d) { return py::dtype(cuda::dtype_name(d)); }

// A Python int as a stream handle; None -> nullopt. `what` names the argument in errors.
std::optional<int64_t> stream_int(const py::object& s, const char* what) {
  if (s.is_none()) return std::nullopt;
  if (!PyLong_Check(s.ptr()) || PyBool_Check(s.ptr()))
    type_error(str_cat(what, " must be an int (a stream handle) or None, got ", std::string(py::str(py::type::of(s)))));
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(s.ptr(), &overflow);
  if (overflow > 0) {  // a pointer above 2^63: legal, if unusual
    const unsigned long long u = PyLong_AsUnsignedLongLong(s.ptr());
    if (PyErr_Occurred()) throw py::error_already_set();
    return static_cast<int64_t>(u);
  }
  if (overflow < 0 || v < -1)
    throw py::value_error(str_cat(what, ": invalid stream handle ", std::string(py::str(s))));
  return v;
}

// The caller's stream for an op: None, or a handle (0 and 1: legacy default stream, 2: the
// per-thread default stream, else a cudaStream_t).
struct ExtStream {
  bool set = false;
  cudaStream_t stream = nullptr;
};
ExtStream ext_stream(const py::object& s) {
  const auto v = stream_int(s, "stream");
  if (!v) return {};
  if (*v < 0) throw py::value_error("stream: expected a stream handle >= 0 or None");
  return ExtStream{true, cuda::stream_from_handle(static_cast<uintptr_t>(*v))};
}

// ---------------------------------------------------------------- lifetime of borrowed memory
bool interpreter_alive() {
  if (!Py_IsInitialized()) return false;
#if PY_VERSION_HEX >= 0x030D0000
  return !Py_IsFinalizing();
#else
  return !_Py_IsFinalizing();
#endif
}

// Holds a Python object for a borrowed tensor. The last copy may be dropped by a thread that
// does not hold the GIL (a DLPack consumer's deleter), so the deleter takes it; after the
// interpreter is gone the reference is leaked rather than touched.
std::shared_ptr<void> keep_alive(py::object obj) {
  return std::shared_ptr<void>(new py::object(std::move(obj)), [](void* p) {
    auto* o = static_cast<py::object*>(p);
    if (!interpreter_alive()) {
      (void)o->release();
      delete o;
      return;
    }
    py::gil_scoped_acquire gil;
    delete o;
  });
}

// ---------------------------------------------------------------- running an op
// Runs fn(CudaContext&) on `device`'s default context: GIL released, context locked, device
// current, ordered after and before `ext` (see the top of the file). On an exception the
// caller's stream still waits for whatever was queued, since it may reuse the inputs.
template <class Fn>
auto run_on_device(int device, const ExtStream& ext, Fn&& fn) -> decltype(fn(std::declval<cuda::CudaContext&>())) {
  py::gil_scoped_release nogil;
  cuda::DefaultContext& dc = cuda::default_context(device);
  std::lock_guard<std::mutex> lock(dc.mu);
  cuda::DeviceGuard guard(device);
  if (ext.set) cuda::stream_wait(device, dc.ctx.stream(), ext.stream, dc.event);
  auto release_caller = [&] {
    if (ext.set) cuda::stream_wait(device, ext.stream, dc.ctx.stream(), dc.event);
  };
  try {
    if constexpr (std::is_void_v<decltype(fn(dc.ctx))>) {
      fn(dc.ctx);
      release_caller();
    } else {
      auto result = fn(dc.ctx);
      release_caller();
      return result;
    }
  } catch (...) {
    try {
      release_caller();
    } catch (...) {
      // The op's own error is the one to report.
    }
    throw;
  }
}

// ---------------------------------------------------------------- argument checks
void require_dtype(const char* op, const char* name, const DeviceTensor& t, DType want) {
  if (t.dtype() != want)
    type_error(str_cat(op, ": ", name, " must be ", cuda::dtype_name(want), ", got ", cuda::dtype_name(t.dtype()),
                       " (", t.str(), ")"));
}
void require_f32(const char* op, const char* name, const DeviceTensor& t) { require_dtype(op, name, t, DType::Float32); }
void require_writable(const char* op, const char* name, const DeviceTensor& t) {
  if (t.readonly())
    type_error(str_cat(op, ": ", name, " is updated in place and must be writable, got a read-only device array"));
}

// The one device of all given tensors (null entries skipped); ValueError if they differ.
int common_device(const char* op, std::initializer_list<std::pair<const char*, const DeviceTensor*>> ts) {
  const char* first_name = nullptr;
  int device = -1;
  for (auto& [name, t] : ts) {
    if (!t) continue;
    if (!first_name) {
      first_name = name;
      device = t->device();
    } else if (t->device() != device) {
      fail(ErrorKind::InvalidArgument, op, ": ", first_name, " is on cuda:", device, " but ", name, " is on cuda:",
           t->device(), "; all arrays of one call must be on the same device");
    }
  }
  return device;
}

const float* fptr(const DeviceTensor& t) { return t.data_as<const float>(); }
float* fptr_mut(const DeviceTensor& t) { return t.data_as<float>(); }
const float* fptr_or_null(const OptTensor& t) { return t ? t->data_as<const float>() : nullptr; }
DeviceTensor new_f32(const TensorDesc& d, int device) { return DeviceTensor::empty(d.dims(), DType::Float32, device); }

// ---------------------------------------------------------------- the ops
// Each mirrors the CPU binding of the same name: the arguments' dtypes and device are
// marshalled here; shapes, values and algorithms are checked by the one op layer
// (csrc/ops/*.cpp), called with a CUDA handle on the device's default context. A namespace of
// their own: the op layer's functions of the same names are visible through `using namespace
// pylenet`.
namespace device_ops {

// Runs fn(Handle&) on `device` (see run_on_device) with a handle bound to its default context.
template <class Fn>
auto with_handle(int device, const py::object& stream, Fn&& fn) {
  return run_on_device(device, ext_stream(stream), [&](cuda::CudaContext& ctx) {
    Handle h(ctx);
    return fn(h);
  });
}

DeviceTensor conv2d_forward(const DeviceTensor& x, const DeviceTensor& w, const OptTensor& b, const PairT& stride,
                            const PairT& pad, const std::string& algo, const py::object& stream) {
  const char* op = "conv2d";
  require_f32(op, "input", x);
  require_f32(op, "weight", w);
  if (b) require_f32(op, "bias", *b);
  const int dev = common_device(op, {{"input", &x}, {"weight", &w}, {"bias", b ? &*b : nullptr}});
  const ConvAlgo a = conv_algo_from_name(algo);
  const TensorDesc yd = ConvShape::make(op, x.desc(), w.desc(), conv_desc(stride, pad)).y_desc();
  return with_handle(dev, stream, [&](Handle& h) {
    DeviceTensor y = new_f32(yd, dev);
    pylenet::conv_forward(h, a, x.desc(), fptr(x), w.desc(), fptr(w), b ? b->desc() : TensorDesc(), fptr_or_null(b),
                          conv_desc(stride, pad), yd, fptr_mut(y));
    return y;
  });
}

DeviceTensor conv2d_backward_data(const DeviceTensor& w, const DeviceTensor& dy, const Shape& x_shape,
                                  const PairT& stride, const PairT& pad, const std::string& algo,
                                  const py::object& stream) {
  const char* op = "conv2d_backward";
  require_f32(op, "weight", w);
  require_f32(op, "grad_output", dy);
  const int dev = common_device(op, {{"weight", &w}, {"grad_output", &dy}});
  const ConvAlgo a = conv_algo_from_name(algo);
  const TensorDesc xd(x_shape);
  ConvShape::make(op, xd, w.desc(), conv_desc(stride, pad));
  return with_handle(dev, stream, [&](Handle& h) {
    DeviceTensor dx = new_f32(xd, dev);
    pylenet::conv_backward_data(h, a, w.desc(), fptr(w), dy.desc(), fptr(dy), conv_desc(stride, pad), xd,
                                fptr_mut(dx));
    return dx;
  });
}

DeviceTensor conv2d_backward_filter(const DeviceTensor& x, const DeviceTensor& dy, const Shape& w_shape,
                                    const PairT& stride, const PairT& pad, const std::string& algo,
                                    const py::object& stream) {
  const char* op = "conv2d_backward";
  require_f32(op, "input", x);
  require_f32(op, "grad_output", dy);
  const int dev = common_device(op, {{"input", &x}, {"grad_output", &dy}});
  const ConvAlgo a = conv_algo_from_name(algo);
  const TensorDesc wd(w_shape);
  ConvShape::make(op, x.desc(), wd, conv_desc(stride, pad));
  return with_handle(dev, stream, [&](Handle& h) {
    DeviceTensor dw = new_f32(wd, dev);
    pylenet::conv_backward_filter(h, a, x.desc(), fptr(x), dy.desc(), fptr(dy), conv_desc(stride, pad), wd,
                                  fptr_mut(dw));
    return dw;
  });
}

DeviceTensor conv2d_backward_bias(const DeviceTensor& dy, const py::object& stream) {
  const char* op = "conv2d_backward";
  require_f32(op, "grad_output", dy);
  dy.desc().check(op, "grad_output", 4, "(N, K, OH, OW)");
  const TensorDesc dbd{dy.desc().c()};
  const int dev = dy.device();
  return with_handle(dev, stream, [&](Handle& h) {
    DeviceTensor db = new_f32(dbd, dev);
    pylenet::conv_backward_bias(h, dy.desc(), fptr(dy), dbd, fptr_mut(db));
    return db;
  });
}

py::list conv2d_find_algorithms(const std::string& pass, const DeviceTensor& x, const DeviceTensor& w,
                                const PairT& stride, const PairT& pad, const py::object& stream) {
  const char* op = "conv2d";
  require_f32(op, "input", x);
  require_f32(op, "weight", w);
  const int dev = common_device(op, {{"input", &x}, {"weight", &w}});
  const ConvShape s = ConvShape::make(op, x.desc(), w.desc(), conv_desc(stride, pad));
  const ConvPass p = pass_of(pass);
  const TensorDesc out_d = p == ConvPass::Forward ? s.y_desc() : p == ConvPass::BackwardData ? s.x_desc() : s.w_desc();
  const auto perf = with_handle(dev, stream, [&](Handle& h) {
    // dy of ones, as the CPU binding measures with.
    DeviceTensor dy = new_f32(s.y_desc(), dev);
    const std::vector<float> ones(static_cast<size_t>(dy.numel()), 1.0f);
    cuda::copy_from_host(dy, ones.data());
    DeviceTensor out = new_f32(out_d, dev);
    return pylenet::conv_find_algorithms(h, p, s, fptr(x), fptr(w), fptr(dy), fptr_mut(out));
  });
  py::list result;
  for (auto& r : perf) result.append(py::make_tuple(conv_algo_name(r.algo), r.seconds, r.workspace_bytes));
  return result;
}

DeviceTensor pool2d_forward(const std::string& mode, const DeviceTensor& x, const PairT& k, const PairT& st,
                            const PairT& p, const py::object& stream) {
  const PoolDesc pd = pool_desc(mode, k, st, p);
  const char* op = pool_op_name(pd.mode, false);
  require_f32(op, "input", x);
  const TensorDesc yd = PoolShape::make(op, x.desc(), pd).y_desc();
  const int dev = x.device();
  return with_handle(dev, stream, [&](Handle& h) {
    DeviceTensor y = new_f32(yd, dev);
    pylenet::pool_forward(h, pd, x.desc(), fptr(x), yd, fptr_mut(y));
    return y;
  });
}

DeviceTensor pool2d_backward(const std::string& mode, const DeviceTensor& x, const DeviceTensor& dy, const PairT& k,
                             const PairT& st, const PairT& p, const py::object& stream) {
  const PoolDesc pd = pool_desc(mode, k, st, p);
  const char* op = pool_op_name(pd.mode, true);
  require_f32(op, "input", x);
  require_f32(op, "grad_output", dy);
  const int dev = common_device(op, {{"input", &x}, {"grad_output", &dy}});
  return with_handle(dev, stream, [&](Handle& h) {
    DeviceTensor dx = new_f32(x.desc(), dev);
    pylenet::pool_backward(h, pd, x.desc(), fptr(x), dy.desc(), fptr(dy), x.desc(), fptr_mut(dx));
    return dx;
  });
}

DeviceTensor linear_forward(const DeviceTensor& x, const DeviceTensor& w, const OptTensor& b,
                            const py::object& stream) {
  const char* op = "linear";
  require_f32(op, "input", x);
  require_f32(op, "weight", w);
  if (b) require_f32(op, "bias", *b);
  const int dev = common_device(op, {{"input", &x}, {"weight", &w}, {"bias", b ? &*b : nullptr}});
  const TensorDesc yd = LinearShape::make(op, x.desc(), w.desc()).y_desc();
  return with_handle(dev, stream, [&](Handle& h) {
    DeviceTensor y = new_f32(yd, dev);
    pylenet::linear_forward(h, x.desc(), fptr(x), w.desc(), fptr(w), b ? b->desc() : TensorDesc(), fptr_or_null(b),
                            yd, fptr_mut(y));
    return y;
  });
}

DeviceTensor linear_backward_data(const DeviceTensor& dy, const DeviceTensor& w, const Shape& x_shape,
                                  const py::object& stream) {
  const char* op = "linear_backward";
  require_f32(op, "grad_output", dy);
  require_f32(op, "weight", w);
  const int dev = common_device(op, {{"grad_output", &dy}, {"weight", &w}});
  const TensorDesc xd(x_shape);
  LinearShape::make(op, xd, w.desc());
  return with_handle(dev, stream, [&](Handle& h) {
    DeviceTensor dx = new_f32(xd, dev);
    pylenet::linear_backward_data(h, dy.desc(), fptr(dy), w.desc(), fptr(w), xd, fptr_mut(dx));
    return dx;
  });
}

DeviceTensor linear_backward_weight(const DeviceTensor& dy, const DeviceTensor& x, const Shape& w_shape,
                                    const py::object& stream) {
  const char* op = "linear_backward";
  require_f32(op, "grad_output", dy);
  require_f32(op, "input", x);
  const int dev = common_device(op, {{"grad_output", &dy}, {"input", &x}});
  const TensorDesc wd(w_shape);
  LinearShape::make(op, x.desc(), wd);
  return with_handle(dev, stream, [&](Handle& h) {
    DeviceTensor dw = new_f32(wd, dev);
    pylenet::linear_backward_weight(h, dy.desc(), fptr(dy), x.desc(), fptr(x), wd, fptr_mut(dw));
    return dw;
  });
}

DeviceTensor linear_backward_bias(const DeviceTensor& dy, const py::object& stream) {
  const char* op = "linear_backward";
  require_f32(op, "grad_output", dy);
  dy.desc().check(op, "grad_output", 2, "(N, out_features)");
  const TensorDesc dbd{dy.desc().dim(1)};
  const int dev = dy.device();
  return with_handle(dev, stream, [&](Handle& h) {
    DeviceTensor db = new_f32(dbd, dev);
    pylenet::linear_backward_bias(h, dy.desc(), fptr(dy), dbd, fptr_mut(db));
    return db;
  });
}

DeviceTensor activation_forward(const std::string& name, const DeviceTensor& x, float slope,
                                const py::object& stream) {
  const Activation a = activation_of(name);
  require_f32(activation_name(a), "input", x);
  const int dev = x.device();
  return with_handle(dev, stream, [&](Handle& h) {
    DeviceTensor y = new_f32(x.desc(), dev);
    pylenet::activation_forward(h, a, x.desc(), fptr(x), fptr_mut(y), slope);
    return y;
  });
}

DeviceTensor activation_backward(const std::string& name, const DeviceTensor& y, const DeviceTensor& dy, float slope,
                                 const py::object& stream) {
  const Activation a = activation_of(name);
  const std::string op = str_cat(activation_name(a), "_backward");
  require_f32(op.c_str(), "input", y);
  require_f32(op.c_str(), "grad_output", dy);
  const int dev = common_device(op.c_str(), {{"input", &y}, {"grad_output", &dy}});
  PYL_CHECK_ARG(y.desc() == dy.desc(), name, "_backward: grad_output shape ", dy.desc().str(),
                " differs from the input shape ", y.desc().str());
  return with_handle(dev, stream, [&](Handle& h) {
    DeviceTensor dx = new_f32(y.desc(), dev);
    pylenet::activation_backward(h, a, y.desc(), fptr(y), fptr(dy), fptr_mut(dx), slope);
    return dx;
  });
}

DeviceTensor add(const DeviceTensor& a, const DeviceTensor& b, const py::object& stream) {
  require_f32("add", "a", a);
  require_f32("add", "b", b);
  const int dev = common_device("add", {{"a", &a}, {"b", &b}});
  PYL_CHECK_ARG(a.desc() == b.desc(), "add: the operands have different shapes, ", a.desc().str(), " and ",
                b.desc().str(), " (no broadcasting)");
  a.desc().check("add", "input", -1);
  return with_handle(dev, stream, [&](Handle& h) {
    DeviceTensor y = new_f32(a.desc(), dev);
    pylenet::add_run(h, a.numel(), fptr(a), fptr(b), fptr_mut(y));
    return y;
  });
}

DeviceTensor dropout(const DeviceTensor& x, double p, uint64_t key, const py::object& stream) {
  require_f32("dropout", "input", x);
  check_dropout_p("dropout", p);
  x.desc().check("dropout", "input", -1);
  return with_handle(x.device(), stream, [&](Handle& h) {
    DeviceTensor y = new_f32(x.desc(), x.device());
    pylenet::dropout_forward(h, DropoutDesc{p, key}, 0, x.numel(), fptr(x), fptr_mut(y));
    return y;
  });
}

DeviceTensor softmax(const DeviceTensor& x, bool log, const py::object& stream) {
  const char* op = log ? "log_softmax" : "softmax";
  require_f32(op, "input", x);
  x.desc().check(op, "input", 2, "(N, C)");
  return with_handle(x.device(), stream, [&](Handle& h) {
    DeviceTensor y = new_f32(x.desc(), x.device());
    pylenet::softmax_forward(h, log, x.desc().dim(0), x.desc().dim(1), fptr(x), fptr_mut(y));
    return y;
  });
}

double nll_loss(const DeviceTensor& logp, const DeviceTensor& labels, const py::object& stream) {
  const char* op = "nll_loss";
  require_f32(op, "input", logp);
  require_dtype(op, "labels", labels, DType::Int64);
  const int dev = common_device(op, {{"input", &logp}, {"labels", &labels}});
  logp.desc().check(op, "input", 2, "(N, C)");
  labels.desc().check(op, "labels", 1, "(N,)");
  const int64_t n = logp.desc().dim(0), c = logp.desc().dim(1);
  PYL_CHECK_ARG(labels.desc().dim(0) == n, op, ": ", labels.desc().dim(0), " labels for ", n, " rows");
  return with_handle(dev, stream, [&](Handle& h) {
    // The labels are checked on the host (a copy of N int64s), read on the op's stream once
    // it has waited for the caller's, so labels the caller's stream is still writing are seen
    // as written; then the sum runs on the device.
    std::vector<int64_t> host(static_cast<size_t>(n));
    PYL_CUDA_CHECK(cudaMemcpyAsync(host.data(), labels.data_as<const int64_t>(), host.size() * sizeof(int64_t),
                                   cudaMemcpyDeviceToHost, h.cuda().stream()));
    h.cuda().synchronize();
    check_labels(op, host.data(), n, c);
    double* sum = static_cast<double*>(h.cuda().scratch());
    pylenet::nll_loss_forward(h, n, c, fptr(logp), labels.data_as<const int64_t>(), sum);
    double out = 0;
    PYL_CUDA_CHECK(cudaMemcpyAsync(&out, sum, sizeof out, cudaMemcpyDeviceToHost, h.cuda().stream()));
    h.cuda().synchronize();
    return out / static_cast<double>(n);
  });
}

DeviceTensor batch_norm(const DeviceTensor& x, const OptTensor& rm, const OptTensor& rv, const OptTensor& w,
                        const OptTensor& b, bool training, double momentum, double eps, const py::object& stream) {
  const char* op = "batch_norm";
  require_f32(op, "input", x);
  for (auto* t : {&rm, &rv, &w, &b})
    if (*t) require_f32(op, "statistics and affine parameters", **t);
  if (rm) require_writable(op, "running_mean", *rm);
  if (rv) require_writable(op, "running_var", *rv);
  const int dev = common_device(op, {{"input", &x}, {"running_mean", rm ? &*rm : nullptr},
                                     {"running_var", rv ? &*rv : nullptr}, {"weight", w ? &*w : nullptr},
                                     {"bias", b ? &*b : nullptr}});
  const TensorDesc xd = x.desc();
  auto d = [](const OptTensor& t) { return t ? OptDesc(t->desc()) : OptDesc(); };
  const BatchNormShape s = check_batch_norm(xd, d(rm), d(rv), d(w), d(b), training, eps);
  return with_handle(dev, stream, [&](Handle& h) {
    DeviceTensor y = new_f32(xd, dev);
    batch_norm_forward(h, s, fptr(x), rm ? fptr_mut(*rm) : nullptr, rv ? fptr_mut(*rv) : nullptr, fptr_or_null(w),
                       fptr_or_null(b), training, momentum, eps, fptr_mut(y));
    return y;
  });
}

py::tuple softmax_cross_entropy(const DeviceTensor& logits, const DeviceTensor& labels, const py::object& stream) {
  const char* op = "softmax_cross_entropy";
  require_f32(op, "logits", logits);
  require_dtype(op, "labels", labels, DType::Int64);
  const int dev = common_device(op, {{"logits", &logits}, {"labels", &labels}});
  logits.desc().check(op, "logits", 2, "(N, num_classes)");
  auto [loss, dlogits] = with_handle(dev, stream, [&](Handle& h) {
    DeviceTensor d = new_f32(logits.desc(), dev);
    // Synchronises; throws InvalidArgument naming a bad label or non-finite logit.
    const double l = pylenet::softmax_cross_entropy(h, logits.desc(), fptr(logits), labels.desc(),
                                                   labels.data_as<const int64_t>(), fptr_mut(d));
    return std::make_pair(l, std::move(d));
  });
  return py::make_tuple(loss, std::move(dlogits));
}

void sgd_step(const DeviceTensor& param, const DeviceTensor& grad, const OptTensor& velocity, float lr,
              float momentum, float weight_decay, bool nesterov, const py::object& stream) {
  const char* op = "sgd_step";
  require_f32(op, "param", param);
  require_f32(op, "grad", grad);
  require_writable(op, "param", param);
  if (velocity) {
    require_f32(op, "velocity", *velocity);
    require_writable(op, "velocity", *velocity);
  }
  const int dev =
      common_device(op, {{"param", &param}, {"grad", &grad}, {"velocity", velocity ? &*velocity : nullptr}});
  const TensorDesc pd = param.desc();
  PYL_CHECK_ARG(grad.desc() == pd, "sgd_step: grad shape ", grad.desc().str(), " differs from param shape ", pd.str());
  if (velocity)
    PYL_CHECK_ARG(velocity->desc() == pd, "sgd_step: velocity shape ", velocity->desc().str(),
                  " differs from param shape ", pd.str());
  with_handle(dev, stream, [&](Handle& h) {
    // A NaN/inf gradient raises before anything is written (the op layer waits for that check).
    pylenet::sgd_step(h, pd, fptr_mut(param), fptr(grad), velocity ? fptr_mut(*velocity) : nullptr,
                      SgdParams{lr, momentum, weight_decay, nesterov});
    return 0;
  });
}

}  // namespace device_ops

// ---------------------------------------------------------------- host <-> device
DeviceTensor from_numpy(const py::array& array, int device) {
  // Native byte order only: the Python layer (pylenet/cuda.py) converts the others.
  const std::pair<py::dtype, DType> supported[] = {
      {py::dtype::of<float>(), DType::Float32}, {py::dtype::of<double>(), DType::Float64},
      {py::dtype::of<int32_t>(), DType::Int32}, {py::dtype::of<int64_t>(), DType::Int64},
      {py::dtype::of<uint8_t>(), DType::UInt8}};
  const DType* dt = nullptr;
  for (auto& [d, t] : supported)
    if (array.dtype().equal(d)) dt = &t;
  if (!dt)
    type_error(str_cat("to_device: unsupported dtype ", std::string(py::str(array.dtype())),
                       " (supported: float32, float64, int32, int64, uint8, in native byte order)"));
  const py::array c = py::array::ensure(array, py::array::c_style);
  if (!c) type_error("to_device: could not make a C-contiguous copy of the array");
  const Shape shape(c.shape(), c.shape() + c.ndim());
  const DType dtype = *dt;
  py::gil_scoped_release nogil;
  DeviceTensor t = DeviceTensor::empty(shape, dtype, device);
  cuda::copy_from_host(t, c.data());
  return t;
}

py::array to_numpy(const DeviceTensor& t) {
  py::array out(numpy_dtype(t.dtype()), t.shape());
  void* dst = out.mutable_data();
  py::gil_scoped_release nogil;
  cuda::copy_to_host(t, dst);
  return out;
}

// ---------------------------------------------------------------- __cuda_array_interface__
py::dict cuda_array_interface(const DeviceTensor& t) {
  cudaStream_t s;
  {
    py::gil_scoped_release nogil;
    s = cuda::default_context(t.device()).ctx.stream();
  }
  py::dict d;
  d["shape"] = py::tuple(py::cast(t.shape()));
  d["typestr"] = cuda::dtype_typestr(t.dtype());
  d["data"] = py::make_tuple(reinterpret_cast<uintptr_t>(t.data()), t.readonly());
  d["version"] = 3;
  d["strides"] = py::none();
  // Consumers synchronise on (or queue behind) our stream before reading (CAI v3).
  d["stream"] = reinterpret_cast<uintptr_t>(s);
  return d;
}

// Whether `strides` (in units of `unit` bytes) describe a C-contiguous array of `shape`.
// Dimensions of extent 1 may have any stride; an empty array is contiguous.
bool row_major(const Shape& shape, const int64_t* strides, int64_t unit) {
  int64_t expected = unit;
  bool empty = false;
  for (int64_t d : shape) empty = empty || d == 0;
  if (empty) return true;
  for (int i = static_cast<int>(shape.size()) - 1; i >= 0; --i) {
    if (shape[static_cast<size_t>(i)] != 1 && strides[i] != expected) return false;
    expected *= shape[static_cast<size_t>(i)];
  }
  return true;
}

// The device a pointer lives on; ValueError for host or unknown memory.
int device_of_pointer(const void* p, const char* what) {
  cudaPointerAttributes attr{};
  const cudaError_t err = cudaPointerGetAttributes(&attr, p);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    fail(ErrorKind::InvalidArgument, what, ": pointer ", p, " is not CUDA memory (", cudaGetErrorString(err), ")");
  }
  if (attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged) {
    int device = attr.device;
    if (device < 0) PYL_CUDA_CHECK(cudaGetDevice(&device));
    return device;
  }
  fail(ErrorKind::InvalidArgument, what, ": pointer ", p, " is ",
       attr.type == cudaMemoryTypeHost ? "host (pinned) memory" : "not CUDA device memory",
       "; pylenet.cuda takes device arrays (use pylenet.cuda.tensor() to copy a host array)");
}

// Makes the device's default stream wait for work queued on `producer` (a handle from an
// exporter). The GIL is released while the context is locked.
void wait_for_producer(int device, cudaStream_t producer) {
  py::gil_scoped_release nogil;
  cuda::DefaultContext& dc = cuda::default_context(device);
  std::lock_guard<std::mutex> lock(dc.mu);
  cuda::stream_wait(device, dc.ctx.stream(), producer, dc.event);
}

DeviceTensor from_cuda_array(const py::object& obj, bool sync) {
  const char* what = "from_cuda_array";
  const std::string type_name = py::str(py::type::of(obj).attr("__name__"));
  if (!py::hasattr(obj, "__cuda_array_interface__"))
    type_error(str_cat(what, ": ", type_name, " has no __cuda_array_interface__ (not a CUDA device array)"));
  const py::object iface = obj.attr("__cuda_array_interface__");
  if (!py::isinstance<py::dict>(iface))
    type_error(str_cat(what, ": ", type_name, ".__cuda_array_interface__ is not a dict"));
  const py::dict d = iface;
  for (const char* key : {"shape", "typestr", "data"})
    if (!d.contains(key)) type_error(str_cat(what, ": __cuda_array_interface__ of ", type_name, " lacks '", key, "'"));
  if (d.contains("mask") && !d["mask"].is_none())
    type_error(str_cat(what, ": masked arrays are not supported (", type_name, ")"));

  const std::string typestr = py::str(d["typestr"]);
  DType dt;
  if (!cuda::dtype_from_typestr(typestr, &dt))
    type_error(str_cat(what, ": unsupported dtype '", typestr, "' of ", type_name,
                       " (supported: float32, float64, int32, int64, uint8)"));
  const Shape shape = d["shape"].cast<Shape>();
  cuda::checked_numel(what, shape, dt);
  const py::tuple data = d["data"].cast<py::tuple>();
  if (data.size() != 2) type_error(str_cat(what, ": 'data' must be (pointer, read_only)"));
  void* ptr = reinterpret_cast<void*>(data[0].cast<uintptr_t>());
  const bool readonly = data[1].cast<bool>();
  if (d.contains("strides") && !d["strides"].is_none()) {
    const Shape strides = d["strides"].cast<Shape>();
    PYL_CHECK_ARG(strides.size() == shape.size(), what, ": ", strides.size(), " strides for a ", shape.size(),
                  "-D array");
    PYL_CHECK_ARG(row_major(shape, strides.data(), static_cast<int64_t>(cuda::dtype_size(dt))), what, ": ",
                  type_name, " of shape ", TensorDesc(shape).str(), " with byte strides ", TensorDesc(strides).str(),
                  " is not C-contiguous; make a contiguous copy first (e.g. cupy.ascontiguousarray)");
  }
  int device;
  if (ptr) device = device_of_pointer(ptr, what);
  else PYL_CUDA_CHECK(cudaGetDevice(&device));  // an empty array: no memory to locate
  cuda::check_device(device);

  // CAI v3: the exporter's work on 'stream' must be ordered before ours reads the data.
  if (sync && d.contains("stream") && !d["stream"].is_none()) {
    const auto s = stream_int(d["stream"], "__cuda_array_interface__['stream']");
    PYL_CHECK_ARG(*s > 0, what, ": __cuda_array_interface__ 'stream' must be a positive handle or None, got ", *s);
    wait_for_producer(device, cuda::stream_from_handle(static_cast<uintptr_t>(*s)));
  }
  return DeviceTensor::borrow(ptr, shape, dt, device, keep_alive(obj), readonly);
}

// ---------------------------------------------------------------- DLPack export
// What a capsule owns: the tensor (so its memory) and the shape and strides DLTensor points to.
struct DLPackExport {
  DeviceTensor tensor;
  Shape shape, strides;
  dlpack::DLManagedTensor managed{};
  dlpack::DLManagedTensorVersioned versioned{};
};

dlpack::DLDataType dl_dtype(DType d) {
  switch (d) {
    case DType::Float32: return {dlpack::kDLFloat, 32, 1};
    case DType::Float64: return {dlpack::kDLFloat, 64, 1};
    case DType::Int32: return {dlpack::kDLInt, 32, 1};
    case DType::Int64: return {dlpack::kDLInt, 64, 1};
    case DType::UInt8: return {dlpack::kDLUInt, 8, 1};
  }
  return {0, 0, 0};
}

bool dtype_from_dl(dlpack::DLDataType t, DType* out) {
  if (t.lanes != 1) return false;
  if (t.code == dlpack::kDLFloat && t.bits == 32) *out = DType::Float32;
  else if (t.code == dlpack::kDLFloat && t.bits == 64) *out = DType::Float64;
  else if (t.code == dlpack::kDLInt && t.bits == 32) *out = DType::Int32;
  else if (t.code == dlpack::kDLInt && t.bits == 64) *out = DType::Int64;
  else if (t.code == dlpack::kDLUInt && t.bits == 8) *out = DType::UInt8;
  else return false;
  return true;
}

void fill_dl_tensor(DLPackExport& e, dlpack::DLTensor& t) {
  t.data = e.tensor.data();
  t.device = {dlpack::kDLCUDA, e.tensor.device()};
  t.ndim = e.tensor.ndim();
  t.dtype = dl_dtype(e.tensor.dtype());
  t.shape = e.shape.data();
  t.strides = e.strides.data();  // explicit row-major strides: every consumer reads them
  t.byte_offset = 0;
}

void delete_export(dlpack::DLManagedTensor* m) { delete static_cast<DLPackExport*>(m->manager_ctx); }
void delete_export_versioned(dlpack::DLManagedTensorVersioned* m) {
  delete static_cast<DLPackExport*>(m->manager_ctx);
}

// Frees an export that no consumer took (a consumer renames the capsule to used_*).
void capsule_destructor(PyObject* cap) {
  if (PyCapsule_IsValid(cap, dlpack::kCapsule)) {
    auto* m = static_cast<dlpack::DLManagedTensor*>(PyCapsule_GetPointer(cap, dlpack::kCapsule));
    if (m && m->deleter) m->deleter(m);
  } else if (PyCapsule_IsValid(cap, dlpack::kCapsuleVersioned)) {
    auto* m = static_cast<dlpack::DLManagedTensorVersioned*>(PyCapsule_GetPointer(cap, dlpack::kCapsuleVersioned));
    if (m && m->deleter) m->deleter(m);
  }
}

// __dlpack__ per the Python specification of DLPack (v2023.12): stream None -> the data is
// made ready for any consumer (our stream is synchronised); -1 -> no synchronisation;
// 1 / 2 / a pointer -> the consumer's stream waits for ours, without blocking the host.
py::object to_dlpack(const DeviceTensor& t, const py::object& stream, const py::object& max_version,
                     const py::object& dl_device, const py::object& copy) {
  if (!dl_device.is_none()) {
    const auto dd = dl_device.cast<std::tuple<int, int>>();
    if (std::get<0>(dd) != dlpack::kDLCUDA || std::get<1>(dd) != t.device())
      buffer_error(str_cat("__dlpack__: cannot export to device (", std::get<0>(dd), ", ", std::get<1>(dd),
                                     "); this tensor is on (", dlpack::kDLCUDA, ", ", t.device(), ")"));
  }
  const auto s = stream_int(stream, "__dlpack__: stream");
  if (s && *s == 0)
    throw py::value_error("__dlpack__: stream=0 is ambiguous and not allowed by the DLPack protocol "
                          "(1: legacy default stream, 2: per-thread default stream)");
  bool versioned = false;
  if (!max_version.is_none()) versioned = std::get<0>(max_version.cast<std::tuple<int, int>>()) >= 1;
  const bool make_copy = !copy.is_none() && copy.cast<bool>();

  auto e = std::make_unique<DLPackExport>();
  {
    py::gil_scoped_release nogil;
    e->tensor = make_copy ? cuda::clone(t) : t;
    cuda::DefaultContext& dc = cuda::default_context(t.device());
    if (!s) {
      dc.ctx.synchronize();
    } else if (*s != -1) {
      std::lock_guard<std::mutex> lock(dc.mu);
      cuda::stream_wait(t.device(), cuda::stream_from_handle(static_cast<uintptr_t>(*s)), dc.ctx.stream(), dc.event);
    }
  }
  e->shape = e->tensor.shape();
  e->strides.assign(e->shape.size(), 1);
  for (int i = static_cast<int>(e->shape.size()) - 2; i >= 0; --i)
    e->strides[static_cast<size_t>(i)] = e->strides[static_cast<size_t>(i) + 1] * e->shape[static_cast<size_t>(i) + 1];

  void* payload;
  const char* name;
  if (versioned) {
    auto& v = e->versioned;
    v.version = {1, 0};
    v.manager_ctx = e.get();
    v.deleter = delete_export_versioned;
    v.flags = (e->tensor.readonly() ? dlpack::kFlagReadOnly : 0) | (make_copy ? dlpack::kFlagIsCopied : 0);
    fill_dl_tensor(*e, v.dl_tensor);
    payload = &v;
    name = dlpack::kCapsuleVersioned;
  } else {
    auto& m = e->managed;
    m.manager_ctx = e.get();
    m.deleter = delete_export;
    fill_dl_tensor(*e, m.dl_tensor);
    payload = &m;
    name = dlpack::kCapsule;
  }
  PyObject* cap = PyCapsule_New(payload, name, capsule_destructor);
  if (!cap) throw py::error_already_set();  // e still owns the export
  (void)e.release();                        // now the capsule does
  return py::reinterpret_steal<py::object>(cap);
}

// ---------------------------------------------------------------- DLPack import
// Borrows the memory of any object with __dlpack__ on a CUDA device. Our stream is passed
// to the producer, which orders its pending work before it.
template <class Managed>
std::shared_ptr<void> managed_keep_alive(Managed* m) {
  return std::shared_ptr<void>(m, [](Managed* p) {
    if (!p->deleter || !interpreter_alive()) return;  // a producer's deleter may need Python
    py::gil_scoped_acquire gil;
    p->deleter(p);
  });
}

// What a DLTensor describes, checked: CUDA on `device`, a supported dtype, C-contiguous.
struct DLView {
  Shape shape;
  DType dtype;
  void* data;
};
DLView check_dl(const dlpack::DLTensor& t, int device, const char* what) {
  if (t.device.device_type != dlpack::kDLCUDA || t.device.device_id != device)
    fail(ErrorKind::InvalidArgument, what, ": the DLPack tensor is on device (", t.device.device_type, ", ",
         t.device.device_id, "), expected (", dlpack::kDLCUDA, ", ", device, ")");
  DLView v;
  if (!dtype_from_dl(t.dtype, &v.dtype))
    type_error(str_cat(what, ": unsupported DLPack dtype (code ", int(t.dtype.code), ", ", int(t.dtype.bits),
                       " bits, ", t.dtype.lanes, " lanes); supported: float32, float64, int32, int64, uint8"));
  PYL_CHECK_ARG(t.ndim >= 0 && (t.ndim == 0 || t.shape), what, ": malformed DLPack tensor");
  v.shape.assign(t.shape, t.shape + t.ndim);
  cuda::checked_numel(what, v.shape, v.dtype);
  if (t.strides)
    PYL_CHECK_ARG(row_major(v.shape, t.strides, 1), what, ": the DLPack tensor of shape ", TensorDesc(v.shape).str(),
                  " with strides ", TensorDesc(Shape(t.strides, t.strides + t.ndim)).str(),
                  " is not C-contiguous; make a contiguous copy first");
  v.data = t.data ? static_cast<char*>(t.data) + t.byte_offset : nullptr;
  return v;
}

// Takes ownership of a capsule's tensor (Managed: DLManagedTensor or the versioned one):
// checks it first, so a rejected capsule stays unused and frees itself, then renames it.
template <class Managed>
DeviceTensor take_capsule(PyObject* cap, const char* name, const char* used_name, int device, const char* what) {
  auto* m = static_cast<Managed*>(PyCapsule_GetPointer(cap, name));
  if (!m) throw py::error_already_set();
  bool readonly = false;
  if constexpr (std::is_same_v<Managed, dlpack::DLManagedTensorVersioned>) {
    if (m->version.major != 1)
      type_error(str_cat(what, ": DLPack version ", m->version.major, ".", m->version.minor, " is not supported"));
    readonly = (m->flags & dlpack::kFlagReadOnly) != 0;
  }
  const DLView v = check_dl(m->dl_tensor, device, what);
  if (PyCapsule_SetName(cap, used_name) != 0) throw py::error_already_set();
  return DeviceTensor::borrow(v.data, v.shape, v.dtype, device, managed_keep_alive(m), readonly);
}

DeviceTensor from_dlpack(const py::object& obj) {
  const char* what = "from_dlpack";
  const std::string type_name = py::str(py::type::of(obj).attr("__name__"));
  if (!py::hasattr(obj, "__dlpack__") || !py::hasattr(obj, "__dlpack_device__"))
    type_error(str_cat(what, ": ", type_name, " does not support DLPack (__dlpack__ and __dlpack_device__)"));
  const auto dev = obj.attr("__dlpack_device__")().cast<std::tuple<int, int>>();
  if (std::get<0>(dev) != dlpack::kDLCUDA)
    type_error(str_cat(what, ": ", type_name, " is not on a CUDA device (DLPack device type ", std::get<0>(dev),
                       "); use pylenet.cuda.tensor() to copy a host array"));
  const int device = std::get<1>(dev);
  cudaStream_t ours;
  {
    py::gil_scoped_release nogil;
    ours = cuda::default_context(device).ctx.stream();
  }
  // Legacy (unversioned) capsule: no max_version asked for.
  const py::object cap = obj.attr("__dlpack__")(py::arg("stream") = reinterpret_cast<uintptr_t>(ours));
  if (PyCapsule_IsValid(cap.ptr(), dlpack::kCapsule))
    return take_capsule<dlpack::DLManagedTensor>(cap.ptr(), dlpack::kCapsule, dlpack::kUsedCapsule, device, what);
  if (PyCapsule_IsValid(cap.ptr(), dlpack::kCapsuleVersioned))
    return take_capsule<dlpack::DLManagedTensorVersioned>(cap.ptr(), dlpack::kCapsuleVersioned,
                                                           dlpack::kUsedCapsuleVersioned, device, what);
  type_error(str_cat(what, ": ", type_name, ".__dlpack__() did not return an unused DLPack capsule"));
}

// ---------------------------------------------------------------- memory and devices
py::dict memory_stats(int device) {
  const cuda::DeviceMemoryStats s = cuda::device_memory::stats(device);
  py::dict d;
  d["bytes_in_use"] = s.bytes_in_use;
  d["peak_bytes"] = s.peak_bytes;
  d["num_allocs"] = s.num_allocs;
  d["num_frees"] = s.num_frees;
  d["bytes_reserved"] = s.bytes_reserved;
  d["bytes_cached"] = s.bytes_cached;
  d["num_device_mallocs"] = s.num_device_mallocs;
  return d;
}

// Returns the cached blocks to the driver, and the default context's workspace first (it is
// a live allocation that would otherwise keep its block), so the statistics can return to
// what the live tensors hold.
void empty_cache(int device) {
  py::gil_scoped_release nogil;
  cuda::check_device(device);
  if (cuda::DefaultContext* dc = cuda::default_context_if_created(device)) {
    std::lock_guard<std::mutex> lock(dc->mu);
    dc->ctx.synchronize();  // queued kernels may still use the workspace
    dc->ctx.release_workspace();
  }
  cuda::device_memory::empty_cache(device);
}

void synchronize(int device) {
  py::gil_scoped_release nogil;
  cuda::check_device(device);
  cuda::DeviceGuard guard(device);
  PYL_CUDA_CHECK(cudaDeviceSynchronize());
}

std::string device_name(int device) {
  cuda::check_device(device);
  cudaDeviceProp prop{};
  PYL_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return prop.name;
}

bool is_available() {
  try {
    return cuda::device_count() > 0;
  } catch (const std::exception&) {
    return false;
  }
}

}  // namespace

void bind_cuda_ops(py::module_& m) {
  using py::arg;
  const auto none = py::none();

  py::class_<DeviceTensor>(m, "Tensor", R"doc(A contiguous array in CUDA device memory.

Owned by pylenet (from to_device/empty or an op) or borrowed from another library's array
(from_cuda_array/from_dlpack), which it then keeps alive. Exchanged without a copy through
__cuda_array_interface__ (v3) and DLPack (__dlpack__/__dlpack_device__).)doc")
      .def_static("from_numpy", &from_numpy, arg("array"), arg("device") = 0,
                  "Copy a NumPy array (float32/float64/int32/int64/uint8) to the device.")
      .def_property_readonly("shape", [](const DeviceTensor& t) { return py::tuple(py::cast(t.shape())); })
      .def_property_readonly("dtype", [](const DeviceTensor& t) { return numpy_dtype(t.dtype()); })
      .def_property_readonly("device", &DeviceTensor::device)
      .def_property_readonly("nbytes", [](const DeviceTensor& t) { return static_cast<int64_t>(t.nbytes()); })
      .def_property_readonly("size", &DeviceTensor::numel)
      .def_property_readonly("ndim", &DeviceTensor::ndim)
      .def_property_readonly("data_ptr", [](const DeviceTensor& t) { return reinterpret_cast<uintptr_t>(t.data()); })
      .def_property_readonly("owns_memory", &DeviceTensor::owns_memory)
      .def_property_readonly("readonly", &DeviceTensor::readonly)
      .def("numpy", &to_numpy, "Copy to a new NumPy array (waits for the work queued on the tensor's stream).")
      .def("copy", [](const DeviceTensor& t) {
        py::gil_scoped_release nogil;
        return cuda::clone(t);
      }, "A new owned tensor with the same contents.")
      .def_property_readonly("__cuda_array_interface__", &cuda_array_interface)
      .def("__dlpack__", &to_dlpack, arg("stream") = none, arg("max_version") = none, arg("dl_device") = none,
           arg("copy") = none)
      .def("__dlpack_device__", [](const DeviceTensor& t) { return py::make_tuple(dlpack::kDLCUDA, t.device()); })
      .def("__len__", [](const DeviceTensor& t) {
        if (t.ndim() == 0) type_error("len() of a 0-d tensor");
        return t.shape()[0];
      })
      .def("__repr__", &DeviceTensor::str);

  // ---- creation and exchange
  m.def("to_device", &from_numpy, arg("array"), arg("device") = 0);
  m.def("empty", [](const Shape& shape, const std::string& dtype, int device) {
    const DType dt = dtype_from_name(dtype);
    py::gil_scoped_release nogil;
    return DeviceTensor::empty(shape, dt, device);
  }, arg("shape"), arg("dtype") = "float32", arg("device") = 0);
  m.def("from_cuda_array", &from_cuda_array, arg("obj"), arg("sync") = true,
        "Borrow (no copy) the memory of an object with __cuda_array_interface__; sync=True orders "
        "its 'stream' before pylenet's.");
  m.def("from_dlpack", &from_dlpack, arg("obj"), "Borrow (no copy) a CUDA array through DLPack.");
  m.def("clone", [](const DeviceTensor& t) {
    py::gil_scoped_release nogil;
    return cuda::clone(t);
  }, arg("tensor"));
  m.def("default_stream", [](int device) {
    py::gil_scoped_release nogil;
    return reinterpret_cast<uintptr_t>(cuda::default_context(device).ctx.stream());
  }, arg("device") = 0, "Handle of the stream pylenet's ops and copies run on for this device.");

  // ---- memory and devices
  m.def("memory_stats", &memory_stats, arg("device") = 0);
  m.def("reset_peak_memory_stats", [](int device) { cuda::device_memory::reset_peak(device); }, arg("device") = 0);
  m.def("empty_cache", &empty_cache, arg("device") = 0);
  m.def("device_count", [] { return cuda::device_count(); });
  m.def("synchronize", &synchronize, arg("device") = 0);
  m.def("device_name", &device_name, arg("device") = 0);
  m.def("is_available", &is_available);

  // ---- ops (the CPU bindings' names and arguments, minus the handle, plus `stream`)
  const auto s = arg("stream") = none;
  m.def("conv2d_workspace_size", [](const std::string& algo, const std::string& pass, const Shape& x, const Shape& w,
                                    const PairT& stride, const PairT& pad) {
    const auto sh = ConvShape::make("conv2d", TensorDesc(x), TensorDesc(w), conv_desc(stride, pad));
    return pylenet::conv_workspace_size(Device::CUDA, conv_algo_from_name(algo), pass_of(pass), sh, 1);
  }, arg("algo"), arg("pass_"), arg("x_shape"), arg("w_shape"), arg("stride"), arg("padding"));
  m.def("conv2d_forward", &device_ops::conv2d_forward, arg("x"), arg("w"), arg("b"), arg("stride"), arg("padding"), arg("algo"), s);
  m.def("conv2d_backward_data", &device_ops::conv2d_backward_data, arg("w"), arg("dy"), arg("x_shape"), arg("stride"),
        arg("padding"), arg("algo"), s);
  m.def("conv2d_backward_filter", &device_ops::conv2d_backward_filter, arg("x"), arg("dy"), arg("w_shape"), arg("stride"),
        arg("padding"), arg("algo"), s);
  m.def("conv2d_backward_bias", &device_ops::conv2d_backward_bias, arg("dy"), s);
  m.def("conv2d_find_algorithms", &device_ops::conv2d_find_algorithms, arg("pass_"), arg("x"), arg("w"), arg("stride"),
        arg("padding"), s);
  m.def("pool2d_forward", &device_ops::pool2d_forward, arg("mode"), arg("x"), arg("kernel_size"), arg("stride"), arg("padding"), s);
  m.def("pool2d_backward", &device_ops::pool2d_backward, arg("mode"), arg("x"), arg("dy"), arg("kernel_size"), arg("stride"),
        arg("padding"), s);
  m.def("linear_forward", &device_ops::linear_forward, arg("x"), arg("w"), arg("b"), s);
  m.def("linear_backward_data", &device_ops::linear_backward_data, arg("dy"), arg("w"), arg("x_shape"), s);
  m.def("linear_backward_weight", &device_ops::linear_backward_weight, arg("dy"), arg("x"), arg("w_shape"), s);
  m.def("linear_backward_bias", &device_ops::linear_backward_bias, arg("dy"), s);
  m.def("activation_forward", &device_ops::activation_forward, arg("name"), arg("x"), arg("slope"), s);
  m.def("activation_backward", &device_ops::activation_backward, arg("name"), arg("y"), arg("dy"), arg("slope"), s);
  m.def("add", &device_ops::add, arg("a"), arg("b"), s);
  m.def("dropout", &device_ops::dropout, arg("x"), arg("p"), arg("key"), s);
  m.def("softmax", &device_ops::softmax, arg("x"), arg("log"), s);
  m.def("nll_loss", &device_ops::nll_loss, arg("logp"), arg("labels"), s);
  m.def("batch_norm", &device_ops::batch_norm, arg("x"), arg("running_mean"), arg("running_var"), arg("weight"),
        arg("bias"), arg("training"), arg("momentum"), arg("eps"), s);
  m.def("softmax_cross_entropy", &device_ops::softmax_cross_entropy, arg("logits"), arg("labels"), s);
  m.def("sgd_step", &device_ops::sgd_step, arg("param"), arg("grad"), arg("velocity"), arg("lr"), arg("momentum"),
        arg("weight_decay"), arg("nesterov"), s);
}
