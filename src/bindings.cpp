// gradclip._core: the only Python-facing C++. It turns a sequence of arrays into spans,
// validates all of them before anything is written, releases the GIL and calls the engine.
// No arithmetic on gradient data happens here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
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

// ml_dtypes.bfloat16's NumPy type number, -1 until it is known. ml_dtypes registers the type
// when it is imported, so an array of it can only exist once ml_dtypes is in sys.modules;
// rather than import ml_dtypes with gradclip (most of gradclip's import time), the first array
// of a type number gradclip does not know asks g_bf16_lookup whether ml_dtypes is loaded.
// Only a found number is kept: until then every unknown type asks again (an array of such a
// type is refused with a TypeError anyway, unless it is bfloat16 from a late import).
// Atomic: on a free-threaded CPython two threads may parse at once.
std::atomic<int> g_bf16_num{-1};
py::object* g_bf16_lookup;  // Python helper: () -> ml_dtypes.bfloat16's dtype if loaded, else None
py::object* g_as_array;     // Python helper: non-ndarray -> ndarray view, or TypeError

bool is_bf16(int num) {
    int known = g_bf16_num.load(std::memory_order_relaxed);
    if (known < 0) {
        const py::object dt = (*g_bf16_lookup)();
        if (dt.is_none()) return false;
        known = py::reinterpret_borrow<py::dtype>(dt).num();
        g_bf16_num.store(known, std::memory_order_relaxed);
    }
    return num == known;
}

// The validated arrays of one call. `keep` holds references so the memory stays alive
// while the GIL is released.
struct Batch {
    std::vector<Span> spans;       // one per array (None entries excluded)
    std::vector<std::size_t> pos;  // leaf position of each span (depth first, dicts in order)
    std::vector<py::array> keep;
    std::vector<std::ptrdiff_t> meta;   // shape then strides of every kept array
    std::vector<std::size_t> meta_off;  // where each kept array's shape starts in meta
    std::size_t npos = 0;               // leaves, None included
    // How positions are named in errors: `arg` for a single array, arg[i] for a flat list, and
    // the path through the containers (grads['enc'][0]) when the input was nested (`root`).
    std::string arg = "grads";
    bool single = false;
    py::object root;

    std::string at(std::size_t leaf) const;
};

// ------------------------------------------------------------------ pytrees
// A grads argument is one array, or lists, tuples (named tuples too) and dicts nested to any
// depth; leaves depth first, dicts in their iteration order. A flat list or tuple, the common
// case, is read as is; anything nested is flattened once here.
constexpr int kMaxDepth = 200;

bool is_container(PyObject* o) noexcept { return PyList_Check(o) || PyTuple_Check(o) || PyDict_Check(o); }

// Visits the leaves below `node` in order: leaf(PyObject*) for each; returns false when the
// walk was stopped (leaf returned false).
template <class Leaf>
bool walk(PyObject* node, int depth, Leaf&& leaf) {
    if (!is_container(node)) return leaf(node);
    if (depth > kMaxDepth)
        throw py::type_error("grads is nested more than " + std::to_string(kMaxDepth) +
                             " levels deep (a container that contains itself?)");
    if (PyDict_Check(node)) {
        // the dict's values, as a new list (safe against a dict changed by Python code below)
        const py::list values = py::reinterpret_borrow<py::dict>(node).attr("values")();
        for (const py::handle v : values)
            if (!walk(v.ptr(), depth + 1, leaf)) return false;
        return true;
    }
    const py::object fast = py::reinterpret_steal<py::object>(PySequence_Fast(node, "not a sequence"));
    if (!fast) throw py::error_already_set();
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(fast.ptr());
    PyObject** items = PySequence_Fast_ITEMS(fast.ptr());
    for (Py_ssize_t i = 0; i < n; ++i)
        if (!walk(items[i], depth + 1, leaf)) return false;
    return true;
}

// The path of leaf `target` below `node` ("[0]['enc']"), or "" when there is none.
bool path_to(PyObject* node, std::size_t& remaining, std::string& path) {
    if (!is_container(node)) {
        if (remaining == 0) return true;
        --remaining;
        return false;
    }
    const std::size_t mark = path.size();
    if (PyDict_Check(node)) {
        const py::list items = py::reinterpret_borrow<py::dict>(node).attr("items")();
        for (const py::handle kv : items) {
            path += "[" + py::repr(kv[py::int_(0)]).cast<std::string>() + "]";
            if (path_to(kv[py::int_(1)].ptr(), remaining, path)) return true;
            path.resize(mark);
        }
        return false;
    }
    const py::sequence seq = py::reinterpret_borrow<py::sequence>(node);
    for (std::size_t i = 0; i < seq.size(); ++i) {
        path += "[" + std::to_string(i) + "]";
        if (path_to(seq[i].ptr(), remaining, path)) return true;
        path.resize(mark);
    }
    return false;
}

