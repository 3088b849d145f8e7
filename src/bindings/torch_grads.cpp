// gradclip._core.TorchGrads: the per-tensor half of gradclip.torch's calls (reading each
// parameter's .grad, checking it, describing its memory) in C++, so that a call on a model of
// thousands of tensors does no per-tensor work in the interpreter.
//
// Built without torch: the tensors are read through the Python C API only (attributes and
// methods any torch.Tensor has: .grad, data_ptr(), nbytes, dtype, is_contiguous(), is_cpu,
// layout, is_neg()), and the few torch objects it compares against (torch.Tensor, the dtypes,
// torch.strided) are handed over by gradclip.torch. Nothing here refuses a tensor: whatever is
// not the plain case (an exact torch.Tensor on the CPU, strided, contiguous, of a float dtype,
// no negative bit, no tensor twice, no two sharing memory, every read without an exception)
// makes take() return None, and gradclip.torch's Python path decides (and raises, naming the
// tensor, with its own messages), before anything is written.
//
// The record of the last call's tensors never holds them or their memory: their identities are
// kept with weak references (whose callbacks say when one died, so a new tensor at a reused
// address never matches), their memory as raw spans that are only used after the check has
// found every tensor alive, the same object, with the same data pointer, size, dtype and
// contiguity; the lease a call gets holds the call's tensors until its operation is over.
#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "bindings.hpp"

namespace gradclip_py {
namespace {

// Interned attribute names, made at registration (the GIL is held then).
PyObject* s_grad = nullptr;
PyObject* s_data_ptr = nullptr;
PyObject* s_nbytes = nullptr;
PyObject* s_dtype = nullptr;
PyObject* s_is_contiguous = nullptr;
PyObject* s_is_cpu = nullptr;
PyObject* s_layout = nullptr;
PyObject* s_is_neg = nullptr;

// A new reference, stolen into an object that releases it.
inline py::object steal(PyObject* o) { return py::reinterpret_steal<py::object>(o); }

// The identities of one call's tensors: a weak reference to each (not None), whose callback
// raises `dead` when one dies (then its address may be reused by a new tensor).
struct Identity {
    std::vector<py::object> refs;
    std::shared_ptr<std::atomic<bool>> dead = std::make_shared<std::atomic<bool>>(false);
};

// One item's tensor as the record saw it; obj and dtype are compared by address only.
struct Entry {
    PyObject* obj = nullptr;  // the tensor, or Py_None
    std::uintptr_t ptr = 0;
    Py_ssize_t nbytes = 0;
    PyObject* dtype = nullptr;
    DType dt = DType::F32;
    bool has_span = false;  // not None and not empty
};

// The record of one call's tensors. Read-only once published, except `plan`, set once by the
// call that finds the same tensors a second time (a lease captures the plan pointer it was made
// with, so no other thread reads the member while it is set).
struct State {
    std::vector<Entry> entries;  // one per item
    std::vector<Span> spans;     // the non-empty tensors, in item order
    std::shared_ptr<Identity> ident;
    std::unique_ptr<gradclip::PlanCache> plan;
    unsigned dtypes = 0;  // bit DType of every tensor seen (empty ones too): the norm's dtype
    bool grads = false;   // the items were parameters (their .grad was read)
};

// The torch objects a read compares against.
struct Names {
    py::object tensor, parameter, strided, callback;
    PyObject* dtypes[gradclip::kNumDTypes] = {};  // in DType order; bf16 may be None
};

// The kernels' view of one call: the record's spans and plan, and the call's tensors (strong
// references, so the memory stays alive while the GIL is released).
class Lease {
public:
    Lease(std::shared_ptr<State> st, std::vector<py::object> refs)
        : st_(std::move(st)), plan_(st_->plan.get()), refs_(std::move(refs)) {}

    unsigned dtypes() const noexcept { return st_->dtypes; }
    std::size_t size() const noexcept { return st_->spans.size(); }

    double total_norm(double p) const {
        py::gil_scoped_release nogil;  // safe: no Python object is touched until re-acquired
        return gradclip::total_norm(spans(), n(), spec_from(p), plan_);
    }
    py::tuple clip_total(double max_norm, double p, NonFinite mode, double eps) const {
        double norm, coef = 1.0;
        {
            py::gil_scoped_release nogil;
            norm = gradclip::clip_total(spans(), n(), spec_from(p), max_norm, eps, mode, plan_, &coef);
        }
        return py::make_tuple(norm, coef);
    }
    double apply_norm(double max_norm, double norm, double eps, NonFinite mode) const {
        py::gil_scoped_release nogil;
        return gradclip::apply_global_clip(spans(), n(), norm, max_norm, eps, mode, plan_);
    }
    void clamp(double lo, double hi) const {
        py::gil_scoped_release nogil;
        gradclip::clamp_all(spans(), n(), lo, hi, plan_);
    }

private:
    const Span* spans() const noexcept { return st_->spans.data(); }
    std::size_t n() const noexcept { return st_->spans.size(); }

