// Bindings of the graph (csrc/graph/) and the executor (csrc/runtime/) into pylenet._C:
// Python's tracer adds nodes one by one (graph.add), the runtime compiles a graph with the
// model's flat parameter buffer (pylenet/runtime.py). Marshalling only.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <mutex>
#include <optional>

#include "core/error.h"
#include "graph/graph.h"
#include "python/convert.h"
#include "runtime/executor.h"

namespace py = pybind11;
using namespace pylenet;
using namespace pylenet::python;
using graph::Graph;
using graph::Op;

namespace {

using FArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
using LArray = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

// A Python name -> graph op and the attributes it implies.
Op op_of(const std::string& name, graph::Attrs& a) {
  static const std::map<std::string, Op> ops = {
      {"conv2d", Op::Conv2d}, {"linear", Op::Linear}, {"add", Op::Add}, {"cat", Op::Cat},
      {"reshape", Op::Reshape}, {"dropout", Op::Dropout}, {"batch_norm", Op::BatchNorm},
      {"cross_entropy", Op::CrossEntropy}, {"nll_loss", Op::NllLoss}};
  if (name == "max_pool2d" || name == "avg_pool2d") {
    a.pool = name == "max_pool2d" ? PoolMode::Max : PoolMode::Avg;
    return Op::Pool2d;
  }
  if (name == "softmax" || name == "log_softmax") {
    a.log = name == "log_softmax";
    return Op::Softmax;
  }
  if (name == "relu" || name == "tanh" || name == "sigmoid" || name == "leaky_relu") {
    a.act = activation_from_name(name);
    return Op::Activation;
  }
  auto it = ops.find(name);
  PYL_CHECK_ARG(it != ops.end(), "graph: unknown op '", name, "'");
  return it->second;
}

graph::Attrs attrs_of(const py::dict& d, graph::Attrs a) {
  auto get_pair = [&](const char* key, Pair& p) { if (d.contains(key)) p = pair_of(d[key].cast<PairT>()); };
  get_pair("kernel_size", a.kernel);
  get_pair("stride", a.stride);
  get_pair("padding", a.pad);
  if (d.contains("negative_slope")) a.slope = d["negative_slope"].cast<double>();
  if (d.contains("p")) a.p = d["p"].cast<double>();
  if (d.contains("eps")) a.eps = d["eps"].cast<double>();
  if (d.contains("momentum")) a.momentum = d["momentum"].is_none() ? -1.0 : d["momentum"].cast<double>();
  if (d.contains("training")) a.training = d["training"].cast<bool>();
  if (d.contains("shape")) a.shape = d["shape"].cast<std::vector<int64_t>>();
  return a;
}

py::dict attrs_dict(const graph::Node& n) {
  const graph::Attrs& a = n.attrs;
  py::dict d;
  auto pair = [](const Pair& p) { return py::make_tuple(p.h, p.w); };
  switch (n.op) {
    case Op::Conv2d: d["stride"] = pair(a.stride); d["padding"] = pair(a.pad); break;
    case Op::Pool2d:
      d["kernel_size"] = pair(a.kernel); d["stride"] = pair(a.stride); d["padding"] = pair(a.pad);
      break;
    case Op::Activation: if (a.act == Activation::LeakyReLU) d["negative_slope"] = a.slope; break;
    case Op::Reshape: d["shape"] = py::tuple(py::cast(a.shape)); break;
    case Op::Dropout: d["p"] = a.p; break;
    case Op::BatchNorm:
      d["eps"] = a.eps;
      d["momentum"] = a.momentum < 0 ? py::object(py::none()) : py::object(py::float_(a.momentum));
      d["training"] = a.training;
      break;
    default: break;
  }
  return d;
}

const char* kind_name(graph::ValueKind k) {
  return k == graph::ValueKind::Sample ? "sample" : k == graph::ValueKind::Fixed ? "fixed" : "scalar";
}

// The executor and the Python arrays it works in (kept alive with it). An executor holds the
// state of the call it runs (its batch, arenas, totals), so calls from several Python threads
// take turns: `run` releases the GIL, then takes the executor's lock.
struct PyExecutor {
  std::unique_ptr<runtime::Executor> ex;
  std::vector<py::object> keep;
  std::mutex mu;
  template <class F>
  auto run(F&& f) {
    py::gil_scoped_release nogil;
    std::lock_guard<std::mutex> lock(mu);
    return f();
  }
};

void check_flat(const py::array& a, int64_t count, const char* what) {
  PYL_CHECK_ARG(a.ndim() == 1 && a.shape(0) == count && a.dtype().equal(py::dtype::of<float>()) &&
                    (a.flags() & py::array::c_style) && a.writeable(),
                "compile: ", what, " must be a writable float32 array of ", count, " values");
}

void check_batch(const runtime::Executor& ex, const char* op, const py::array& x, const py::array* y) {
  const auto& shape = ex.graph().value(ex.graph().input()).shape;
  std::vector<int64_t> got(x.shape(), x.shape() + x.ndim());
  std::vector<int64_t> per(got.begin() + (got.empty() ? 0 : 1), got.end());
  PYL_CHECK_ARG(x.ndim() == static_cast<int>(shape.size()) + 1 && per == shape, op, ": inputs of shape ",
                TensorDesc(got).str(), " do not match the model input (N, ", TensorDesc(shape).str().substr(1));
  PYL_CHECK_ARG(x.shape(0) >= 1, op, ": no samples");
  if (y) {
    PYL_CHECK_ARG(y->ndim() == 1 && y->shape(0) == x.shape(0), op, ": ", y->ndim() == 1 ? y->shape(0) : -1,
                  " labels for ", x.shape(0), " samples (labels must be (N,))");
  }
}

}  // namespace

