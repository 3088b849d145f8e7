// gradclip._core: the only Python-facing C++. It turns a sequence of arrays into spans,
// validates all of them before anything is written, releases the GIL and calls the engine.
// No arithmetic on gradient data happens here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "gradclip/capi.h"
#include "gradclip/engine.hpp"

namespace py = pybind11;
using gradclip::DType;
using gradclip::NonFinite;
using gradclip::Span;

namespace {

// NumPy type numbers (stable ABI values).
constexpr int kNpyFloat = 11;
constexpr int kNpyDouble = 12;
constexpr int kNpyHalf = 23;

int g_bf16_num = -1;     // ml_dtypes.bfloat16's type number, when ml_dtypes is present
py::object* g_as_array;  // Python helper: non-ndarray -> ndarray view, or TypeError

std::string where(const std::string& arg, std::size_t pos, bool single) {
    return single ? arg : arg + "[" + std::to_string(pos) + "]";
}

// The validated arrays of one call. `keep` holds references so the memory stays alive
// while the GIL is released.
struct Batch {
    std::vector<Span> spans;       // one per array (None entries excluded)
    std::vector<std::size_t> pos;  // input position of each span
    std::vector<py::array> keep;
    std::vector<std::ptrdiff_t> meta;   // shape then strides of every kept array
    std::vector<std::size_t> meta_off;  // where each kept array's shape starts in meta
    std::size_t npos = 0;
};

[[noreturn]] void bad_dtype(const py::handle& arr, const std::string& at, bool byteorder) {
    const std::string name = py::str(arr.attr("dtype")).cast<std::string>();
    if (byteorder) {
        throw py::type_error(at + " has non-native byte order (dtype " + name +
                             "); expected native float16, bfloat16, float32 or float64");
    }
    throw py::type_error(at + " has dtype " + name + "; expected float16, bfloat16, float32 or float64");
}

// The element type of an array, or a TypeError naming its position (arg, pos, single). The
// position's text is built only for the error: this runs for every array of every call.
DType element_type(const py::array& arr, const std::string& arg, std::size_t pos, bool single) {
    const auto* descr = py::detail::array_descriptor_proxy(py::detail::array_proxy(arr.ptr())->descr);
    const int num = descr->type_num;
    if (descr->byteorder != '>') {
        if (num == kNpyFloat) return DType::F32;
        if (num == kNpyDouble) return DType::F64;
        if (num == kNpyHalf) return DType::F16;
        if (g_bf16_num >= 0 && num == g_bf16_num) return DType::BF16;
    }
    bad_dtype(arr, where(arg, pos, single), descr->byteorder == '>');
}

// Fills span k of the batch from its array's NumPy struct, copying shape and strides to
// b.meta at `off`. Returns whether the array is dense.
bool describe(Batch& b, std::size_t k, std::size_t off) {
    const auto* proxy = py::detail::array_proxy(b.keep[k].ptr());
    const int nd = proxy->nd;
    std::ptrdiff_t* shape = b.meta.data() + off;
    std::ptrdiff_t* strides = shape + nd;
    for (int d = 0; d < nd; ++d) {
        shape[d] = proxy->dimensions[d];
        strides[d] = proxy->strides[d];
    }
    Span& sp = b.spans[k];
    constexpr int kContiguous =
        py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_ | py::detail::npy_api::NPY_ARRAY_F_CONTIGUOUS_;
    if ((proxy->flags & kContiguous) == 0) return gradclip::describe_array(proxy->data, nd, shape, strides, sp.dt, sp);
    // the common case, without sorting strides: NumPy's flags already say dense, and a C- or
    // F-contiguous array starts at its lowest address
    std::size_t count = 1;
    for (int q = 0; q < nd; ++q) count *= static_cast<std::size_t>(shape[q]);
    sp.data = proxy->data;
    sp.n = count;
    sp.ndim = 0;
    return true;
}

[[noreturn]] void overlap_error(const Batch& b, const std::string& arg, std::size_t first, std::size_t second) {
    std::size_t a = b.pos[first], c = b.pos[second];
    if (a > c) std::swap(a, c);
    const Span& sa = b.spans[first];
    const Span& sc = b.spans[second];
    const std::string pair = arg + "[" + std::to_string(a) + "] and " + arg + "[" + std::to_string(c) + "]";
    const bool same_bytes = sa.data == sc.data && sa.n * gradclip::itemsize(sa.dt) == sc.n * gradclip::itemsize(sc.dt);
    if (same_bytes && sa.ndim == 0 && sc.ndim == 0)
        throw py::value_error(pair + " are the same memory; each gradient must appear once");
    throw py::value_error(pair +
                          " overlap in memory (gradclip compares the memory bounds of each array, so "
                          "interleaved strided views of one buffer are rejected too)");
}

// Validates every entry of `seq` and describes it; throws TypeError / ValueError naming
// the argument and position. Nothing is written here, and nothing is written by a caller
// unless this returns. Runs once per array on every call, so it reads NumPy's array
// structs directly instead of going through Python attribute lookups. A writing call
// (`write`) also needs writeable arrays that share no memory, with themselves or each other.
void parse(const py::sequence& seq, const std::string& arg, bool single, Batch& b, bool write = true) {
    // a list or tuple as is (any other sequence materialised once): a C array of items
    const py::object fast = py::reinterpret_steal<py::object>(PySequence_Fast(seq.ptr(), "grads must be a sequence"));
    if (!fast) throw py::error_already_set();
    const auto n = static_cast<std::size_t>(PySequence_Fast_GET_SIZE(fast.ptr()));
    PyObject** items = PySequence_Fast_ITEMS(fast.ptr());
    const auto& api = py::detail::npy_api::get();
    b.npos = n;
    b.keep.reserve(n);
    b.pos.reserve(n);
    b.spans.reserve(n);
    b.meta_off.reserve(n);
    // first pass: each entry an array of a supported type (writeable, for a writing call)
    std::size_t meta_need = 0;
    for (std::size_t i = 0; i < n; ++i) {
        PyObject* item = items[i];
        if (item == Py_None) continue;
        // (a default-constructed py::array would allocate a new empty array: avoid it)
        py::array arr = api.PyArray_Check_(item)
                            ? py::reinterpret_borrow<py::array>(item)
                            : (*g_as_array)(py::handle(item), where(arg, i, single)).cast<py::array>();
        Span sp;
        sp.dt = element_type(arr, arg, i, single);
        const auto* proxy = py::detail::array_proxy(arr.ptr());
        if (write && (proxy->flags & py::detail::npy_api::NPY_ARRAY_WRITEABLE_) == 0) {
            throw py::value_error(where(arg, i, single) +
                                  " is read-only; gradclip writes in place and needs a writeable array");
        }
        meta_need += 2 * static_cast<std::size_t>(proxy->nd);
        b.spans.push_back(sp);
        b.pos.push_back(i);
        b.keep.push_back(std::move(arr));
    }

    // second pass: spans, self-overlap, then overlap between arrays
    const std::size_t m = b.keep.size();
    b.meta.resize(meta_need);                 // sized once: spans point into it
    std::vector<gradclip::ByteRange> bounds;  // of the arrays a writing call may change; id: index into spans
    if (write && m > 1) bounds.reserve(m);
    std::size_t off = 0;
    for (std::size_t k = 0; k < m; ++k) {
        b.meta_off.push_back(off);
        const bool dense = describe(b, k, off);
        const Span& sp = b.spans[k];
        const int nd = py::detail::array_proxy(b.keep[k].ptr())->nd;
        const std::ptrdiff_t* shape = b.meta.data() + off;
        const std::ptrdiff_t* strides = shape + nd;
        off += 2 * static_cast<std::size_t>(nd);
        if (sp.n == 0 || !write) continue;  // nothing to write, or overlaps cannot lose an update
        const std::size_t isz = gradclip::itemsize(sp.dt);
        if (!dense && gradclip::may_self_overlap(nd, shape, strides, isz)) {
            throw py::value_error(where(arg, b.pos[k], single) +
                                  " has elements that share memory (e.g. a stride-0 view); writing to it in "
                                  "place would apply the update more than once");
        }
        if (m < 2) continue;
        if (dense) {
            bounds.push_back({sp.data, sp.data + sp.n * isz, k});
        } else {
            const char* lo;
            const char* hi;
            gradclip::byte_bounds(py::detail::array_proxy(b.keep[k].ptr())->data, nd, shape, strides, isz, lo, hi);
            bounds.push_back({lo, hi, k});
        }
    }
    std::size_t first, second;
    if (gradclip::find_overlap(bounds, first, second)) overlap_error(b, arg, first, second);
}

gradclip::NormSpec spec_from(double p) { return gradclip::make_norm_spec(p); }

// Per-position output: norms of the spans at their positions, 0.0 for None entries.
py::array_t<double> scatter(const Batch& b, const std::vector<double>& per_span) {
    py::array_t<double> out(static_cast<py::ssize_t>(b.npos));
    double* o = out.mutable_data();
    std::fill(o, o + b.npos, 0.0);
    for (std::size_t k = 0; k < b.spans.size(); ++k) o[b.pos[k]] = per_span[k];
    return out;
}

// ------------------------------------------------------------------ slices
// The slices of every array of a batch: reduced[k] marks the axes array k's slices span.
struct Slices {
    std::vector<Span> spans;
    std::vector<std::ptrdiff_t> meta;
    std::vector<std::size_t> first;  // first slice of each array, plus the total
};

void slice_batch(const Batch& b, const std::vector<std::vector<bool>>& reduced, Slices& out) {
    const std::size_t m = b.keep.size();
    std::size_t total = 0, meta = 0;
    std::vector<std::unique_ptr<bool[]>> masks(m);
    for (std::size_t k = 0; k < m; ++k) {
        const py::array& arr = b.keep[k];
        const auto nd = static_cast<std::size_t>(arr.ndim());
        masks[k].reset(new bool[nd + 1]);
        for (std::size_t d = 0; d < nd; ++d) masks[k][d] = reduced[k][d];
        total += gradclip::count_slices(static_cast<int>(nd), arr.shape(), masks[k].get());
        meta += 2 * nd;
    }
    out.spans.resize(total);
    out.meta.resize(meta);  // sized once: spans point into it
    out.first.assign(1, 0);
    std::size_t at = 0, moff = 0;
    for (std::size_t k = 0; k < m; ++k) {
        const py::array& arr = b.keep[k];
        const int nd = static_cast<int>(arr.ndim());
        char* data = static_cast<char*>(const_cast<void*>(arr.data()));
        gradclip::make_slices(data, nd, arr.shape(), arr.strides(), b.spans[k].dt, masks[k].get(),
                              out.meta.data() + moff, out.spans.data() + at);
        at += gradclip::count_slices(nd, arr.shape(), masks[k].get());
        moff += 2 * static_cast<std::size_t>(nd);
        out.first.push_back(at);
    }
}

// Norm of every slice of x along `axes` (already normalised, sorted, unique), clipped with
// the common rule. max_norm holds one bound for every slice, or one per slice in C order of
// the kept axes (checked by the caller). Returns the norms as a flat array in that order.
py::array_t<double> clip_by_norm(const py::object& x, const py::array_t<double, py::array::c_style>& max_norm,
                                 const std::vector<int>& axes, double p, double eps, const std::string& arg) {
    Batch b;
    parse(py::make_tuple(x), arg, true, b);
    if (b.keep.empty()) throw py::type_error(arg + " must be an array, not None");
    std::vector<std::vector<bool>> reduced(1, std::vector<bool>(static_cast<std::size_t>(b.keep[0].ndim()), false));
    for (int a : axes) reduced[0][static_cast<std::size_t>(a)] = true;
    Slices sl;
    slice_batch(b, reduced, sl);
    const auto nb = static_cast<std::size_t>(max_norm.size());
    if (nb != 1 && nb != sl.spans.size())
        throw py::value_error("max_norm has " + std::to_string(nb) + " bounds for " + std::to_string(sl.spans.size()) +
                              " slices");
    const gradclip::SpanBounds bounds{max_norm.data(), nb == 1 ? 0u : 1u, false};
    py::array_t<double> out(static_cast<py::ssize_t>(sl.spans.size()));
    double* o = out.mutable_data();
    {
        py::gil_scoped_release nogil;
        gradclip::clip_each(sl.spans.data(), sl.spans.size(), spec_from(p), bounds, eps, NonFinite::Propagate, o);
    }
    return out;
}

// Adaptive gradient clipping over lists of gradients and parameters of equal shapes.
// reduce[i] lists the axes a unit of the array at position i spans (the others index units).
// A position whose gradient is None is skipped, whatever its parameter (as timm does).
py::tuple adaptive_clip(const py::sequence& grads, const py::sequence& params, double clipping, double eps,
                        const std::vector<std::vector<int>>& reduce, double p) {
    Batch g, all_w;
    parse(grads, "grads", false, g);
    parse(params, "params", false, all_w, /*write=*/false);
    if (g.npos != all_w.npos)
        throw py::value_error("grads and params must have the same length (" + std::to_string(g.npos) + " and " +
                              std::to_string(all_w.npos) + ")");
    // the parameters of the gradients present, in the same order (both pos lists ascend)
    Batch w;
    w.npos = all_w.npos;
    std::size_t j = 0;
    for (std::size_t k = 0; k < g.keep.size(); ++k) {
        while (j < all_w.pos.size() && all_w.pos[j] < g.pos[k]) ++j;
        if (j == all_w.pos.size() || all_w.pos[j] != g.pos[k])
            throw py::value_error("params[" + std::to_string(g.pos[k]) + "] is None but grads[" +
                                  std::to_string(g.pos[k]) + "] is not; AGC needs the parameter of every gradient");
        w.keep.push_back(all_w.keep[j]);
        w.spans.push_back(all_w.spans[j]);
        w.pos.push_back(all_w.pos[j]);
    }
    std::vector<std::vector<bool>> reduced;
    for (std::size_t k = 0; k < g.keep.size(); ++k) {
        const py::array& ga = g.keep[k];
        const py::array& wa = w.keep[k];
        const std::size_t i = g.pos[k];
        const auto nd = static_cast<std::size_t>(ga.ndim());
        bool same = wa.ndim() == ga.ndim();
        for (std::size_t d = 0; same && d < nd; ++d)
            same = ga.shape(static_cast<py::ssize_t>(d)) == wa.shape(static_cast<py::ssize_t>(d));
        if (!same)
            throw py::value_error("grads[" + std::to_string(i) + "] and params[" + std::to_string(i) +
                                  "] have different shapes");
        std::vector<bool> r(nd, false);
        for (int ax : reduce.at(i)) r.at(static_cast<std::size_t>(ax)) = true;
        reduced.push_back(std::move(r));
    }
    Slices gs, ws;
    slice_batch(g, reduced, gs);
    slice_batch(w, reduced, ws);
    const std::size_t n = gs.spans.size();
    std::vector<double> gn(n), wn(n), coefs(n);
    {
        py::gil_scoped_release nogil;
        gradclip::adaptive_clip(gs.spans.data(), ws.spans.data(), n, spec_from(p), clipping, eps, gn.data(), wn.data(),
                                coefs.data());
    }
    // per-array pre-clip norms from the unit norms
    std::vector<double> per_array(g.keep.size());
    for (std::size_t k = 0; k < g.keep.size(); ++k)
        per_array[k] = gradclip::norm_of_norms(gn.data() + gs.first[k], gs.first[k + 1] - gs.first[k], spec_from(p));
    double cmin = 1.0;
    bool nan = false;
    for (double c : coefs) {
        if (c != c) nan = true;
        cmin = c < cmin ? c : cmin;
    }
    return py::make_tuple(scatter(g, per_array), nan ? std::numeric_limits<double>::quiet_NaN() : cmin);
}

// Per-example clipping; every array's axis 0 is the batch. Returns (per-example norms,
// per-example coefficients, clipped count) for the global rule, or (norms, coefs) per
// (array, example) shaped (n_arrays, batch) for per_layer.
py::tuple clip_per_example(const py::sequence& grads, double max_norm, bool per_layer, double eps) {
    Batch g;
    parse(grads, "grads", false, g);
    std::vector<std::vector<bool>> reduced;
    py::ssize_t batch = -1;
    for (std::size_t k = 0; k < g.keep.size(); ++k) {
        const py::array& a = g.keep[k];
        const std::string where_k = "grads[" + std::to_string(g.pos[k]) + "]";
        if (a.ndim() < 1) throw py::value_error(where_k + " is 0-d; per-example gradients need a batch axis (axis 0)");
        if (batch < 0) batch = a.shape(0);
        if (a.shape(0) != batch)
            throw py::value_error(where_k + " has batch size " + std::to_string(a.shape(0)) + "; expected " +
                                  std::to_string(batch) + " like the arrays before it");
        std::vector<bool> r(static_cast<std::size_t>(a.ndim()), true);
        r[0] = false;
        reduced.push_back(std::move(r));
    }
    if (batch < 0) batch = 0;
    Slices sl;
    slice_batch(g, reduced, sl);
    const std::size_t na = g.keep.size(), nb = static_cast<std::size_t>(batch);
    py::array_t<double> norms({static_cast<py::ssize_t>(na), batch});
    py::array_t<double> coefs({static_cast<py::ssize_t>(na), batch});
    std::size_t clipped;
    {
        double* pn = norms.mutable_data();
        double* pc = coefs.mutable_data();
        py::gil_scoped_release nogil;
        clipped = gradclip::clip_per_example(sl.spans.data(), na, nb, per_layer, max_norm, eps, pn, pc);
    }
    return py::make_tuple(norms, coefs, clipped);
}

// ------------------------------------------------------------------ the operations
// A list of arrays, validated once, and every operation over it: each operation's one binding
// entry. gradclip.GradientSet keeps one (cached: the chunking plan is computed once, and each
// call first re-checks, in C++ and without touching reference counts, that no array was
// resized, re-allocated or made read-only since: data pointer, shape, strides, writeable
// flag). Every free function makes a one-shot one (not cached: its arrays were parsed a
// moment ago, and the plan goes into a per-thread buffer).
class GradSet {
public:
    GradSet(const py::sequence& grads, std::string arg, bool single, bool cached)
        : arg_(std::move(arg)), single_(single) {
        parse(grads, arg_, single_, b_);
        if (!cached) return;
        data0_.reserve(b_.keep.size());
        for (const py::array& a : b_.keep) data0_.push_back(a.data());
        plans_ = std::make_unique<gradclip::PlanCache>(b_.spans.data(), b_.spans.size());
    }