std::string Batch::at(std::size_t leaf) const {
    if (single) return arg;
    if (root) {
        std::string path;
        std::size_t remaining = leaf;
        if (path_to(root.ptr(), remaining, path)) return arg + path;
    }
    return arg + "[" + std::to_string(leaf) + "]";
}

[[noreturn]] void bad_dtype(const py::handle& arr, const std::string& at, bool byteorder) {
    const std::string name = py::str(arr.attr("dtype")).cast<std::string>();
    if (byteorder) {
        throw py::type_error(at + " has non-native byte order (dtype " + name +
                             "); expected native float16, bfloat16, float32 or float64");
    }
    throw py::type_error(at + " has dtype " + name + "; expected float16, bfloat16, float32 or float64");
}

// The element type of leaf `leaf`'s array, or a TypeError naming it. The name is built only
// for the error: this runs for every array of every call.
DType element_type(const py::array& arr, const Batch& b, std::size_t leaf) {
    const auto* descr = py::detail::array_descriptor_proxy(py::detail::array_proxy(arr.ptr())->descr);
    const int num = descr->type_num;
    if (descr->byteorder != '>') {
        if (num == kNpyFloat) return DType::F32;
        if (num == kNpyDouble) return DType::F64;
        if (num == kNpyHalf) return DType::F16;
        if (is_bf16(num)) return DType::BF16;
    }
    bad_dtype(arr, b.at(leaf), descr->byteorder == '>');
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

// numpy.shares_memory's max_work for one pair of views whose bounds intersect: the QKV split
// and interleaved views take 1; a contrived pair of 2-d views with co-prime strides needs
// about 1e5 and is then refused as undecided.
constexpr long kExactOverlapWork = 1L << 16;

[[noreturn]] void overlap_error(const Batch& b, std::size_t first, std::size_t second, bool undecided = false) {
    if (b.pos[first] > b.pos[second]) std::swap(first, second);
    const Span& sa = b.spans[first];
    const Span& sc = b.spans[second];
    const std::string pair = b.at(b.pos[first]) + " and " + b.at(b.pos[second]);
    const bool same_bytes = sa.data == sc.data && sa.n * gradclip::itemsize(sa.dt) == sc.n * gradclip::itemsize(sc.dt);
    if (same_bytes && sa.ndim == 0 && sc.ndim == 0)
        throw py::value_error(pair + " are the same memory; each gradient must appear once");
    if (undecided)
        throw py::value_error(pair +
                              " may overlap in memory: their memory bounds intersect, and deciding whether they "
                              "share an element exceeded gradclip's work bound (numpy.shares_memory with "
                              "max_work=" +
                              std::to_string(kExactOverlapWork) + "); use views of separate buffers");
    throw py::value_error(pair + " overlap in memory (they share at least one element)");
}

// Called when the memory bounds of some arrays intersect (find_overlap), which views of one
// buffer that interleave or split its rows do without sharing a byte (qkv[:, :32] and
// qkv[:, 32:64]; buf[0::2] and buf[1::2]). Decides every such pair exactly with NumPy's
// solver, numpy.shares_memory, which bounds its work by max_work (a pair beyond it counts as
// overlapping). Off the common path: only a call whose bounds check failed gets here. Sets
// `first`, `second` to a pair that shares an element (or could not be decided, `undecided`)
// and returns true, or returns false when every pair is disjoint. `ranges` is sorted by lo.
bool exact_overlap(const Batch& b, const std::vector<gradclip::ByteRange>& ranges, std::size_t& first,
                   std::size_t& second, bool& undecided) {
    // kept for the interpreter's lifetime, as is_masked's type
    static PyObject* shares = py::object(py::module_::import("numpy").attr("shares_memory")).release().ptr();
    static PyObject* too_hard =
        py::object(py::module_::import("numpy.exceptions").attr("TooHardError")).release().ptr();
    const py::handle f(shares);
    for (std::size_t j = 1; j < ranges.size(); ++j) {
        for (std::size_t i = 0; i < j; ++i) {
            if (ranges[i].hi <= ranges[j].lo) continue;  // sorted by lo: ranges[i] ends before j starts
            try {
                const bool share =
                    f(b.keep[ranges[i].id], b.keep[ranges[j].id], py::arg("max_work") = kExactOverlapWork).cast<bool>();
                if (!share) continue;
                undecided = false;
            } catch (py::error_already_set& e) {
                if (!e.matches(py::handle(too_hard))) throw;
                undecided = true;
            }
            first = ranges[i].id;
            second = ranges[j].id;
            return true;
        }
    }
    return false;
}

// True for an ndarray subclass that must not be clipped as a plain array: a masked array's
// masked entries would be read into the norm and written.
bool is_masked(PyObject* item) {
    static PyObject* masked = [] {
        const py::object t = py::module_::import("numpy.ma").attr("MaskedArray");
        return t.inc_ref().ptr();  // kept for the interpreter's lifetime
    }();
    return PyObject_IsInstance(item, masked) == 1;
}

// Adds one leaf to the batch (None is skipped but counts for positions).
void add_leaf(Batch& b, PyObject* item, bool write, const py::detail::npy_api& api) {
    const std::size_t i = b.npos++;
    if (item == Py_None) return;
    // (a default-constructed py::array would allocate a new empty array: avoid it) Non-ndarrays
    // and masked arrays go through the Python helper: a view, or a TypeError.
    const bool plain = api.PyArray_Check_(item) && (Py_TYPE(item) == api.PyArray_Type_ || !is_masked(item));
    py::array arr = plain ? py::reinterpret_borrow<py::array>(item)
                          : (*g_as_array)(py::handle(item), b.at(i), write).cast<py::array>();
    Span sp;
    sp.dt = element_type(arr, b, i);
    b.spans.push_back(sp);
    b.pos.push_back(i);
    b.keep.push_back(std::move(arr));
}

// Validates every leaf of `grads` and describes it; throws TypeError naming the argument and
// position. Nothing is written here. Runs on every call, so it reads NumPy's array structs
// directly instead of going through Python attribute lookups. `write` tells the Python helper
// that views non-ndarrays whether the call writes (it refuses parameters then); the checks a
// write needs beyond that are check_writable's.
void parse(const py::handle& grads, const std::string& arg, bool single, Batch& b, bool write = true) {
    const auto& api = py::detail::npy_api::get();
    b.arg = arg;
    b.single = single;
    bool nested = PyDict_Check(grads.ptr());
    if (!nested) {
        // a list or tuple as is (any other sequence materialised once): a C array of items
        const py::object fast =
            py::reinterpret_steal<py::object>(PySequence_Fast(grads.ptr(), "grads must be a sequence"));
        if (!fast) throw py::error_already_set();
        const auto n = static_cast<std::size_t>(PySequence_Fast_GET_SIZE(fast.ptr()));
        PyObject** items = PySequence_Fast_ITEMS(fast.ptr());
        b.keep.reserve(n);
        b.pos.reserve(n);
        b.spans.reserve(n);
        b.meta_off.reserve(n);
        for (std::size_t i = 0; i < n && !nested; ++i) nested = is_container(items[i]);
        if (!nested)
            for (std::size_t i = 0; i < n; ++i) add_leaf(b, items[i], write, api);
    }
    if (nested) {
        b.root = py::reinterpret_borrow<py::object>(grads);
        walk(grads.ptr(), 0, [&](PyObject* leaf) {
            add_leaf(b, leaf, write, api);
            return true;
        });
    }
    std::size_t meta_need = 0;
    for (const py::array& a : b.keep) meta_need += 2 * static_cast<std::size_t>(a.ndim());
    b.meta.resize(meta_need);  // sized once: spans point into it
    std::size_t off = 0;
    for (std::size_t k = 0; k < b.keep.size(); ++k) {
        b.meta_off.push_back(off);
        describe(b, k, off);
        off += 2 * static_cast<std::size_t>(b.keep[k].ndim());
    }
}

// What a writing call needs beyond parse: writeable arrays, none whose elements share memory,
// no two that overlap. Throws ValueError naming the position; a read-only array's message
// names the copying alternative.
void check_writable(const Batch& b) {
    const std::size_t m = b.keep.size();
    std::vector<gradclip::ByteRange> bounds;  // id: index into spans
    if (m > 1) bounds.reserve(m);
    for (std::size_t k = 0; k < m; ++k) {
        const auto* proxy = py::detail::array_proxy(b.keep[k].ptr());
        if ((proxy->flags & py::detail::npy_api::NPY_ARRAY_WRITEABLE_) == 0) {
            // the copying alternative is named to callers of in-place functions only (`out`
            // belongs to a caller of the copying functions)
            throw py::value_error(
                b.at(b.pos[k]) + " is read-only; gradclip writes in place and needs a writeable array" +
                (b.arg == "out" ? std::string() : " (gradclip.clip_by_global_norm returns clipped copies instead)"));
        }
        const Span& sp = b.spans[k];
        if (sp.n == 0) continue;  // nothing to write
        const int nd = proxy->nd;
        const std::ptrdiff_t* shape = b.meta.data() + b.meta_off[k];
        const std::ptrdiff_t* strides = shape + nd;
        const std::size_t isz = gradclip::itemsize(sp.dt);
        const bool dense = sp.ndim == 0;
        if (!dense && gradclip::may_self_overlap(nd, shape, strides, isz)) {
            throw py::value_error(b.at(b.pos[k]) +
                                  " has elements that share memory (e.g. a stride-0 view); writing to it in "
                                  "place would apply the update more than once");
        }
        if (m < 2) continue;
        if (dense) {
            bounds.push_back({sp.data, sp.data + sp.n * isz, k});
        } else {
            const char* lo;
            const char* hi;
            gradclip::byte_bounds(proxy->data, nd, shape, strides, isz, lo, hi);
            bounds.push_back({lo, hi, k});
        }
    }
    std::size_t first, second;
    bool undecided = false;
    if (gradclip::find_overlap(bounds, first, second) && exact_overlap(b, bounds, first, second, undecided))
        overlap_error(b, first, second, undecided);
}

gradclip::NormSpec spec_from(double p) { return gradclip::make_norm_spec(p); }

// Per-position output: norms of the spans at their positions, 0.0 for None entries. Made
// (allocated) before a writing call's write, filled after it with scatter.
py::array_t<double> positions_array(const Batch& b) {
    py::array_t<double> out(static_cast<py::ssize_t>(b.npos));
    std::fill(out.mutable_data(), out.mutable_data() + b.npos, 0.0);
    return out;
}
py::array_t<double> scatter(const Batch& b, const std::vector<double>& per_span, py::array_t<double> out) {
    double* o = out.mutable_data();
    for (std::size_t k = 0; k < b.spans.size(); ++k) o[b.pos[k]] = per_span[k];
    return out;
}
py::array_t<double> scatter(const Batch& b, const std::vector<double>& per_span) {
    return scatter(b, per_span, positions_array(b));
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

// clip_by_norm walks the slices a window at a time (gradclip::clip_slices): the spans and the
// engine's chunk plan of one window (about 140 bytes per slice) are made once, for the
// largest window, before the first write, and reused for every window, so the memory of a
// call beyond the norms it returns is bounded whatever the number of slices. A
// window holds at most kWindowSlices slices (about half a MiB of bookkeeping, which stays in
// cache) and at most kWindowBytes of data (small chunk tables), but at least one slice. A
// window of slices of 64 bytes or more holds at least 256 KiB, enough for clip_each to split
// its chunks across threads; windows of smaller slices run on the calling thread. Each
// slice's norm and clip depend on that slice alone, so windows change no bit of the result.
constexpr std::size_t kWindowSlices = 4096;
constexpr std::size_t kWindowBytes = std::size_t{16} << 20;

// Norm of every slice of x along `axes` (already normalised, sorted, unique), clipped with
// the common rule. max_norm holds one bound for every slice, or one per slice in C order of
// the kept axes (checked by the caller). Returns the norms as a flat array in that order.
py::array_t<double> clip_by_norm(const py::object& x, const py::array_t<double, py::array::c_style>& max_norm,
                                 const std::vector<int>& axes, double p, double eps, const std::string& arg) {
    Batch b;
    parse(py::make_tuple(x), arg, true, b);
    check_writable(b);
    if (b.keep.empty()) throw py::type_error(arg + " must be an array, not None");
    const py::array& arr = b.keep[0];
    const DType dt = b.spans[0].dt;
    const int nd = static_cast<int>(arr.ndim());
    const auto und = static_cast<std::size_t>(nd);
    // shape, strides and reduced flags copied while the GIL is held
    std::vector<std::ptrdiff_t> geom(2 * und);
    std::unique_ptr<bool[]> reduced(new bool[und + 1]());
    for (int a : axes) reduced[static_cast<std::size_t>(a)] = true;
    std::size_t slice_bytes = gradclip::itemsize(dt);
    for (std::size_t d = 0; d < und; ++d) {
        geom[d] = arr.shape(static_cast<py::ssize_t>(d));
        geom[und + d] = arr.strides(static_cast<py::ssize_t>(d));
        if (reduced[d]) slice_bytes *= static_cast<std::size_t>(geom[d]);
    }
    const std::size_t total = gradclip::count_slices(nd, geom.data(), reduced.get());
    const auto nb = static_cast<std::size_t>(max_norm.size());
    if (nb != 1 && nb != total)
        throw py::value_error("max_norm has " + std::to_string(nb) + " bounds for " + std::to_string(total) +
                              " slices");
    const std::size_t by_bytes =
        slice_bytes == 0 ? kWindowSlices : std::max<std::size_t>(1, kWindowBytes / slice_bytes);
    const std::size_t window = std::min({total, kWindowSlices, by_bytes});
    char* data = static_cast<char*>(const_cast<void*>(arr.data()));
    const gradclip::SpanBounds bounds{max_norm.data(), nb == 1 ? 0u : 1u, false};
    py::array_t<double> out(static_cast<py::ssize_t>(total));
    double* o = out.mutable_data();
    {
        py::gil_scoped_release nogil;
        gradclip::clip_slices(data, nd, geom.data(), geom.data() + und, dt, reduced.get(), window, spec_from(p), bounds,
                              eps, o);
    }
    return out;
}

// AGC reads the parameters while it writes the gradients: a parameter that shares memory with
// a gradient (the weights passed as their own gradients, say) would be clipped too, so that is
// refused, by the overlap rule of every writing call (the memory bounds of the arrays; the
// gradients are disjoint already).
void check_disjoint(const Batch& g, const Batch& w) {
    std::vector<gradclip::ByteRange> ranges;
    ranges.reserve(g.keep.size());
    const auto bounds_of = [](const Batch& b, std::size_t k, const char*& lo, const char*& hi) {
        const auto* proxy = py::detail::array_proxy(b.keep[k].ptr());
        const std::ptrdiff_t* shape = b.meta.data() + b.meta_off[k];
        gradclip::byte_bounds(proxy->data, proxy->nd, shape, shape + proxy->nd, gradclip::itemsize(b.spans[k].dt), lo,
                              hi);
    };
    for (std::size_t k = 0; k < g.keep.size(); ++k) {
        if (g.spans[k].n == 0) continue;
        const char* lo;
        const char* hi;
        bounds_of(g, k, lo, hi);
        ranges.push_back({lo, hi, k});
    }
    std::sort(ranges.begin(), ranges.end(),
              [](const gradclip::ByteRange& x, const gradclip::ByteRange& y) { return x.lo < y.lo; });
    for (std::size_t j = 0; j < w.keep.size(); ++j) {
        if (w.spans[j].n == 0) continue;
        const char* lo;
        const char* hi;
        bounds_of(w, j, lo, hi);
        // the gradients are disjoint, so sorted by lo their hi ascend too
        const auto it = std::upper_bound(ranges.begin(), ranges.end(), lo,
                                         [](const char* x, const gradclip::ByteRange& r) { return x < r.hi; });
        if (it != ranges.end() && it->lo < hi)
            throw py::value_error(w.at(w.pos[j]) + " and " + g.at(g.pos[it->id]) +
                                  " share memory; AGC writes the gradients and only reads the parameters, so a "
                                  "parameter may not be (or overlap) a gradient (pass each parameter's gradient)");
    }
}

// Adaptive gradient clipping over lists of gradients and parameters of equal shapes.
// reduce[i] lists the axes a unit of the array at position i spans (the others index units).
// A position whose gradient is None is skipped, whatever its parameter (as timm does).
py::tuple adaptive_clip(const py::handle& grads, const py::handle& params, double clipping, double eps,
                        const std::vector<std::vector<int>>& reduce, double p) {
    Batch g, all_w;
    parse(grads, "grads", false, g);
    check_writable(g);
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
            throw py::value_error(all_w.at(g.pos[k]) + " is None but " + g.at(g.pos[k]) +
                                  " is not; AGC needs the parameter of every gradient");
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
        if (!same) throw py::value_error(g.at(i) + " and " + all_w.at(i) + " have different shapes");
        std::vector<bool> r(nd, false);
        for (int ax : reduce.at(i)) r.at(static_cast<std::size_t>(ax)) = true;
        reduced.push_back(std::move(r));
    }
    check_disjoint(g, all_w);
    Slices gs, ws;
    slice_batch(g, reduced, gs);
    slice_batch(w, reduced, ws);
    const std::size_t n = gs.spans.size();
    // everything the result needs is allocated before the write
    std::vector<double> gn(n), wn(n), coefs(n), per_array(g.keep.size());
    py::array_t<double> out = positions_array(g);
    double total;
    {
        py::gil_scoped_release nogil;
        gradclip::adaptive_clip(gs.spans.data(), ws.spans.data(), n, spec_from(p), clipping, eps, gn.data(), wn.data(),
                                coefs.data());
        // per-array pre-clip norms from the unit norms, and the total from those
        for (std::size_t k = 0; k < g.keep.size(); ++k)
            per_array[k] =
                gradclip::norm_of_norms(gn.data() + gs.first[k], gs.first[k + 1] - gs.first[k], spec_from(p));
        total = gradclip::norm_of_norms(per_array.data(), per_array.size(), spec_from(p));
    }
    double cmin = 1.0;
    bool nan = false;
    for (double c : coefs) {
        if (c != c) nan = true;
        cmin = c < cmin ? c : cmin;
    }
    return py::make_tuple(scatter(g, per_array, out), nan ? std::numeric_limits<double>::quiet_NaN() : cmin, total);
}

// Per-example clipping; every array's axis 0 is the batch. Returns (per-example norms,
// per-example coefficients, clipped count) for the global rule, or (norms, coefs) per
// (array, example) shaped (n_arrays, batch) for per_layer.
py::tuple clip_per_example(const py::handle& grads, double max_norm, bool per_layer, double eps) {
    Batch g;
    parse(grads, "grads", false, g);
    check_writable(g);
    std::vector<std::vector<bool>> reduced;
    py::ssize_t batch = -1;
    for (std::size_t k = 0; k < g.keep.size(); ++k) {
        const py::array& a = g.keep[k];
        const std::string where_k = g.at(g.pos[k]);
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
    // everything the result needs is allocated before the write: the norms, the coefficients,
    // and each array's sum over the batch (float64, shape[1:]), with example 0 of each array
    // described for the sums
    py::array_t<double> norms({static_cast<py::ssize_t>(na), batch});
    py::array_t<double> coefs({static_cast<py::ssize_t>(na), batch});
    py::list sums(g.npos);
    for (std::size_t i = 0; i < g.npos; ++i) sums[i] = py::none();
    std::vector<Span> views(na);
    std::vector<std::ptrdiff_t> steps(na);
    std::vector<double*> outs(na);
    for (std::size_t k = 0; k < na; ++k) {
        const py::array& a = g.keep[k];
        const auto* proxy = py::detail::array_proxy(a.ptr());
        const std::ptrdiff_t* shape = g.meta.data() + g.meta_off[k];
        const std::ptrdiff_t* strides = shape + proxy->nd;
        py::array_t<double> s(std::vector<py::ssize_t>(shape + 1, shape + proxy->nd));
        outs[k] = s.mutable_data();
        sums[g.pos[k]] = s;
        Span& v = views[k];
        v.data = proxy->data;
        v.dt = g.spans[k].dt;
        v.n = static_cast<std::size_t>(s.size());
        v.ndim = proxy->nd - 1;
        v.shape = v.ndim == 0 ? nullptr : shape + 1;
        v.strides = v.ndim == 0 ? nullptr : strides + 1;
        steps[k] = strides[0];
    }
    // examples clipped, per array (per_layer counts)
    py::array_t<std::int64_t> counts(static_cast<py::ssize_t>(g.npos));
    std::int64_t* pk = counts.mutable_data();
    std::fill(pk, pk + g.npos, std::int64_t{0});
    std::size_t clipped;
    {
        double* pn = norms.mutable_data();
        double* pc = coefs.mutable_data();
        py::gil_scoped_release nogil;
        clipped = gradclip::clip_per_example(sl.spans.data(), na, nb, per_layer, max_norm, eps, pn, pc);
        gradclip::sum_examples(views.data(), steps.data(), na, nb, outs.data());
        for (std::size_t k = 0; k < na; ++k)
            for (std::size_t e = 0; e < nb; ++e) pk[g.pos[k]] += pc[k * nb + e] < 1.0 ? 1 : 0;
    }
    return py::make_tuple(norms, coefs, clipped, counts, sums);
}

// ------------------------------------------------------------------ copies
// The functional operations read `grads` (any pytree; read-only memory, JAX and TensorFlow
// arrays through DLPack or the buffer protocol, the same array twice are all fine) and write
// new arrays: allocated here, or `out`, a pytree of writeable arrays of the same shapes and
// dtypes in the same leaf order. Each pair of spans is dense in the same memory order (a
// memcpy, then the write pass in cache) or, when the layouts differ, strided views paired
// in C order.
struct Copies {
    Batch src, dst;
    std::vector<Span> s, d;  // the pairs, as the engine gets them
    py::object outs;         // what the caller returns: the new arrays by leaf, or `out`
};

bool positive_dense(const py::array& a, const Span& sp) {
    if (sp.ndim != 0) return false;
    for (py::ssize_t d = 0; d < a.ndim(); ++d)
        if (a.strides(d) < 0) return false;
    return true;
}

Span strided_view(const Batch& b, std::size_t k) {
    const auto* proxy = py::detail::array_proxy(b.keep[k].ptr());
    Span sp = b.spans[k];
    if (proxy->nd == 0) return sp;  // one element: dense
    sp.data = proxy->data;
    sp.ndim = proxy->nd;
    sp.shape = b.meta.data() + b.meta_off[k];
    sp.strides = sp.shape + proxy->nd;
    std::size_t count = 1;
    for (int d = 0; d < proxy->nd; ++d) count *= static_cast<std::size_t>(sp.shape[d]);
    sp.n = count;
    return sp;
}

Copies make_copies(const py::tuple& target, const py::object& out) {
    if (target.size() != 2) throw py::type_error("a target is (grads, single)");
    const bool single = target[1].cast<bool>();
    Copies c;
    parse(target[0], "grads", single, c.src, /*write=*/false);
    const std::size_t m = c.src.keep.size();
    if (out.is_none()) {
        py::list outs(c.src.npos);
        for (std::size_t i = 0; i < c.src.npos; ++i) outs[i] = py::none();
        for (std::size_t k = 0; k < m; ++k) {
            const py::array& a = c.src.keep[k];
            std::vector<py::ssize_t> shape(a.shape(), a.shape() + a.ndim());
            // the same memory order as a dense source (a memcpy per chunk), else C order
            py::array o =
                positive_dense(a, c.src.spans[k])
                    ? py::array(a.dtype(), shape, std::vector<py::ssize_t>(a.strides(), a.strides() + a.ndim()))
                    : py::array(a.dtype(), shape);
            outs[c.src.pos[k]] = o;
        }
        parse(outs, "out", single, c.dst, /*write=*/true);
        c.outs = single ? py::object(outs[0]) : py::object(outs);
    } else {
        const py::tuple out_target = py::reinterpret_borrow<py::tuple>(out);
        parse(out_target[0], "out", out_target[1].cast<bool>(), c.dst, /*write=*/true);
        check_writable(c.dst);
        if (c.dst.npos != c.src.npos || c.dst.pos != c.src.pos)
            throw py::value_error("out must have an array where grads has one and None where it has None (" +
                                  std::to_string(c.dst.keep.size()) + " arrays in " + std::to_string(c.dst.npos) +
                                  " leaves for " + std::to_string(m) + " in " + std::to_string(c.src.npos) + ")");
        for (std::size_t k = 0; k < m; ++k) {
            const py::array& a = c.src.keep[k];
            const py::array& o = c.dst.keep[k];
            bool same = a.ndim() == o.ndim() && c.src.spans[k].dt == c.dst.spans[k].dt;
            for (py::ssize_t d = 0; same && d < a.ndim(); ++d) same = a.shape(d) == o.shape(d);
            if (!same)
                throw py::value_error(c.dst.at(c.dst.pos[k]) + " must have the shape and dtype of " +
                                      c.src.at(c.src.pos[k]));
        }
        // an output may be its own input (the in-place result), but may not overlap another
        // input: that input would be read after part of it was written
        std::vector<gradclip::ByteRange> ranges;
        for (std::size_t k = 0; k < m; ++k) {
            const Span& sp = c.dst.spans[k];
            if (sp.n == 0) continue;
            const char* lo;
            const char* hi;
            const auto* proxy = py::detail::array_proxy(c.dst.keep[k].ptr());
            gradclip::byte_bounds(proxy->data, proxy->nd, c.dst.meta.data() + c.dst.meta_off[k],
                                  c.dst.meta.data() + c.dst.meta_off[k] + proxy->nd, gradclip::itemsize(sp.dt), lo, hi);
            ranges.push_back({lo, hi, k});
        }
        std::sort(ranges.begin(), ranges.end(),
                  [](const gradclip::ByteRange& x, const gradclip::ByteRange& y) { return x.lo < y.lo; });
        for (std::size_t k = 0; k < m; ++k) {
            const Span& sp = c.src.spans[k];
            if (sp.n == 0) continue;
            const char* lo;
            const char* hi;
            const auto* proxy = py::detail::array_proxy(c.src.keep[k].ptr());
            gradclip::byte_bounds(proxy->data, proxy->nd, c.src.meta.data() + c.src.meta_off[k],
                                  c.src.meta.data() + c.src.meta_off[k] + proxy->nd, gradclip::itemsize(sp.dt), lo, hi);
            // the outputs are disjoint, so sorted by lo their hi ascend too
            auto it = std::upper_bound(ranges.begin(), ranges.end(), lo,
                                       [](const char* x, const gradclip::ByteRange& r) { return x < r.hi; });
            for (; it != ranges.end() && it->lo < hi; ++it) {
                const std::size_t j = it->id;
                const bool alias =
                    j == k && c.src.keep[k].data() == c.dst.keep[k].data() &&
                    std::equal(c.src.meta.begin() + static_cast<std::ptrdiff_t>(c.src.meta_off[k]),
                               c.src.meta.begin() + static_cast<std::ptrdiff_t>(c.src.meta_off[k]) + 2 * proxy->nd,
                               c.dst.meta.begin() + static_cast<std::ptrdiff_t>(c.dst.meta_off[k]));
                if (!alias)
                    throw py::value_error(c.dst.at(c.dst.pos[j]) + " overlaps " + c.src.at(c.src.pos[k]) +
                                          " in memory; an output may only be its own input");
            }
        }
        c.outs = py::reinterpret_borrow<py::object>(out_target[2]);
    }
    c.s.reserve(m);
    c.d.reserve(m);
    for (std::size_t k = 0; k < m; ++k) {
        const py::array& a = c.src.keep[k];
        const py::array& o = c.dst.keep[k];
        bool same_order = c.src.spans[k].ndim == 0 && c.dst.spans[k].ndim == 0;
        for (py::ssize_t d = 0; same_order && d < a.ndim(); ++d) same_order = a.strides(d) == o.strides(d);
        c.s.push_back(same_order ? c.src.spans[k] : strided_view(c.src, k));
        c.d.push_back(same_order ? c.dst.spans[k] : strided_view(c.dst, k));
    }
    return c;
}

// (outputs, pre-clip total norm, factor applied)
py::tuple copy_clip_total(const py::tuple& target, const py::object& out, double max_norm, double p, double eps) {
    Copies c = make_copies(target, out);
    double norm, coef;
    {
        py::gil_scoped_release nogil;
        norm = gradclip::clip_total_into(c.s.data(), c.d.data(), c.s.size(), spec_from(p), max_norm, eps, &coef);
    }
    return py::make_tuple(c.outs, norm, coef);
}

// (outputs, pre-clip norm of each leaf)
py::tuple copy_clip_each(const py::tuple& target, const py::object& out, double max_norm, double p, double eps) {
    Copies c = make_copies(target, out);
    std::vector<double> each(c.s.size());
    py::array_t<double> norms = positions_array(c.src);
    {
        py::gil_scoped_release nogil;
        gradclip::clip_each_into(c.s.data(), c.d.data(), c.s.size(), spec_from(p), max_norm, eps, each.data());
    }
    return py::make_tuple(c.outs, scatter(c.src, each, norms));
}

py::object copy_clamp(const py::tuple& target, const py::object& out, double lo, double hi) {
    Copies c = make_copies(target, out);
    {
        py::gil_scoped_release nogil;
        gradclip::clamp_into(c.s.data(), c.d.data(), c.s.size(), lo, hi);
    }
    return c.outs;
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
            if (write) check_writable(b_);
            return;
        }
        data0_.reserve(b_.keep.size());
        for (const py::array& a : b_.keep) data0_.push_back(a.data());
        // a list or dict the caller may change after this (L[0] = new_array): its items, by
        // identity, for check() to notice (tuples cannot change; nested containers are not
        // followed)
        if (PyList_Check(grads.ptr()) || PyDict_Check(grads.ptr())) {
            src_ = py::reinterpret_borrow<py::object>(grads);
            items0_ = items_of(grads.ptr());
        }
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
    const gradclip::PlanCache* plan() const noexcept { return plans_.get(); }

    // The top-level items of a list, or the values of a dict, in order (strong references:
    // an identity compared later must not be a reused address).
    static py::tuple items_of(PyObject* c) {
        if (PyList_Check(c)) return py::reinterpret_steal<py::tuple>(PyList_AsTuple(c));
        return py::tuple(py::reinterpret_borrow<py::dict>(c).attr("values")());
    }

    // The set holds the arrays it was made with, not the caller's list: an item replaced or
    // added or removed since would be silently missed, so it is an error. Pointer compares,
    // no reference counts touched (a dict's values are walked with PyDict_Next).
    void check_items() const {
        PyObject* c = src_.ptr();
        const Py_ssize_t n0 = PyTuple_GET_SIZE(items0_.ptr());
        const bool is_list = PyList_Check(c);
        const Py_ssize_t n = is_list ? PyList_GET_SIZE(c) : PyDict_Size(c);
        const char* what = is_list ? "list" : "dict";
        if (n != n0) {
            throw py::value_error(b_.arg + " (the " + what + " the GradientSet was made from) has " +
                                  std::to_string(n) + " entries now, " + std::to_string(n0) +
                                  " when the set was made; the set holds the arrays it was made with, not the " + what +
                                  ": make a new GradientSet");
        }
        Py_ssize_t at = 0, i = 0;
        PyObject *key, *value;
        for (; i < n; ++i) {
            if (is_list) {
                value = PyList_GET_ITEM(c, i);
            } else if (!PyDict_Next(c, &at, &key, &value)) {
                break;
            }
            if (value == PyTuple_GET_ITEM(items0_.ptr(), i)) continue;
            const std::string where =
                b_.arg + "[" + (is_list ? std::to_string(i) : py::repr(py::handle(key)).cast<std::string>()) + "]";
            throw py::value_error(where + " was replaced in the " + what +
                                  " after the GradientSet was made; the set holds the arrays it was made with, "
                                  "not the " +
                                  what + ": write into the array it holds (gs.arrays), or make a new GradientSet");
        }
    }

    void check(bool write) const {
        if (!plans_) return;  // one-shot: validated just now, for what its operation does
        if (src_) check_items();
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

    Batch b_;
    py::object src_;                 // the caller's list or dict (null otherwise): see check_items
    py::tuple items0_;               // its items when the set was made
    mutable bool writable_ = false;  // check_writable passed once (cached sets)
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

PYBIND11_MODULE(_core, m, py::mod_gil_not_used()) {
    m.doc() = "gradclip's compiled core (private; use the gradclip package)";
    // The C ABI for gradclip.cython_api and other native callers: the same engine instance, so
    // set_num_threads and the CPU target apply to them too. The table is static; the capsule
    // needs no destructor.
    m.attr("_C_API") = py::capsule(static_cast<const void*>(gradclip_capi_table()), GRADCLIP_CAPI_CAPSULE);
    m.def(
        "_init",
        [](const py::object& bf16_lookup, const py::object& as_array) {
            // leaked on purpose: they live as long as the interpreter, never decref'd at exit
            g_bf16_lookup = new py::object(bf16_lookup);
            g_as_array = new py::object(as_array);
        },
        py::arg("bf16_lookup"), py::arg("as_array"));
    py::enum_<NonFinite>(m, "NonFinite", "What the engine does with a NaN or infinite norm")
        .value("propagate", NonFinite::Propagate)
        .value("skip", NonFinite::Skip)
        .value("zero", NonFinite::Zero);
    m.def("copy_clip_total", &copy_clip_total, py::arg("target"), py::arg("out"), py::arg("max_norm"), py::arg("p"),
          py::arg("eps"));
    m.def("copy_clip_each", &copy_clip_each, py::arg("target"), py::arg("out"), py::arg("max_norm"), py::arg("p"),
          py::arg("eps"));
    m.def("copy_clamp", &copy_clamp, py::arg("target"), py::arg("out"), py::arg("lo"), py::arg("hi"));
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
    py::class_<GradSet> cls(m, "GradientSet");
    cls.def(py::init<const py::handle&, const std::string&, bool, bool, bool>(), py::arg("grads"),
            py::arg("arg") = "grads", py::arg("single") = false, py::arg("cached") = true, py::arg("write") = true)
        .def("__len__", &GradSet::size)
        .def("arrays", &GradSet::arrays)
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
