// gradclip._core: the only Python-facing C++. It turns a sequence of arrays into spans,
// validates all of them before anything is written, releases the GIL and calls the engine.
// No arithmetic on gradient data happens here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

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

int g_bf16_num = -1;      // ml_dtypes.bfloat16's type number, when ml_dtypes is present
py::object* g_as_array;   // Python helper: non-ndarray -> ndarray view, or TypeError

std::string where(const std::string& arg, std::size_t pos, bool single) {
    return single ? arg : arg + "[" + std::to_string(pos) + "]";
}

// The validated arrays of one call. `keep` holds references so the memory stays alive
// while the GIL is released.
struct Batch {
    std::vector<Span> spans;          // one per array (None entries excluded)
    std::vector<std::size_t> pos;     // input position of each span
    std::vector<py::array> keep;
    std::vector<std::ptrdiff_t> meta;     // shape then strides of every kept array
    std::vector<std::size_t> meta_off;    // where each kept array's shape starts in meta
    std::size_t npos = 0;
};

struct Bounds {
    const char* lo;
    const char* hi;
    std::size_t idx;  // into Batch::spans
};

// Validates every entry of `seq` and describes it; throws TypeError / ValueError naming
// the argument and position. Nothing is written here, and nothing is written by a caller
// unless this returns.
void parse(const py::sequence& seq, const std::string& arg, bool single, Batch& b) {
    const std::size_t n = py::len(seq);
    b.npos = n;
    b.keep.reserve(n);
    b.pos.reserve(n);
    std::vector<DType> dts;
    dts.reserve(n);
    std::size_t meta_need = 0;
    for (std::size_t i = 0; i < n; ++i) {
        py::object item = seq[i];
        if (item.is_none()) continue;
        // (a default-constructed py::array would allocate a new empty array: avoid it)
        py::array arr = py::isinstance<py::array>(item)
                            ? py::reinterpret_borrow<py::array>(item)
                            : (*g_as_array)(item, where(arg, i, single)).cast<py::array>();
        const py::dtype dt = arr.dtype();
        const int num = dt.num();
        DType d;
        if (dt.byteorder() == '>') {
            throw py::type_error(where(arg, i, single) + " has non-native byte order (dtype " +
                                 py::str(py::object(dt)).cast<std::string>() +
                                 "); expected native float16, bfloat16, float32 or float64");
        }
        if (num == kNpyFloat) {
            d = DType::F32;
        } else if (num == kNpyDouble) {
            d = DType::F64;
        } else if (num == kNpyHalf) {
            d = DType::F16;
        } else if (g_bf16_num >= 0 && num == g_bf16_num) {
            d = DType::BF16;
        } else {
            throw py::type_error(where(arg, i, single) + " has dtype " + py::str(py::object(dt)).cast<std::string>() +
                                 "; expected float16, bfloat16, float32 or float64");
        }
        if (!arr.writeable()) {
            throw py::value_error(where(arg, i, single) +
                                  " is read-only; gradclip writes in place and needs a writeable array");
        }
        meta_need += 2 * static_cast<std::size_t>(arr.ndim());
        dts.push_back(d);
        b.pos.push_back(i);
        b.keep.push_back(std::move(arr));
    }

    // second pass: spans, self-overlap, then overlap between arrays
    const std::size_t m = b.keep.size();
    b.meta.reserve(meta_need);  // no reallocation below: spans point into meta
    b.spans.resize(m);
    b.meta_off.reserve(m);
    std::vector<Bounds> bounds;
    bounds.reserve(m);
    for (std::size_t k = 0; k < m; ++k) {
        const py::array& arr = b.keep[k];
        const int nd = static_cast<int>(arr.ndim());
        const std::size_t off = b.meta.size();
        b.meta_off.push_back(off);
        for (int d = 0; d < nd; ++d) b.meta.push_back(static_cast<std::ptrdiff_t>(arr.shape(d)));
        for (int d = 0; d < nd; ++d) b.meta.push_back(static_cast<std::ptrdiff_t>(arr.strides(d)));
        const std::ptrdiff_t* shape = b.meta.data() + off;
        const std::ptrdiff_t* strides = shape + nd;
        char* data = static_cast<char*>(const_cast<void*>(arr.data()));
        const std::size_t isz = gradclip::itemsize(dts[k]);
        const bool dense = gradclip::describe_array(data, nd, shape, strides, dts[k], b.spans[k]);
        if (b.spans[k].n == 0) continue;
        if (!dense && gradclip::may_self_overlap(nd, shape, strides, isz)) {
            throw py::value_error(where(arg, b.pos[k], single) +
                                  " has elements that share memory (e.g. a stride-0 view); writing to it in "
                                  "place would apply the update more than once");
        }
        const char* lo;
        const char* hi;
        gradclip::byte_bounds(data, nd, shape, strides, isz, lo, hi);
        bounds.push_back({lo, hi, k});
    }
    if (bounds.size() < 2) return;
    std::sort(bounds.begin(), bounds.end(), [](const Bounds& x, const Bounds& y) {
        return x.lo < y.lo || (x.lo == y.lo && x.idx < y.idx);
    });
    std::size_t reach = 0;  // the entry reaching furthest so far
    for (std::size_t j = 1; j < bounds.size(); ++j) {
        const Bounds& cur = bounds[j];
        const Bounds& prev = bounds[reach];
        if (cur.lo < prev.hi) {
            std::size_t a = b.pos[prev.idx], c = b.pos[cur.idx];
            if (a > c) std::swap(a, c);
            const Span& sa = b.spans[prev.idx];
            const Span& sc = b.spans[cur.idx];
            if (cur.lo == prev.lo && cur.hi == prev.hi && sa.ndim == 0 && sc.ndim == 0) {
                throw py::value_error(arg + "[" + std::to_string(a) + "] and " + arg + "[" + std::to_string(c) +
                                      "] are the same memory; each gradient must appear once");
            }
            throw py::value_error(arg + "[" + std::to_string(a) + "] and " + arg + "[" + std::to_string(c) +
                                  "] overlap in memory (gradclip compares the memory bounds of each array, so "
                                  "interleaved strided views of one buffer are rejected too)");
        }
        if (cur.hi > prev.hi) reach = j;
    }
}