    std::size_t size() const { return b_.npos; }
    py::tuple arrays() const {
        py::tuple t(b_.npos);
        for (std::size_t i = 0; i < b_.npos; ++i) t[i] = py::none();
        for (std::size_t k = 0; k < b_.keep.size(); ++k) t[b_.pos[k]] = b_.keep[k];
        return t;
    }

    double total_norm(double p) const {
        check();
        py::gil_scoped_release nogil;  // safe: no Python object is touched until it is re-acquired
        return gradclip::total_norm(spans(), n(), spec_from(p), plan());
    }
    // (total norm, norm of each array) from one read pass, nothing written; the total is the
    // norm of the per-array norms.
    py::tuple norms(double p) const {
        check();
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
        check();
        std::vector<double> each(n());
        {
            py::gil_scoped_release nogil;
            gradclip::span_norms(spans(), n(), spec_from(p), each.data(), plan());
        }
        return scatter(b_, each);
    }
    // (pre-clip total norm, applied coefficient, per-array norms or None)
    py::tuple clip_total(double max_norm, double p, NonFinite mode, double eps, bool with_norms) const {
        check();
        std::vector<double> each(with_norms ? n() : 0);
        double norm, coef;
        {
            py::gil_scoped_release nogil;
            norm = gradclip::clip_total(spans(), n(), spec_from(p), max_norm, eps, mode, plan(), &coef,
                                        with_norms ? each.data() : nullptr);
        }
        return py::make_tuple(norm, coef, with_norms ? py::object(scatter(b_, each)) : py::object(py::none()));
    }
    // The global rule with a norm from elsewhere (the user, other processes); returns the
    // applied coefficient.
    double apply_norm(double max_norm, double norm, double eps, NonFinite mode) const {
        check();
        py::gil_scoped_release nogil;
        return gradclip::apply_global_clip(spans(), n(), norm, max_norm, eps, mode, plan());
    }
    // Multiply by factor (rounded per element type); nothing is written for exactly 1.
    void scale(double factor) const {
        check();
        if (factor == 1.0) return;
        py::gil_scoped_release nogil;
        gradclip::scale_all(spans(), n(), factor, plan());
    }
    void clamp(double lo, double hi) const {
        check();
        py::gil_scoped_release nogil;
        gradclip::clamp_all(spans(), n(), lo, hi, plan());
    }
    py::array_t<double> clip_each(double max_norm, double p, NonFinite mode, double eps) const {
        check();
        std::vector<double> each(n());
        {
            py::gil_scoped_release nogil;
            gradclip::clip_each(spans(), n(), spec_from(p), max_norm, eps, mode, each.data(), plan());
        }
        return scatter(b_, each);
    }
    // Each array clipped by its root mean square (Optax's clip_by_block_rms); returns the RMS.
    py::array_t<double> clip_block_rms(double threshold, double eps) const {
        check();
        std::vector<double> each(n());
        {
            py::gil_scoped_release nogil;
            gradclip::clip_each(spans(), n(), spec_from(2.0), gradclip::SpanBounds{&threshold, 0, true}, eps,
                                NonFinite::Propagate, each.data(), plan());
        }
        return scatter(b_, each);
    }
    // (unscaled total norm, clipping coefficient, per-array unscaled norms or None)
    py::tuple unscale_clip(double max_norm, double inv_scale, double p, double eps, bool with_norms) const {
        check();
        std::vector<double> each(with_norms ? n() : 0);
        double coef = 1.0, total;
        {
            py::gil_scoped_release nogil;
            total = gradclip::unscale_clip(spans(), n(), spec_from(p), max_norm, inv_scale, eps, &coef,
                                           with_norms ? each.data() : nullptr, plan());
        }
        return py::make_tuple(total, coef, with_norms ? py::object(scatter(b_, each)) : py::object(py::none()));
    }

