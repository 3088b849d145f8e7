// gradclip._core: registration only. Each job's functions live in their own file (see
// bindings.hpp) and are registered here, in the order their types are needed.
#include "bindings.hpp"

namespace gradclip_py {
void register_torch_grads(py::module_& m);  // torch_grads.cpp: gradclip.torch's per-tensor reads
}  // namespace gradclip_py

PYBIND11_MODULE(_core, m, pybind11::mod_gil_not_used()) {
    m.doc() = "gradclip's compiled core (private; use the gradclip package)";
    gradclip_py::register_runtime(m);
    gradclip_py::register_batch(m);
    gradclip_py::register_gradset(m);
    gradclip_py::register_copies(m);
    gradclip_py::register_slices(m);
    gradclip_py::register_torch_grads(m);
}