void bind_runtime(py::module_& m) {
  py::class_<Graph>(m, "Graph", "A traced model: nodes (ops) over values (tensors), shapes inferred as nodes are added.")
      .def(py::init<>())
      .def("add_input", &Graph::add_input, py::arg("shape"))
      .def("add_labels", &Graph::add_labels)
      .def("add_param", &Graph::add_param, py::arg("name"), py::arg("shape"), py::arg("trainable") = true)
      .def("add_buffer", &Graph::add_buffer, py::arg("name"), py::arg("shape"), py::arg("is_int") = false)
      .def("add", [](Graph& g, const std::string& op, const std::vector<int>& in, const py::dict& attrs,
                     const std::string& scope, const std::string& module, const std::string& where) {
             graph::Attrs a;
             const Op o = op_of(op, a);
             return g.add(o, attrs_of(attrs, a), in, scope, module, where);
           },
           py::arg("op"), py::arg("inputs"), py::arg("attrs") = py::dict(), py::arg("scope") = "",
           py::arg("module") = "", py::arg("where") = "")
      .def("set_trainable", [](Graph& g, int v, bool trainable) {
        const graph::Value& x = g.value(v);
        PYL_CHECK_ARG(x.producer >= 0 && g.nodes()[x.producer].op == Op::Param, "set_trainable: value ", v,
                      " is not a parameter");
        g.values()[v].trainable = trainable;
      })
      .def("set_output", &Graph::set_output)
      .def("set_loss", &Graph::set_loss)
      .def_property_readonly("output", &Graph::output)
      .def_property_readonly("loss", &Graph::loss)
      .def_property_readonly("input", &Graph::input)
      .def_property_readonly("labels", &Graph::labels)
      .def("shape", [](const Graph& g, int v) { return py::tuple(py::cast(g.value(v).shape)); })
      .def("kind", [](const Graph& g, int v) { return kind_name(g.value(v).kind); })
      .def("describe", &Graph::describe)
      .def("value", [](const Graph& g, int v) {
        const graph::Value& x = g.value(v);
        py::dict d;
        d["kind"] = kind_name(x.kind);
        d["shape"] = py::tuple(py::cast(x.shape));
        d["name"] = x.name;
        d["producer"] = x.producer;
        d["is_int"] = x.is_int;
        d["trainable"] = x.trainable;
        return d;
      })
      .def_property_readonly("num_nodes", [](const Graph& g) { return g.nodes().size(); })
      .def("nodes", [](const Graph& g) {
        py::list out;
        for (size_t i = 0; i < g.nodes().size(); ++i) {
          const graph::Node& n = g.nodes()[i];
          py::dict d;
          d["op"] = n.label();
          d["inputs"] = n.in;
          d["outputs"] = n.out;
          d["attrs"] = attrs_dict(n);
          d["scope"] = n.scope;
          d["module"] = n.module;
          d["where"] = n.where;
          d["backward"] = n.backward;
          d["flops"] = g.flops(static_cast<int>(i));
          out.append(d);
        }
        return out;
      }, "Every node as a dict: op, inputs, outputs, attrs, scope, module, where, backward, flops (per sample).");

  py::class_<PyExecutor> exec(m, "Executor", "A compiled graph: memory plan, native steps, epochs and inference.");
  exec.def(py::init([](const Graph& g, const py::dict& config, int64_t num_params, const py::dict& params,
                       const py::dict& offsets, const py::dict& buffers, const py::list& state) {
             runtime::Config cfg;
             const std::string device = config["device"].cast<std::string>();
             PYL_CHECK_ARG(device == "cpu" || device == "cuda", "compile: unknown device '", device, "'");
             cfg.device = device == "cuda" ? Device::CUDA : Device::CPU;
             cfg.cuda_device = config.contains("cuda_device") ? config["cuda_device"].cast<int>() : 0;
             cfg.threads = config["threads"].cast<int>();
             cfg.capacity = config["capacity"].cast<int64_t>();
             cfg.conv_algo = conv_algo_from_name(config["conv_algo"].cast<std::string>());
             cfg.train = config["train"].cast<bool>();
             if (cfg.train) cfg.optim = optim_spec_of(config["optimizer"].cast<py::dict>());
             cfg.seed = config.contains("seed") ? config["seed"].cast<uint64_t>() : 0;
             cfg.device_rules = config.contains("device_rules") && config["device_rules"].cast<bool>();
             cfg.fuse = !config.contains("fuse") || config["fuse"].cast<bool>();
             auto px = std::make_unique<PyExecutor>();
             runtime::Bindings b;
             PYL_CHECK_ARG(num_params >= 0, "compile: bad parameter count ", num_params);
             b.num_params = num_params;
             b.param_offset.assign(g.values().size(), -1);
             b.param_ptr.assign(g.values().size(), nullptr);
             b.buffer_ptr.assign(g.values().size(), nullptr);
             for (auto item : offsets) b.param_offset.at(item.first.cast<size_t>()) = item.second.cast<int64_t>();
             for (auto item : params) {
               py::array a = py::reinterpret_borrow<py::array>(item.second);
               const size_t v = item.first.cast<size_t>();
               const graph::Value& val = g.value(static_cast<int>(v));
               PYL_CHECK_ARG(a.dtype().equal(py::dtype::of<float>()) && a.size() == val.numel() &&
                                 (a.flags() & py::array::c_style) && a.writeable(),
                             "compile: parameter ", val.name, " must be a writable float32 array of ", val.numel(),
                             " values");
               b.param_ptr.at(v) = static_cast<float*>(a.mutable_data());
               px->keep.push_back(a);
             }
             for (auto item : buffers) {
               py::array a = py::reinterpret_borrow<py::array>(item.second);
               const size_t v = item.first.cast<size_t>();
               const graph::Value& val = g.value(static_cast<int>(v));
               // equal, not is: an unpickled array has its own (equivalent) dtype object
               const bool ok = a.dtype().equal(val.is_int ? py::dtype::of<int64_t>() : py::dtype::of<float>()) &&
                               a.size() == val.numel() && (a.flags() & py::array::c_style) && a.writeable();
               PYL_CHECK_ARG(ok, "compile: buffer ", val.name, " must be a writable ", val.is_int ? "int64" : "float32",
                             " array of ", val.numel(), " values");
               b.buffer_ptr.at(v) = a.mutable_data();
               px->keep.push_back(a);
             }
             for (auto s : state) {
               py::array a = py::reinterpret_borrow<py::array>(s);
               check_flat(a, num_params, "an optimizer state buffer");
               b.state.push_back(static_cast<float*>(a.mutable_data()));
               px->keep.push_back(a);
             }
             px->run([&] { px->ex = std::make_unique<runtime::Executor>(g, cfg, std::move(b)); });
             return px;
           }),
           py::arg("graph"), py::arg("config"), py::arg("num_params"), py::arg("params"), py::arg("param_offsets"),
           py::arg("buffers"), py::arg("state"))
      .def_property_readonly("conv_algorithms", [](PyExecutor& p) { return p.ex->conv_algorithms(); })
      .def_property_readonly("chunk", [](PyExecutor& p) { return p.ex->chunk(); },
                             "Samples per chunk: a batch is split into chunks of this size (CUDA: one).")
      .def("thread_counts", [](PyExecutor& p, bool training) {
             return p.run([&] { return p.ex->governor(training).steps_at(); });
           }, py::arg("training"),
           "Steps (training) or forward batches run at each worker count so far (index: workers - 1).")
      .def_property("optimizer_steps", [](PyExecutor& p) { return p.ex->optimizer_steps(); },
                    [](PyExecutor& p, int64_t n) {
                      PYL_CHECK_ARG(n >= 0, "optimizer_steps must be >= 0, got ", n);
                      p.ex->set_optimizer_steps(n);
                    })
      .def("memory_plan", [](PyExecutor& p) { return memory_plan_dict(p.ex->memory_plan()); })
      .def("graph", [](PyExecutor& p) { return p.ex->graph(); }, "The compiled graph (passes applied, backward added).")
      .def("instructions", [](PyExecutor& p) {
        py::list out;
        const auto& phases = p.ex->phases();
        for (size_t ph = 0; ph < phases.size(); ++ph)
          for (int k : phases[ph].instrs) {
            const runtime::Instr& ins = p.ex->instrs()[k];
            py::dict d;
            d["index"] = k;
            d["op"] = ins.label;
            d["node"] = ins.node;
            d["phase"] = ph;
            d["batch"] = phases[ph].batch;
            d["algo"] = (ins.kind == runtime::Instr::ConvFwd || ins.kind == runtime::Instr::ConvBwdData ||
                         ins.kind == runtime::Instr::ConvBwdFilter || ins.kind == runtime::Instr::ConvBwd)
                            ? conv_algo_name(ins.algo) : "";
            out.append(d);
          }
        return out;
      })
      .def("grads", [](PyExecutor& p) -> py::array {
        PYL_CHECK_ARG(p.ex->config().train, "grads(): an inference executor has no gradients");
        if (!p.ex->on_device())
          return py::array_t<float>({p.ex->num_params()}, {static_cast<int64_t>(sizeof(float))}, p.ex->grads(),
                                    py::cast(&p, py::return_value_policy::reference));
        py::array_t<float> out({p.ex->num_params()});
        float* dst = out.mutable_data();
        p.run([&] { p.ex->copy_grads(dst); });
        return out;
      }, "The summed gradient of the last step: a view on the CPU, a host copy from a GPU.")
      .def("set_profiling", [](PyExecutor& p, bool on) { p.run([&] { p.ex->set_profiling(on); }); })
      .def("profile", [](PyExecutor& p) { return p.run([&] { return p.ex->profile(); }); })
      .def("upload_state", [](PyExecutor& p) { p.run([&] { p.ex->upload_state(); }); })
      .def("download_state", [](PyExecutor& p) { p.run([&] { p.ex->download_state(); }); })
      .def("train_step", [](PyExecutor& p, const FArray& x, const LArray& y, float lr) {
        check_batch(*p.ex, "train_step", x, &y);
        return stats_dict(p.run([&] { return p.ex->train_step(x.data(), y.data(), x.shape(0), lr); }));
      })
      .def("train_epoch", [](PyExecutor& p, const FArray& images, const LArray& labels, const LArray& order,
                             int64_t batch_size, const py::dict& schedule, int64_t iteration, py::object progress,
                             int64_t every) {
        check_batch(*p.ex, "train", images, &labels);
        PYL_CHECK_ARG(order.ndim() == 1, "train: order must be 1-D");
        const runtime::ScheduleSpec sched = schedule_spec_of(schedule);
        const runtime::ProgressFn fn = progress_fn(progress);
        const runtime::RunStats s = p.run([&] {
          return p.ex->train_epoch(images.data(), labels.data(), images.shape(0), order.data(), order.shape(0),
                                   batch_size, sched, iteration, fn, every);
        });
        return py::make_tuple(stats_dict(s), iteration);
      })
      .def("forward", [](PyExecutor& p, const FArray& x, std::optional<LArray> labels, bool outputs,
                         std::optional<uint64_t> seed) {
        check_batch(*p.ex, labels ? "evaluate" : "forward", x, labels ? &*labels : nullptr);
        const auto& shape = p.ex->graph().value(p.ex->graph().output() >= 0 ? p.ex->graph().output() : p.ex->graph().input()).shape;
        std::vector<int64_t> out_shape{x.shape(0)};
        out_shape.insert(out_shape.end(), shape.begin(), shape.end());
        FArray out(outputs ? out_shape : std::vector<int64_t>{0});
        float* op = outputs ? out.mutable_data() : nullptr;
        const runtime::RunStats s = p.run([&] {
          if (seed) p.ex->set_seed(*seed);  // under the lock: the masks of this call
          return p.ex->forward(x.data(), labels ? labels->data() : nullptr, x.shape(0), op);
        });
        return py::make_tuple(out, stats_dict(s));
      }, py::arg("x"), py::arg("labels") = py::none(), py::arg("outputs") = true, py::arg("seed") = py::none(),
      "Outputs (N, *output) and, with labels, the loss and accuracy totals; `seed` keys this call's dropout.");

#ifdef PYLENET_HAVE_CUDA
  using Data = runtime::Executor::DeviceData;
  py::class_<Data, std::shared_ptr<Data>>(m, "DeviceData", "A dataset resident on a device (uploaded once).")
      .def("__len__", [](const Data& d) { return d.count; });
  exec.def("upload", [](PyExecutor& p, const FArray& images, std::optional<LArray> labels) {
        check_batch(*p.ex, "upload", images, labels ? &*labels : nullptr);
        const int64_t* lp = labels ? labels->data() : nullptr;
        return p.run([&] { return p.ex->upload(images.data(), lp, images.shape(0)); });
      }, py::arg("images"), py::arg("labels") = py::none(),
      "Copies a dataset to the executor's device, once; labels are checked here.")
      .def("train_epoch_device", [](PyExecutor& p, const Data& data, const LArray& order, int64_t batch_size,
                                    const py::dict& schedule, int64_t iteration, py::object progress, int64_t every) {
        PYL_CHECK_ARG(order.ndim() == 1, "train: order must be 1-D");
        const runtime::ScheduleSpec sched = schedule_spec_of(schedule);
        const runtime::ProgressFn fn = progress_fn(progress);
        const runtime::RunStats s = p.run([&] {
          return p.ex->train_epoch_device(data, order.data(), order.shape(0), batch_size, sched, iteration, fn, every);
        });
        return py::make_tuple(stats_dict(s), iteration);
      })
      .def("evaluate_device", [](PyExecutor& p, const Data& data) {
        return stats_dict(p.run([&] { return p.ex->evaluate_device(data); }));
      })
      .def_property("cuda_graphs", [](PyExecutor& p) { return p.run([&] { return p.ex->cuda_graph_stats().enabled; }); },
                    [](PyExecutor& p, bool on) { p.run([&] { p.ex->set_cuda_graphs(on); }); },
                    "Capture a full training step of train_epoch_device as a CUDA graph and replay it.")
      .def("cuda_graph_stats", [](PyExecutor& p) {
        const auto g = p.run([&] { return p.ex->cuda_graph_stats(); });
        const auto counts = [](const runtime::Executor::GraphCounts& c, py::dict d) {
          d["captures"] = c.captures;
          d["replayed_steps"] = c.replayed;
          d["eager_steps"] = c.eager;
          d["kernels_per_step"] = c.kernels_per_step;
          d["graph_nodes"] = c.graph_nodes;
          return d;
        };
        py::dict d = counts(g.train, py::dict());
        d["eval"] = counts(g.eval, py::dict());
        d["enabled"] = g.enabled;
        d["off_reason"] = g.off_reason;
        return d;
      }, "Full training steps (and, under 'eval', evaluation batches) run as graph replays and eagerly, "
         "the kernel launches of an eager one and the nodes of the graph.");
#endif

  m.def("schedule_lr", [](const py::dict& s, double lr, int64_t iter) {
    return runtime::schedule_lr(schedule_spec_of(s), lr, iter);
  });
}