    // unscale_clip's write half with the scaled gradients' norm from elsewhere; returns coef
    double apply_unscale(double max_norm, double raw_norm, double inv_scale, double eps) const {
        check();
        py::gil_scoped_release nogil;
        return gradclip::apply_unscale_clip(spans(), n(), raw_norm, max_norm, inv_scale, eps, plan());
    }

private:
    const Span* spans() const noexcept { return b_.spans.data(); }
    std::size_t n() const noexcept { return b_.spans.size(); }
    const gradclip::PlanCache* plan() const noexcept { return plans_.get(); }

    void check() const {
        if (!plans_) return;  // one-shot: parsed just now
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
                throw py::value_error(where(arg_, b_.pos[k], single_) +
                                      " was resized or re-allocated after the GradientSet was made; "
                                      "make a new GradientSet");
            }
            if (!a.writeable()) throw py::value_error(where(arg_, b_.pos[k], single_) + " is read-only");
        }
    }

    std::string arg_;
    bool single_;
    Batch b_;
    std::vector<const void*> data0_;
    std::unique_ptr<gradclip::PlanCache> plans_;  // the chunking, computed once; null for one-shot sets
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
    X(apply_unscale)

// A free function's set: `target` is (sequence, single) as gradclip._inputs.as_sequence
// returns it. The set lives on the C++ stack for the one call (no Python object, no second
// dispatch), so a free function costs what the method of a GradientSet does plus the parse.
GradSet one_shot(const py::tuple& target) {
    if (target.size() != 2) throw py::type_error("a one-shot target is (sequence, single)");
    return GradSet(target[0].cast<py::sequence>(), "grads", target[1].cast<bool>(), false);
}