    std::shared_ptr<State> st_;
    const gradclip::PlanCache* plan_;
    std::vector<py::object> refs_;
};

// What a read of one tensor found.
enum class Read { Same, Changed, Refer };  // Refer: the Python path must decide

// r is a new reference (or null with an exception set): whether it is `want`, releasing it.
inline int is(PyObject* r, PyObject* want) {
    if (!r) return -1;
    const int same = r == want;
    Py_DECREF(r);
    return same;
}

// data_ptr() and nbytes of t, false (exception cleared by the caller) when a read fails.
bool memory_of(PyObject* t, std::uintptr_t& ptr, Py_ssize_t& nbytes) {
    PyObject* p = PyObject_CallMethodNoArgs(t, s_data_ptr);
    if (!p) return false;
    ptr = reinterpret_cast<std::uintptr_t>(PyLong_AsVoidPtr(p));
    Py_DECREF(p);
    if (PyErr_Occurred()) return false;
    PyObject* b = PyObject_GetAttr(t, s_nbytes);
    if (!b) return false;
    nbytes = PyLong_AsSsize_t(b);
    Py_DECREF(b);
    return !PyErr_Occurred();
}

// Whether the tensor of entry e still has the memory e describes (t is e.obj, known alive).
Read check(PyObject* t, const Entry& e) {
    std::uintptr_t ptr = 0;
    Py_ssize_t nbytes = 0;
    if (!memory_of(t, ptr, nbytes)) return Read::Refer;
    if (ptr != e.ptr || nbytes != e.nbytes) return Read::Changed;
    const int dt = is(PyObject_GetAttr(t, s_dtype), e.dtype);
    if (dt <= 0) return dt < 0 ? Read::Refer : Read::Changed;
    const int contiguous = is(PyObject_CallMethodNoArgs(t, s_is_contiguous), Py_True);
    if (contiguous < 0) return Read::Refer;
    return contiguous ? Read::Same : Read::Changed;
}

// Describes tensor t as a dense span (every check of the plain case), or Refer.
Read describe(PyObject* t, const Names& names, bool bf16, bool allow_parameter, Entry& e, Span& s) {
    const PyObject* type = reinterpret_cast<PyObject*>(Py_TYPE(t));
    if (type != names.tensor.ptr() && !(allow_parameter && type == names.parameter.ptr())) return Read::Refer;
    if (is(PyObject_GetAttr(t, s_is_cpu), Py_True) != 1) return Read::Refer;
    if (is(PyObject_GetAttr(t, s_layout), names.strided.ptr()) != 1) return Read::Refer;
    PyObject* dtype = PyObject_GetAttr(t, s_dtype);
    if (!dtype) return Read::Refer;
    Py_DECREF(dtype);  // compared by address: the dtypes are torch's module-level objects
    int k = 0;
    while (k < gradclip::kNumDTypes && names.dtypes[k] != dtype) ++k;
    if (k == gradclip::kNumDTypes || dtype == Py_None) return Read::Refer;
    const auto dt = static_cast<DType>(k);
    if (dt == DType::BF16 && !bf16) return Read::Refer;  // the Python path says what is missing
    if (is(PyObject_CallMethodNoArgs(t, s_is_neg), Py_False) != 1) return Read::Refer;
    if (is(PyObject_CallMethodNoArgs(t, s_is_contiguous), Py_True) != 1) return Read::Refer;
    if (!memory_of(t, e.ptr, e.nbytes)) return Read::Refer;
    const std::size_t item = gradclip::itemsize(dt);
    if (e.nbytes < 0 || static_cast<std::size_t>(e.nbytes) % item != 0) return Read::Refer;
    e.obj = t;
    e.dtype = dtype;
    e.dt = dt;
    e.has_span = e.nbytes > 0;
    s = Span{};
    s.data = reinterpret_cast<char*>(e.ptr);
    s.n = static_cast<std::size_t>(e.nbytes) / item;
    s.dt = dt;
    return Read::Same;
}

// The record of one list of tensors, from call to call (a GradClipper's, or the drop-ins' for
// one model). The slot is taken for the length of a call with an atomic exchange, so a call on
// another thread meanwhile finds it empty and reads its tensors afresh.
class TorchGrads {
public:
    TorchGrads(py::object tensor, py::object parameter, py::object strided, py::tuple dtypes) {
        names_.tensor = std::move(tensor);
        names_.parameter = std::move(parameter);
        names_.strided = std::move(strided);
        if (dtypes.size() != gradclip::kNumDTypes) throw py::value_error("four dtypes, in DType order");
        for (std::size_t k = 0; k < dtypes.size(); ++k) {
            dtype_refs_.push_back(dtypes[k]);
            names_.dtypes[k] = dtype_refs_.back().ptr();
        }
    }

