// The functional operations: clipped copies of a pytree, into new arrays or into `out`.
#include <algorithm>
#include <cstddef>
#include <string>
#include <vector>

#include "bindings.hpp"

namespace gradclip_py {
namespace {

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
        const Batch& src = c.src;
        const Batch& dst = c.dst;
        check_apart(
            dst, src,
            [&](std::size_t j, std::size_t k) {
                const auto nd = static_cast<std::ptrdiff_t>(src.keep[k].ndim());
                const auto s0 = src.meta.begin() + static_cast<std::ptrdiff_t>(src.meta_off[k]);
                return j == k && src.keep[k].data() == dst.keep[k].data() &&
                       std::equal(s0, s0 + 2 * nd, dst.meta.begin() + static_cast<std::ptrdiff_t>(dst.meta_off[k]));
            },
            [&](std::size_t j, std::size_t k) {
                return dst.at(dst.pos[j]) + " overlaps " + src.at(src.pos[k]) +
                       " in memory; an output may only be its own input";
            });
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

}  // namespace

void register_copies(py::module_& m) {
    m.def("copy_clip_total", &copy_clip_total, py::arg("target"), py::arg("out"), py::arg("max_norm"), py::arg("p"),
          py::arg("eps"));
    m.def("copy_clip_each", &copy_clip_each, py::arg("target"), py::arg("out"), py::arg("max_norm"), py::arg("p"),
          py::arg("eps"));
    m.def("copy_clamp", &copy_clamp, py::arg("target"), py::arg("out"), py::arg("lo"), py::arg("hi"));
}

}  // namespace gradclip_py
