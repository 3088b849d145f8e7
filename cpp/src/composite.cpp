// Composite operations: the clipping rules built from norms and writes (global, per span,
// mixed precision, AGC, per example).
#include <cmath>

#include "engine_impl.hpp"

namespace gradclip {

using namespace impl;  // the engine's internals (engine_impl.hpp)

double clip_coef(double max_norm, double norm, double eps) noexcept {
    const double c = max_norm / (norm + eps);
    return c > 1.0 ? 1.0 : c;  // NaN stays NaN
}

double apply_global_clip(const Span* spans, std::size_t n, double norm, double max_norm, double eps, NonFinite mode,
                         const PlanCache* cached) {
    if (!std::isfinite(norm)) {
        if (mode == NonFinite::Skip) return 1.0;
        if (mode == NonFinite::Zero) {
            zero_all(spans, n, cached);
            return 0.0;
        }
    }
    const double coef = clip_coef(max_norm, norm, eps);
    if (!coef_writes(coef)) return 1.0;
    scale_all(spans, n, coef, cached);
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

void clip_each(const Span* spans, std::size_t n, NormSpec spec, SpanBounds bounds, double eps, NonFinite mode,
               double* norms, const PlanCache* cached) {
    span_norms(spans, n, spec, norms, cached);
    if (bounds.rms) {
        for (std::size_t i = 0; i < n; ++i)
            norms[i] = spans[i].n == 0 ? 0.0 : norms[i] / std::sqrt(static_cast<double>(spans[i].n));
    }
    bool nonfinite = false;
    for (std::size_t i = 0; i < n; ++i)
        if (!std::isfinite(norms[i])) nonfinite = true;
    if (nonfinite && mode == NonFinite::Skip) return;
    if (nonfinite && mode == NonFinite::Zero) {
        zero_all(spans, n, cached);
        return;
    }
    std::vector<double>& coefs = t_work.coefs;
    coefs.resize(n);
    bool any = false;
    for (std::size_t i = 0; i < n; ++i) {
        const double c = clip_coef(bounds.bound[i * bounds.step], norms[i], eps);
        coefs[i] = coef_writes(c) ? c : 1.0;
        any = any || coefs[i] != 1.0;
    }
    if (any) scale_each(spans, n, coefs.data());
}

double unscale_clip(const Span* spans, std::size_t n, NormSpec spec, double max_norm, double inv_scale, double eps,
                    double* coef, double* norms, const PlanCache* cached) {
    double raw;
    if (norms != nullptr) {
        span_norms(spans, n, spec, norms, cached);
        raw = norm_of_norms(norms, n, spec);
        for (std::size_t i = 0; i < n; ++i) norms[i] *= std::fabs(inv_scale);
    } else {
        raw = total_norm(spans, n, spec, cached);
    }
    *coef = apply_unscale_clip(spans, n, raw, max_norm, inv_scale, eps, cached);
    return raw * std::fabs(inv_scale);
}

double apply_unscale_clip(const Span* spans, std::size_t n, double raw_norm, double max_norm, double inv_scale,
                          double eps, const PlanCache* cached) {
    if (!std::isfinite(raw_norm)) return 1.0;  // the caller skips the step and lowers the scale
    const double coef = clip_coef(max_norm, raw_norm * std::fabs(inv_scale), eps);
    const double factor = inv_scale * (coef_writes(coef) ? coef : 1.0);
    if (factor != 1.0) scale_all(spans, n, factor, cached);
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
            coefs[i] = coef_writes(c) ? c : 1.0;
            clipped += c < 1.0 ? 1 : 0;
        }
    } else {
        std::vector<double> col(narrays);
        for (std::size_t b = 0; b < batch; ++b) {
            for (std::size_t a = 0; a < narrays; ++a) col[a] = norms[a * batch + b];
            const double nb = norm_of_norms(col.data(), narrays, l2);
            const double c = clip_coef(max_norm, nb, eps);
            clipped += c < 1.0 ? 1 : 0;
            for (std::size_t a = 0; a < narrays; ++a) {
                norms[a * batch + b] = nb;
                coefs[a * batch + b] = coef_writes(c) ? c : 1.0;
            }
        }
    }
    scale_each(slices, n, coefs);
    return clipped;
}

}  // namespace gradclip
