// The GradientSet: a pytree of arrays validated once, and every operation over it. Each
// operation has one binding entry, bound twice: as a GradientSet method and, through a
// one-shot set, as a function of _core.once.
#include <atomic>
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "bindings.hpp"

namespace gradclip_py {
namespace {

// ------------------------------------------------------------------ one-shot plans
// A call's chunk plan follows its arrays' lengths and element types only (never addresses or
// threads). A training loop's free-function calls repeat those every step, yet each built its
// plan again, once per pass (a clipping call twice): for 100 arrays of 100 about a tenth of
// the call. So the lengths and types of the last one-shot call are kept, and when a call
// repeats them the plans are built once, as a GradientSet's are (PlanCache), and lent to the
// calls that repeat them after. One process-wide slot, taken and given back with atomic
// exchanges: a call that finds it empty (another thread holds it) builds its plans as before.
struct PlanMemo {
    std::vector<std::size_t> n;
    std::vector<DType> dt;
    std::unique_ptr<gradclip::PlanCache> plan;  // for n and dt, once two calls had them

    bool same(const Span* spans, std::size_t count) const noexcept {
        if (n.size() != count) return false;
        for (std::size_t i = 0; i < count; ++i)
            if (spans[i].n != n[i] || spans[i].dt != dt[i]) return false;
        return true;
    }
};
std::atomic<PlanMemo*> g_plan_memo{nullptr};  // leaked at exit on purpose, as _init's helpers

struct GiveBack {
    void operator()(PlanMemo* m) const noexcept {
        PlanMemo* empty = nullptr;
        if (!g_plan_memo.compare_exchange_strong(empty, m, std::memory_order_acq_rel)) delete m;
    }
};
using MemoLease = std::unique_ptr<PlanMemo, GiveBack>;

// The plans for a one-shot call's spans, when the last one-shot call had the same lengths and
// types (built now if that call did not have them yet), else null and `spans` remembered.
// Allocates only before the caller's first write (a std::bad_alloc is a MemoryError then).
const gradclip::PlanCache* lend_plans(MemoLease& lease, const Span* spans, std::size_t count) {
    if (count < 2) return nullptr;  // one array's plan costs next to nothing
    lease.reset(g_plan_memo.exchange(nullptr, std::memory_order_acq_rel));
    if (!lease) lease.reset(new PlanMemo);
    PlanMemo& m = *lease;
    if (!m.same(spans, count)) {
        m.plan.reset();
        m.n.resize(count);
        m.dt.resize(count);
        for (std::size_t i = 0; i < count; ++i) {
            m.n[i] = spans[i].n;
            m.dt[i] = spans[i].dt;
        }
        return nullptr;
    }
    if (!m.plan) m.plan = std::make_unique<gradclip::PlanCache>(spans, count);
    return m.plan.get();
}

// ------------------------------------------------------------------ the operations
// A pytree of arrays, validated once, and every operation over it: each operation's one
// binding entry. gradclip.GradientSet keeps one (cached: the chunking plan is computed once,
// and each call first re-checks, in C++ and without touching reference counts, that no array
// was resized or re-allocated since: data pointer, shape, strides; a writing call also that
// the arrays are writeable and share no memory). Every free function makes a one-shot one
// (not cached: its arrays were parsed a moment ago, and the plan goes into a per-thread
// buffer), validated for a write only when its operation writes: reading calls take
// read-only arrays and the same array twice.
class GradSet {
public:
    GradSet(const py::handle& grads, const std::string& arg, bool single, bool cached, bool write = true) {
        parse(grads, arg, single, b_, write);
        if (!cached) {
            if (write) check_writable(b_, true);
            lent_ = lend_plans(memo_, b_.spans.data(), b_.spans.size());
            return;
        }
        data0_.reserve(b_.keep.size());
        for (const py::array& a : b_.keep) data0_.push_back(a.data());
        // the lists and dicts the caller may change after this (L[0] = new_array,
        // grads['enc']['w'] = new_array), at any depth: their items, by identity, for check()
        // to notice (tuples cannot change, but a list or dict inside one can)
        if (!single) watch(grads.ptr(), b_.arg, 0);
        plans_ = std::make_unique<gradclip::PlanCache>(b_.spans.data(), b_.spans.size());
    }

    std::size_t size() const { return b_.npos; }
    // How errors name leaf position `leaf` (grads[3], grads['enc'][0], x): the one naming.
    std::string where(std::size_t leaf) const { return b_.at(leaf); }
    py::tuple arrays() const {
        py::tuple t(b_.npos);
        for (std::size_t i = 0; i < b_.npos; ++i) t[i] = py::none();
        for (std::size_t k = 0; k < b_.keep.size(); ++k) t[b_.pos[k]] = b_.keep[k];
        return t;
    }

