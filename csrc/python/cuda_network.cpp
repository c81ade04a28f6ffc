// Bindings of the CUDA network runtime (csrc/net/cuda_network.h) into pylenet._C.cuda:
// the same surface as the CPU Network (module.cpp), except that parameters and optimizer
// state are exchanged by copy (they live on the device) and data goes through
// DeviceDataset, uploaded once. Marshalling only.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>

#include "net/cuda_network.h"
#include "python/convert.h"

namespace py = pybind11;
using namespace pylenet;
using namespace pylenet::python;

namespace {
using FArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
using LArray = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

TensorDesc desc_of(const py::array& a) { return TensorDesc(std::vector<int64_t>(a.shape(), a.shape() + a.ndim())); }

FArray host_floats(int64_t count) { return FArray(std::vector<int64_t>{count}); }

void check_flat(const FArray& a, int64_t count, const char* what) {
  PYL_CHECK_ARG(a.ndim() == 1 && a.shape(0) == count, "Network.", what, ": expected ", count, " floats, got shape ",
                desc_of(a).str());
}
}  // namespace

void bind_cuda_network(py::module_& m) {
  py::class_<DeviceDataset>(m, "DeviceDataset", "Images (and labels) uploaded once to a device for a Network.")
      .def_property_readonly("count", &DeviceDataset::count)
      .def_property_readonly("device", &DeviceDataset::device)
      .def_property_readonly("nbytes", &DeviceDataset::bytes)
      .def("__len__", &DeviceDataset::count);

  py::class_<CudaNetwork>(m, "Network", "A compiled Sequential on a CUDA device: memory plan, step, epoch.")
      .def(py::init([](const py::list& layers, const std::vector<int64_t>& input, int64_t capacity,
                       const py::dict& optim, const std::string& algo, int device) {
             return std::make_unique<CudaNetwork>(layer_specs_of(layers), input, capacity, optim_spec_of(optim),
                                                  conv_algo_from_name(algo), device);
           }),
           py::arg("layers"), py::arg("input_shape"), py::arg("batch_size"), py::arg("optimizer"),
           py::arg("conv_algo") = "heuristic", py::arg("device") = 0)
      .def_property_readonly("device", &CudaNetwork::device)
      .def_property_readonly("num_params", &CudaNetwork::num_params)
      .def_property_readonly("num_classes", &CudaNetwork::num_classes)
      .def_property_readonly("batch_size", &CudaNetwork::batch_capacity)
      .def_property_readonly("conv_algorithms", &CudaNetwork::conv_algorithms)
      .def_property_readonly("layers", [](CudaNetwork& n) { return layers_list(n.layers()); })
      .def("memory_plan", [](CudaNetwork& n) { return memory_plan_dict(n.memory_plan()); })
      .def_property_readonly("num_state_buffers", &CudaNetwork::num_state_buffers)
      .def_property("optimizer_steps", &CudaNetwork::optimizer_steps, &CudaNetwork::set_optimizer_steps)
      .def("params", [](CudaNetwork& n) {
        FArray out = host_floats(n.num_params());
        n.get_params(out.mutable_data());
        return out;
      }, "A host copy of the flat parameter buffer.")
      .def("set_params", [](CudaNetwork& n, const FArray& a) {
        check_flat(a, n.num_params(), "set_params");
        n.set_params(a.data());
      })
      .def("grads", [](CudaNetwork& n) {
        FArray out = host_floats(n.num_params());
        n.get_grads(out.mutable_data());
        return out;
      }, "A host copy of the last step's gradient.")
      .def("state", [](CudaNetwork& n, int i) {
        FArray out = host_floats(n.num_params());
        n.get_state(i, out.mutable_data());
        return out;
      })
      .def("set_state", [](CudaNetwork& n, int i, const FArray& a) {
        check_flat(a, n.num_params(), "set_state");
        n.set_state(i, a.data());
      })
      .def("upload", [](CudaNetwork& n, const FArray& images, std::optional<LArray> labels, const char* op) {
        TensorDesc ld;
        if (labels) ld = desc_of(*labels);
        check_batch_shapes(op, n.input_shape(), desc_of(images), labels ? &ld : nullptr);
        const int64_t* lp = labels ? labels->data() : nullptr;
        py::gil_scoped_release nogil;
        try {
          return std::make_unique<DeviceDataset>(n.device(), images.data(), lp, images.shape(0), n.sample_floats(),
                                                 n.num_classes());
        } catch (const Error& e) {
          fail(e.kind(), op, ": ", e.what());
        }
      }, py::arg("images"), py::arg("labels") = py::none(), py::arg("op") = "upload",
         "Copies a dataset to the network's device, once; labels are checked here.")
      .def("train_step", [](CudaNetwork& n, const FArray& x, const LArray& y, float lr) {
        const TensorDesc yd = desc_of(y);
        check_batch_shapes("train_step", n.input_shape(), desc_of(x), &yd);
        RunStats s;
        {
          py::gil_scoped_release nogil;
          s = n.train_step(x.data(), y.data(), x.shape(0), lr);
        }
        return stats_dict(s);
      })
      .def("train_epoch", [](CudaNetwork& n, const DeviceDataset& data, const LArray& order, int64_t batch_size,
                             const py::dict& schedule, int64_t iteration, py::object progress, int64_t every) {
        desc_of(order).check("train", "order", 1);
        const ScheduleSpec sched = schedule_spec_of(schedule);
        const ProgressFn fn = progress_fn(progress);
        RunStats s;
        {
          py::gil_scoped_release nogil;
          s = n.train_epoch(data, order.data(), order.shape(0), batch_size, sched, iteration, fn, every);
        }
        return py::make_tuple(stats_dict(s), iteration);
      })
      .def("evaluate", [](CudaNetwork& n, const DeviceDataset& data) {
        RunStats s;
        {
          py::gil_scoped_release nogil;
          s = n.evaluate(data);
        }
        return stats_dict(s);
      })
      .def("predict", [](CudaNetwork& n, const DeviceDataset& data) {
        py::array_t<float> probs(std::vector<int64_t>{data.count(), n.num_classes()});
        float* p = probs.mutable_data();
        {
          py::gil_scoped_release nogil;
          n.predict(data, p);
        }
        return probs;
      });
}