    bool cached() const {
        const std::shared_ptr<State> st = std::atomic_load(&slot_);
        return st && st->plan;
    }
    std::size_t builds() const noexcept { return builds_; }
    void clear() { std::atomic_store(&slot_, std::shared_ptr<State>()); }

    // The lease for the tensors of `items` (their .grad when `grads`), or None (the Python path
    // decides; the record is then forgotten). The same tensors with the same memory as the last
    // call: its record (the chunk plan built on the second such call). Otherwise a new record of
    // the current tensors, read and checked here.
    py::object take(const py::handle& items, bool grads, bool bf16) {
        const py::object seq = steal(PySequence_Fast(items.ptr(), "items must be a sequence"));
        const Py_ssize_t count = PySequence_Fast_GET_SIZE(seq.ptr());
        PyObject** item = PySequence_Fast_ITEMS(seq.ptr());
        std::shared_ptr<State> old = std::atomic_exchange(&slot_, std::shared_ptr<State>());
        const auto n = static_cast<std::size_t>(count);
        if (old && (old->entries.size() != n || old->grads != grads || old->ident->dead->load())) old.reset();

        std::vector<py::object> refs;  // the call's tensors (None included), held by the lease
        refs.reserve(n);
        std::shared_ptr<State> nx;  // the new record, from the first item that differs
        bool same_ids = old != nullptr;
        std::size_t spans_before = 0;  // the old record's spans of the items before the difference
        for (std::size_t i = 0; i < n; ++i) {
            PyObject* t;
            if (grads) {
                if (!PyObject_TypeCheck(item[i], reinterpret_cast<PyTypeObject*>(names_.tensor.ptr()))) return refer();
                t = PyObject_GetAttr(item[i], s_grad);
                if (!t) return refer();
            } else {
                t = item[i];
                Py_INCREF(t);
            }
            refs.push_back(steal(t));
            if (!nx) {
                const Entry& e = old ? old->entries[i] : Entry{};
                Read r = Read::Changed;
                if (old && t == e.obj) r = t == Py_None ? Read::Same : check(t, e);
                if (r == Read::Refer) return refer();
                if (r == Read::Same) {
                    spans_before += e.has_span ? 1 : 0;
                    continue;
                }
                // the first difference: the items before it are as the old record says
                nx = start(old, i, spans_before, grads, n);
            }
            Entry e;
            Span s;
            if (t != Py_None) {
                if (describe(t, names_, bf16, !grads, e, s) != Read::Same) return refer();
                if (e.has_span) nx->spans.push_back(s);
                nx->dtypes |= 1u << static_cast<unsigned>(e.dt);
            } else {
                e.obj = Py_None;
            }
            nx->entries.push_back(e);
        }
        // a tensor of the old record that died during the reads: its address may have been
        // reused by one of this call's tensors, so nothing of the old record is trusted
        if (old && old->ident->dead->load()) return refer();
        if (!nx) {  // the same tensors, the same memory
            if (!old->plan) {
                old->plan = std::make_unique<gradclip::PlanCache>(old->spans.data(), old->spans.size());
                ++builds_;
            }
            return publish(old, std::move(refs));
        }
        // the same tensor objects as the old record's, every one (its memory may have changed)
        for (std::size_t i = 0; same_ids && i < n; ++i) same_ids = refs[i].ptr() == old->entries[i].obj;
        if (!apart(*nx)) return refer();
        if (same_ids) {
            nx->ident = old->ident;
            // the same tensors seen twice in a row: a plan over their current memory, unless the
            // record had one (then the memory changed under kept spans: seen once again)
            if (!old->plan) {
                nx->plan = std::make_unique<gradclip::PlanCache>(nx->spans.data(), nx->spans.size());
                ++builds_;
            }
        } else {
            nx->ident = std::make_shared<Identity>();
            if (!watch(*nx->ident, refs)) return refer();
        }
        return publish(nx, std::move(refs));
    }

private:
    // A new record whose first `i` items are the old record's (their first `spans` spans).
    static std::shared_ptr<State> start(const std::shared_ptr<State>& old, std::size_t i, std::size_t spans, bool grads,
                                        std::size_t n) {
        auto nx = std::make_shared<State>();
        nx->grads = grads;
        nx->entries.reserve(n);
        nx->spans.reserve(old ? std::max(old->spans.size(), spans) : n);
        if (old) {
            nx->entries.assign(old->entries.begin(), old->entries.begin() + static_cast<std::ptrdiff_t>(i));
            nx->spans.assign(old->spans.begin(), old->spans.begin() + static_cast<std::ptrdiff_t>(spans));
            for (std::size_t k = 0; k < i; ++k) {
                const Entry& e = old->entries[k];
                if (e.obj != Py_None) nx->dtypes |= 1u << static_cast<unsigned>(e.dt);
            }
        }
        return nx;
    }