    double total_norm(double p) const {
        check(false);
        py::gil_scoped_release nogil;  // safe: no Python object is touched until it is re-acquired
        return gradclip::total_norm(spans(), n(), spec_from(p), plan());
    }
    // (total norm, norm of each array) from one read pass, nothing written; the total is the
    // norm of the per-array norms.
    py::tuple norms(double p) const {
        check(false);
        std::vector<double> each(n());
        double total;
        {
            py::gil_scoped_release nogil;
            gradclip::span_norms(spans(), n(), spec_from(p), each.data(), plan());
            total = gradclip::norm_of_norms(each.data(), n(), spec_from(p));
        }
        return py::make_tuple(total, scatter(b_, each));
    }
    py::array_t<double> tensor_norms(double p) const {
        check(false);
        std::vector<double> each(n());
        {
            py::gil_scoped_release nogil;
            gradclip::span_norms(spans(), n(), spec_from(p), each.data(), plan());
        }
        return scatter(b_, each);
    }
    // (pre-clip total norm, applied coefficient, per-array norms or None)
    py::tuple clip_total(double max_norm, double p, NonFinite mode, double eps, bool with_norms) const {
        check(true);
        std::vector<double> each(with_norms ? n() : 0);
        const py::object out = with_norms ? py::object(positions_array(b_)) : py::object(py::none());
        double norm, coef;
        {
            py::gil_scoped_release nogil;
            norm = gradclip::clip_total(spans(), n(), spec_from(p), max_norm, eps, mode, plan(), &coef,
                                        with_norms ? each.data() : nullptr);
        }
        if (with_norms) scatter(b_, each, py::reinterpret_borrow<py::array_t<double>>(out));
        return py::make_tuple(norm, coef, out);
    }
    // The global rule with a norm from elsewhere (the user, other processes); returns the
    // applied coefficient.
    double apply_norm(double max_norm, double norm, double eps, NonFinite mode) const {
        check(true);
        py::gil_scoped_release nogil;
        return gradclip::apply_global_clip(spans(), n(), norm, max_norm, eps, mode, plan());
    }
    // Multiply by factor (rounded per element type); nothing is written for exactly 1.
    void scale(double factor) const {
        check(true);
        if (factor == 1.0) return;
        py::gil_scoped_release nogil;
        gradclip::scale_all(spans(), n(), factor, plan());
    }
    void clamp(double lo, double hi) const {
        check(true);
        py::gil_scoped_release nogil;
        gradclip::clamp_all(spans(), n(), lo, hi, plan());
    }
    py::array_t<double> clip_each(double max_norm, double p, NonFinite mode, double eps) const {
        check(true);
        std::vector<double> each(n());
        py::array_t<double> out = positions_array(b_);
        {
            py::gil_scoped_release nogil;
            gradclip::clip_each(spans(), n(), spec_from(p), max_norm, eps, mode, each.data(), plan());
        }
        return scatter(b_, each, out);
    }
    // Each array clipped by its root mean square (Optax's clip_by_block_rms); returns the RMS.
    py::array_t<double> clip_block_rms(double threshold, double eps) const {
        check(true);
        std::vector<double> each(n());
        py::array_t<double> out = positions_array(b_);
        {
            py::gil_scoped_release nogil;
            gradclip::clip_each(spans(), n(), spec_from(2.0), gradclip::SpanBounds{&threshold, 0, true}, eps,
                                NonFinite::Propagate, each.data(), plan());
        }
        return scatter(b_, each, out);
    }
    // (unscaled total norm, clipping coefficient, per-array unscaled norms or None)
    py::tuple unscale_clip(double max_norm, double inv_scale, double p, double eps, bool with_norms) const {
        check(true);
        std::vector<double> each(with_norms ? n() : 0);
        const py::object out = with_norms ? py::object(positions_array(b_)) : py::object(py::none());
        double coef = 1.0, total;
        {
            py::gil_scoped_release nogil;
            total = gradclip::unscale_clip(spans(), n(), spec_from(p), max_norm, inv_scale, eps, &coef,
                                           with_norms ? each.data() : nullptr, plan());
        }
        if (with_norms) scatter(b_, each, py::reinterpret_borrow<py::array_t<double>>(out));
        return py::make_tuple(total, coef, out);
    }
    // This process's part for unscale_clip across processes: the scaled norm, or +inf when
    // unscaling would overflow an element (then every process skips).
    double unscale_norm(double p, double inv_scale) const {
        check(false);
        py::gil_scoped_release nogil;
        return gradclip::unscale_norm(spans(), n(), spec_from(p), inv_scale, plan());
    }