template <auto Method>
struct Once;
template <typename R, typename... A, R (GradSet::*Method)(A...) const>
struct Once<Method> {
    static R call(const py::tuple& target, A... args) { return (one_shot(target).*Method)(args...); }
};

}  // namespace

PYBIND11_MODULE(_core, m, py::mod_gil_not_used()) {
    m.doc() = "gradclip's compiled core (private; use the gradclip package)";
    // The C ABI for gradclip.cython_api and other native callers: the same engine instance, so
    // set_num_threads and the CPU target apply to them too. The table is static; the capsule
    // needs no destructor.
    m.attr("_C_API") = py::capsule(static_cast<const void*>(gradclip_capi_table()), GRADCLIP_CAPI_CAPSULE);
    m.def(
        "_init",
        [](const py::object& bf16_dtype, const py::object& as_array) {
            g_bf16_num = bf16_dtype.is_none() ? -1 : py::reinterpret_borrow<py::dtype>(bf16_dtype).num();
            // leaked on purpose: lives as long as the interpreter, never decref'd at exit
            g_as_array = new py::object(as_array);
        },
        py::arg("bf16_dtype"), py::arg("as_array"));
    py::enum_<NonFinite>(m, "NonFinite", "What the engine does with a NaN or infinite norm")
        .value("propagate", NonFinite::Propagate)
        .value("skip", NonFinite::Skip)
        .value("zero", NonFinite::Zero);
    m.def("clip_by_norm", &clip_by_norm, py::arg("x"), py::arg("max_norm"), py::arg("axes"), py::arg("p"),
          py::arg("eps"), py::arg("arg") = "x");
    m.def("adaptive_clip", &adaptive_clip, py::arg("grads"), py::arg("params"), py::arg("clipping"), py::arg("eps"),
          py::arg("reduce"), py::arg("p"));
    m.def("clip_per_example", &clip_per_example, py::arg("grads"), py::arg("max_norm"), py::arg("per_layer"),
          py::arg("eps"));
    m.def(
        "norm_of_norms",
        [](const std::vector<double>& norms, double p) {
            return gradclip::norm_of_norms(norms.data(), norms.size(), spec_from(p));
        },
        py::arg("norms"), py::arg("p"), "The p-norm of parts given the p-norm of each (the engine's one combination).");
    m.def("cpu_target", &gradclip::current_target);
    m.def("available_cpu_targets", &gradclip::available_targets);
    m.def("set_cpu_target", [](const std::string& name) { return gradclip::set_target(name); });
    m.def("init_cpu_target", [](const std::string& forced) { return gradclip::init_target(forced.c_str()); });
    m.def("set_num_threads", &gradclip::set_num_threads);
    m.def("get_num_threads", &gradclip::get_num_threads);
    m.def("have_openmp", &gradclip::have_openmp);
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
    py::class_<GradSet> cls(m, "GradientSet");
    cls.def(py::init<const py::sequence&, std::string, bool, bool>(), py::arg("grads"), py::arg("arg") = "grads",
            py::arg("single") = false, py::arg("cached") = true)
        .def("__len__", &GradSet::size)
        .def("arrays", &GradSet::arrays)
        .def("own", [](const py::object& self) { return self; }, "The set itself (as _core.once.own makes one).");
    py::module_ once = m.def_submodule(
        "once", "Each GradientSet operation as a function of (sequence, single): a one-shot set for one call.");
    once.def("own", &one_shot, "A one-shot GradientSet of (sequence, single), for several calls.");
#define GRADCLIP_BIND(name)         \
    cls.def(#name, &GradSet::name); \
    once.def(#name, &Once<&GradSet::name>::call);
    GRADCLIP_SET_OPERATIONS(GRADCLIP_BIND)
#undef GRADCLIP_BIND
}
