// The multi-buffer engine. Built for the baseline target only: the per-ISA code lives in
// the kernel tables, threads live here.
//
// Work is cut into chunks whose boundaries follow element indices (at most kChunkBytes of
// the call's arrays taken in order; see the plans below), never thread counts or addresses.
// Each chunk's partial result has its own slot, and slots are combined in chunk order after
// the parallel loop, so the result has the same bits for any number of threads.
#include "gradclip/engine.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "half.hpp"
#include "kernels.hpp"

#if defined(GRADCLIP_WITH_OPENMP)
#include <omp.h>
#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif
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
// Above this p the rescaled pass divides by max|x| instead of a power of two (see
// rescaled_norm).
constexpr double kExactScaleMaxP = 512.0;

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
// Set in a child process made by fork(): libgomp's thread pool does not survive a fork, and
// a child's first parallel region would wait forever for the parent's pool threads. The
// child runs every call on its calling thread instead.
std::atomic<bool> g_forked{false};
#if defined(GRADCLIP_WITH_OPENMP) && (defined(__unix__) || defined(__APPLE__))
void mark_forked_child() { g_forked.store(true, std::memory_order_relaxed); }
#endif

// ------------------------------------------------------------------ plans
// A plan cuts the spans of a call into chunks of at most kChunkBytes. A chunk is a run of
// segments (pieces of spans); element i of a segment goes to lane (lane0 + i) % kLanes, so
// lanes follow the element's index within its chunk.
//
// Stream layout (total norms, writes): chunks run across span boundaries, so a list of many
// small arrays is summed like one long array, with one lane combination per chunk instead of
// one per array. PerSpan layout (per-array norms): every span starts a new chunk at lane 0.
struct Seg {
    std::size_t span;
    std::size_t start;
    std::size_t count;
    std::size_t lane0;
};

enum class Layout { Stream, PerSpan };

// A plan. Built per call into a per-thread buffer (reused across calls, so the hot path does
// not allocate once warm), or once for a fixed list of spans (Plans, for GradientSet).
struct Scratch {
    std::vector<Seg> segs;
    std::vector<std::size_t> first;   // first segment of each chunk, plus segs.size()
    std::vector<std::size_t> offset;  // bytes before each chunk, plus the total
    std::size_t nchunks() const noexcept { return first.empty() ? 0 : first.size() - 1; }
};
thread_local Scratch t_scratch;

// Per-call outputs, per calling thread (a cached plan may be used by several threads at once).
struct Work {
    std::vector<double> partial;
    std::vector<double> coefs;
    std::vector<std::uint64_t> words;
};
thread_local Work t_work;

template <class Keep>
void build_plan(const Span* spans, std::size_t n, Scratch& s, Layout layout, Keep keep) {
    // Upper bounds first, then plain stores: this runs once per array on every call.
    std::size_t total = 0;
    for (std::size_t i = 0; i < n; ++i) total += spans[i].n * itemsize(spans[i].dt);
    const std::size_t max_chunks = total / kChunkBytes + n + 1;
    s.segs.resize(max_chunks + n);
    s.first.resize(max_chunks + 1);
    s.offset.resize(max_chunks + 1);
    Seg* seg = s.segs.data();
    std::size_t nseg = 0, nch = 0;
    std::size_t bytes = 0, cbytes = kChunkBytes, lane = 0;
    for (std::size_t i = 0; i < n; ++i) {
        const Span& sp = spans[i];
        if (sp.n == 0 || !keep(i)) continue;
        const std::size_t isz = itemsize(sp.dt);
        if (layout == Layout::PerSpan) cbytes = kChunkBytes;  // start a new chunk
        std::size_t start = 0;
        while (start < sp.n) {
            std::size_t room = (kChunkBytes - cbytes) / isz;
            if (room == 0) {
                s.first[nch] = nseg;
                s.offset[nch] = bytes;
                ++nch;
                cbytes = 0;
                lane = 0;
                room = kChunkBytes / isz;
            }
            const std::size_t count = std::min(room, sp.n - start);
            seg[nseg++] = Seg{i, start, count, lane};
            lane = (lane + count) % kLanes;
            cbytes += count * isz;
            bytes += count * isz;
            start += count;
        }
    }
    s.first[nch] = nseg;
    s.offset[nch] = bytes;
    s.segs.resize(nseg);
    s.first.resize(nch + 1);
    s.offset.resize(nch + 1);
}

