// Batch parsing: the pytree walk, each leaf's dtype, shape and strides read from NumPy's
// array struct (the checks a writing call needs beyond it are writable.cpp's). Runs on every
// call, before anything is written.
#include <algorithm>
#include <atomic>
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "bindings.hpp"

namespace gradclip_py {
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

// ------------------------------------------------------------------ pytrees
// The pytree rule, its one home (gradclip._tree flattens through tree_flatten below): a
// grads argument is one array, or lists, tuples (named tuples too) and dicts nested to any
// depth; everything else, None included, is a leaf; leaves depth first, dicts in their
// iteration order (their own items()/values(), so an OrderedDict's order holds). A flat list
// or tuple, the common case, is read as is by parse; anything nested is walked once.
constexpr int kMaxDepth = 200;

bool is_container(PyObject* o) noexcept { return PyList_Check(o) || PyTuple_Check(o) || PyDict_Check(o); }

// What walk tells a visitor besides the leaves (no-ops here): open/close around a container's
// children, key/unkey around each child (key: the dict key, or null and the index in a list
// or tuple). kKeys: whether the visitor needs dict keys (else a dict's values are read alone).
struct LeavesOnly {
    static constexpr bool kKeys = false;
    void open(PyObject*) {}
    void close(PyObject*) {}
    void key(PyObject*, Py_ssize_t) {}
    void unkey() {}
};

// Visits the tree below `node` in order: v.leaf(PyObject*) for each leaf; returns false when
// the walk was stopped (v.leaf returned false).
template <class V>
bool walk(PyObject* node, int depth, V& v) {
    if (!is_container(node)) return v.leaf(node);
    if (depth > kMaxDepth)
        throw py::type_error("grads is nested more than " + std::to_string(kMaxDepth) +
                             " levels deep (a container that contains itself?)");
    v.open(node);
    if (PyDict_Check(node)) {
        // the dict's items or values, as a new list (safe against a dict changed by Python code
        // below)
        const py::dict d = py::reinterpret_borrow<py::dict>(node);
        if constexpr (V::kKeys) {
            const py::list items = d.attr("items")();
            Py_ssize_t i = 0;
            for (const py::handle kv : items) {
                const py::object k = kv[py::int_(0)];
                const py::object value = kv[py::int_(1)];
                v.key(k.ptr(), i++);
                if (!walk(value.ptr(), depth + 1, v)) return false;
                v.unkey();
            }
        } else {
            const py::list values = d.attr("values")();
            for (const py::handle value : values)
                if (!walk(value.ptr(), depth + 1, v)) return false;
        }
    } else {
        const py::object fast = py::reinterpret_steal<py::object>(PySequence_Fast(node, "not a sequence"));
        if (!fast) throw py::error_already_set();
        const Py_ssize_t n = PySequence_Fast_GET_SIZE(fast.ptr());
        PyObject** items = PySequence_Fast_ITEMS(fast.ptr());
        for (Py_ssize_t i = 0; i < n; ++i) {
            v.key(nullptr, i);
            if (!walk(items[i], depth + 1, v)) return false;
            v.unkey();
        }
    }
    v.close(node);
    return true;
}

// The path of one leaf through the containers ("[0]['enc']"): the walk stops at it.
struct PathTo : LeavesOnly {
    static constexpr bool kKeys = true;
    std::size_t remaining;  // leaves still to pass before the one named
    std::string path;
    std::vector<std::size_t> marks;

