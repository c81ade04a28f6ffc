// Placeholder: bindings of the CUDA network runtime.
#include <pybind11/pybind11.h>
namespace py = pybind11;
void bind_cuda_network(py::module_& m) {}