void build_plan(const Span* spans, std::size_t n, Scratch& s, Layout layout) {
    build_plan(spans, n, s, layout, [](std::size_t) { return true; });
}

// Runs f(c) for every chunk c. Threads take contiguous runs of chunks of about equal bytes;
// which thread runs a chunk never changes what the chunk computes.
template <class F>
void run_chunks(const Scratch& s, F&& f) {
    const std::size_t nc = s.nchunks();
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
            const std::size_t target =
                static_cast<std::size_t>(static_cast<double>(total) * static_cast<double>(k) / static_cast<double>(T));
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
        default:
            return std::pow(std::fabs(t) / div, spec.p);
    }
}

double max_of(double a, double b) noexcept {
    if (a != a || b != b) return std::numeric_limits<double>::quiet_NaN();
    return a > b ? a : b;
}

// Sum (or max, for Linf) over one chunk of the plan.
// `div` is 1 except in the ratio form, which only general p uses (the kernels take `scale`).
double reduce_chunk(const KernelTable& kt, const Span* spans, const Scratch& s, std::size_t c, NormSpec spec,
                    double scale, double div) noexcept {
    double lanes[kLanes] = {};
    double m = 0.0;
    for (std::size_t q = s.first[c]; q < s.first[c + 1]; ++q) {
        const Seg& g = s.segs[q];
        const Span& sp = spans[g.span];
        const int di = static_cast<int>(sp.dt);
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

// Fills t_work.partial with one value per chunk of the plan.
void reduce_plan(const Span* spans, const Scratch& s, NormSpec spec, double scale, double div = 1.0) {
    const KernelTable& kt = table();
    t_work.partial.resize(s.nchunks());
    double* out = t_work.partial.data();
    run_chunks(s, [&](std::size_t c) { out[c] = reduce_chunk(kt, spans, s, c, spec, scale, div); });
}

// Partials of the plan combined in chunk order.
double combine_plan(const Scratch& s, NormSpec spec) noexcept {
    const std::size_t nc = s.nchunks();
    double total = 0.0;
    const double* partial = t_work.partial.data();
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
// no rescaled pass can help (m zero or non-finite).
bool rescale_for(double m, int& e) noexcept {
    if (!(m > 0.0) || std::isinf(m)) return false;
    std::frexp(m, &e);
    e = std::max(e, -1000);  // keep 2^-e finite; a subnormal max stays exact after scaling
    return true;
}

// The norm over a plan from max|x| = m and a second pass relative to it, for sums that lose
// range at scale 1 and for ratio_form_only. p = 1, 2 and p <= 512 scale by the power of two
// 2^-e that maps m into [0.5, 1): exact, and (m 2^-e)^p >= 2^-512 keeps the sum in range.
// Other p use the ratio form m * (sum (|x| / m)^p)^(1/p): dividing (not multiplying by 1/m,
// which can round m / m to 1 - 2^-53, whose 1e20th power is 0) makes the largest term exactly
// 1, so the sum lies in [1, n] and the norm is never below m, for any p up to DBL_MAX.
double rescaled_norm(const Span* spans, const Scratch& s, NormSpec spec) {
    const NormSpec linf{NormKind::Linf, spec.p};
    reduce_plan(spans, s, linf, 1.0);
    const double m = combine_plan(s, linf);
    int e = 0;
    if (!rescale_for(m, e)) {
        if (m != m) return m;
        return m == 0.0 ? 0.0 : std::numeric_limits<double>::infinity();
    }
    if (spec.kind == NormKind::Lp && (spec.p > kExactScaleMaxP || spec.p < 1.0)) {
        reduce_plan(spans, s, spec, 1.0, m);
        return finish_norm(spec, combine_plan(s, spec)) * m;
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
#if defined(GRADCLIP_WITH_OPENMP) && (defined(__unix__) || defined(__APPLE__))
    static const bool registered = pthread_atfork(nullptr, nullptr, mark_forked_child) == 0;
    (void)registered;
#endif
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
    if (g_forked.load(std::memory_order_relaxed)) return 1;
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

bool may_self_overlap(int ndim, const std::ptrdiff_t* shape, const std::ptrdiff_t* strides, std::size_t isz) noexcept {
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

// ------------------------------------------------------------------ cached plans
struct Plans::Impl {
    Scratch stream;
    Scratch per_span;
};

Plans::Plans(const Span* spans, std::size_t n) : impl_(new Impl) {
    build_plan(spans, n, impl_->stream, Layout::Stream);
    build_plan(spans, n, impl_->per_span, Layout::PerSpan);
}
Plans::~Plans() = default;

namespace {
const Scratch& plan_for(const Span* spans, std::size_t n, Layout layout, const Plans* cached) {
    if (cached != nullptr) return layout == Layout::Stream ? cached->impl().stream : cached->impl().per_span;
    build_plan(spans, n, t_scratch, layout);
    return t_scratch;
}
}  // namespace

// ------------------------------------------------------------------ bound rounding
namespace {

// double -> float, rounded to nearest even (IEEE 754's default), with out-of-range values
// going to +-inf or +-FLT_MAX explicitly: a plain cast of an out-of-range double is undefined
// behaviour in C++.
float round_f32(double v) noexcept {
    const double a = std::fabs(v);
    if (a > static_cast<double>(std::numeric_limits<float>::max())) {
        // FLT_MAX + half an ulp (2^103) and above round to inf (the tie goes to the even 2^128)
        const float big =
            a >= 0x1.ffffffp127 ? std::numeric_limits<float>::infinity() : std::numeric_limits<float>::max();
        return std::signbit(v) ? -big : big;
    }
    return static_cast<float>(v);
}

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
            return static_cast<double>(round_f32(v));
        case DType::F64:
            break;
    }
    return v;
}

// ------------------------------------------------------------------ operations
double clip_coef(double max_norm, double norm, double eps) noexcept {
    const double c = max_norm / (norm + eps);
    return c > 1.0 ? 1.0 : c;  // NaN stays NaN
}

double total_norm(const Span* spans, std::size_t n, NormSpec spec, const Plans* cached) {
    const Scratch& s = plan_for(spans, n, Layout::Stream, cached);
    if (s.nchunks() == 0) return 0.0;
    if (!ratio_form_only(spec)) {
        reduce_plan(spans, s, spec, 1.0);
        const double sum = combine_plan(s, spec);
        if (!lost_range(spec, sum)) return finish_norm(spec, sum);
    }
    return rescaled_norm(spans, s, spec);
}

void span_norms(const Span* spans, std::size_t n, NormSpec spec, double* out, const Plans* cached) {
    const Scratch& s = plan_for(spans, n, Layout::PerSpan, cached);
    const bool redo_all = ratio_form_only(spec);
    if (!redo_all) reduce_plan(spans, s, spec, 1.0);
    for (std::size_t i = 0; i < n; ++i) out[i] = 0.0;
    // chunks of one span are consecutive: combine them in order
    const double* partial = t_work.partial.data();
    for (std::size_t c = 0; !redo_all && c < s.nchunks(); ++c) {
        const std::size_t span = s.segs[s.first[c]].span;
        out[span] = spec.kind == NormKind::Linf ? max_of(out[span], partial[c]) : out[span] + partial[c];
    }
    // Spans whose sum lost range (rare: values near the ends of the double range), or all of
    // them for ratio_form_only, are redone one by one, each with its own plan and scale.
    Scratch one;
    for (std::size_t i = 0; i < n; ++i) {
        if (spans[i].n == 0 || !(redo_all || lost_range(spec, out[i]))) {
            out[i] = finish_norm(spec, out[i]);
            continue;
        }
        build_plan(spans + i, 1, one, Layout::PerSpan);
        out[i] = rescaled_norm(spans + i, one, spec);
    }
}

namespace {

// x * coef rounded to the element type, for the strided path (the kernels do the same).
void scale_strided(const Span& sp, std::size_t start, std::size_t count, double coef) {
    const double cf = sp.dt == DType::F64 ? coef : static_cast<double>(static_cast<float>(coef));
    for_each_strided(sp, start, count, [&](char* p, std::size_t) {
        const double x = load_elem(p, sp.dt);
        // float types multiply in float: x and cf are floats, so the double product rounded
        // to float is the float product
        store_elem(p, sp.dt, sp.dt == DType::F64 ? x * cf : static_cast<double>(static_cast<float>(x * cf)));
    });
}

// Runs op(span, segment) over every segment of the plan, chunks in parallel.
template <class Op>
void for_each_segment(const Span* spans, const Scratch& s, Op&& op) {
    run_chunks(s, [&](std::size_t c) {
        for (std::size_t q = s.first[c]; q < s.first[c + 1]; ++q) op(spans[s.segs[q].span], s.segs[q]);
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

void scale_all(const Span* spans, std::size_t n, double coef, const Plans* cached) {
    const Scratch& s = plan_for(spans, n, Layout::Stream, cached);
    const KernelTable& kt = table();
    for_each_segment(spans, s, [&](const Span& sp, const Seg& g) { scale_segment(kt, sp, g, coef); });
}

void scale_each(const Span* spans, std::size_t n, const double* coefs) {
    Scratch& s = t_scratch;
    build_plan(spans, n, s, Layout::Stream, [&](std::size_t i) { return coefs[i] != 1.0; });
    const KernelTable& kt = table();
    for_each_segment(spans, s, [&](const Span& sp, const Seg& g) { scale_segment(kt, sp, g, coefs[&sp - spans]); });
}

void clamp_all(const Span* spans, std::size_t n, double lo64, double hi64, const Plans* cached) {
    const Scratch& s = plan_for(spans, n, Layout::Stream, cached);
    const KernelTable& kt = table();
    double lo_of[kNumDTypes], hi_of[kNumDTypes];
    for (int d = 0; d < kNumDTypes; ++d) {
        lo_of[d] = round_to_dtype(static_cast<DType>(d), lo64);
        hi_of[d] = round_to_dtype(static_cast<DType>(d), hi64);
    }
    for_each_segment(spans, s, [&](const Span& sp, const Seg& g) {
        const int di = static_cast<int>(sp.dt);
        const double lo = lo_of[di], hi = hi_of[di];
        if (sp.ndim == 0) {
            kt.clamp[di](sp.data + g.start * itemsize(sp.dt), g.count, lo, hi);
        } else {
            for_each_strided(sp, g.start, g.count, [&](char* p, std::size_t) {
                const double x = load_elem(p, sp.dt);
                if (x < lo)
                    store_elem(p, sp.dt, lo);
                else if (x > hi)
                    store_elem(p, sp.dt, hi);
            });
        }
    });
}

void zero_all(const Span* spans, std::size_t n, const Plans* cached) {
    const Scratch& s = plan_for(spans, n, Layout::Stream, cached);
    for_each_segment(spans, s, [&](const Span& sp, const Seg& g) {
        const std::size_t isz = itemsize(sp.dt);
        if (sp.ndim == 0)
            std::memset(sp.data + g.start * isz, 0, g.count * isz);  // +0.0 is all-zero bits in every type
        else
            for_each_strided(sp, g.start, g.count, [&](char* p, std::size_t) { std::memset(p, 0, isz); });
    });
}

std::uint64_t probe_read(const char* p, std::size_t bytes) {
    Span sp;
    sp.data = const_cast<char*>(p);
    sp.n = bytes / 8;
    sp.dt = DType::F64;
    Scratch& s = t_scratch;
    build_plan(&sp, 1, s, Layout::Stream);
    const KernelTable& kt = table();
    t_work.words.assign(s.nchunks(), 0);
    std::uint64_t* out = t_work.words.data();
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
    Span sp;
    sp.data = p;
    sp.n = bytes / 8;
    sp.dt = DType::F64;
    Scratch& s = t_scratch;
    build_plan(&sp, 1, s, Layout::Stream);
    const KernelTable& kt = table();
    const std::uint64_t k = g_zero;
    run_chunks(s, [&](std::size_t c) {
        const Seg& g = s.segs[s.first[c]];
        kt.probe_rw(sp.data + 8 * g.start, g.count, k);
    });
}

double apply_global_clip(const Span* spans, std::size_t n, double norm, double max_norm, double eps, NonFinite mode,
                         const Plans* cached) {
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
                  const Plans* cached, double* coef, double* norms) {
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

void clip_each(const Span* spans, std::size_t n, NormSpec spec, double max_norm, double eps, NonFinite mode,
               double* norms, const Plans* cached) {
    span_norms(spans, n, spec, norms, cached);
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
        const double c = clip_coef(max_norm, norms[i], eps);
        coefs[i] = coef_writes(c) ? c : 1.0;
        any = any || coefs[i] != 1.0;
    }
    if (any) scale_each(spans, n, coefs.data());
}

// ------------------------------------------------------------------ slices
std::size_t count_slices(int ndim, const std::ptrdiff_t* shape, const bool* reduced) noexcept {
    std::size_t outer = 1;
    for (int d = 0; d < ndim; ++d)
        if (!reduced[d]) outer *= static_cast<std::size_t>(shape[d]);
    return outer;
}

void make_slices(char* data, int ndim, const std::ptrdiff_t* shape, const std::ptrdiff_t* strides, DType dt,
                 const bool* reduced, std::ptrdiff_t* slice_meta, Span* out) noexcept {
    std::ptrdiff_t kshape[64], kstride[64], idx[64];
    int nk = 0, nr = 0;
    for (int d = 0; d < ndim; ++d) {
        if (reduced[d]) continue;
        kshape[nk] = shape[d];
        kstride[nk] = strides[d];
        idx[nk] = 0;
        ++nk;
    }
    for (int d = 0; d < ndim; ++d)
        if (reduced[d]) slice_meta[nr++] = shape[d];
    for (int d = 0, j = 0; d < ndim; ++d)
        if (reduced[d]) slice_meta[nr + j++] = strides[d];
    const std::size_t outer = count_slices(ndim, shape, reduced);
    for (std::size_t o = 0; o < outer; ++o) {
        char* p0 = data;
        for (int d = 0; d < nk; ++d) p0 += idx[d] * kstride[d];
        describe_array(p0, nr, slice_meta, slice_meta + nr, dt, out[o]);
        for (int d = nk; d-- > 0;) {
            if (++idx[d] < kshape[d]) break;
            idx[d] = 0;
        }
    }
}

// ------------------------------------------------------------------ composite operations
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

double unscale_clip(const Span* spans, std::size_t n, NormSpec spec, double max_norm, double inv_scale, double eps,
                    double* coef, double* norms, const Plans* cached) {
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
                          double eps, const Plans* cached) {
    if (!std::isfinite(raw_norm)) return 1.0;  // the caller skips the step and lowers the scale
    const double coef = clip_coef(max_norm, raw_norm * std::fabs(inv_scale), eps);
    const double factor = inv_scale * (coef_writes(coef) ? coef : 1.0);
    if (factor != 1.0) scale_all(spans, n, factor, cached);
    return coef;
}

void adaptive_clip(const Span* g, const Span* w, std::size_t n, double clipping, double eps, double* gnorms,
                   double* wnorms, double* coefs) {
    const NormSpec l2{NormKind::L2, 2.0};
    span_norms(g, n, l2, gnorms);
    span_norms(w, n, l2, wnorms);
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