    explicit PathTo(std::size_t leaf) : remaining(leaf) {}
    bool leaf(PyObject*) {
        if (remaining == 0) return false;
        --remaining;
        return true;
    }
    void key(PyObject* k, Py_ssize_t i) {
        marks.push_back(path.size());
        path += "[" + (k != nullptr ? py::repr(k).cast<std::string>() : std::to_string(i)) + "]";
    }
    void unkey() {
        path.resize(marks.back());
        marks.pop_back();
    }
};

// The leaves in order and the structure around them, for gradclip._tree: a leaf is None in
// the structure, a list or tuple (type, [child, ...]), a dict (type, [(key, child), ...]).
struct Flatten : LeavesOnly {
    static constexpr bool kKeys = true;
    py::list leaves;
    py::object spec = py::none();  // the root's
    std::vector<py::list> children;
    std::vector<py::object> keys;  // per open container: the key of the child being visited
    std::vector<bool> is_dict;

    void put(py::object node) {
        if (children.empty()) {
            spec = std::move(node);
        } else if (is_dict.back()) {
            children.back().append(py::make_tuple(keys.back(), std::move(node)));
        } else {
            children.back().append(std::move(node));
        }
    }
    bool leaf(PyObject* o) {
        leaves.append(py::handle(o));
        put(py::none());
        return true;
    }
    void open(PyObject* node) {
        children.emplace_back();
        keys.emplace_back();
        is_dict.push_back(PyDict_Check(node) != 0);
    }
    void key(PyObject* k, Py_ssize_t) {
        if (k != nullptr) keys.back() = py::reinterpret_borrow<py::object>(k);
    }
    void close(PyObject* node) {
        py::list done = std::move(children.back());
        children.pop_back();
        keys.pop_back();
        is_dict.pop_back();
        put(py::make_tuple(py::type::handle_of(py::handle(node)), std::move(done)));
    }
};

}  // namespace

std::string Batch::at(std::size_t leaf) const {
    if (single) return arg;
    // a tree jax.tree_util flattened names its leaves by their key paths, as the reference does
    if (names) return names.attr("leaf_name")(arg, leaf).cast<std::string>();
    if (root) {
        PathTo v(leaf);
        if (!walk(root.ptr(), 0, v)) return arg + v.path;
    }
    return arg + "[" + std::to_string(leaf) + "]";
}

void Batch::bounds(std::size_t k, const char*& lo, const char*& hi) const {
    const auto* proxy = py::detail::array_proxy(keep[k].ptr());
    const std::ptrdiff_t* shape = meta.data() + meta_off[k];
    gradclip::byte_bounds(proxy->data, proxy->nd, shape, shape + proxy->nd, gradclip::itemsize(spans[k].dt), lo, hi);
}

namespace {

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

// parse's common case: a flat list or tuple whose items are all plain ndarrays (exact type)
// or None, `arrays` of them with `meta_need` shape and stride entries in all. One pass: each
// array's element type (a TypeError naming the first bad one, as add_leaf gives), its span
// and its shape and strides, with no Python call and no allocation beyond the batch's own
// vectors, sized once here.
void parse_plain(Batch& b, PyObject* const* items, std::size_t n, std::size_t arrays, std::size_t meta_need) {
    b.meta.resize(meta_need);  // sized once: spans point into it
    b.spans.resize(arrays);
    b.pos.resize(arrays);
    b.meta_off.resize(arrays);
    std::size_t k = 0, off = 0;
    bool writeable_dense = true;
    for (std::size_t i = 0; i < n; ++i) {
        PyObject* o = items[i];
        if (o == Py_None) continue;
        const auto nd = static_cast<std::size_t>(py::detail::array_proxy(o)->nd);
        // (only gradclip's own bfloat16 look-up runs Python code in here, and it reshapes
        // nothing; checked all the same, since b.meta was sized from the shapes above)
        if (off + 2 * nd > meta_need) throw py::value_error(b.arg + " changed while gradclip read it");
        b.keep.push_back(py::reinterpret_borrow<py::array>(o));  // reserved: cannot throw
        const auto* proxy = py::detail::array_proxy(o);
        const auto* descr = py::detail::array_descriptor_proxy(proxy->descr);
        // float32 and float64 inline; float16, bfloat16 and the errors through element_type
        const bool native = descr->byteorder != '>';
        if (native && descr->type_num == kNpyFloat) {
            b.spans[k].dt = DType::F32;
        } else if (native && descr->type_num == kNpyDouble) {
            b.spans[k].dt = DType::F64;
        } else {
            b.spans[k].dt = element_type(b.keep.back(), b, i);
        }
        b.pos[k] = i;
        b.meta_off[k] = off;
        const bool dense = describe(b, k, off);
        writeable_dense = writeable_dense && dense && (proxy->flags & py::detail::npy_api::NPY_ARRAY_WRITEABLE_) != 0;
        off += 2 * nd;
        ++k;
    }
    b.npos = n;
    b.dense_writeable = writeable_dense;
}

}  // namespace

