// The C ABI (gradclip/capi.h) over the engine: dense buffers become ndim-0 spans and go to the
// same engine functions the Python bindings call, so both front doors share one dispatch table,
// one thread count and one set of numerics. No Python here, and no exception leaves this file:
// a C or Cython caller without the GIL cannot receive one.
#include "gradclip/capi.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <new>
#include <stdexcept>
#include <utility>
#include <vector>

#include "gradclip/engine.hpp"
#include "gradclip/types.hpp"
#include "half.hpp"

namespace {

using gradclip::DType;
using gradclip::NonFinite;
using gradclip::Span;

static_assert(GRADCLIP_F16 == static_cast<int>(DType::F16) && GRADCLIP_BF16 == static_cast<int>(DType::BF16) &&
                  GRADCLIP_F32 == static_cast<int>(DType::F32) && GRADCLIP_F64 == static_cast<int>(DType::F64),
              "capi.h dtype codes must equal gradclip::DType");

// Runs f, turning any exception into a return code.
template <class F>
int guarded(F&& f) noexcept {
    try {
        return f();
    } catch (const std::bad_alloc&) {
        return GRADCLIP_E_NOMEM;
    } catch (const std::length_error&) {  // a vector asked for more than it can ever hold
        return GRADCLIP_E_NOMEM;
    } catch (...) {
        return GRADCLIP_E_INTERNAL;
    }
}

bool dtype_from(int code, DType& dt) noexcept {
    if (code < GRADCLIP_F16 || code > GRADCLIP_F64) return false;
    dt = static_cast<DType>(code);
    return true;
}

bool valid_p(double p) noexcept { return p > 0.0; }                             // false for NaN; +inf is the max norm
bool valid_max_norm(double v) noexcept { return std::isfinite(v) && v > 0.0; }  // also inv_scale
bool valid_eps(double v) noexcept { return std::isfinite(v) && v >= 0.0; }      // also clip_value

// One buffer as a span. Checks the pointer and that its byte size fits in size_t (the engine
// adds byte counts). Read-only callers pass a const buffer: the engine never writes through
// a span given to a norm.
int make_span(int code, const void* x, std::size_t n, Span& sp) noexcept {
    DType dt;
    if (!dtype_from(code, dt)) return GRADCLIP_E_DTYPE;
    if (n > 0 && x == nullptr) return GRADCLIP_E_NULL;
    if (n > std::numeric_limits<std::size_t>::max() / gradclip::itemsize(dt)) return GRADCLIP_E_VALUE;
    sp = Span{};
    sp.data = static_cast<char*>(const_cast<void*>(x));
    sp.n = n;
    sp.dt = dt;
    return GRADCLIP_OK;
}

// The spans of one call. A local of each call, not a per-thread buffer: thread-local objects
// of a dlopen'ed library are allocated on a thread's first use, where a failure aborts the
// process; here it is a std::bad_alloc that guarded() turns into GRADCLIP_E_NOMEM, before
// anything is written.
struct Scratch {
    std::vector<Span> spans;
    std::vector<gradclip::ByteRange> ranges;
};

// Validates buffers 0..n-1 into sc.spans. With `writes`, buffers must not share a byte:
// a gradient present twice would be scaled twice.
int make_spans(Scratch& sc, std::size_t n, const void* const* ptrs, const std::size_t* lens, const int* dtypes,
               bool writes) {
    if (n > 0 && (ptrs == nullptr || lens == nullptr || dtypes == nullptr)) return GRADCLIP_E_NULL;
    std::vector<Span>& spans = sc.spans;
    spans.resize(n);
    std::size_t total = 0;
    for (std::size_t i = 0; i < n; ++i) {
        const int rc = make_span(dtypes[i], ptrs[i], lens[i], spans[i]);
        if (rc != GRADCLIP_OK) return rc;
        const std::size_t bytes = lens[i] * gradclip::itemsize(spans[i].dt);
        if (bytes > std::numeric_limits<std::size_t>::max() - total) return GRADCLIP_E_VALUE;
        total += bytes;
    }
    if (!writes) return GRADCLIP_OK;
    auto& ranges = sc.ranges;
    ranges.clear();
    for (std::size_t i = 0; i < n; ++i) {
        const Span& sp = spans[i];
        if (sp.n == 0) continue;  // an empty buffer shares no byte with anything
        const std::size_t bytes = sp.n * gradclip::itemsize(sp.dt);
        if (bytes > std::numeric_limits<std::uintptr_t>::max() - reinterpret_cast<std::uintptr_t>(sp.data))
            return GRADCLIP_E_VALUE;
        ranges.push_back({sp.data, sp.data + bytes, i});
    }
    std::size_t a, b;
    if (gradclip::find_overlap(ranges, a, b)) return GRADCLIP_E_OVERLAP;
    return GRADCLIP_OK;
}

// The two shapes of an entry point: one dense buffer, or a list of them. Each validates its
// buffers into spans, then runs f on them under guarded(): nothing is written unless every
// buffer passed (f runs only then), and no exception leaves the call.
template <class F>
int on_buffer(int dtype, const void* x, std::size_t n, F&& f) noexcept {
    return guarded([&] {
        Span sp;
        const int rc = make_span(dtype, x, n, sp);
        return rc != GRADCLIP_OK ? rc : f(&sp);
    });
}

template <class F>
int on_buffers(std::size_t n, const void* const* ptrs, const std::size_t* lens, const int* dtypes, bool writes,
               F&& f) noexcept {
    return guarded([&] {
        Scratch sc;
        const int rc = make_spans(sc, n, ptrs, lens, dtypes, writes);
        return rc != GRADCLIP_OK ? rc : f(sc.spans.data());
    });
}

// ------------------------------------------------------------------ the table's functions
int c_norm(int dtype, const void* x, std::size_t n, double p, double* out) {
    return on_buffer(dtype, x, n, [&](Span* sp) {
        if (out == nullptr) return GRADCLIP_E_NULL;
        if (!valid_p(p)) return GRADCLIP_E_VALUE;
        *out = gradclip::total_norm(sp, 1, gradclip::make_norm_spec(p));
        return GRADCLIP_OK;
    });
}

int c_sum_pow(int dtype, const void* x, std::size_t n, double p, double* out) {
    double norm = 0.0;
    const int rc = c_norm(dtype, x, n, p, &norm);
    if (rc != GRADCLIP_OK) return rc;
    if (out == nullptr) return GRADCLIP_E_NULL;  // c_norm saw &norm, not the caller's output
    // the engine's raw sum is internal (and overflows where the norm does not); norm^p is it
    // to a few ulps, exactly so for p = 1 and p = inf
    if (std::isinf(p) || p == 1.0)
        *out = norm;
    else if (p == 2.0)
        *out = norm * norm;
    else
        *out = std::pow(norm, p);
    return GRADCLIP_OK;
}

int c_scale(int dtype, void* x, std::size_t n, double coef) {
    return on_buffer(dtype, x, n, [&](Span* sp) {
        if (coef != 1.0) gradclip::scale_all(sp, 1, coef);  // a factor of 1 saves the write pass
        return GRADCLIP_OK;
    });
}

int c_clamp(int dtype, void* x, std::size_t n, double clip_value) {
    return on_buffer(dtype, x, n, [&](Span* sp) {
        if (!valid_eps(clip_value)) return GRADCLIP_E_VALUE;
        gradclip::clamp_all(sp, 1, -clip_value, clip_value);
        return GRADCLIP_OK;
    });
}

int c_total_norm(std::size_t n_buffers, const void* const* ptrs, const std::size_t* lens, const int* dtypes, double p,
                 double* out) {
    return on_buffers(n_buffers, ptrs, lens, dtypes, /*writes=*/false, [&](Span* spans) {
        if (out == nullptr) return GRADCLIP_E_NULL;
        if (!valid_p(p)) return GRADCLIP_E_VALUE;
        *out = gradclip::total_norm(spans, n_buffers, gradclip::make_norm_spec(p));
        return GRADCLIP_OK;
    });
}

int c_clip_grad_norm(std::size_t n_buffers, void* const* ptrs, const std::size_t* lens, const int* dtypes,
                     double max_norm, double p, double eps, int nonfinite_mode, double* total_norm) {
    return on_buffers(n_buffers, ptrs, lens, dtypes, /*writes=*/true, [&](Span* spans) {
        if (!valid_p(p) || !valid_max_norm(max_norm) || !valid_eps(eps)) return GRADCLIP_E_VALUE;
        NonFinite mode;
        switch (nonfinite_mode) {
            case GRADCLIP_PROPAGATE:
                mode = NonFinite::Propagate;
                break;
            case GRADCLIP_SKIP:
                mode = NonFinite::Skip;
                break;
            case GRADCLIP_ZERO:
                mode = NonFinite::Zero;
                break;
            default:
                return GRADCLIP_E_VALUE;
        }
        const double norm = gradclip::clip_total(spans, n_buffers, gradclip::make_norm_spec(p), max_norm, eps, mode);
        if (total_norm != nullptr) *total_norm = norm;
        return mode == NonFinite::Skip && !std::isfinite(norm) ? GRADCLIP_NONFINITE : GRADCLIP_OK;
    });
}

int c_clip_grads_with_norm(std::size_t n_buffers, void* const* ptrs, const std::size_t* lens, const int* dtypes,
                           double max_norm, double total_norm, double eps) {
    return on_buffers(n_buffers, ptrs, lens, dtypes, /*writes=*/true, [&](Span* spans) {
        if (!valid_max_norm(max_norm) || !valid_eps(eps) || total_norm < 0.0) return GRADCLIP_E_VALUE;
        gradclip::apply_global_clip(spans, n_buffers, total_norm, max_norm, eps, NonFinite::Propagate);
        return GRADCLIP_OK;
    });
}

int c_unscale_clip_grad_norm(std::size_t n_buffers, void* const* ptrs, const std::size_t* lens, const int* dtypes,
                             double max_norm, double inv_scale, double p, double eps, double* total_norm,
                             double* coef) {
    return on_buffers(n_buffers, ptrs, lens, dtypes, /*writes=*/true, [&](Span* spans) {
        if (!valid_p(p) || !valid_max_norm(max_norm) || !valid_max_norm(inv_scale) || !valid_eps(eps))
            return GRADCLIP_E_VALUE;
        double c = 1.0;
        const double norm = gradclip::unscale_clip(spans, n_buffers, gradclip::make_norm_spec(p), max_norm, inv_scale,
                                                   eps, &c, nullptr);
        if (total_norm != nullptr) *total_norm = norm;
        if (coef != nullptr) *coef = c;
        return std::isfinite(norm) ? GRADCLIP_OK : GRADCLIP_NONFINITE;
    });
}

const char* c_strerror(int code) {
    switch (code) {
        case GRADCLIP_OK:
            return "success";
        case GRADCLIP_NONFINITE:
            return "the total norm is NaN or infinite; nothing was written (nonfinite mode SKIP)";
        case GRADCLIP_E_DTYPE:
            return "unknown dtype code (expected GRADCLIP_F16, GRADCLIP_BF16, GRADCLIP_F32 or GRADCLIP_F64)";
        case GRADCLIP_E_NULL:
            return "a NULL pointer where a buffer with elements or an output is needed";
        case GRADCLIP_E_VALUE:
            return "bad argument value (p must be > 0 or inf; max_norm finite and > 0; clip_value and eps finite "
                   "and >= 0; total_norm >= 0; a known nonfinite mode; a length whose byte size fits in size_t)";
        case GRADCLIP_E_OVERLAP:
            return "two buffers share memory; each gradient must appear once";
        case GRADCLIP_E_NOMEM:
            return "out of memory";
        case GRADCLIP_E_INTERNAL:
            return "internal error in gradclip";
        default:
            return "unknown gradclip return code";
    }
}

// Constant-initialised: ready before any dynamic initialiser runs, and never destroyed.
// In the member order of capi.h, one per line.
// clang-format off
constexpr gradclip_capi kTable = {
    GRADCLIP_CAPI_VERSION,
    &c_norm,
    &c_sum_pow,
    &c_scale,
    &c_clamp,
    &c_total_norm,
    &c_clip_grad_norm,
    &c_clip_grads_with_norm,
    &c_strerror,
    &c_unscale_clip_grad_norm,
};
// clang-format on

}  // namespace

extern "C" const gradclip_capi* gradclip_capi_table(void) { return &kTable; }
