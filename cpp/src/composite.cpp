// Composite operations: the clipping rules built from norms and writes (global, per span,
// mixed precision, AGC, per example).
#include <cmath>
#include <limits>

#include "engine_impl.hpp"

namespace gradclip {

using namespace impl;  // the engine's internals (engine_impl.hpp)

double clip_coef(double max_norm, double norm, double eps) noexcept {
    const double c = max_norm / (norm + eps);
    return c > 1.0 ? 1.0 : c;  // NaN stays NaN
}

namespace {
// The non-finite policy, its one home (the global rule and the per-span one): when a norm
// the call depends on is NaN or infinite, Skip writes nothing (the coefficient is 1) and Zero
// sets every element to 0 (the coefficient is 0); either finishes the call and returns true.
// Propagate, or finite norms, return false: the call goes on with PyTorch's arithmetic.
bool settle_nonfinite(bool nonfinite, NonFinite mode, const Span* spans, std::size_t n, const PlanCache* cached,
                      double& coef) {
    if (!nonfinite || mode == NonFinite::Propagate) return false;
    if (mode == NonFinite::Zero) {
        zero_all(spans, n, cached);
        coef = 0.0;
    } else {
        coef = 1.0;
    }
    return true;
}
}  // namespace

double apply_global_clip(const Span* spans, std::size_t n, double norm, double max_norm, double eps, NonFinite mode,
                         const PlanCache* cached) {
    double settled;
    if (settle_nonfinite(!std::isfinite(norm), mode, spans, n, cached, settled)) return settled;
    const double coef = applied_coef(clip_coef(max_norm, norm, eps));
    if (coef_writes(coef)) scale_all(spans, n, coef, cached);
    return coef;
}

double clip_total(const Span* spans, std::size_t n, NormSpec spec, double max_norm, double eps, NonFinite mode,
                  const PlanCache* cached, double* coef, double* norms) {
    double norm;
    if (norms != nullptr) {
        span_norms(spans, n, spec, norms, cached);
        norm = norm_of_norms(norms, n, spec);
    } else {
        norm = total_norm(spans, n, spec, cached);
    }
    const double c = apply_global_clip(spans, n, norm, max_norm, eps, mode, cached);
    if (coef != nullptr) *coef = c;
    return norm;
}

namespace {
// The common per-span rule: coefs[i] = the coefficient clip_coef gives span i against its
// bound, 1 where it writes nothing. Returns whether any span is written.
bool fill_coefs(const double* norms, std::size_t n, SpanBounds bounds, double eps, double* coefs) noexcept {
    bool any = false;
    for (std::size_t i = 0; i < n; ++i) {
        const double c = clip_coef(bounds.bound[i * bounds.step], norms[i], eps);
        coefs[i] = applied_coef(c);
        any = any || coef_writes(c);
    }
    return any;
}
}  // namespace

void clip_each(const Span* spans, std::size_t n, NormSpec spec, SpanBounds bounds, double eps, NonFinite mode,
               double* norms, const PlanCache* cached) {
    const ScratchLease ws;
    impl::span_norms(*ws, spans, n, spec, norms, cached);
    if (bounds.rms) {
        for (std::size_t i = 0; i < n; ++i)
            norms[i] = spans[i].n == 0 ? 0.0 : norms[i] / std::sqrt(static_cast<double>(spans[i].n));
    }
    bool nonfinite = false;
    for (std::size_t i = 0; i < n; ++i)
        if (!std::isfinite(norms[i])) nonfinite = true;
    double settled;
    if (settle_nonfinite(nonfinite, mode, spans, n, cached, settled)) return;
    ws->coefs.resize(n);
    if (fill_coefs(norms, n, bounds, eps, ws->coefs.data())) impl::scale_each(*ws, spans, n, ws->coefs.data());
}

void clip_slices(char* data, int ndim, const std::ptrdiff_t* shape, const std::ptrdiff_t* strides, DType dt,
                 const bool* reduced, std::size_t window, NormSpec spec, SpanBounds bounds, double eps, double* norms) {
    const std::size_t total = count_slices(ndim, shape, reduced);
    if (total == 0) return;
    window = std::max<std::size_t>(1, std::min(window, total));
    std::size_t slice_bytes = itemsize(dt);
    for (int d = 0; d < ndim; ++d)
        if (reduced[d]) slice_bytes *= static_cast<std::size_t>(shape[d]);
    // Everything the windows need, for the largest window, before the first one is written:
    // the spans and slice geometry, both plans (the rescaled pass included) and the partials.
    std::vector<Span> spans(window);
    std::vector<std::ptrdiff_t> meta(2 * static_cast<std::size_t>(ndim) + 2);
    const ScratchLease ws;
    reserve_plan(ws->plan, window, window * slice_bytes);
    reserve_plan(ws->one, 1, slice_bytes);
    ws->partial.reserve(window * slice_bytes / kChunkBytes + window + 2);
    ws->coefs.resize(window);
    for (std::size_t s = 0; s < total; s += window) {
        const std::size_t k = std::min(window, total - s);
        make_slices(data, ndim, shape, strides, dt, reduced, meta.data(), s, k, spans.data());
        impl::span_norms(*ws, spans.data(), k, spec, norms + s, nullptr);
        const SpanBounds b{bounds.bound + s * bounds.step, bounds.step, false};
        if (fill_coefs(norms + s, k, b, eps, ws->coefs.data()))
            impl::scale_each(*ws, spans.data(), k, ws->coefs.data());
    }
}

double clip_total_into(const Span* src, const Span* dst, std::size_t n, NormSpec spec, double max_norm, double eps,
                       double* coef) {
    const ScratchLease ws;
    const double norm = impl::total_norm(*ws, src, n, spec, nullptr);
    const double applied = applied_coef(clip_coef(max_norm, norm, eps));
    ws->coefs.assign(n, applied);
    scale_into(src, dst, n, ws->coefs.data());
    *coef = applied;
    return norm;
}

void clip_each_into(const Span* src, const Span* dst, std::size_t n, NormSpec spec, double max_norm, double eps,
                    double* norms) {
    const ScratchLease ws;
    impl::span_norms(*ws, src, n, spec, norms, nullptr);
    ws->coefs.resize(n);
    fill_coefs(norms, n, SpanBounds{&max_norm, 0, false}, eps, ws->coefs.data());
    scale_into(src, dst, n, ws->coefs.data());
}

namespace {
// Whether unscaling, x * inv_scale rounded to x's type, takes an element past its type's
// largest finite value (an overflow that the scaled values hid: a loss scale below 1, or
// values near the type's maximum). Only |inv_scale| > 1 can do that, and no element can when
// the p-norm times |inv_scale| (with a margin for the norm's rounding) does not round to
// infinity in any of the spans' types, since the p-norm bounds max |x| for every p. Otherwise
// one more read pass takes each span's max |x|, and the spans that overflow get an infinite
// norm in norms (when given).
bool unscale_overflows(Scratch& ws, const Span* spans, std::size_t n, double raw_norm, double inv_scale,
                       const PlanCache* cached, double* norms) {
    const double s = std::fabs(inv_scale);
    if (!(s > 1.0)) return false;
    const double bound = raw_norm * s * (1.0 + 0x1p-30);
    bool maybe = false;
    for (std::size_t i = 0; i < n && !maybe; ++i)
        maybe = spans[i].n != 0 && std::isinf(round_to_dtype(spans[i].dt, bound));
    if (!maybe) return false;
    ws.maxes.resize(n);
    impl::span_norms(ws, spans, n, NormSpec{NormKind::Linf, std::numeric_limits<double>::infinity()}, ws.maxes.data(),
                     cached);
    bool any = false;
    for (std::size_t i = 0; i < n; ++i) {
        if (!std::isinf(round_to_dtype(spans[i].dt, ws.maxes[i] * s))) continue;
        any = true;
        if (norms != nullptr) norms[i] = std::numeric_limits<double>::infinity();
    }
    return any;
}
}  // namespace

double unscale_norm(const Span* spans, std::size_t n, NormSpec spec, double inv_scale, const PlanCache* cached) {
    const ScratchLease ws;
    const double raw = impl::total_norm(*ws, spans, n, spec, cached);
    if (std::isfinite(raw) && unscale_overflows(*ws, spans, n, raw, inv_scale, cached, nullptr))
        return std::numeric_limits<double>::infinity();
    return raw;
}

double unscale_clip(const Span* spans, std::size_t n, NormSpec spec, double max_norm, double inv_scale, double eps,
                    double* coef, double* norms, const PlanCache* cached) {
    const ScratchLease ws;
    double raw;
    if (norms != nullptr) {
        impl::span_norms(*ws, spans, n, spec, norms, cached);
        raw = norm_of_norms(norms, n, spec);
        for (std::size_t i = 0; i < n; ++i) norms[i] *= std::fabs(inv_scale);
    } else {
        raw = impl::total_norm(*ws, spans, n, spec, cached);
    }
    if (std::isfinite(raw) && unscale_overflows(*ws, spans, n, raw, inv_scale, cached, norms))
        raw = std::numeric_limits<double>::infinity();
    *coef = impl::apply_unscale_clip(*ws, spans, n, raw, max_norm, inv_scale, eps, cached);
    return raw * std::fabs(inv_scale);
}

double apply_unscale_clip(const Span* spans, std::size_t n, double raw_norm, double max_norm, double inv_scale,
                          double eps, const PlanCache* cached) {
    const ScratchLease ws;
    return impl::apply_unscale_clip(*ws, spans, n, raw_norm, max_norm, inv_scale, eps, cached);
}

double impl::apply_unscale_clip(Scratch& ws, const Span* spans, std::size_t n, double raw_norm, double max_norm,
                                double inv_scale, double eps, const PlanCache* cached) {
    if (!std::isfinite(raw_norm)) return 1.0;  // the caller skips the step and lowers the scale
    const double coef = clip_coef(max_norm, raw_norm * std::fabs(inv_scale), eps);
    double factor = inv_scale * applied_coef(coef);
    // The kernels multiply float types by the factor rounded to float. A factor beyond the
    // float range (inv_scale > FLT_MAX: a loss scale below 3e-39) would round to inf although
    // every product is finite (unscale_overflows ruled out the rest), so it is applied as
    // exact power-of-two passes first: x * 2^127 is exact and below |x * inv_scale|. Every
    // pass runs on this one scratch: the first builds the plan (any allocation is there,
    // before the first write), the later ones rebuild it in the same capacity.
    const double kStep = 0x1p127;
    while (std::fabs(factor) > static_cast<double>(std::numeric_limits<float>::max())) {
        impl::scale_all(ws, spans, n, kStep, cached);
        factor /= kStep;
    }
    if (factor != 1.0) impl::scale_all(ws, spans, n, factor, cached);
    return coef;
}

void adaptive_clip(const Span* g, const Span* w, std::size_t n, NormSpec spec, double clipping, double eps,
                   double* gnorms, double* wnorms, double* coefs) {
    span_norms(g, n, spec, gnorms);
    span_norms(w, n, spec, wnorms);
    bool any = false;
    for (std::size_t i = 0; i < n; ++i) {
        const double wn = wnorms[i] > eps ? wnorms[i] : eps;  // max(||w||, eps); NaN -> eps as in max()
        const double max_i = clipping * (wnorms[i] != wnorms[i] ? wnorms[i] : wn);
        const double gn = gnorms[i] > 1e-6 ? gnorms[i] : 1e-6;
        // Optax/timm: where(||g|| < max, g, g * max / max(||g||, 1e-6)); a NaN comparison clips
        coefs[i] = gnorms[i] < max_i ? 1.0 : max_i / (gnorms[i] != gnorms[i] ? gnorms[i] : gn);
        any = any || coefs[i] != 1.0;
    }
    if (any) scale_each(g, n, coefs);
}

std::size_t clip_per_example(const Span* slices, std::size_t narrays, std::size_t batch, bool per_layer,
                             double max_norm, double eps, double* norms, double* coefs) {
    const NormSpec l2{NormKind::L2, 2.0};
    const std::size_t n = narrays * batch;
    span_norms(slices, n, l2, norms);
    std::size_t clipped = 0;
    if (per_layer) {
        for (std::size_t i = 0; i < n; ++i) {
            const double c = clip_coef(max_norm, norms[i], eps);
            coefs[i] = applied_coef(c);
            clipped += coef_writes(c) ? 1u : 0u;
        }
    } else {
        std::vector<double> col(narrays);
        for (std::size_t b = 0; b < batch; ++b) {
            for (std::size_t a = 0; a < narrays; ++a) col[a] = norms[a * batch + b];
            const double nb = norm_of_norms(col.data(), narrays, l2);
            const double c = clip_coef(max_norm, nb, eps);
            clipped += coef_writes(c) ? 1u : 0u;
            for (std::size_t a = 0; a < narrays; ++a) {
                norms[a * batch + b] = nb;
                coefs[a * batch + b] = applied_coef(c);
            }
        }
    }
    scale_each(slices, n, coefs);
    return clipped;
}

void sum_examples(const Span* views, const std::ptrdiff_t* batch_strides, std::size_t narrays, std::size_t batch,
                  double* const* sums) noexcept {
    for (std::size_t a = 0; a < narrays; ++a) {
        const Span& v = views[a];
        double* out = sums[a];
        for (std::size_t k = 0; k < v.n; ++k) out[k] = 0.0;
        for (std::size_t b = 0; b < batch; ++b) {
            Span e = v;
            e.data = v.data + static_cast<std::ptrdiff_t>(b) * batch_strides[a];
            if (e.ndim == 0) {
                for (std::size_t k = 0; k < e.n; ++k) out[k] += load_elem(e.data + k * itemsize(e.dt), e.dt);
            } else {
                for_each_strided(e, 0, e.n, [&](const char* p, std::size_t k) { out[k] += load_elem(p, e.dt); });
            }
        }
    }
}

}  // namespace gradclip