NonFinite mode_from(int mode) {
    switch (mode) {
        case 0:
            return NonFinite::Propagate;
        case 1:
            return NonFinite::Skip;
        case 2:
            return NonFinite::Zero;
        default:
            throw py::value_error("unknown non-finite mode");
    }
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

// ------------------------------------------------------------------ entry points
double total_norm(const py::sequence& grads, double p, const std::string& arg, bool single) {
    Batch b;
    parse(grads, arg, single, b);
    py::gil_scoped_release nogil;  // safe: no Python object is touched until it is re-acquired
    return gradclip::total_norm(b.spans.data(), b.spans.size(), spec_from(p));
}

double clip_total(const py::sequence& grads, double max_norm, double p, int mode, double eps, const std::string& arg,
                  bool single) {
    Batch b;
    parse(grads, arg, single, b);
    const NonFinite md = mode_from(mode);
    py::gil_scoped_release nogil;
    return gradclip::clip_total(b.spans.data(), b.spans.size(), spec_from(p), max_norm, eps, md);
}

void clip_with_norm(const py::sequence& grads, double max_norm, double total, double eps, const std::string& arg,
                    bool single) {
    Batch b;
    parse(grads, arg, single, b);
    const double coef = gradclip::clip_coef(max_norm, total, eps);
    if (!gradclip::coef_writes(coef)) return;
    py::gil_scoped_release nogil;
    gradclip::scale_all(b.spans.data(), b.spans.size(), coef);
}

void clamp(const py::sequence& grads, const std::vector<double>& bounds, const std::string& arg, bool single) {
    if (bounds.size() != static_cast<std::size_t>(gradclip::kNumDTypes)) throw py::value_error("need 4 bounds");
    Batch b;
    parse(grads, arg, single, b);
    py::gil_scoped_release nogil;
    gradclip::clamp_all(b.spans.data(), b.spans.size(), bounds.data());
}

py::array_t<double> tensor_norms(const py::sequence& grads, double p, const std::string& arg, bool single) {
    Batch b;
    parse(grads, arg, single, b);
    std::vector<double> norms(b.spans.size());
    {
        py::gil_scoped_release nogil;
        gradclip::span_norms(b.spans.data(), b.spans.size(), spec_from(p), norms.data());
    }
    return scatter(b, norms);
}

py::array_t<double> clip_each(const py::sequence& grads, double max_norm, double p, int mode, double eps,
                              const std::string& arg, bool single) {
    Batch b;
    parse(grads, arg, single, b);
    const NonFinite md = mode_from(mode);
    std::vector<double> norms(b.spans.size());
    {
        py::gil_scoped_release nogil;
        gradclip::clip_each(b.spans.data(), b.spans.size(), spec_from(p), max_norm, eps, md, norms.data());
    }
    return scatter(b, norms);
}

// Norm of every slice of x along `axes` (already normalised, sorted, unique), clipped with
// the common rule. Returns the norms as a flat array in C order of the kept axes.
py::array_t<double> clip_by_norm(const py::object& x, double max_norm, const std::vector<int>& axes, double p,
                                 double eps, const std::string& arg) {
    Batch b;
    parse(py::make_tuple(x), arg, true, b);
    if (b.keep.empty()) throw py::type_error(arg + " must be an array, not None");
    const py::array& arr = b.keep[0];
    const int nd = static_cast<int>(arr.ndim());
    std::vector<char> reduced(static_cast<std::size_t>(nd), 0);
    for (int a : axes) reduced[static_cast<std::size_t>(a)] = 1;
    std::vector<std::ptrdiff_t> kshape, kstride, rmeta;
    for (int d = 0; d < nd; ++d) {
        if (reduced[static_cast<std::size_t>(d)]) continue;
        kshape.push_back(arr.shape(d));
        kstride.push_back(arr.strides(d));
    }
    for (int d = 0; d < nd; ++d)
        if (reduced[static_cast<std::size_t>(d)]) rmeta.push_back(arr.shape(d));
    for (int d = 0; d < nd; ++d)
        if (reduced[static_cast<std::size_t>(d)]) rmeta.push_back(arr.strides(d));
    const int rnd = static_cast<int>(rmeta.size() / 2);
    std::size_t outer = 1;
    for (auto e : kshape) outer *= static_cast<std::size_t>(e);
    std::vector<Span> spans(outer);
    const DType dt = b.spans[0].dt;
    char* base = static_cast<char*>(const_cast<void*>(arr.data()));
    const std::ptrdiff_t* rshape = rmeta.data();
    const std::ptrdiff_t* rstrides = rmeta.data() + rnd;
    std::vector<std::ptrdiff_t> idx(kshape.size(), 0);
    for (std::size_t o = 0; o < outer; ++o) {
        char* p0 = base;
        for (std::size_t d = 0; d < kshape.size(); ++d) p0 += idx[d] * kstride[d];
        gradclip::describe_array(p0, rnd, rshape, rstrides, dt, spans[o]);
        for (std::size_t d = kshape.size(); d-- > 0;) {
            if (++idx[d] < kshape[d]) break;
            idx[d] = 0;
        }
    }
    py::array_t<double> out(static_cast<py::ssize_t>(outer));
    double* o = out.mutable_data();
    {
        py::gil_scoped_release nogil;
        gradclip::clip_each(spans.data(), spans.size(), spec_from(p), max_norm, eps, NonFinite::Propagate, o);
    }
    return out;
}

// A fixed list of arrays validated once. Each call re-checks, in C++ and without touching
// Python objects' reference counts, that no array was resized, re-allocated or made
// read-only since (data pointer, shape, strides, writeable flag).
class GradientSet {
public:
    GradientSet(const py::sequence& grads, std::string arg, bool single) : arg_(std::move(arg)), single_(single) {
        parse(grads, arg_, single_, b_);
        data0_.reserve(b_.keep.size());
        for (const py::array& a : b_.keep) data0_.push_back(a.data());
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
        py::gil_scoped_release nogil;
        return gradclip::total_norm(b_.spans.data(), b_.spans.size(), spec_from(p));
    }
    double clip_total(double max_norm, double p, int mode, double eps) const {
        check();
        const NonFinite md = mode_from(mode);
        py::gil_scoped_release nogil;
        return gradclip::clip_total(b_.spans.data(), b_.spans.size(), spec_from(p), max_norm, eps, md);
    }
    void clip_with_norm(double max_norm, double total, double eps) const {
        check();
        const double coef = gradclip::clip_coef(max_norm, total, eps);
        if (!gradclip::coef_writes(coef)) return;
        py::gil_scoped_release nogil;
        gradclip::scale_all(b_.spans.data(), b_.spans.size(), coef);
    }
    void clamp(const std::vector<double>& bounds) const {
        if (bounds.size() != static_cast<std::size_t>(gradclip::kNumDTypes)) throw py::value_error("need 4 bounds");
        check();
        py::gil_scoped_release nogil;
        gradclip::clamp_all(b_.spans.data(), b_.spans.size(), bounds.data());
    }
    py::array_t<double> tensor_norms(double p) const {
        check();
        std::vector<double> norms(b_.spans.size());
        {
            py::gil_scoped_release nogil;
            gradclip::span_norms(b_.spans.data(), b_.spans.size(), spec_from(p), norms.data());
        }
        return scatter(b_, norms);
    }
    py::array_t<double> clip_each(double max_norm, double p, int mode, double eps) const {
        check();
        const NonFinite md = mode_from(mode);
        std::vector<double> norms(b_.spans.size());
        {
            py::gil_scoped_release nogil;
            gradclip::clip_each(b_.spans.data(), b_.spans.size(), spec_from(p), max_norm, eps, md, norms.data());
        }
        return scatter(b_, norms);
    }

private:
    void check() const {
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
};

}  // namespace

PYBIND11_MODULE(_core, m, py::mod_gil_not_used()) {
    m.doc() = "gradclip's compiled core (private; use the gradclip package)";
    m.def(
        "_init",
        [](const py::object& bf16_dtype, const py::object& as_array) {
            g_bf16_num = bf16_dtype.is_none() ? -1 : py::reinterpret_borrow<py::dtype>(bf16_dtype).num();
            // leaked on purpose: lives as long as the interpreter, never decref'd at exit
            g_as_array = new py::object(as_array);
        },
        py::arg("bf16_dtype"), py::arg("as_array"));
    m.def("total_norm", &total_norm, py::arg("grads"), py::arg("p"), py::arg("arg") = "grads",
          py::arg("single") = false);
    m.def("clip_total", &clip_total, py::arg("grads"), py::arg("max_norm"), py::arg("p"), py::arg("mode"),
          py::arg("eps"), py::arg("arg") = "grads", py::arg("single") = false);
    m.def("clip_with_norm", &clip_with_norm, py::arg("grads"), py::arg("max_norm"), py::arg("total_norm"),
          py::arg("eps"), py::arg("arg") = "grads", py::arg("single") = false);
    m.def("clamp", &clamp, py::arg("grads"), py::arg("bounds"), py::arg("arg") = "grads", py::arg("single") = false);
    m.def("tensor_norms", &tensor_norms, py::arg("grads"), py::arg("p"), py::arg("arg") = "grads",
          py::arg("single") = false);
    m.def("clip_each", &clip_each, py::arg("grads"), py::arg("max_norm"), py::arg("p"), py::arg("mode"),
          py::arg("eps"), py::arg("arg") = "grads", py::arg("single") = false);
    m.def("clip_by_norm", &clip_by_norm, py::arg("x"), py::arg("max_norm"), py::arg("axes"), py::arg("p"),
          py::arg("eps"), py::arg("arg") = "x");
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
    py::class_<GradientSet>(m, "GradientSet")
        .def(py::init<const py::sequence&, std::string, bool>(), py::arg("grads"), py::arg("arg") = "grads",
             py::arg("single") = false)
        .def("__len__", &GradientSet::size)
        .def("arrays", &GradientSet::arrays)
        .def("total_norm", &GradientSet::total_norm)
        .def("clip_total", &GradientSet::clip_total)
        .def("clip_with_norm", &GradientSet::clip_with_norm)
        .def("clamp", &GradientSet::clamp)
        .def("tensor_norms", &GradientSet::tensor_norms)
        .def("clip_each", &GradientSet::clip_each);
}
