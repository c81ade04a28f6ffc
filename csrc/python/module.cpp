// pybind11 bindings: pylenet._C. Marshalling only: NumPy arrays become descriptors and
// pointers, outputs are allocated as NumPy arrays of the shape the op layer computes, the
// GIL is released around every kernel, and pylenet::Error becomes a Python exception.
// All checking lives in csrc/ops/; the Python layer (pylenet/functional.py) converts dtypes.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <cmath>
#include <map>
#include <vector>
#include <optional>
#include <tuple>

#include "core/allocator.h"
#include "core/error.h"
#include "core/handle.h"
#include "core/parallel.h"
#include "core/thread_pool.h"
#include "core/thread_governor.h"
#include "core/simd.h"
#include "ops/activation.h"
#include "ops/batchnorm.h"
#include "ops/dropout.h"
#include "ops/elementwise.h"
#include "ops/softmax.h"
#include "ops/conv.h"
#include "ops/linear.h"
#include "ops/loss.h"
#include "ops/optim.h"
#include "ops/pool.h"
#include "python/convert.h"

namespace py = pybind11;
using namespace pylenet;
using namespace pylenet::python;

void bind_runtime(py::module_& m);  // csrc/python/runtime.cpp: Graph and Executor
#ifdef PYLENET_HAVE_CUDA
// The CUDA bindings (csrc/python/cuda_ops.cpp), compiled only with CUDA.
void bind_cuda_ops(py::module_& m);
#endif

