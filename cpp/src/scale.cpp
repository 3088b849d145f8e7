// Writes: scaling, clamping (with the one bound-rounding rule) and zeroing, and the bandwidth
// probes.
#include <cmath>
#include <limits>

#include "engine_impl.hpp"

namespace gradclip {

using namespace impl;  // the engine's internals (engine_impl.hpp)

// ------------------------------------------------------------------ bound rounding
namespace {

// double -> float rounded to odd: truncate, then set the last bit if anything was dropped.
// Rounding that float once more, to nearest even at a precision of at most 22 bits, gives
// the double correctly rounded in one step: the dropped bits survive as the sticky last bit
// (Boldo and Melquiond, "Emulation of FMA and correctly rounded sums: proved algorithms using
// rounding to odd", IEEE Trans. Computers 57(4), 2008). |v| must be <= FLT_MAX.
float round_odd_f32(double v) noexcept {
    float f = static_cast<float>(v);
    if (static_cast<double>(f) == v) return f;
    if (std::fabs(static_cast<double>(f)) > std::fabs(v)) f = std::nextafter(f, 0.0f);
    return detail::f32_from_bits(detail::f32_bits(f) | 1u);
}

}  // namespace

double round_to_dtype(DType dt, double v) noexcept {
    if (v != v) return v;
    switch (dt) {
        case DType::F16: {
            // every |v| >= 65520 rounds to inf; capping keeps the float conversion in range
            const double c = std::fabs(v) > 65536.0 ? std::copysign(65536.0, v) : v;
            return static_cast<double>(detail::half_to_float(detail::float_to_half(round_odd_f32(c))));
        }
        case DType::BF16: {
            // every |v| > FLT_MAX rounds to inf in bfloat16 too (its largest finite value is
            // 0x1.fep127 and the midpoint to 2^128 is 0x1.ffp127 < FLT_MAX)
            const double cap = static_cast<double>(std::numeric_limits<float>::max());
            const double c = std::fabs(v) > cap ? std::copysign(cap, v) : v;
            return static_cast<double>(detail::bf16_to_float(detail::float_to_bf16(round_odd_f32(c))));
        }
        case DType::F32:
            return static_cast<double>(detail::narrow_to_float(v));
        case DType::F64:
            break;
    }
    return v;
}

namespace {

// x * coef rounded to the element type, for the strided path (the kernels do the same).
void scale_strided(const Span& sp, std::size_t start, std::size_t count, double coef) {
    const double cf = sp.dt == DType::F64 ? coef : static_cast<double>(detail::narrow_to_float(coef));
    for_each_strided(sp, start, count, [&](char* p, std::size_t) {
        const double x = load_elem(p, sp.dt);
        // float types multiply in float: x and cf are floats, so the double product rounded
        // to float is the float product
        store_elem(p, sp.dt, sp.dt == DType::F64 ? x * cf : static_cast<double>(detail::narrow_to_float(x * cf)));
    });
}

}  // namespace

namespace {
// Multiplies one segment by coef, through the kernel table or the strided path.
void scale_segment(const KernelTable& kt, const Span& sp, const Seg& g, double coef) {
    if (sp.ndim == 0)
        kt.scale[static_cast<int>(sp.dt)](sp.data + g.start * itemsize(sp.dt), g.count, coef);
    else
        scale_strided(sp, g.start, g.count, coef);
}
}  // namespace

void impl::scale_all(Scratch& ws, const Span* spans, std::size_t n, double coef, const PlanCache* cached) {
    const Plan& s = plan_for(ws, spans, n, Layout::Stream, cached);
    const KernelTable& kt = table();
    for_each_segment(spans, s, [&](const Span& sp, const Seg& g) { scale_segment(kt, sp, g, coef); });
}

void scale_all(const Span* spans, std::size_t n, double coef, const PlanCache* cached) {
    const ScratchLease ws;
    impl::scale_all(*ws, spans, n, coef, cached);
}

void impl::scale_each(Scratch& ws, const Span* spans, std::size_t n, const double* coefs) {
    Plan& s = ws.plan;
    build_plan(spans, n, s, Layout::Stream, [&](std::size_t i) { return coefs[i] != 1.0; });
    const KernelTable& kt = table();
    for_each_segment(spans, s, [&](const Span& sp, const Seg& g) { scale_segment(kt, sp, g, coefs[&sp - spans]); });
}

void scale_each(const Span* spans, std::size_t n, const double* coefs) {
    const ScratchLease ws;
    impl::scale_each(*ws, spans, n, coefs);
}

namespace {
// A clamp's bounds, rounded once per element type (the engine's one bound rounding).
struct ClampBounds {
    double lo[kNumDTypes], hi[kNumDTypes];
    ClampBounds(double lo64, double hi64) noexcept {
        for (int d = 0; d < kNumDTypes; ++d) {
            lo[d] = round_to_dtype(static_cast<DType>(d), lo64);
            hi[d] = round_to_dtype(static_cast<DType>(d), hi64);
        }
    }
};

// Clamps one segment to its type's bounds, through the kernel table or the strided path.
void clamp_segment(const KernelTable& kt, const Span& sp, const Seg& g, const ClampBounds& b) {
    const int di = static_cast<int>(sp.dt);
    const double lo = b.lo[di], hi = b.hi[di];
    if (sp.ndim == 0) {
        kt.clamp[di](sp.data + g.start * itemsize(sp.dt), g.count, lo, hi);
        return;
    }
    for_each_strided(sp, g.start, g.count, [&](char* p, std::size_t) {
        const double x = load_elem(p, sp.dt);
        if (x < lo)
            store_elem(p, sp.dt, lo);
        else if (x > hi)
            store_elem(p, sp.dt, hi);
    });
}
}  // namespace

void clamp_all(const Span* spans, std::size_t n, double lo64, double hi64, const PlanCache* cached) {
    const ScratchLease ws;
    const Plan& s = plan_for(*ws, spans, n, Layout::Stream, cached);
    const KernelTable& kt = table();
    const ClampBounds b(lo64, hi64);
    for_each_segment(spans, s, [&](const Span& sp, const Seg& g) { clamp_segment(kt, sp, g, b); });
}

namespace {
// Copies the elements of one segment of dst from the same elements of src: a memcpy when both
// are dense (the caller makes them dense only with the same memory order), else element by
// element in C order.
void copy_segment(const Span& src, const Span& dst, const Seg& g) {
    const std::size_t isz = itemsize(dst.dt);
    if (src.ndim == 0 && dst.ndim == 0) {
        if (dst.data != src.data)  // the same array: already in place
            std::memcpy(dst.data + g.start * isz, src.data + g.start * isz, g.count * isz);
        return;
    }
    if (dst.ndim == 0) {
        char* out = dst.data + g.start * isz;
        for_each_strided(src, g.start, g.count, [&](char* p, std::size_t k) { std::memcpy(out + k * isz, p, isz); });
        return;
    }
    // both strided (same shape): element by element, in step (no buffer: this runs inside the
    // parallel loop, where nothing may allocate)
    for_each_strided_pair(dst, src, g.start, g.count,
                          [&](char* d, const char* p, std::size_t) { std::memcpy(d, p, isz); });
}
}  // namespace

void scale_into(const Span* src, const Span* dst, std::size_t n, const double* coefs) {
    const ScratchLease ws;
    Plan& s = ws->plan;
    build_plan(dst, n, s, Layout::Stream);
    const KernelTable& kt = table();
    for_each_segment(dst, s, [&](const Span& d, const Seg& g) {
        const std::size_t k = static_cast<std::size_t>(&d - dst);
        copy_segment(src[k], d, g);  // then the write pass over the copy, in cache (one chunk)
        if (coefs[k] != 1.0) scale_segment(kt, d, g, coefs[k]);
    });
}

void clamp_into(const Span* src, const Span* dst, std::size_t n, double lo64, double hi64) {
    const ScratchLease ws;
    Plan& s = ws->plan;
    build_plan(dst, n, s, Layout::Stream);
    const KernelTable& kt = table();
    const ClampBounds b(lo64, hi64);
    for_each_segment(dst, s, [&](const Span& d, const Seg& g) {
        const std::size_t k = static_cast<std::size_t>(&d - dst);
        copy_segment(src[k], d, g);
        clamp_segment(kt, d, g, b);
    });
}

void zero_all(const Span* spans, std::size_t n, const PlanCache* cached) {
    const ScratchLease ws;
    const Plan& s = plan_for(*ws, spans, n, Layout::Stream, cached);
    for_each_segment(spans, s, [&](const Span& sp, const Seg& g) {
        const std::size_t isz = itemsize(sp.dt);
        if (sp.ndim == 0)
            std::memset(sp.data + g.start * isz, 0, g.count * isz);  // +0.0 is all-zero bits in every type
        else
            for_each_strided(sp, g.start, g.count, [&](char* p, std::size_t) { std::memset(p, 0, isz); });
    });
}

namespace {
// The probes' buffer as one span of 64-bit words, planned into chunks like every other call.
Span word_span(char* p, std::size_t bytes, Scratch& ws) {
    Span sp;
    sp.data = p;
    sp.n = bytes / 8;
    sp.dt = DType::F64;
    build_plan(&sp, 1, ws.plan, Layout::Stream);
    return sp;
}
}  // namespace

std::uint64_t probe_read(const char* p, std::size_t bytes) {
    const ScratchLease ws;
    const Span sp = word_span(const_cast<char*>(p), bytes, *ws);
    const Plan& s = ws->plan;
    const KernelTable& kt = table();
    ws->words.assign(s.nchunks(), 0);
    std::uint64_t* out = ws->words.data();
    run_chunks(s, [&](std::size_t c) {
        const Seg& g = s.segs[s.first[c]];
        out[c] = kt.probe_read(sp.data + 8 * g.start, g.count);
    });
    std::uint64_t x = 0;
    for (std::size_t c = 0; c < s.nchunks(); ++c) x ^= out[c];
    return x;
}

namespace {
volatile std::uint64_t g_zero = 0;  // read at run time, so the probe's store cannot be elided
}

void probe_rw(char* p, std::size_t bytes) {
    const ScratchLease ws;
    const Span sp = word_span(p, bytes, *ws);
    const Plan& s = ws->plan;
    const KernelTable& kt = table();
    const std::uint64_t k = g_zero;
    run_chunks(s, [&](std::size_t c) {
        const Seg& g = s.segs[s.first[c]];
        kt.probe_rw(sp.data + 8 * g.start, g.count, k);
    });
}

}  // namespace gradclip
