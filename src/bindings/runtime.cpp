// The engine's process-wide state and helpers as Python sees them: the C ABI capsule, the
// CPU target, the thread count, the combination of partial norms, and the bandwidth probes
// the benchmarks use.
#include <pybind11/stl.h>

#include <cstddef>
#include <string>
#include <vector>

#include "bindings.hpp"
#include "gradclip/capi.h"

namespace gradclip_py {
namespace {

// clipped(coef): the engine's rule (coef_writes) on a float, with no allocation
PyObject* clipped_of(PyObject*, PyObject* coef) noexcept {
    const double c = PyFloat_AsDouble(coef);
    if (c == -1.0 && PyErr_Occurred()) return nullptr;
    return PyBool_FromLong(gradclip::coef_writes(c) ? 1 : 0);
}

}  // namespace

void register_runtime(py::module_& m) {
    // The C ABI for gradclip.cython_api and other native callers: the same engine instance, so
    // set_num_threads and the CPU target apply to them too. The table is static; the capsule
    // needs no destructor.
    m.attr("_C_API") = py::capsule(static_cast<const void*>(gradclip_capi_table()), GRADCLIP_CAPI_CAPSULE);
    m.def(
        "norm_of_norms",
        [](const std::vector<double>& norms, double p) {
            return gradclip::norm_of_norms(norms.data(), norms.size(), spec_from(p));
        },
        py::arg("norms"), py::arg("p"), "The p-norm of parts given the p-norm of each (the engine's one combination).");
    // The Python functions read "clipped" after their write, where an allocation that fails
    // would raise with the gradients already changed: a plain METH_O function, which CPython
    // calls without allocating (pybind11's dispatcher allocates its argument list).
    static PyMethodDef clipped_def = {
        "clipped", clipped_of, METH_O,
        "clipped(coef, /)\n--\n\nWhether a step with this applied coefficient clipped: coef < 1 or NaN (the "
        "engine's one rule)."};
    PyObject* clipped = PyCFunction_NewEx(&clipped_def, nullptr, m.attr("__name__").ptr());
    if (clipped == nullptr) throw py::error_already_set();
    m.add_object("clipped", py::reinterpret_steal<py::object>(clipped));
    m.def("cpu_target", &gradclip::current_target);
    m.def("available_cpu_targets", &gradclip::available_targets);
    m.def("set_cpu_target", [](const std::string& name) { return gradclip::set_target(name); });
    m.def("init_cpu_target", [](const std::string& forced) { return gradclip::init_target(forced.c_str()); });
    m.def("set_num_threads", &gradclip::set_num_threads);
    m.def("get_num_threads", &gradclip::get_num_threads);
    m.def("have_openmp", &gradclip::have_openmp);
    m.def("warm_threads", &gradclip::warm_threads, "Start this thread's OpenMP team now (see the engine).");
    m.def("allow_team", &gradclip::allow_team, "Let this thread's large calls use an OpenMP team (see the engine).");
    m.def(
        "probe_read",
        [](const py::buffer& buf) {
            const py::buffer_info info = buf.request();
            const auto bytes = static_cast<std::size_t>(info.size * info.itemsize);
            py::gil_scoped_release nogil;
            return gradclip::probe_read(static_cast<const char*>(info.ptr), bytes);
        },
        "Read every 64-bit word of a contiguous buffer once (bandwidth ceiling for benchmarks).");
    m.def(
        "probe_rw",
        [](const py::buffer& buf) {
            const py::buffer_info info = buf.request(true);
            const auto bytes = static_cast<std::size_t>(info.size * info.itemsize);
            py::gil_scoped_release nogil;
            gradclip::probe_rw(static_cast<char*>(info.ptr), bytes);
        },
        "Read and write back every 64-bit word of a contiguous buffer (data unchanged).");
}

}  // namespace gradclip_py
