// The operations over slices of arrays: clip_by_norm (the slices of one array along given
// axes), adaptive gradient clipping (unit-wise, against the parameters' slices) and
// per-example clipping (axis 0 of every array is the batch).
#include <pybind11/stl.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "bindings.hpp"

namespace gradclip_py {
namespace {

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
    // AGC reads the parameters while it writes the gradients: a parameter that shares memory
    // with a gradient (the weights passed as their own gradients, say) would be clipped too,
    // so that is refused, by the overlap rule of every writing call (the memory bounds of the
    // arrays; the gradients are disjoint already).
    check_apart(
        g, all_w, [](std::size_t, std::size_t) { return false; },
        [&](std::size_t k, std::size_t j) {
            return all_w.at(all_w.pos[j]) + " and " + g.at(g.pos[k]) +
                   " share memory; AGC writes the gradients and only reads the parameters, so a parameter may not "
                   "be (or overlap) a gradient (pass each parameter's gradient)";
        });
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
            for (std::size_t e = 0; e < nb; ++e) pk[g.pos[k]] += gradclip::coef_writes(pc[k * nb + e]) ? 1 : 0;
    }
    return py::make_tuple(norms, coefs, clipped, counts, sums);
}

}  // namespace

void register_slices(py::module_& m) {
    m.def("clip_by_norm", &clip_by_norm, py::arg("x"), py::arg("max_norm"), py::arg("axes"), py::arg("p"),
          py::arg("eps"), py::arg("arg") = "x");
    m.def("adaptive_clip", &adaptive_clip, py::arg("grads"), py::arg("params"), py::arg("clipping"), py::arg("eps"),
          py::arg("reduce"), py::arg("p"));
    m.def("clip_per_example", &clip_per_example, py::arg("grads"), py::arg("max_norm"), py::arg("per_layer"),
          py::arg("eps"));
}

}  // namespace gradclip_py