    // unscale_clip's write half with the scaled gradients' norm from elsewhere; returns coef
    double apply_unscale(double max_norm, double raw_norm, double inv_scale, double eps) const {
        check(true);
        py::gil_scoped_release nogil;
        return gradclip::apply_unscale_clip(spans(), n(), raw_norm, max_norm, inv_scale, eps, plan());
    }

private:
    const Span* spans() const noexcept { return b_.spans.data(); }
    std::size_t n() const noexcept { return b_.spans.size(); }
    const gradclip::PlanCache* plan() const noexcept { return plans_ ? plans_.get() : lent_; }

    // The items of a list, or the values of a dict, in order (strong references: an identity
    // compared later must not be a reused address).
    static py::tuple items_of(PyObject* c) {
        if (PyList_Check(c)) return py::reinterpret_steal<py::tuple>(PyList_AsTuple(c));
        return py::tuple(py::reinterpret_borrow<py::dict>(c).attr("values")());
    }

    // Records every list and dict of the tree below `node` (named `path`, as errors name
    // positions) with its items, for check_items; tuples are walked, not recorded. The parse
    // has already refused a tree nested deeper than it allows.
    void watch(PyObject* node, const std::string& path, int depth) {
        const bool is_dict = PyDict_Check(node) != 0;
        if (!is_dict && !PyList_Check(node) && !PyTuple_Check(node)) return;
        if (!PyTuple_Check(node)) watched_.push_back({py::reinterpret_borrow<py::object>(node), items_of(node), path});
        if (depth >= 200) return;
        if (is_dict) {
            Py_ssize_t at = 0;
            PyObject *key, *value;
            while (PyDict_Next(node, &at, &key, &value)) {
                if (PyList_Check(value) || PyTuple_Check(value) || PyDict_Check(value))
                    watch(value, path + "[" + py::repr(py::handle(key)).cast<std::string>() + "]", depth + 1);
            }
            return;
        }
        const py::tuple items = PyTuple_Check(node) ? py::reinterpret_borrow<py::tuple>(node) : items_of(node);
        for (std::size_t i = 0; i < items.size(); ++i) {
            PyObject* value = PyTuple_GET_ITEM(items.ptr(), static_cast<Py_ssize_t>(i));
            if (PyList_Check(value) || PyTuple_Check(value) || PyDict_Check(value))
                watch(value, path + "[" + std::to_string(i) + "]", depth + 1);
        }
    }

    // The set holds the arrays it was made with, not the caller's lists and dicts: an item
    // replaced or added or removed since would be silently missed, so it is an error. Pointer
    // compares, no reference counts touched (a dict's values are walked with PyDict_Next).
    void check_items() const {
        for (const Watched& w : watched_) {
            PyObject* c = w.node.ptr();
            PyObject* items0 = w.items.ptr();
            const Py_ssize_t n0 = PyTuple_GET_SIZE(items0);
            const bool is_list = PyList_Check(c);
            const Py_ssize_t n = is_list ? PyList_GET_SIZE(c) : PyDict_Size(c);
            const std::string what = is_list ? "list" : "dict";
            const bool top = w.path == b_.arg;  // the container passed itself
            if (n != n0) {
                throw py::value_error(w.path + (top ? " (the " : " (a ") + what +
                                      (top ? " the GradientSet was made from) has "
                                           : " in the tree the GradientSet was made from) has ") +
                                      std::to_string(n) + " entries now, " + std::to_string(n0) +
                                      " when the set was made; the set holds the arrays it was made with, not the " +
                                      what + ": make a new GradientSet");
            }
            Py_ssize_t at = 0;
            PyObject *key, *value;
            for (Py_ssize_t i = 0; i < n; ++i) {
                if (is_list) {
                    value = PyList_GET_ITEM(c, i);
                } else if (!PyDict_Next(c, &at, &key, &value)) {
                    break;
                }
                if (value == PyTuple_GET_ITEM(items0, i)) continue;
                const std::string where =
                    w.path + "[" + (is_list ? std::to_string(i) : py::repr(py::handle(key)).cast<std::string>()) + "]";
                throw py::value_error(where + " was replaced in the " + what +
                                      " after the GradientSet was made; the set holds the arrays it was made with, "
                                      "not the " +
                                      what + ": write into the array it holds (gs.arrays), or make a new GradientSet");
            }
        }
    }

