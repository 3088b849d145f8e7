// The multi-buffer engine. Built for the baseline target only: the per-ISA code lives in
// the kernel tables, threads live here.
//
// Work is cut into chunks whose boundaries follow element indices (kChunkBytes of one
// array, starting at its element 0), never thread counts or addresses. Each chunk's partial
// result has its own slot, and slots are combined in chunk order after the parallel loop, so
// the result has the same bits for any number of threads.
#include "gradclip/engine.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "half.hpp"

#if defined(GRADCLIP_WITH_OPENMP)
#include <omp.h>
#endif

namespace gradclip {

NormSpec make_norm_spec(double p) noexcept {
    if (p == 2.0) return {NormKind::L2, 2.0};
    if (p == 1.0) return {NormKind::L1, 1.0};
    if (std::isinf(p)) return {NormKind::Linf, p};
    return {NormKind::Lp, p};
}

namespace {

// 64 KiB of one array per chunk: big enough that the per-chunk cost (a kernel call and a
// 32-lane combination) is noise, small enough that a 2-thread split of a few MiB is even.
// A multiple of kLanes elements for every dtype, so every chunk starts on lane 0.
constexpr std::size_t kChunkBytes = std::size_t{64} * 1024;
// Below this many bytes a call runs on the calling thread: waking a team costs more.
constexpr std::size_t kSerialBytes = std::size_t{256} * 1024;
// Partial sums below this lose bits to subnormal underflow; see total_norm().
constexpr double kTinySum = 0x1p-969;

constexpr std::size_t chunk_elems(DType dt) noexcept { return kChunkBytes / itemsize(dt); }

// ------------------------------------------------------------------ dispatch
std::atomic<const KernelTable*> g_table{nullptr};

const KernelTable& table() noexcept {
    const KernelTable* t = g_table.load(std::memory_order_acquire);
    return t ? *t : baseline::kernel_table();
}

struct TargetEntry {
    const char* name;
    const KernelTable& (*get)() noexcept;
    bool (*supported)() noexcept;
};

bool always() noexcept { return true; }

#if defined(GRADCLIP_HAVE_AVX2)
bool has_avx2() noexcept {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
#endif
#if defined(GRADCLIP_HAVE_AVX512)
bool has_avx512() noexcept {
    __builtin_cpu_init();
    return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
}
#endif

// Worst first.
const TargetEntry kTargets[] = {
    {"baseline", baseline::kernel_table, always},
#if defined(GRADCLIP_HAVE_AVX2)
    {"avx2", avx2::kernel_table, has_avx2},
#endif
#if defined(GRADCLIP_HAVE_AVX512)
    {"avx512", avx512::kernel_table, has_avx512},
#endif
};

// ------------------------------------------------------------------ threads
std::atomic<int> g_threads{0};  // 0: follow OpenMP's own setting

// ------------------------------------------------------------------ plans
struct Chunk {
    std::size_t span;
    std::size_t start;
    std::size_t count;
};

// Per calling thread, reused across calls so the hot path does not allocate once warm.
struct Scratch {
    std::vector<Chunk> chunks;
    std::vector<std::size_t> offset;  // bytes before each chunk, plus the total at the end
    std::vector<double> partial;
    std::vector<double> coefs;
    std::vector<std::uint64_t> words;
};
thread_local Scratch t_scratch;

// Chunks of every span (or of the spans `keep` selects), in span order.
template <class Keep>
void build_plan(const Span* spans, std::size_t n, Scratch& s, Keep keep) {
    s.chunks.clear();
    s.offset.clear();
    std::size_t bytes = 0;
    for (std::size_t i = 0; i < n; ++i) {
        const Span& sp = spans[i];
        if (sp.n == 0 || !keep(i)) continue;
        const std::size_t ce = chunk_elems(sp.dt);
        const std::size_t isz = itemsize(sp.dt);
        for (std::size_t start = 0; start < sp.n; start += ce) {
            const std::size_t count = std::min(ce, sp.n - start);
            s.chunks.push_back({i, start, count});
            s.offset.push_back(bytes);
            bytes += count * isz;
        }
    }
    s.offset.push_back(bytes);
}

void build_plan(const Span* spans, std::size_t n, Scratch& s) {
    build_plan(spans, n, s, [](std::size_t) { return true; });
}

// Runs f(c) for every chunk c. Threads take contiguous runs of chunks of about equal bytes;
// which thread runs a chunk never changes what the chunk computes.
template <class F>
void run_chunks(const Scratch& s, F&& f) {
    const std::size_t nc = s.chunks.size();
    const std::size_t total = s.offset.empty() ? 0 : s.offset.back();
    int nt = get_num_threads();
    if (nt > static_cast<int>(nc)) nt = static_cast<int>(nc);
    if (nt <= 1 || total < kSerialBytes) {
        for (std::size_t c = 0; c < nc; ++c) f(c);
        return;
    }
#if defined(GRADCLIP_WITH_OPENMP)
#pragma omp parallel num_threads(nt)
    {
        const auto t = static_cast<std::size_t>(omp_get_thread_num());
        const auto T = static_cast<std::size_t>(omp_get_num_threads());
        const auto first_at = [&](std::size_t k) -> std::size_t {
            if (k >= T) return nc;
            const std::size_t target = static_cast<std::size_t>(static_cast<double>(total) * static_cast<double>(k) /
                                                                static_cast<double>(T));
            return static_cast<std::size_t>(std::lower_bound(s.offset.begin(), s.offset.end() - 1, target) -
                                            s.offset.begin());
        };
        const std::size_t lo = first_at(t), hi = first_at(t + 1);
        for (std::size_t c = lo; c < hi; ++c) f(c);
    }
#else
    for (std::size_t c = 0; c < nc; ++c) f(c);
#endif
}

// ------------------------------------------------------------------ scalar element access
double load_elem(const char* p, DType dt) noexcept {
    switch (dt) {
        case DType::F64: {
            double v;
            std::memcpy(&v, p, 8);
            return v;
        }
        case DType::F32: {
            float v;
            std::memcpy(&v, p, 4);
            return v;
        }
        case DType::F16: {
            std::uint16_t h;
            std::memcpy(&h, p, 2);
            return detail::half_to_float(h);
        }
        case DType::BF16: {
            std::uint16_t h;
            std::memcpy(&h, p, 2);
            return detail::bf16_to_float(h);
        }
    }
    return 0.0;
}

// Writes v rounded to the element type (v is exactly a float for the narrow types).
void store_elem(char* p, DType dt, double v) noexcept {
    switch (dt) {
        case DType::F64:
            std::memcpy(p, &v, 8);
            return;
        case DType::F32: {
            const float f = static_cast<float>(v);
            std::memcpy(p, &f, 4);
            return;
        }
        case DType::F16: {
            const std::uint16_t h = detail::float_to_half(static_cast<float>(v));
            std::memcpy(p, &h, 2);
            return;
        }
        case DType::BF16: {
            const std::uint16_t h = detail::float_to_bf16(static_cast<float>(v));
            std::memcpy(p, &h, 2);
            return;
        }
    }
}

// Calls f(pointer, k) for the elements with C-order flat indices [start, start + count) of a
// strided span, k = index - start.
template <class F>
void for_each_strided(const Span& sp, std::size_t start, std::size_t count, F&& f) {
    const int nd = sp.ndim;
    std::ptrdiff_t idx[64];
    std::size_t rem = start;
    for (int d = nd - 1; d >= 0; --d) {
        const auto ext = static_cast<std::size_t>(sp.shape[d]);
        idx[d] = static_cast<std::ptrdiff_t>(rem % ext);
        rem /= ext;
    }
    const std::ptrdiff_t inner = sp.shape[nd - 1];
    const std::ptrdiff_t istride = sp.strides[nd - 1];
    std::size_t k = 0;
    while (k < count) {
        char* p = sp.data;
        for (int d = 0; d < nd; ++d) p += idx[d] * sp.strides[d];
        const std::size_t run = std::min(static_cast<std::size_t>(inner - idx[nd - 1]), count - k);
        for (std::size_t r = 0; r < run; ++r) f(p + static_cast<std::ptrdiff_t>(r) * istride, k + r);
        k += run;
        idx[nd - 1] += static_cast<std::ptrdiff_t>(run);
        for (int d = nd - 1; d > 0 && idx[d] == sp.shape[d]; --d) {
            idx[d] = 0;
            ++idx[d - 1];
        }
    }
}

// ------------------------------------------------------------------ per-chunk reductions
// The scalar paths below follow the kernels' lane layout (element k -> lane k % 32, lanes
// combined by combine_lanes), so a strided view gives the bits of its contiguous copy.
struct LaneSum {
    double lanes[kLanes] = {};
    double finish() const noexcept { return combine_lanes(lanes); }
};

double step_value(NormSpec spec, double x, double scale) noexcept {
    const double t = x * scale;
    switch (spec.kind) {
        case NormKind::L2:
            return t * t;
        case NormKind::L1:
            return std::fabs(t);
        default:
            return std::pow(std::fabs(t), spec.p);
    }
}

// Sum (or max, for Linf) over one chunk.
double reduce_chunk(const KernelTable& kt, const Span& sp, std::size_t start, std::size_t count, NormSpec spec,
                    double scale) noexcept {
    const int di = static_cast<int>(sp.dt);
    if (sp.ndim == 0) {
        const char* p = sp.data + start * itemsize(sp.dt);
        switch (spec.kind) {
            case NormKind::L2:
                return kt.sum_sq[di](p, count, scale);
            case NormKind::L1:
                return kt.sum_abs[di](p, count, scale);
            case NormKind::Linf:
                return kt.max_abs[di](p, count);
            case NormKind::Lp: {
                LaneSum acc;
                const std::size_t isz = itemsize(sp.dt);
                for (std::size_t k = 0; k < count; ++k) {
                    double& l = acc.lanes[k % kLanes];
                    l = l + step_value(spec, load_elem(p + k * isz, sp.dt), scale);
                }
                return acc.finish();
            }
        }
        return 0.0;
    }
    if (spec.kind == NormKind::Linf) {
        double m = 0.0;
        bool nan = false;
        for_each_strided(sp, start, count, [&](const char* p, std::size_t) {
            const double a = std::fabs(load_elem(p, sp.dt));
            if (a != a) nan = true;
            m = a > m ? a : m;
        });
        return nan ? std::numeric_limits<double>::quiet_NaN() : m;
    }
    LaneSum acc;
    for_each_strided(sp, start, count, [&](const char* p, std::size_t k) {
        double& l = acc.lanes[k % kLanes];
        l = l + step_value(spec, load_elem(p, sp.dt), scale);
    });
    return acc.finish();
}

double combine_max(double a, double b) noexcept {
    if (a != a || b != b) return std::numeric_limits<double>::quiet_NaN();
    return a > b ? a : b;
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

// Fills s.partial with one value per chunk of the current plan.
void reduce_plan(const Span* spans, Scratch& s, NormSpec spec, double scale) {
    const KernelTable& kt = table();
    s.partial.resize(s.chunks.size());
    double* out = s.partial.data();
    const Chunk* ch = s.chunks.data();
    run_chunks(s, [&](std::size_t c) {
        out[c] = reduce_chunk(kt, spans[ch[c].span], ch[c].start, ch[c].count, spec, scale);
    });
}

// Partials of the plan combined in chunk order: per span first, then across spans.
double combine_plan(const Scratch& s, NormSpec spec) noexcept {
    const std::size_t nc = s.chunks.size();
    if (spec.kind == NormKind::Linf) {
        double m = 0.0;
        for (std::size_t c = 0; c < nc; ++c) m = combine_max(m, s.partial[c]);
        return m;
    }
    double total = 0.0;
    std::size_t c = 0;
    while (c < nc) {
        const std::size_t span = s.chunks[c].span;
        double part = 0.0;
        for (; c < nc && s.chunks[c].span == span; ++c) part += s.partial[c];
        total += part;
    }
    return total;
}

// Whether the fast sum s (of |x|^p, scale 1) lost range: it overflowed, or it is so small
// that subnormal terms may have lost bits (below 2^-969 the absolute error of each
// subnormal term, 2^-1075, is no longer negligible against the sum).
bool needs_rescale(double s) noexcept { return std::isinf(s) || s < kTinySum; }

// Picks the power-of-two scale that maps the largest |x| into [0.5, 1). Returns false when
// no rescaled pass can help (m zero or non-finite).
bool rescale_for(double m, int& e) noexcept {
    if (!(m > 0.0) || std::isinf(m)) return false;
    std::frexp(m, &e);
    e = std::max(e, -1000);  // keep 2^-e finite; a subnormal max stays exact after scaling
    return true;
}

// Finishes a norm from its fast sum `s` over a plan; re-reads the plan when s lost range.
double norm_from_plan(const Span* spans, Scratch& s, NormSpec spec, double sum) {
    if (spec.kind == NormKind::Linf || sum != sum || !needs_rescale(sum)) return finish_norm(spec, sum);
    reduce_plan(spans, s, NormSpec{NormKind::Linf, spec.p}, 1.0);
    const double m = combine_plan(s, NormSpec{NormKind::Linf, spec.p});
    int e = 0;
    if (!rescale_for(m, e)) {
        if (m != m) return m;
        return m == 0.0 ? 0.0 : std::numeric_limits<double>::infinity();
    }
    reduce_plan(spans, s, spec, std::ldexp(1.0, -e));
    return std::ldexp(finish_norm(spec, combine_plan(s, spec)), e);
}

}  // namespace

// ------------------------------------------------------------------ targets
std::vector<std::string> available_targets() {
    std::vector<std::string> out;
    for (const TargetEntry& t : kTargets)
        if (t.supported()) out.emplace_back(t.name);
    return out;
}

const char* current_target() noexcept { return table().name; }

bool set_target(const std::string& name) noexcept {
    for (const TargetEntry& t : kTargets) {
        if (name == t.name && t.supported()) {
            g_table.store(&t.get(), std::memory_order_release);
            return true;
        }
    }
    return false;
}

bool init_target(const char* forced) noexcept {
    const TargetEntry* best = &kTargets[0];
    for (const TargetEntry& t : kTargets)
        if (t.supported()) best = &t;
    g_table.store(&best->get(), std::memory_order_release);
    if (forced == nullptr || *forced == '\0') return true;
    return set_target(forced);
}

// ------------------------------------------------------------------ threads
void set_num_threads(int n) noexcept {
    if (n < 1) n = 1;
    g_threads.store(n, std::memory_order_relaxed);
#if defined(GRADCLIP_WITH_OPENMP)
    omp_set_num_threads(n);
#endif
}

int get_num_threads() noexcept {
#if defined(GRADCLIP_WITH_OPENMP)
    // omp_get_max_threads() carries OMP_NUM_THREADS and threadpoolctl's limits for this thread
    const int omp = omp_get_max_threads();
    const int mine = g_threads.load(std::memory_order_relaxed);
    return mine > 0 ? std::min(mine, omp) : omp;
#else
    return 1;
#endif
}

bool have_openmp() noexcept {
#if defined(GRADCLIP_WITH_OPENMP)
    return true;
#else
    return false;
#endif
}

// ------------------------------------------------------------------ layout
bool describe_array(char* data, int ndim, const std::ptrdiff_t* shape, const std::ptrdiff_t* strides, DType dt,
                    Span& span) noexcept {
    span.dt = dt;
    std::size_t n = 1;
    for (int d = 0; d < ndim; ++d) n *= static_cast<std::size_t>(shape[d]);
    span.n = n;
    span.data = data;
    span.ndim = 0;
    span.shape = nullptr;
    span.strides = nullptr;
    if (n <= 1) return true;
    // axes of extent > 1 sorted by |stride|: dense iff each stride equals the extent so far
    std::ptrdiff_t st[64], sh[64];
    int m = 0;
    for (int d = 0; d < ndim; ++d) {
        if (shape[d] <= 1) continue;
        std::ptrdiff_t a = strides[d] < 0 ? -strides[d] : strides[d];
        int j = m++;
        while (j > 0 && st[j - 1] > a) {
            st[j] = st[j - 1];
            sh[j] = sh[j - 1];
            --j;
        }
        st[j] = a;
        sh[j] = shape[d];
    }
    auto expected = static_cast<std::ptrdiff_t>(itemsize(dt));
    for (int j = 0; j < m; ++j) {
        if (st[j] != expected) {
            span.ndim = ndim;
            span.shape = shape;
            span.strides = strides;
            return false;
        }
        expected *= sh[j];
    }
    for (int d = 0; d < ndim; ++d)
        if (shape[d] > 1 && strides[d] < 0) span.data += (shape[d] - 1) * strides[d];
    return true;
}

bool may_self_overlap(int ndim, const std::ptrdiff_t* shape, const std::ptrdiff_t* strides,
                      std::size_t isz) noexcept {
    // sorted by |stride|, each axis must step past everything the faster axes cover
    std::ptrdiff_t st[64], sh[64];
    int m = 0;
    for (int d = 0; d < ndim; ++d) {
        if (shape[d] == 0) return false;
        if (shape[d] == 1) continue;
        std::ptrdiff_t a = strides[d] < 0 ? -strides[d] : strides[d];
        int j = m++;
        while (j > 0 && st[j - 1] > a) {
            st[j] = st[j - 1];
            sh[j] = sh[j - 1];
            --j;
        }
        st[j] = a;
        sh[j] = shape[d];
    }
    auto covered = static_cast<std::ptrdiff_t>(isz);
    for (int j = 0; j < m; ++j) {
        if (st[j] < covered) return true;
        covered += (sh[j] - 1) * st[j];
    }
    return false;
}

void byte_bounds(const char* data, int ndim, const std::ptrdiff_t* shape, const std::ptrdiff_t* strides,
                 std::size_t isz, const char*& lo, const char*& hi) noexcept {
    std::ptrdiff_t neg = 0, pos = 0;
    for (int d = 0; d < ndim; ++d) {
        if (shape[d] == 0) {
            lo = hi = data;
            return;
        }
        const std::ptrdiff_t ext = (shape[d] - 1) * strides[d];
        if (ext < 0)
            neg += ext;
        else
            pos += ext;
    }
    lo = data + neg;
    hi = data + pos + static_cast<std::ptrdiff_t>(isz);
}

// ------------------------------------------------------------------ operations
double clip_coef(double max_norm, double norm, double eps) noexcept {
    const double c = max_norm / (norm + eps);
    return c > 1.0 ? 1.0 : c;  // NaN stays NaN
}

double total_norm(const Span* spans, std::size_t n, NormSpec spec) {
    Scratch& s = t_scratch;
    build_plan(spans, n, s);
    if (s.chunks.empty()) return 0.0;
    reduce_plan(spans, s, spec, 1.0);
    return norm_from_plan(spans, s, spec, combine_plan(s, spec));
}

void span_norms(const Span* spans, std::size_t n, NormSpec spec, double* out) {
    Scratch& s = t_scratch;
    build_plan(spans, n, s);
    reduce_plan(spans, s, spec, 1.0);
    for (std::size_t i = 0; i < n; ++i) out[i] = 0.0;
    const std::size_t nc = s.chunks.size();
    std::size_t c = 0;
    while (c < nc) {
        const std::size_t span = s.chunks[c].span;
        double part = 0.0;
        for (; c < nc && s.chunks[c].span == span; ++c)
            part = spec.kind == NormKind::Linf ? combine_max(part, s.partial[c]) : part + s.partial[c];
        out[span] = part;
    }
    // Spans whose sum lost range are redone one by one (rare: values near the ends of the
    // double range), each with its own plan and scale.
    bool any = false;
    for (std::size_t i = 0; i < n; ++i)
        if (spec.kind != NormKind::Linf && out[i] == out[i] && needs_rescale(out[i]) && spans[i].n != 0) any = true;
    if (!any) {
        for (std::size_t i = 0; i < n; ++i) out[i] = finish_norm(spec, out[i]);
        return;
    }
    Scratch one;
    for (std::size_t i = 0; i < n; ++i) {
        if (spec.kind == NormKind::Linf || out[i] != out[i] || !needs_rescale(out[i]) || spans[i].n == 0) {
            out[i] = finish_norm(spec, out[i]);
            continue;
        }
        build_plan(spans + i, 1, one);
        out[i] = norm_from_plan(spans + i, one, spec, out[i]);
    }
}

void scale_all(const Span* spans, std::size_t n, double coef) {
    Scratch& s = t_scratch;
    build_plan(spans, n, s);
    const KernelTable& kt = table();
    const Chunk* ch = s.chunks.data();
    run_chunks(s, [&](std::size_t c) {
        const Span& sp = spans[ch[c].span];
        if (sp.ndim == 0) {
            kt.scale[static_cast<int>(sp.dt)](sp.data + ch[c].start * itemsize(sp.dt), ch[c].count, coef);
        } else {
            const double cf = sp.dt == DType::F64 ? coef : static_cast<double>(static_cast<float>(coef));
            for_each_strided(sp, ch[c].start, ch[c].count, [&](char* p, std::size_t) {
                const double x = load_elem(p, sp.dt);
                // float types multiply in float: x and cf are floats, so the double product
                // rounded to float is the float product
                store_elem(p, sp.dt, sp.dt == DType::F64 ? x * cf : static_cast<double>(static_cast<float>(x * cf)));
            });
        }
    });
}

void scale_each(const Span* spans, std::size_t n, const double* coefs) {
    Scratch& s = t_scratch;
    build_plan(spans, n, s, [&](std::size_t i) { return coefs[i] != 1.0; });
    const KernelTable& kt = table();
    const Chunk* ch = s.chunks.data();
    run_chunks(s, [&](std::size_t c) {
        const Span& sp = spans[ch[c].span];
        const double coef = coefs[ch[c].span];
        if (sp.ndim == 0) {
            kt.scale[static_cast<int>(sp.dt)](sp.data + ch[c].start * itemsize(sp.dt), ch[c].count, coef);
        } else {
            const double cf = sp.dt == DType::F64 ? coef : static_cast<double>(static_cast<float>(coef));
            for_each_strided(sp, ch[c].start, ch[c].count, [&](char* p, std::size_t) {
                const double x = load_elem(p, sp.dt);
                store_elem(p, sp.dt, sp.dt == DType::F64 ? x * cf : static_cast<double>(static_cast<float>(x * cf)));
            });
        }
    });
}

void clamp_all(const Span* spans, std::size_t n, const double* bound) {
    Scratch& s = t_scratch;
    build_plan(spans, n, s);
    const KernelTable& kt = table();
    const Chunk* ch = s.chunks.data();
    run_chunks(s, [&](std::size_t c) {
        const Span& sp = spans[ch[c].span];
        const int di = static_cast<int>(sp.dt);
        const double hi = bound[di], lo = -hi;
        if (sp.ndim == 0) {
            kt.clamp[di](sp.data + ch[c].start * itemsize(sp.dt), ch[c].count, lo, hi);
        } else {
            for_each_strided(sp, ch[c].start, ch[c].count, [&](char* p, std::size_t) {
                const double x = load_elem(p, sp.dt);
                if (x < lo)
                    store_elem(p, sp.dt, lo);
                else if (x > hi)
                    store_elem(p, sp.dt, hi);
            });
        }
    });
}

void zero_all(const Span* spans, std::size_t n) {
    Scratch& s = t_scratch;
    build_plan(spans, n, s);
    const Chunk* ch = s.chunks.data();
    run_chunks(s, [&](std::size_t c) {
        const Span& sp = spans[ch[c].span];
        if (sp.ndim == 0) {
            // +0.0 is all-zero bits in every supported type
            std::memset(sp.data + ch[c].start * itemsize(sp.dt), 0, ch[c].count * itemsize(sp.dt));
        } else {
            for_each_strided(sp, ch[c].start, ch[c].count, [&](char* p, std::size_t) { std::memset(p, 0, itemsize(sp.dt)); });
        }
    });
}

std::uint64_t probe_read(const char* p, std::size_t bytes) {
    Span sp;
    sp.data = const_cast<char*>(p);
    sp.n = bytes / 8;
    sp.dt = DType::F64;
    Scratch& s = t_scratch;
    build_plan(&sp, 1, s);
    const KernelTable& kt = table();
    s.words.resize(s.chunks.size());
    std::uint64_t* out = s.words.data();
    const Chunk* ch = s.chunks.data();
    run_chunks(s, [&](std::size_t c) { out[c] = kt.probe_read(sp.data + 8 * ch[c].start, ch[c].count); });
    std::uint64_t x = 0;
    for (std::size_t c = 0; c < s.chunks.size(); ++c) x ^= out[c];
    return x;
}

namespace {
volatile std::uint64_t g_zero = 0;  // read at run time, so the probe's store cannot be elided
}

void probe_rw(char* p, std::size_t bytes) {
    Span sp;
    sp.data = p;
    sp.n = bytes / 8;
    sp.dt = DType::F64;
    Scratch& s = t_scratch;
    build_plan(&sp, 1, s);
    const KernelTable& kt = table();
    const std::uint64_t k = g_zero;
    const Chunk* ch = s.chunks.data();
    run_chunks(s, [&](std::size_t c) { kt.probe_rw(sp.data + 8 * ch[c].start, ch[c].count, k); });
}

double clip_total(const Span* spans, std::size_t n, NormSpec spec, double max_norm, double eps, NonFinite mode) {
    const double norm = total_norm(spans, n, spec);
    if (!std::isfinite(norm)) {
        if (mode == NonFinite::Skip) return norm;
        if (mode == NonFinite::Zero) {
            zero_all(spans, n);
            return norm;
        }
    }
    const double coef = clip_coef(max_norm, norm, eps);
    if (coef_writes(coef)) scale_all(spans, n, coef);
    return norm;
}

void clip_each(const Span* spans, std::size_t n, NormSpec spec, double max_norm, double eps, NonFinite mode,
               double* norms) {
    span_norms(spans, n, spec, norms);
    bool nonfinite = false;
    for (std::size_t i = 0; i < n; ++i)
        if (!std::isfinite(norms[i])) nonfinite = true;
    if (nonfinite && mode == NonFinite::Skip) return;
    if (nonfinite && mode == NonFinite::Zero) {
        zero_all(spans, n);
        return;
    }
    std::vector<double>& coefs = t_scratch.coefs;
    coefs.resize(n);
    bool any = false;
    for (std::size_t i = 0; i < n; ++i) {
        const double c = clip_coef(max_norm, norms[i], eps);
        coefs[i] = coef_writes(c) ? c : 1.0;
        any = any || coefs[i] != 1.0;
    }
    if (any) scale_each(spans, n, coefs.data());
}

}  // namespace gradclip