    // No tensor twice and no two sharing a byte (the engine's overlap rule); empty tensors
    // by identity.
    static bool apart(const State& st) {
        std::vector<gradclip::ByteRange> ranges;
        ranges.reserve(st.spans.size());
        for (std::size_t k = 0; k < st.spans.size(); ++k) {
            const Span& s = st.spans[k];
            ranges.push_back({s.data, s.data + s.n * gradclip::itemsize(s.dt), k});
        }
        std::size_t a = 0, b = 0;
        if (gradclip::find_overlap(ranges, a, b)) return false;
        std::vector<PyObject*> empty;
        for (const Entry& e : st.entries)
            if (e.obj != Py_None && !e.has_span) empty.push_back(e.obj);
        std::sort(empty.begin(), empty.end());
        return std::adjacent_find(empty.begin(), empty.end()) == empty.end();
    }

    // Weak references to the call's tensors whose callback raises the identity's flag.
    bool watch(Identity& id, const std::vector<py::object>& refs) const {
        auto dead = id.dead;
        const py::cpp_function died([dead](const py::handle&) { dead->store(true); });
        id.refs.reserve(refs.size());
        for (const py::object& t : refs) {
            if (t.is_none()) continue;
            PyObject* r = PyWeakref_NewRef(t.ptr(), died.ptr());
            if (!r) return false;
            id.refs.push_back(steal(r));
        }
        return true;
    }

    py::object publish(std::shared_ptr<State> st, std::vector<py::object> refs) {
        std::atomic_store(&slot_, st);
        return py::cast(Lease(std::move(st), std::move(refs)));
    }
    // The Python path decides: the record is forgotten, an exception of a read cleared (the
    // Python path reads the same tensor and raises, naming it).
    static py::object refer() {
        PyErr_Clear();
        return py::none();
    }

    Names names_;
    std::vector<py::object> dtype_refs_;
    std::shared_ptr<State> slot_;
    std::size_t builds_ = 0;
};

PyObject* intern(const char* s) {
    PyObject* o = PyUnicode_InternFromString(s);
    if (!o) throw py::error_already_set();
    return o;  // kept for the life of the process, as the module's other interned names
}

}  // namespace

void register_torch_grads(py::module_& m) {
    s_grad = intern("grad");
    s_data_ptr = intern("data_ptr");
    s_nbytes = intern("nbytes");
    s_dtype = intern("dtype");
    s_is_contiguous = intern("is_contiguous");
    s_is_cpu = intern("is_cpu");
    s_layout = intern("layout");
    s_is_neg = intern("is_neg");
    py::class_<Lease>(m, "TorchLease", "A call's tensors as spans, held until its operation is over.")
        .def_property_readonly("dtypes", &Lease::dtypes)
        .def("__len__", &Lease::size)
        .def("total_norm", &Lease::total_norm)
        .def("clip_total", &Lease::clip_total)
        .def("apply_norm", &Lease::apply_norm)
        .def("clamp", &Lease::clamp);
    py::class_<TorchGrads>(m, "TorchGrads", "gradclip.torch's record of a list of tensors, from call to call.")
        .def(py::init<py::object, py::object, py::object, py::tuple>(), py::arg("tensor"), py::arg("parameter"),
             py::arg("strided"), py::arg("dtypes"))
        .def("take", &TorchGrads::take, py::arg("items"), py::arg("grads"), py::arg("bf16"))
        .def_property_readonly("cached", &TorchGrads::cached)
        .def_property_readonly("builds", &TorchGrads::builds)
        .def("clear", &TorchGrads::clear);
}

}  // namespace gradclip_py