// Validates every leaf of `grads` and describes it; throws TypeError naming the argument and
// position. Nothing is written here. Runs on every call, so it reads NumPy's array structs
// directly instead of going through Python attribute lookups. `write` tells the Python helper
// that views non-ndarrays whether the call writes (it refuses parameters then); the checks a
// write needs beyond that are check_writable's.
void parse(const py::handle& grads, const std::string& arg, bool single, Batch& b, bool write) {
    const auto& api = py::detail::npy_api::get();
    b.arg = arg;
    b.single = single;
    bool nested = PyDict_Check(grads.ptr());
    // the leaves of a tree that jax.tree_util flattened (gradclip._inputs.JaxLeaves, a list
    // that can name its leaves); only list subclasses pay for the look-up
    if (PyList_Check(grads.ptr()) && !PyList_CheckExact(grads.ptr()) && py::hasattr(grads, "leaf_name"))
        b.names = py::reinterpret_borrow<py::object>(grads);
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
        // one look at every item: nested containers, and whether all are plain ndarrays (or
        // None), whose shapes and strides then go to b.meta in the same pass as the rest
        std::size_t arrays = 0, meta_need = 0;
        bool plain = true;
        for (std::size_t i = 0; i < n; ++i) {
            PyObject* o = items[i];
            if (Py_TYPE(o) == api.PyArray_Type_) {
                ++arrays;
                meta_need += 2 * static_cast<std::size_t>(py::detail::array_proxy(o)->nd);
            } else if (o != Py_None) {
                plain = false;
                if (is_container(o)) {
                    nested = true;
                    break;
                }
            }
        }
        if (!nested && plain) {
            parse_plain(b, items, n, arrays, meta_need);
            return;
        }
        if (!nested)
            for (std::size_t i = 0; i < n; ++i) add_leaf(b, items[i], write, api);
    }
    if (nested) {
        b.root = py::reinterpret_borrow<py::object>(grads);
        struct AddLeaves : LeavesOnly {
            Batch& b;
            bool write;
            const py::detail::npy_api& api;
            AddLeaves(Batch& b_, bool w, const py::detail::npy_api& a) : b(b_), write(w), api(a) {}
            bool leaf(PyObject* o) {
                add_leaf(b, o, write, api);
                return true;
            }
        } v(b, write, api);
        walk(grads.ptr(), 0, v);
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

void register_batch(py::module_& m) {
    m.def(
        "tree_flatten",
        [](const py::handle& tree) {
            Flatten v;
            walk(tree.ptr(), 0, v);
            return py::make_tuple(v.leaves, v.spec);
        },
        py::arg("tree"),
        "(leaves, spec): the leaves of a pytree in the compiled parse's order, and its structure (None for a "
        "leaf; (type, children) for a list or tuple; (type, [(key, child), ...]) for a dict).");
    m.def(
        "_init",
        [](const py::object& bf16_lookup, const py::object& as_array) {
            // leaked on purpose: they live as long as the interpreter, never decref'd at exit
            g_bf16_lookup = new py::object(bf16_lookup);
            g_as_array = new py::object(as_array);
        },
        py::arg("bf16_lookup"), py::arg("as_array"));
}

}  // namespace gradclip_py
