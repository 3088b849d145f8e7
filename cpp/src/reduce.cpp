// Norms: per-chunk reductions through the kernel table (or the scalar and strided paths),
// combined in chunk order, with a second, rescaled pass only when the fast sum lost range.
#include <cmath>
#include <limits>

#include "engine_impl.hpp"

namespace gradclip {

using namespace impl;  // the engine's internals (engine_impl.hpp)

NormSpec make_norm_spec(double p) noexcept {
    if (p == 2.0) return {NormKind::L2, 2.0};
    if (p == 1.0) return {NormKind::L1, 1.0};
    if (std::isinf(p)) return {NormKind::Linf, p};
    return {NormKind::Lp, p};
}

namespace {

// Partial sums below this lose bits to subnormal underflow; see lost_range().
constexpr double kTinySum = 0x1p-969;
// Above this p the rescaled pass divides by max|x| instead of a power of two (see
// rescaled_norm).
constexpr double kExactScaleMaxP = 512.0;

// ------------------------------------------------------------------ per-chunk reductions
// The scalar paths below follow the kernels' lane layout, so a strided view gives the bits
// of its contiguous copy.
// |x * scale| ** p, or |x| / div ** p for the ratio form (div = max|x|, see rescaled_norm).
double step_value(NormSpec spec, double x, double scale, double div) noexcept {
    const double t = x * scale;
    switch (spec.kind) {
        case NormKind::L2:
            return t * t;
        case NormKind::L1:
            return std::fabs(t);
        default: {
            const unsigned hs = half_steps_of(spec.p);
            if (hs != 0)  // what the power kernels compute, so a strided view gets the same bits
                return pow_half_steps(std::fabs(t) / div, hs);
            return std::pow(std::fabs(t) / div, spec.p);
        }
    }
}

double max_of(double a, double b) noexcept {
    if (a != a || b != b) return std::numeric_limits<double>::quiet_NaN();
    return a > b ? a : b;
}

// Sum (or max, for Linf) over one chunk of the plan.
// `div` is 1 except in the ratio form, which only general p uses (the kernels take `scale`).
double reduce_chunk(const KernelTable& kt, const Span* spans, const Plan& s, std::size_t c, NormSpec spec, double scale,
                    double div) noexcept {
    double lanes[kLanes] = {};
    double m = 0.0;
    const std::size_t end = s.first[c + 1];
    for (std::size_t q = s.first[c]; q < end; ++q) {
        const Seg& g = s.segs[q];
        const Span& sp = spans[g.span];
        const int di = static_cast<int>(sp.dt);
        // Several dense segments of one type in a row (many small arrays): one kernel call
        // for up to kMaxPieces of them (the lanes continue from one segment to the next).
        if ((spec.kind == NormKind::L2 || spec.kind == NormKind::L1) && sp.ndim == 0 && q + 1 < end) {
            constexpr std::size_t kMaxPieces = 64;
            Piece pieces[kMaxPieces];
            std::size_t np = 0;
            const std::size_t lane0 = g.lane0;
            for (; q < end && np < kMaxPieces; ++q) {
                const Seg& h = s.segs[q];
                const Span& hp = spans[h.span];
                if (hp.ndim != 0 || hp.dt != sp.dt) break;
                pieces[np++] = Piece{hp.data + h.start * itemsize(hp.dt), h.count};
            }
            --q;  // the loop's ++q moves to the first segment not taken
            if (spec.kind == NormKind::L2)
                kt.sum_sq_many[di](pieces, np, lane0, scale, lanes);
            else
                kt.sum_abs_many[di](pieces, np, lane0, scale, lanes);
            continue;
        }
        if (sp.ndim == 0) {
            const char* p = sp.data + g.start * itemsize(sp.dt);
            switch (spec.kind) {
                case NormKind::L2:
                    kt.sum_sq[di](p, g.count, g.lane0, scale, lanes);
                    break;
                case NormKind::L1:
                    kt.sum_abs[di](p, g.count, g.lane0, scale, lanes);
                    break;
                case NormKind::Linf:
                    m = max_of(m, kt.max_abs[di](p, g.count));
                    break;
                case NormKind::Lp: {
                    if (const unsigned hs = half_steps_of(spec.p); hs != 0) {
                        kt.sum_pow[di](p, g.count, g.lane0, scale, div, hs, lanes);
                        break;
                    }
                    const std::size_t isz = itemsize(sp.dt);
                    std::size_t lane = g.lane0;
                    for (std::size_t k = 0; k < g.count; ++k) {
                        lanes[lane] = lanes[lane] + step_value(spec, load_elem(p + k * isz, sp.dt), scale, div);
                        lane = lane + 1 == kLanes ? 0 : lane + 1;
                    }
                    break;
                }
            }
        } else if (spec.kind == NormKind::Linf) {
            for_each_strided(sp, g.start, g.count,
                             [&](const char* p, std::size_t) { m = max_of(m, std::fabs(load_elem(p, sp.dt))); });
        } else {
            for_each_strided(sp, g.start, g.count, [&](const char* p, std::size_t k) {
                double& l = lanes[(g.lane0 + k) % kLanes];
                l = l + step_value(spec, load_elem(p, sp.dt), scale, div);
            });
        }
    }
    return spec.kind == NormKind::Linf ? m : combine_lanes(lanes);
}

double finish_norm(NormSpec spec, double s) noexcept {
    switch (spec.kind) {
        case NormKind::L2:
            return std::sqrt(s);
        case NormKind::L1:
        case NormKind::Linf:
            return s;
        case NormKind::Lp:
            return std::pow(s, 1.0 / spec.p);
    }
    return s;
}

// Sums of squares of chunks c and c + 1 into out[c], out[c + 1] with one kernel call, when
// both are one dense segment of the same type and length and the target has a pair kernel
// (the same bits as reduce_chunk on each); false, with nothing done, otherwise.
bool reduce_chunk_pair(const KernelTable& kt, const Span* spans, const Plan& s, std::size_t c, double scale,
                       double* out) noexcept {
    if (s.first[c + 1] - s.first[c] != 1 || s.first[c + 2] - s.first[c + 1] != 1) return false;
    const Seg& g0 = s.segs[s.first[c]];
    const Seg& g1 = s.segs[s.first[c + 1]];
    const Span& a = spans[g0.span];
    const Span& b = spans[g1.span];
    const int di = static_cast<int>(a.dt);
    if (a.ndim != 0 || b.ndim != 0 || a.dt != b.dt || g0.count != g1.count || g0.lane0 != 0 || g1.lane0 != 0 ||
        kt.sum_sq_pair[di] == nullptr)
        return false;
    double l0[kLanes] = {}, l1[kLanes] = {};
    kt.sum_sq_pair[di](a.data + g0.start * itemsize(a.dt), b.data + g1.start * itemsize(b.dt), g0.count, scale, l0, l1);
    out[c] = combine_lanes(l0);
    out[c + 1] = combine_lanes(l1);
    return true;
}

// Fills ws.partial with one value per chunk of the plan (sized before the parallel loop).
void reduce_plan(Scratch& ws, const Span* spans, const Plan& s, NormSpec spec, double scale, double div = 1.0) {
    const KernelTable& kt = table();
    ws.partial.resize(s.nchunks());
    double* out = ws.partial.data();
    run_chunk_runs(s, [&](std::size_t lo, std::size_t hi) {
        for (std::size_t c = lo; c < hi; ++c) {
            if (spec.kind == NormKind::L2 && c + 1 < hi && reduce_chunk_pair(kt, spans, s, c, scale, out)) {
                ++c;
                continue;
            }
            out[c] = reduce_chunk(kt, spans, s, c, spec, scale, div);
        }
    });
}

// Partials of the plan combined in chunk order.
double combine_plan(const Scratch& ws, const Plan& s, NormSpec spec) noexcept {
    const std::size_t nc = s.nchunks();
    double total = 0.0;
    const double* partial = ws.partial.data();
    for (std::size_t c = 0; c < nc; ++c)
        total = spec.kind == NormKind::Linf ? max_of(total, partial[c]) : total + partial[c];
    return total;
}

// Whether the fast sum s (of |x|^p, scale 1) lost range: it overflowed, or it is so small
// that subnormal terms may have lost bits (below 2^-969 the absolute error of each
// subnormal term, 2^-1075, is no longer negligible against the sum).
bool lost_range(NormSpec spec, double s) noexcept {
    return spec.kind != NormKind::Linf && s == s && (std::isinf(s) || s < kTinySum);
}

// General p below 1 skips the fast sum: its rounding error grows by 1/p in the root (for
// p = 1e-300 the norm of [3.0] would come out as 1.0). The ratio form is exact there.
bool ratio_form_only(NormSpec spec) noexcept { return spec.kind == NormKind::Lp && spec.p < 1.0; }

// Picks the power-of-two scale that maps the largest |x| into [0.5, 1). Returns false when
// no rescaled pass can help (m zero or non-finite). `into_range` is false when m is below
// 2^-1001: 2^-e would overflow, so e is capped and the scaled max stays below 2^-1 (exact,
// but a general p-th power of it may underflow).
bool rescale_for(double m, int& e, bool& into_range) noexcept {
    if (!(m > 0.0) || std::isinf(m)) return false;
    std::frexp(m, &e);
    into_range = e >= -1000;
    e = std::max(e, -1000);  // keep 2^-e finite; a subnormal max stays exact after scaling
    return true;
}

// The norm over a plan from max|x| = m and a second pass relative to it, for sums that lose
// range at scale 1 and for ratio_form_only. p = 1, 2 and p <= 512 scale by the power of two
// 2^-e that maps m into [0.5, 1): exact, and (m 2^-e)^p >= 2^-512 keeps the sum in range.
// Other p, and every general p when m is below 2^-1001 (where 2^-e cannot reach [0.5, 1)),
// use the ratio form m * (sum (|x| / m)^p)^(1/p): dividing (not multiplying by 1/m,
// which can round m / m to 1 - 2^-53, whose 1e20th power is 0) makes the largest term exactly
// 1, so the sum lies in [1, n] and the norm is never below m, for any p up to DBL_MAX.
double rescaled_norm(Scratch& ws, const Span* spans, const Plan& s, NormSpec spec) {
    const NormSpec linf{NormKind::Linf, spec.p};
    reduce_plan(ws, spans, s, linf, 1.0);
    const double m = combine_plan(ws, s, linf);
    int e = 0;
    bool into_range = true;
    if (!rescale_for(m, e, into_range)) {
        if (m != m) return m;
        return m == 0.0 ? 0.0 : std::numeric_limits<double>::infinity();
    }
    if (spec.kind == NormKind::Lp && (spec.p > kExactScaleMaxP || spec.p < 1.0 || !into_range)) {
        reduce_plan(ws, spans, s, spec, 1.0, m);
        return finish_norm(spec, combine_plan(ws, s, spec)) * m;
    }
    reduce_plan(ws, spans, s, spec, std::ldexp(1.0, -e));
    return std::ldexp(finish_norm(spec, combine_plan(ws, s, spec)), e);
}

}  // namespace

// ------------------------------------------------------------------ norms
double impl::total_norm(Scratch& ws, const Span* spans, std::size_t n, NormSpec spec, const PlanCache* cached) {
    const Plan& s = plan_for(ws, spans, n, Layout::Stream, cached);
    if (s.nchunks() == 0) return 0.0;
    if (!ratio_form_only(spec)) {
        reduce_plan(ws, spans, s, spec, 1.0);
        const double sum = combine_plan(ws, s, spec);
        if (!lost_range(spec, sum)) return finish_norm(spec, sum);
    }
    return rescaled_norm(ws, spans, s, spec);
}

double total_norm(const Span* spans, std::size_t n, NormSpec spec, const PlanCache* cached) {
    const ScratchLease ws;
    return impl::total_norm(*ws, spans, n, spec, cached);
}

void impl::span_norms(Scratch& ws, const Span* spans, std::size_t n, NormSpec spec, double* out,
                      const PlanCache* cached) {
    const Plan& s = plan_for(ws, spans, n, Layout::PerSpan, cached);
    const bool redo_all = ratio_form_only(spec);
    if (!redo_all) reduce_plan(ws, spans, s, spec, 1.0);
    for (std::size_t i = 0; i < n; ++i) out[i] = 0.0;
    // chunks of one span are consecutive: combine them in order
    const double* partial = ws.partial.data();
    for (std::size_t c = 0; !redo_all && c < s.nchunks(); ++c) {
        const std::size_t span = s.segs[s.first[c]].span;
        out[span] = spec.kind == NormKind::Linf ? max_of(out[span], partial[c]) : out[span] + partial[c];
    }
    // Spans whose sum lost range (rare: values near the ends of the double range), or all of
    // them for ratio_form_only, are redone one by one, each with its own plan and scale
    // (ws.one; ws.partial is free again: the sums above are in out).
    for (std::size_t i = 0; i < n; ++i) {
        if (spans[i].n == 0 || !(redo_all || lost_range(spec, out[i]))) {
            out[i] = finish_norm(spec, out[i]);
            continue;
        }
        build_plan(spans + i, 1, ws.one, Layout::PerSpan);
        out[i] = rescaled_norm(ws, spans + i, ws.one, spec);
    }
}

void span_norms(const Span* spans, std::size_t n, NormSpec spec, double* out, const PlanCache* cached) {
    const ScratchLease ws;
    impl::span_norms(*ws, spans, n, spec, out, cached);
}

double norm_of_norms(const double* norms, std::size_t n, NormSpec spec) noexcept {
    double m = 0.0;
    for (std::size_t i = 0; i < n; ++i) m = max_of(m, norms[i]);
    if (spec.kind == NormKind::Linf || m != m || m == 0.0 || std::isinf(m)) return m;
    double s = 0.0;
    for (std::size_t i = 0; i < n; ++i) {
        const double r = norms[i] / m;
        s += spec.kind == NormKind::L2 ? r * r : spec.kind == NormKind::L1 ? r : std::pow(r, spec.p);
    }
    return m * finish_norm(spec, s);
}

}  // namespace gradclip
