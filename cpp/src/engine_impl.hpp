// The engine's internals, shared by its source files (dispatch, plan, layout, reduce, scale,
// composite) and private to cpp/src: chunk plans, the parallel loop over chunks, scalar
// element access and the kernel table in use. Built for the baseline target only.
//
// Work is cut into chunks whose boundaries follow element indices (64 KiB to 1 MiB of the
// call's arrays taken in order, by the plan's size; see the plans below), never thread
// counts or addresses.
// Each chunk's partial result has its own slot, and slots are combined in chunk order after
// the parallel loop, so the result has the same bits for any number of threads.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "gradclip/engine.hpp"
#include "half.hpp"
#include "kernels.hpp"

#if defined(GRADCLIP_WITH_OPENMP)
#include <omp.h>
#endif

namespace gradclip::impl {

// Chunks hold kChunkBytes, or up to kMaxChunkBytes (powers of two times it) when the plan
// covers at least kMinChunks of that size: a kernel call costs more than its few
// instructions at each chunk boundary (about 3-5% of a one-thread pass over 64 KiB chunks
// on large arrays, measured on a 2-core Xeon with AVX-512; 1 MiB chunks recover it), while
// plans of a few MiB still split evenly over threads. The size follows the plan's bytes
// only, never the thread count or addresses. A multiple of kLanes elements for every dtype,
// so every chunk starts on lane 0.
constexpr std::size_t kChunkBytes = std::size_t{64} * 1024;
constexpr std::size_t kMaxChunkBytes = std::size_t{1024} * 1024;
constexpr std::size_t kMinChunks = 32;

// The chunk size of a plan covering `total` bytes.
static inline std::size_t chunk_bytes_for(std::size_t total) noexcept {
    std::size_t c = kChunkBytes;
    while (c < kMaxChunkBytes && total / (2 * c) >= kMinChunks) c *= 2;
    return c;
}
// Below this many bytes a call runs on the calling thread: waking a team costs more.
constexpr std::size_t kSerialBytes = std::size_t{256} * 1024;

// Whether the calling thread's OpenMP team was created by warm_threads (dispatch.cpp).
bool team_ready() noexcept;

// The kernel table of the CPU target in use (dispatch.cpp).
const KernelTable& table() noexcept;

// ------------------------------------------------------------------ plans
// (The templates below are static, as are the element accessors: they use internal-linkage
// helpers such as itemsize() and half.hpp's conversions, so each file keeps its own copy.)
// A plan cuts the spans of a call into chunks of chunk_bytes_for(bytes). A chunk is a run of
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

// A plan. Built per call into the call's scratch (pooled across calls, so the hot path does
// not allocate once warm), or once for a fixed list of spans (PlanCache, for GradientSet).
struct Plan {
    std::vector<Seg> segs;
    std::vector<std::size_t> first;   // first segment of each chunk, plus segs.size()
    std::vector<std::size_t> offset;  // bytes before each chunk, plus the total
    std::size_t nchunks() const noexcept { return first.empty() ? 0 : first.size() - 1; }
};

// The working memory of one engine call: its plan, the plan of one span for the rescaled
// pass, per-chunk partial results and per-span coefficients. Every writing call sizes all of
// it before its first write (a std::bad_alloc then leaves the arrays untouched), and nothing
// in it grows inside an OpenMP region, so no exception can leave one.
struct Scratch {
    Plan plan;
    Plan one;
    std::vector<double> partial;
    std::vector<double> coefs;
    std::vector<double> maxes;
    std::vector<std::uint64_t> words;
};

// A Scratch for the duration of one call, taken from a small process-wide pool (a new one,
// which may throw std::bad_alloc, when the pool is empty) and given back at the end. The pool
// replaces per-thread buffers: thread-local objects in a dlopen'ed module are allocated by
// glibc on a thread's first use, and a failure there aborts the process instead of raising.
class ScratchLease {
public:
    ScratchLease();
    ~ScratchLease();
    ScratchLease(const ScratchLease&) = delete;
    ScratchLease& operator=(const ScratchLease&) = delete;
    Scratch& operator*() const noexcept { return *s_; }
    Scratch* operator->() const noexcept { return s_; }

private:
    Scratch* s_;
};

// Capacity for plans of up to `spans` spans and `bytes` bytes, for callers that build several
// plans (one window after another) and must not allocate after their first write.
void reserve_plan(Plan& s, std::size_t spans, std::size_t bytes);

template <class Keep>
static void build_plan(const Span* spans, std::size_t n, Plan& s, Layout layout, Keep keep) {
    // Upper bounds first, then plain stores: this runs once per array on every call.
    std::size_t total = 0, kept = 0;
    for (std::size_t i = 0; i < n; ++i) {
        const std::size_t b = spans[i].n * itemsize(spans[i].dt);
        total += b;
        if (b != 0 && keep(i)) kept += b;
    }
    // Stream: one size for the plan. PerSpan: each span's own, so an array's norm does not
    // depend on the other arrays of the call (and equals its stream-layout norm alone).
    std::size_t chunk = chunk_bytes_for(kept);
    const std::size_t max_chunks = total / kChunkBytes + n + 1;
    s.segs.resize(max_chunks + n);
    s.first.resize(max_chunks + 1);
    s.offset.resize(max_chunks + 1);
    Seg* seg = s.segs.data();
    std::size_t nseg = 0, nch = 0;
    std::size_t bytes = 0, cbytes = chunk, lane = 0;
    for (std::size_t i = 0; i < n; ++i) {
        const Span& sp = spans[i];
        if (sp.n == 0 || !keep(i)) continue;
        const std::size_t isz = itemsize(sp.dt);
        if (layout == Layout::PerSpan) {  // start a new chunk
            chunk = chunk_bytes_for(sp.n * isz);
            cbytes = chunk;
        }
        std::size_t start = 0;
        while (start < sp.n) {
            std::size_t room = (chunk - cbytes) / isz;
            if (room == 0) {
                s.first[nch] = nseg;
                s.offset[nch] = bytes;
                ++nch;
                cbytes = 0;
                lane = 0;
                room = chunk / isz;
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

// build_plan keeping every span (plan.cpp).
void build_plan(const Span* spans, std::size_t n, Plan& s, Layout layout);

// The plan of a call: the cached one when given, else built into `ws.plan`.
const Plan& plan_for(Scratch& ws, const Span* spans, std::size_t n, Layout layout, const PlanCache* cached);

// The engine's operations on a caller's scratch (for composite calls that must size all
// their memory before their first write); the public ones in engine.hpp lease their own.
double total_norm(Scratch& ws, const Span* spans, std::size_t n, NormSpec spec, const PlanCache* cached);
void span_norms(Scratch& ws, const Span* spans, std::size_t n, NormSpec spec, double* out, const PlanCache* cached);
// Multiplies span i by coefs[i], skipping spans whose coefficient is exactly 1; allocates only
// when ws.plan has less capacity than the call's plan needs (see reserve_plan).
void scale_each(Scratch& ws, const Span* spans, std::size_t n, const double* coefs);
// Multiplies every span by coef; the plan is the cached one or built into ws.plan, which
// allocates only when ws.plan has less capacity than the plan needs (never for a second
// pass over the same spans).
void scale_all(Scratch& ws, const Span* spans, std::size_t n, double coef, const PlanCache* cached);
// apply_unscale_clip on the caller's scratch: its passes share it, so none after the first
// can fail for memory.
double apply_unscale_clip(Scratch& ws, const Span* spans, std::size_t n, double raw_norm, double max_norm,
                          double inv_scale, double eps, const PlanCache* cached);

// Runs f(lo, hi) for runs of chunks [lo, hi) that cover the plan: one run on the calling
// thread, or one per thread, contiguous and of about equal bytes. Which thread runs a chunk
// never changes what the chunk computes.
template <class F>
static void run_chunk_runs(const Plan& s, F&& f) {
    const std::size_t nc = s.nchunks();
    const std::size_t total = s.offset.empty() ? 0 : s.offset.back();
    int nt = get_num_threads();
    if (nt > static_cast<int>(nc)) nt = static_cast<int>(nc);
    if (nt > 1 && !team_ready()) nt = 1;  // only a thread whose team exists uses one
    if (nt <= 1 || total < kSerialBytes) {
        f(std::size_t{0}, nc);
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
        f(first_at(t), first_at(t + 1));
    }
#else
    f(std::size_t{0}, nc);
#endif
}

// Runs f(c) for every chunk c, as run_chunk_runs splits them.
template <class F>
static void run_chunks(const Plan& s, F&& f) {
    run_chunk_runs(s, [&](std::size_t lo, std::size_t hi) {
        for (std::size_t c = lo; c < hi; ++c) f(c);
    });
}

// Runs op(span, segment) over every segment of the plan, chunks in parallel.
template <class Op>
static void for_each_segment(const Span* spans, const Plan& s, Op&& op) {
    run_chunks(s, [&](std::size_t c) {
        for (std::size_t q = s.first[c]; q < s.first[c + 1]; ++q) op(spans[s.segs[q].span], s.segs[q]);
    });
}

// ------------------------------------------------------------------ scalar element access
// static: they call half.hpp's internal-linkage conversions, so each file has its own copy.
static inline double load_elem(const char* p, DType dt) noexcept {
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
static inline void store_elem(char* p, DType dt, double v) noexcept {
    switch (dt) {
        case DType::F64:
            std::memcpy(p, &v, 8);
            return;
        case DType::F32: {
            const float f = detail::narrow_to_float(v);
            std::memcpy(p, &f, 4);
            return;
        }
        case DType::F16: {
            const std::uint16_t h = detail::float_to_half(detail::narrow_to_float(v));
            std::memcpy(p, &h, 2);
            return;
        }
        case DType::BF16: {
            const std::uint16_t h = detail::float_to_bf16(detail::narrow_to_float(v));
            std::memcpy(p, &h, 2);
            return;
        }
    }
}

// Calls f(pa, pb, k) for the elements with C-order flat indices [start, start + count) of two
// strided spans of the same shape (a's shape), pa in a and pb in b, k = index - start: the one
// walk over strided elements (a copy between two layouts needs no buffer).
template <class F>
static void for_each_strided_pair(const Span& a, const Span& b, std::size_t start, std::size_t count, F&& f) {
    const int nd = a.ndim;
    std::ptrdiff_t idx[64];
    std::size_t rem = start;
    for (int d = nd - 1; d >= 0; --d) {
        const auto ext = static_cast<std::size_t>(a.shape[d]);
        idx[d] = static_cast<std::ptrdiff_t>(rem % ext);
        rem /= ext;
    }
    const std::ptrdiff_t inner = a.shape[nd - 1];
    const std::ptrdiff_t sa = a.strides[nd - 1], sb = b.strides[nd - 1];
    std::size_t k = 0;
    while (k < count) {
        char* pa = a.data;
        char* pb = b.data;
        for (int d = 0; d < nd; ++d) {
            pa += idx[d] * a.strides[d];
            pb += idx[d] * b.strides[d];
        }
        const std::size_t run = std::min(static_cast<std::size_t>(inner - idx[nd - 1]), count - k);
        for (std::size_t r = 0; r < run; ++r)
            f(pa + static_cast<std::ptrdiff_t>(r) * sa, pb + static_cast<std::ptrdiff_t>(r) * sb, k + r);
        k += run;
        idx[nd - 1] += static_cast<std::ptrdiff_t>(run);
        for (int d = nd - 1; d > 0 && idx[d] == a.shape[d]; --d) {
            idx[d] = 0;
            ++idx[d - 1];
        }
    }
}

// Calls f(pointer, k) for the elements with C-order flat indices [start, start + count) of a
// strided span, k = index - start.
template <class F>
static void for_each_strided(const Span& sp, std::size_t start, std::size_t count, F&& f) {
    for_each_strided_pair(sp, sp, start, count, [&](char* p, char*, std::size_t k) { f(p, k); });
}

}  // namespace gradclip::impl