    void check(bool write) const {
        if (!plans_) return;  // one-shot: validated just now, for what its operation does
        if (!watched_.empty()) check_items();
        bool writeable = true;
        for (std::size_t k = 0; k < b_.keep.size(); ++k) {
            const py::array& a = b_.keep[k];
            const auto nd = static_cast<std::size_t>(a.ndim());
            const std::size_t off = b_.meta_off[k];
            const std::size_t next = k + 1 < b_.meta_off.size() ? b_.meta_off[k + 1] : b_.meta.size();
            bool same = a.data() == data0_[k] && 2 * nd == next - off;
            const py::ssize_t* sh = a.shape();
            const py::ssize_t* st = a.strides();
            for (std::size_t d = 0; same && d < nd; ++d)
                same = sh[d] == b_.meta[off + d] && st[d] == b_.meta[off + nd + d];
            if (!same) {
                throw py::value_error(b_.at(b_.pos[k]) +
                                      " was resized or re-allocated after the GradientSet was made; "
                                      "make a new GradientSet");
            }
            writeable = writeable && a.writeable();
        }
        // a write also needs the overlap rules (checked once: memory does not move without the
        // check above failing) and writeable arrays (a flag that may change at any time);
        // check_writable names the array that fails
        if (write && (!writable_ || !writeable)) {
            check_writable(b_);
            writable_ = true;
        }
    }

    struct Watched {
        py::object node;   // a list or dict of the caller's tree (the root first)
        py::tuple items;   // its items when the set was made
        std::string path;  // how errors name it (grads, grads['enc'])
    };

    Batch b_;
    std::vector<Watched> watched_;   // see watch and check_items
    mutable bool writable_ = false;  // check_writable passed once (cached sets)
    std::vector<const void*> data0_;
    std::unique_ptr<gradclip::PlanCache> plans_;  // the chunking, computed once; null for one-shot sets
    // one-shot sets: the plans lent for their lengths and types (lend_plans), or null
    MemoLease memo_;
    const gradclip::PlanCache* lent_ = nullptr;
};

// Every operation of the set, listed once: bound below as a GradientSet method and as a
// one-shot function of _core.once.
#define GRADCLIP_SET_OPERATIONS(X) \
    X(total_norm)                  \
    X(norms)                       \
    X(tensor_norms)                \
    X(clip_total)                  \
    X(apply_norm)                  \
    X(scale)                       \
    X(clamp)                       \
    X(clip_each)                   \
    X(clip_block_rms)              \
    X(unscale_clip)                \
    X(unscale_norm)                \
    X(apply_unscale)

// A free function's set: `target` is (sequence, single) as gradclip._inputs.as_sequence
// returns it. The set lives on the C++ stack for the one call (no Python object, no second
// dispatch), so a free function costs what the method of a GradientSet does plus the parse.
GradSet one_shot(const py::tuple& target, bool write = true) {
    if (target.size() != 2) throw py::type_error("a one-shot target is (grads, single)");
    return GradSet(target[0], "grads", target[1].cast<bool>(), false, write);
}

// The operations that only read (every other one writes).
template <auto Method>
constexpr bool kReads = false;
template <>
constexpr bool kReads<&GradSet::total_norm> = true;
template <>
constexpr bool kReads<&GradSet::norms> = true;
template <>
constexpr bool kReads<&GradSet::tensor_norms> = true;
template <>
constexpr bool kReads<&GradSet::unscale_norm> = true;

template <auto Method>
struct Once;
template <typename R, typename... A, R (GradSet::*Method)(A...) const>
struct Once<Method> {
    static R call(const py::tuple& target, A... args) { return (one_shot(target, !kReads<Method>).*Method)(args...); }
};

}  // namespace

void register_gradset(py::module_& m) {
    py::enum_<NonFinite>(m, "NonFinite", "What the engine does with a NaN or infinite norm")
        .value("propagate", NonFinite::Propagate)
        .value("skip", NonFinite::Skip)
        .value("zero", NonFinite::Zero);
    py::class_<GradSet> cls(m, "GradientSet");
    cls.def(py::init<const py::handle&, const std::string&, bool, bool, bool>(), py::arg("grads"),
            py::arg("arg") = "grads", py::arg("single") = false, py::arg("cached") = true, py::arg("write") = true)
        .def("__len__", &GradSet::size)
        .def("arrays", &GradSet::arrays)
        .def("where", &GradSet::where, py::arg("leaf"), "How error messages name leaf position `leaf`.")
        .def(
            "own", [](const py::object& self, bool) { return self; }, py::arg("write") = true,
            "The set itself (as _core.once.own makes one).");
    py::module_ once = m.def_submodule(
        "once", "Each GradientSet operation as a function of (sequence, single): a one-shot set for one call.");
    once.def(
        "own", &one_shot, py::arg("target"), py::arg("write") = true,
        "A one-shot GradientSet of (grads, single), for several calls (validated for writing unless write=False).");
#define GRADCLIP_BIND(name)         \
    cls.def(#name, &GradSet::name); \
    once.def(#name, &Once<&GradSet::name>::call);
    GRADCLIP_SET_OPERATIONS(GRADCLIP_BIND)
#undef GRADCLIP_BIND
}

}  // namespace gradclip_py