namespace {

using FArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
using Shape = std::vector<int64_t>;

TensorDesc desc_of(const py::array& a) {
  return TensorDesc(Shape(a.shape(), a.shape() + a.ndim()));
}
FArray empty_like_desc(const TensorDesc& d) {
  host::check_available(sizeof(float) * static_cast<size_t>(d.numel()), "an output array");
  return FArray(d.dims());
}
const float* ptr_or_null(const std::optional<FArray>& a) { return a ? a->data() : nullptr; }
TensorDesc desc_or_empty(const std::optional<FArray>& a) { return a ? desc_of(*a) : TensorDesc(); }


// The thread count of the eager ops (pylenet.set_num_threads), the same for every thread.
std::atomic<int>& default_threads() {
  static std::atomic<int> n{Handle().threads()};  // all cores, or $PYLENET_NUM_THREADS
  return n;
}

// The eager ops' handle: one per calling thread. The ops release the GIL, and a handle's
// workspace and algorithm cache are not thread-safe, so threads calling F.conv2d at once
// must not share one.
Handle& default_handle() {
  thread_local Handle handle;
  const int n = default_threads().load();
  if (handle.threads() != n) handle.set_threads(n);
  return handle;
}

py::dict build_info() {
  py::dict info;
  info["version"] = PYLENET_VERSION;
#if defined(__clang__)
  info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  info["compiler"] = std::string("gcc ") + __VERSION__;
#else
  info["compiler"] = "unknown";
#endif
  py::dict simd_info;
  py::list compiled, supported;
  for (auto l : simd::compiled()) compiled.append(simd::name(l));
  for (auto l : simd::available()) supported.append(simd::name(l));
  simd_info["compiled"] = compiled;
  simd_info["supported"] = supported;
  simd_info["active"] = simd::name(simd::active());
  simd_info["path"] = simd::path_name();  // with the AVX-512 lanes when forced ("avx512:8")
  simd_info["split_fma512"] = simd::split_fma512();
  info["simd"] = simd_info;
  info["threads"] = default_threads().load();
  info["hardware_threads"] = hardware_threads();
  info["adaptive_threads"] = ThreadGovernor::enabled();
  info["thread_pool"] = ThreadPool::instance().started();  // worker threads started so far
  // "cuda": the CUDA backend (kernels and bindings, pylenet._C.cuda) is in this build. It
  // says nothing about a GPU being present: pylenet.cuda.is_available() does.
#ifdef PYLENET_HAVE_CUDA
  info["cuda"] = true;
#else
  info["cuda"] = false;
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "pylenet native core: handle, descriptors and hand-written kernels";

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      switch (e.kind()) {
        case ErrorKind::InvalidArgument: PyErr_SetString(PyExc_ValueError, e.what()); return;
        case ErrorKind::OutOfMemory: PyErr_SetString(PyExc_MemoryError, e.what()); return;
        case ErrorKind::Runtime: PyErr_SetString(PyExc_RuntimeError, e.what()); return;
      }
    }
  });

  py::class_<Handle>(m, "Handle", "Device, threads, workspace and algorithm cache that ops run on.")
      .def(py::init<>())
      .def_property("threads", &Handle::threads, &Handle::set_threads)
      .def_property_readonly("workspace_bytes", &Handle::workspace_bytes)
      .def("release_workspace", &Handle::release_workspace)
      .def("clear_algo_cache", [](Handle& h) { h.algo_cache().clear(); })
      .def_property_readonly("algo_cache", [](Handle& h) {
        py::dict d;
        for (auto& [k, v] : h.algo_cache()) d[py::str(k)] = conv_algo_name(static_cast<ConvAlgo>(v));
        return d;
      });
  m.def("default_handle", &default_handle, py::return_value_policy::reference,
        "The calling thread's handle for the eager ops (valid while the thread lives).");
  m.def("default_threads", [] { return default_threads().load(); });
  m.def("set_default_threads", [](int n) {
    PYL_CHECK_ARG(n >= 1 && n <= 4096, "set_num_threads: expected 1 to 4096 threads, got ", n);
    default_threads() = n;
  });
  m.def("adaptive_threads", &ThreadGovernor::enabled);
  m.def("set_adaptive_threads", &ThreadGovernor::set_enabled);
  py::class_<ThreadGovernor>(m, "ThreadGovernor",
                             "The rule that picks each step's worker count from measured step times "
                             "(core/thread_governor.h); exposed for the tests.")
      .def(py::init<int>(), py::arg("max_threads"))
      .def_property_readonly("threads", &ThreadGovernor::threads)
      .def_property_readonly("max_threads", &ThreadGovernor::max_threads)
      .def_property_readonly("trials", &ThreadGovernor::trials)
      .def_property_readonly("steps_at", &ThreadGovernor::steps_at)
      .def("record", &ThreadGovernor::record, py::arg("seconds"), py::arg("items"));

  m.def("build_info", &build_info);
  m.def("simd_available", [] {
    std::vector<std::string> v;
    for (auto l : simd::available()) v.push_back(simd::name(l));
    return v;
  });
  m.def("simd_get", [] { return simd::path_name(); });
  m.def("simd_set", [](const std::string& name) { simd::set_path(name); });
  m.def("host_buffer", [](int64_t count) {
    PYL_CHECK_ARG(count >= 0 && count <= (int64_t(1) << 34), "host_buffer: bad size ", count);
    auto* buf = new AlignedBuffer(sizeof(float) * static_cast<size_t>(std::max<int64_t>(count, 1)));
    std::fill(buf->floats(), buf->floats() + std::max<int64_t>(count, 1), 0.0f);
    py::capsule owner(buf, [](void* p) { delete static_cast<AlignedBuffer*>(p); });
    return py::array_t<float>({count}, {static_cast<int64_t>(sizeof(float))}, buf->floats(), owner);
  }, "A zeroed, 64-byte aligned float32 array in pylenet's host memory (a model's flat parameter buffer).");
  m.def("host_memory_stats", [] {
    auto s = host::stats();
    py::dict d;
    d["bytes_in_use"] = s.bytes_in_use;
    d["peak_bytes"] = s.peak_bytes;
    d["num_allocs"] = s.num_allocs;
    d["num_frees"] = s.num_frees;
    return d;
  });

  bind_runtime(m);

  m.attr("MAX_EXTENT") = kMaxExtent;  // the bound on sizes (ops/tensor.h), for Python's own early check

  // ---- convolution
  m.def("conv2d_output_shape", [](const Shape& x, const Shape& w, const PairT& stride, const PairT& pad) {
    return ConvShape::make("conv2d", TensorDesc(x), TensorDesc(w), conv_desc(stride, pad)).y_desc().dims();
  });
  m.def("conv2d_workspace_size", [](Handle& h, const std::string& algo, const std::string& pass, const Shape& x,
                                    const Shape& w, const PairT& stride, const PairT& pad) {
    auto s = ConvShape::make("conv2d", TensorDesc(x), TensorDesc(w), conv_desc(stride, pad));
    return conv_workspace_size(h, conv_algo_from_name(algo), pass_of(pass), s);
  });
  m.def("conv2d_forward", [](Handle& h, const FArray& x, const FArray& w, const std::optional<FArray>& b,
                             const PairT& stride, const PairT& pad, const std::string& algo) {
    const ConvDesc cd = conv_desc(stride, pad);
    const ConvAlgo a = conv_algo_from_name(algo);
    const TensorDesc yd = ConvShape::make("conv2d", desc_of(x), desc_of(w), cd).y_desc();
    FArray y = empty_like_desc(yd);
    float* yp = y.mutable_data();
    py::gil_scoped_release nogil;
    conv_forward(h, a, desc_of(x), x.data(), desc_of(w), w.data(), desc_or_empty(b), ptr_or_null(b), cd, yd, yp);
    return y;
  });
  m.def("conv2d_backward_data", [](Handle& h, const FArray& w, const FArray& dy, const Shape& x_shape,
                                   const PairT& stride, const PairT& pad, const std::string& algo) {
    const ConvAlgo a = conv_algo_from_name(algo);
    const TensorDesc xd(x_shape);
    ConvShape::make("conv2d_backward", xd, desc_of(w), conv_desc(stride, pad));
    FArray dx = empty_like_desc(xd);
    float* dxp = dx.mutable_data();
    py::gil_scoped_release nogil;
    conv_backward_data(h, a, desc_of(w), w.data(), desc_of(dy), dy.data(), conv_desc(stride, pad), xd, dxp);
    return dx;
  });
  m.def("conv2d_backward_filter", [](Handle& h, const FArray& x, const FArray& dy, const Shape& w_shape,
                                     const PairT& stride, const PairT& pad, const std::string& algo) {
    const ConvAlgo a = conv_algo_from_name(algo);
    const TensorDesc wd(w_shape);
    ConvShape::make("conv2d_backward", desc_of(x), wd, conv_desc(stride, pad));
    FArray dw = empty_like_desc(wd);
    float* dwp = dw.mutable_data();
    py::gil_scoped_release nogil;
    conv_backward_filter(h, a, desc_of(x), x.data(), desc_of(dy), dy.data(), conv_desc(stride, pad), wd, dwp);
    return dw;
  });
  m.def("conv2d_backward", [](Handle& h, const FArray& x, const FArray& w, const FArray& dy, const PairT& stride,
                              const PairT& pad, const std::string& algo) {
    const ConvAlgo a = conv_algo_from_name(algo);
    const ConvShape s = ConvShape::make("conv2d_backward", desc_of(x), desc_of(w), conv_desc(stride, pad));
    FArray dx = empty_like_desc(desc_of(x)), dw = empty_like_desc(desc_of(w)), db = empty_like_desc(TensorDesc{s.k});
    float *dxp = dx.mutable_data(), *dwp = dw.mutable_data(), *dbp = db.mutable_data();
    {
      py::gil_scoped_release nogil;
      conv_backward(h, a, desc_of(x), x.data(), desc_of(w), w.data(), desc_of(dy), dy.data(), conv_desc(stride, pad),
                    dxp, dwp, dbp);
    }
    return py::make_tuple(dx, dw, db);
  });
  m.def("conv2d_backward_bias", [](Handle& h, const FArray& dy) {
    desc_of(dy).check("conv2d_backward", "grad_output", 4, "(N, K, OH, OW)");
    const TensorDesc dbd{desc_of(dy).c()};
    FArray db = empty_like_desc(dbd);
    float* dbp = db.mutable_data();
    py::gil_scoped_release nogil;
    conv_backward_bias(h, desc_of(dy), dy.data(), dbd, dbp);
    return db;
  });
  m.def("conv2d_find_algorithms", [](Handle& h, const std::string& pass, const FArray& x, const FArray& w,
                                     const PairT& stride, const PairT& pad) {
    const ConvShape s = ConvShape::make("conv2d", desc_of(x), desc_of(w), conv_desc(stride, pad));
    const ConvPass p = pass_of(pass);
    FArray dy = empty_like_desc(s.y_desc());
    std::fill(dy.mutable_data(), dy.mutable_data() + s.y_desc().numel(), 1.0f);
    FArray out = empty_like_desc(p == ConvPass::Forward ? s.y_desc() : p == ConvPass::BackwardData ? s.x_desc() : s.w_desc());
    std::vector<ConvAlgoPerf> perf;
    {
      py::gil_scoped_release nogil;
      perf = conv_find_algorithms(h, p, s, x.data(), w.data(), dy.data(), out.mutable_data());
    }
    py::list result;
    for (auto& r : perf) result.append(py::make_tuple(conv_algo_name(r.algo), r.seconds, r.workspace_bytes));
    return result;
  });

  // ---- pooling
  m.def("pool2d_forward", [](Handle& h, const std::string& mode, const FArray& x, const PairT& k, const PairT& s,
                             const PairT& p) {
    const PoolDesc pd = pool_desc(mode, k, s, p);
    const TensorDesc yd = PoolShape::make(pool_op_name(pd.mode, false), desc_of(x), pd).y_desc();
    FArray y = empty_like_desc(yd);
    float* yp = y.mutable_data();
    py::gil_scoped_release nogil;
    pool_forward(h, pd, desc_of(x), x.data(), yd, yp);
    return y;
  });
  m.def("pool2d_backward", [](Handle& h, const std::string& mode, const FArray& x, const FArray& dy, const PairT& k,
                              const PairT& s, const PairT& p) {
    const PoolDesc pd = pool_desc(mode, k, s, p);
    FArray dx = empty_like_desc(desc_of(x));
    float* dxp = dx.mutable_data();
    py::gil_scoped_release nogil;
    pool_backward(h, pd, desc_of(x), x.data(), desc_of(dy), dy.data(), desc_of(x), dxp);
    return dx;
  });

  // ---- linear
  m.def("linear_forward", [](Handle& h, const FArray& x, const FArray& w, const std::optional<FArray>& b) {
    const TensorDesc yd = LinearShape::make("linear", desc_of(x), desc_of(w)).y_desc();
    FArray y = empty_like_desc(yd);
    float* yp = y.mutable_data();
    py::gil_scoped_release nogil;
    linear_forward(h, desc_of(x), x.data(), desc_of(w), w.data(), desc_or_empty(b), ptr_or_null(b), yd, yp);
    return y;
  });
  m.def("linear_backward_data", [](Handle& h, const FArray& dy, const FArray& w, const Shape& x_shape) {
    const TensorDesc xd(x_shape);
    LinearShape::make("linear_backward", xd, desc_of(w));
    FArray dx = empty_like_desc(xd);
    float* dxp = dx.mutable_data();
    py::gil_scoped_release nogil;
    linear_backward_data(h, desc_of(dy), dy.data(), desc_of(w), w.data(), xd, dxp);
    return dx;
  });
  m.def("linear_backward_weight", [](Handle& h, const FArray& dy, const FArray& x, const Shape& w_shape) {
    const TensorDesc wd(w_shape);
    LinearShape::make("linear_backward", desc_of(x), wd);
    FArray dw = empty_like_desc(wd);
    float* dwp = dw.mutable_data();
    py::gil_scoped_release nogil;
    linear_backward_weight(h, desc_of(dy), dy.data(), desc_of(x), x.data(), wd, dwp);
    return dw;
  });
  m.def("linear_backward_bias", [](Handle& h, const FArray& dy) {
    desc_of(dy).check("linear_backward", "grad_output", 2, "(N, out_features)");
    const TensorDesc dbd{desc_of(dy).dim(1)};
    FArray db = empty_like_desc(dbd);
    float* dbp = db.mutable_data();
    py::gil_scoped_release nogil;
    linear_backward_bias(h, desc_of(dy), dy.data(), dbd, dbp);
    return db;
  });

  // ---- activations, loss, optimizer
  m.def("activation_forward", [](Handle& h, const std::string& name, const FArray& x, float slope) {
    const Activation a = activation_of(name);
    FArray y = empty_like_desc(desc_of(x));
    float* yp = y.mutable_data();
    py::gil_scoped_release nogil;
    activation_forward(h, a, desc_of(x), x.data(), yp, slope);
    return y;
  }, py::arg("handle"), py::arg("name"), py::arg("x"), py::arg("slope") = 0.01f);
  m.def("activation_backward", [](Handle& h, const std::string& name, const FArray& y, const FArray& dy, float slope) {
    const Activation a = activation_of(name);
    PYL_CHECK_ARG(desc_of(y) == desc_of(dy), name, "_backward: grad_output shape ", desc_of(dy).str(),
                  " differs from the input shape ", desc_of(y).str());
    FArray dx = empty_like_desc(desc_of(y));
    float* dxp = dx.mutable_data();
    py::gil_scoped_release nogil;
    activation_backward(h, a, desc_of(y), y.data(), dy.data(), dxp, slope);
    return dx;
  }, py::arg("handle"), py::arg("name"), py::arg("y"), py::arg("dy"), py::arg("slope") = 0.01f);
  m.def("add", [](Handle& h, const FArray& a, const FArray& b) {
    PYL_CHECK_ARG(desc_of(a) == desc_of(b), "add: the operands have different shapes, ", desc_of(a).str(), " and ",
                  desc_of(b).str(), " (no broadcasting)");
    desc_of(a).check("add", "input", -1);
    FArray y = empty_like_desc(desc_of(a));
    float* yp = y.mutable_data();
    py::gil_scoped_release nogil;
    add_run(h, desc_of(a).numel(), a.data(), b.data(), yp);
    return y;
  });
  m.def("dropout", [](Handle& h, const FArray& x, double p, uint64_t key) {
    check_dropout_p("dropout", p);
    desc_of(x).check("dropout", "input", -1);
    FArray y = empty_like_desc(desc_of(x));
    float* yp = y.mutable_data();
    py::gil_scoped_release nogil;
    dropout_forward(h, DropoutDesc{p, key}, 0, desc_of(x).numel(), x.data(), yp);
    return y;
  });
  m.def("softmax", [](Handle& h, const FArray& x, bool log) {
    const char* op = log ? "log_softmax" : "softmax";
    desc_of(x).check(op, "input", 2, "(N, C)");
    FArray y = empty_like_desc(desc_of(x));
    float* yp = y.mutable_data();
    py::gil_scoped_release nogil;
    softmax_forward(h, log, x.shape(0), x.shape(1), x.data(), yp);
    return y;
  });
  m.def("nll_loss", [](Handle& h, const FArray& logp, const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& labels) {
    const char* op = "nll_loss";
    desc_of(logp).check(op, "input", 2, "(N, C)");
    desc_of(labels).check(op, "labels", 1, "(N,)");
    PYL_CHECK_ARG(labels.shape(0) == logp.shape(0), op, ": ", labels.shape(0), " labels for ", logp.shape(0), " rows");
    check_labels(op, labels.data(), labels.shape(0), logp.shape(1));
    double sum = 0;
    {
      py::gil_scoped_release nogil;
      nll_loss_forward(h, logp.shape(0), logp.shape(1), logp.data(), labels.data(), &sum);
    }
    return sum / static_cast<double>(logp.shape(0));
  });
  m.def("batch_norm", [](Handle& h, const FArray& x, std::optional<py::array_t<float, py::array::c_style>> running_mean,
                         std::optional<py::array_t<float, py::array::c_style>> running_var,
                         const std::optional<FArray>& weight, const std::optional<FArray>& bias, bool training,
                         double momentum, double eps) {
    const char* op = "batch_norm";
    const TensorDesc xd = desc_of(x);
    auto d = [](const auto& a) { return a ? OptDesc(desc_of(*a)) : OptDesc(); };
    const BatchNormShape s =
        check_batch_norm(xd, d(running_mean), d(running_var), d(weight), d(bias), training, eps);
    if (running_mean)
      PYL_CHECK_ARG(running_mean->writeable() && running_var->writeable(), op,
                    ": running_mean and running_var are updated in place (writable float32 arrays)");
    FArray y = empty_like_desc(xd);
    float* yp = y.mutable_data();
    float* rm = running_mean ? running_mean->mutable_data() : nullptr;
    float* rv = running_var ? running_var->mutable_data() : nullptr;
    py::gil_scoped_release nogil;
    batch_norm_forward(h, s, x.data(), rm, rv, ptr_or_null(weight), ptr_or_null(bias), training, momentum, eps, yp);
    return y;
  });
  m.def("softmax_cross_entropy", [](Handle& h, const FArray& logits,
                                    const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& labels) {
    FArray dlogits = empty_like_desc(desc_of(logits));
    float* dp = dlogits.mutable_data();
    double loss;
    {
      py::gil_scoped_release nogil;
      loss = softmax_cross_entropy(h, desc_of(logits), logits.data(), desc_of(labels), labels.data(), dp);
    }
    return py::make_tuple(loss, dlogits);
  });
  m.def(
      "sgd_step",
      [](Handle& h, py::array_t<float, py::array::c_style> param, const FArray& grad,
         std::optional<py::array_t<float, py::array::c_style>> velocity, float lr, float momentum,
         float weight_decay, bool nesterov) {
        const TensorDesc pd = desc_of(param);
        PYL_CHECK_ARG(desc_of(grad) == pd, "sgd_step: grad shape ", desc_of(grad).str(), " differs from param shape ",
                      pd.str());
        if (velocity)
          PYL_CHECK_ARG(desc_of(*velocity) == pd, "sgd_step: velocity shape ", desc_of(*velocity).str(),
                        " differs from param shape ", pd.str());
        float* pp = param.mutable_data();
        float* vp = velocity ? velocity->mutable_data() : nullptr;
        py::gil_scoped_release nogil;
        sgd_step(h, pd, pp, grad.data(), vp, SgdParams{lr, momentum, weight_decay, nesterov});
      },
      py::arg("handle"), py::arg("param").noconvert(), py::arg("grad"), py::arg("velocity").noconvert(),
      py::arg("lr"), py::arg("momentum"), py::arg("weight_decay"), py::arg("nesterov"));

#ifdef PYLENET_HAVE_CUDA
  py::module_ cuda_module = m.def_submodule("cuda", "CUDA backend: device tensors, ops, memory");
  bind_cuda_ops(cuda_module);
#endif
}
