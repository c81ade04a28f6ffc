// Placeholder: bindings of the CUDA ops, device tensors and memory statistics.
#include <pybind11/pybind11.h>
namespace py = pybind11;
void bind_cuda_ops(py::module_& m) {}
