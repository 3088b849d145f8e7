// The multi-buffer engine: splits every call's spans into fixed-size chunks, runs the
// chunks on an OpenMP team (or the calling thread for small work), and combines the
// per-chunk partial sums in a fixed order. No Python in here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "gradclip/types.hpp"

namespace gradclip {

// ---- CPU targets
// Names of the targets compiled into this build and runnable on this CPU, best last.
std::vector<std::string> available_targets();
// The target in use.
const char* current_target() noexcept;
// Switch the dispatch table; returns false (and changes nothing) for an unknown or
// unsupported name. Not meant to be called while another thread is inside a kernel.
bool set_target(const std::string& name) noexcept;
// Picks the target at start-up: `forced` (from GRADCLIP_CPU_TARGET) when it is non-empty and
// runnable, else the best one. Returns false when `forced` was given but could not be used.
bool init_target(const char* forced) noexcept;

// ---- threads
void set_num_threads(int n) noexcept;  // n >= 1
int get_num_threads() noexcept;
bool have_openmp() noexcept;
// Starts the calling thread's OpenMP team of get_num_threads() threads now (set_num_threads
// does it too) and marks the thread as one whose calls may use it. Calls on any other thread
// run on that thread alone: a runtime that cannot create its threads ends the process
// (libgomp does), so teams are created only here, at import and in set_num_threads, never in
// the middle of a call.
void warm_threads() noexcept;
// Marks the calling thread as one whose calls may use a team, created by the runtime on its
// first large call (the importing thread: creating its team at import instead made processes
// that also load PyTorch's OpenMP runtime abort at exit).
void allow_team() noexcept;

// ---- layout helpers
// Describes an n-d array (shape, byte strides, itemsize) as a Span. Returns true for a dense
// block (C, F, reversed or any permutation of contiguous axes); then `span.data` is its lowest
// address and ndim is 0. Otherwise `span` keeps `data`, `ndim`, `shape`, `strides` as given.
bool describe_array(char* data, int ndim, const std::ptrdiff_t* shape, const std::ptrdiff_t* strides, DType dt,
                    Span& span) noexcept;
// True when two elements of a strided array may share memory (a stride-0 or otherwise
// self-overlapping view). Conservative: it may say so for some views that do not.
bool may_self_overlap(int ndim, const std::ptrdiff_t* shape, const std::ptrdiff_t* strides,
                      std::size_t itemsize) noexcept;
// The overlap rule of every writing call, whichever front door it came through: its arrays
// must not share a byte (a gradient present twice would be scaled twice). ranges are the
// [lo, hi) byte bounds of the call's non-empty arrays (byte_bounds below; id is the caller's
// index). Sorts `ranges` by address (skipped when they are already in order, as arrays
// allocated one after another usually are) and returns true with the ids of two ranges that
// overlap, if any do.
struct ByteRange {
    const char* lo;
    const char* hi;
    std::size_t id;
};
bool find_overlap(std::vector<ByteRange>& ranges, std::size_t& first, std::size_t& second);

// [lo, hi) byte bounds of the memory an array may touch.
void byte_bounds(const char* data, int ndim, const std::ptrdiff_t* shape, const std::ptrdiff_t* strides,
                 std::size_t itemsize, const char*& lo, const char*& hi) noexcept;

// The slices of an n-d array left after fixing every axis not marked in `reduced` (ndim
// flags), in C order of the kept axes; each slice spans the reduced axes. Their shape and
// strides are written once to slice_meta (2 * ndim entries, which must outlive the spans).
// The range form makes slices [first, first + count) only (out gets count spans), so that a
// caller can walk an array with many slices a window at a time in bounded memory.
std::size_t count_slices(int ndim, const std::ptrdiff_t* shape, const bool* reduced) noexcept;
void make_slices(char* data, int ndim, const std::ptrdiff_t* shape, const std::ptrdiff_t* strides, DType dt,
                 const bool* reduced, std::ptrdiff_t* slice_meta, std::size_t first, std::size_t count,
                 Span* out) noexcept;
inline void make_slices(char* data, int ndim, const std::ptrdiff_t* shape, const std::ptrdiff_t* strides, DType dt,
                        const bool* reduced, std::ptrdiff_t* slice_meta, Span* out) noexcept {
    make_slices(data, ndim, shape, strides, dt, reduced, slice_meta, 0, count_slices(ndim, shape, reduced), out);
}

// ---- cached plans
// The chunking of a fixed list of spans, computed once (GradientSet). Operations given one
// skip planning; it must describe exactly the spans passed with it. Read-only after
// construction, so several threads may use one at once.
class PlanCache {
public:
    PlanCache(const Span* spans, std::size_t n);
    ~PlanCache();
    PlanCache(const PlanCache&) = delete;
    PlanCache& operator=(const PlanCache&) = delete;
    struct Impl;
    const Impl& impl() const noexcept { return *impl_; }

private:
    std::unique_ptr<Impl> impl_;
};

// ---- operations (all spans must be validated by the caller; none overlap)
// p-norm of all elements of all spans together; never overflows or underflows where the
// true result is a finite normal double.
double total_norm(const Span* spans, std::size_t n, NormSpec spec, const PlanCache* cached = nullptr);
// p-norm of each span into out[0..n).
void span_norms(const Span* spans, std::size_t n, NormSpec spec, double* out, const PlanCache* cached = nullptr);
// Multiply every element of every span by coef (rounded per element type).
void scale_all(const Span* spans, std::size_t n, double coef, const PlanCache* cached = nullptr);
// Multiply span i by coefs[i]; spans whose coefficient is exactly 1 are not touched.
void scale_each(const Span* spans, std::size_t n, const double* coefs);
// v rounded once, to nearest with ties to even, to a value of dtype dt (overflow gives
// +-inf), returned as the double it equals. The one rounding rule for every scalar bound
// applied to an array, whichever front door (Python, Cython, C) the call came through.
double round_to_dtype(DType dt, double v) noexcept;

// Clamp each element to [lo, hi], both given as float64 and rounded to each span's dtype
// with round_to_dtype.
void clamp_all(const Span* spans, std::size_t n, double lo, double hi, const PlanCache* cached = nullptr);
// Copies with the write of scale_all / clamp_all: dst[i] = src[i] * coefs[i] (a plain copy
// where coefs[i] is 1), or src[i] clamped to [lo, hi]; src untouched (it may be read-only).
// src[i] and dst[i] have the same dtype and element count, and are either both dense in the
// same memory order or described as strided views (elements then pair in C order). The
// write happens on each chunk (64 KiB to 1 MiB) of the copy while it is in cache, so src is read once
// and dst written once.
void scale_into(const Span* src, const Span* dst, std::size_t n, const double* coefs);
void clamp_into(const Span* src, const Span* dst, std::size_t n, double lo, double hi);
// Set every element to +0.0.
void zero_all(const Span* spans, std::size_t n, const PlanCache* cached = nullptr);

// Bandwidth probes over one flat buffer, split across threads like every other call:
// a read-only pass, or a read+write pass that leaves the data unchanged.
std::uint64_t probe_read(const char* p, std::size_t bytes);
void probe_rw(char* p, std::size_t bytes);

// min(1, max_norm / (norm + eps)); NaN when norm is NaN (as in PyTorch).
double clip_coef(double max_norm, double norm, double eps) noexcept;
// True when a coefficient asks for a write: coef < 1 or NaN.
inline bool coef_writes(double coef) noexcept { return !(coef >= 1.0); }

// The global rule once the total norm is known, its one home: the non-finite policy (Skip:
// write nothing; Zero: set every element to 0; Propagate: go on with PyTorch's arithmetic),
// then coef = clip_coef(max_norm, norm, eps) and, only when coef_writes(coef), one scaling
// pass. Returns the coefficient the gradients were multiplied by (1 when nothing was written,
// 0 for Zero). Used by clip_total, and by the callers that get the norm elsewhere (another
// process, a norm supplied by the user).
double apply_global_clip(const Span* spans, std::size_t n, double norm, double max_norm, double eps, NonFinite mode,
                         const PlanCache* cached = nullptr);

// Global clip: the total norm, then apply_global_clip. Returns the pre-clip total norm and
// puts the applied coefficient in *coef when coef is not null. With norms not null, also
// writes each span's norm from the same read pass; the total is then the p-norm of those
// (its bits may differ in the last place from the plain total, which sums across span
// boundaries).
double clip_total(const Span* spans, std::size_t n, NormSpec spec, double max_norm, double eps, NonFinite mode,
                  const PlanCache* cached = nullptr, double* coef = nullptr, double* norms = nullptr);
// The bound of each span in clip_each: span i is clipped to bound[i * step] (step 0: one
// bound for every span) with the common rule, against its norm or, with rms, against its
// root mean square ||x|| / sqrt(element count) (Optax's clip_by_block_rms; 0 for an empty span).
struct SpanBounds {
    const double* bound = nullptr;
    std::size_t step = 0;
    bool rms = false;
};
// Per-span clip with the common rule per span; mode applies to the whole call when any span
// norm is non-finite. Writes the pre-clip norms (RMS, with bounds.rms) to norms[0..n).
void clip_each(const Span* spans, std::size_t n, NormSpec spec, SpanBounds bounds, double eps, NonFinite mode,
               double* norms, const PlanCache* cached = nullptr);
// Every span with the same bound max_norm.
inline void clip_each(const Span* spans, std::size_t n, NormSpec spec, double max_norm, double eps, NonFinite mode,
                      double* norms, const PlanCache* cached = nullptr) {
    clip_each(spans, n, spec, SpanBounds{&max_norm, 0, false}, eps, mode, norms, cached);
}

// clip_by_norm's walk over the slices of one array (make_slices with `reduced`): each slice
// clipped by bounds.bound[slice * bounds.step] with the common rule (a NaN or infinite norm
// is applied as is), a window of at most `window` slices at a time so that the bookkeeping
// stays bounded whatever the number of slices. All of its memory, for every window, is sized
// before the first one is written. Writes each slice's pre-clip norm to norms (C order of the
// kept axes).
void clip_slices(char* data, int ndim, const std::ptrdiff_t* shape, const std::ptrdiff_t* strides, DType dt,
                 const bool* reduced, std::size_t window, NormSpec spec, SpanBounds bounds, double eps, double* norms);

// The functional forms: the rule of clip_total (PyTorch's arithmetic for a non-finite norm)
// or of clip_each, read from src (untouched, may be read-only) and written to dst in one
// read+write pass after the norm pass (see scale_into). clip_total_into returns the norm and
// puts the factor applied in *coef; clip_each_into writes each span's norm to norms.
double clip_total_into(const Span* src, const Span* dst, std::size_t n, NormSpec spec, double max_norm, double eps,
                       double* coef);
void clip_each_into(const Span* src, const Span* dst, std::size_t n, NormSpec spec, double max_norm, double eps,
                    double* norms);

// Mixed precision in two passes: one read pass for the norm of the unscaled gradients
// (||g|| * |inv_scale|) and the non-finite check, then, only when everything is finite, one
// read+write pass multiplying by inv_scale * coef (skipped when that factor is exactly 1).
// An element that unscaling would take past its type's largest finite value counts as
// non-finite (the norm is then +inf and nothing is written; its span's entry in norms is
// +inf); deciding that costs one more read pass, only when |inv_scale| > 1 and the norm
// times |inv_scale| is near a type's maximum. Returns the unscaled norm; *coef gets the
// clipping coefficient (1 when not clipping).
double unscale_clip(const Span* spans, std::size_t n, NormSpec spec, double max_norm, double inv_scale, double eps,
                    double* coef, double* norms, const PlanCache* cached = nullptr);
// The scaled gradients' norm for unscale_clip, or +inf when unscaling (x * inv_scale rounded
// to x's type) would make an element non-finite: what each process contributes when the
// norm is combined across processes, so that an overflow on one makes every one skip.
double unscale_norm(const Span* spans, std::size_t n, NormSpec spec, double inv_scale,
                    const PlanCache* cached = nullptr);
// The second half of unscale_clip, given the norm of the scaled gradients (raw_norm; from
// another process, say): nothing written when it is not finite, else one pass multiplying by
// inv_scale * coef. Returns coef (1 when not clipping).
double apply_unscale_clip(const Span* spans, std::size_t n, double raw_norm, double max_norm, double inv_scale,
                          double eps, const PlanCache* cached = nullptr);

// p-norm of a vector of norms, without overflow or underflow (scaled by the largest).
double norm_of_norms(const double* norms, std::size_t n, NormSpec spec) noexcept;

// Adaptive gradient clipping (Brock et al. 2021, "High-Performance Large-Scale Image
// Recognition Without Normalization", sec. 4.1), as Optax and timm compute it: with
// max_i = clipping * max(||w_i||, eps), slice g_i is multiplied by max_i / max(||g_i||, 1e-6)
// unless ||g_i|| < max_i. The norms are of kind spec (L2 in the paper and Optax; timm's
// norm_type). Writes the norms to gnorms / wnorms and the coefficients to coefs.
void adaptive_clip(const Span* g, const Span* w, std::size_t n, NormSpec spec, double clipping, double eps,
                   double* gnorms, double* wnorms, double* coefs);

// Per-example clipping for DP-SGD. slices[a * batch + b] is example b of array a. Global:
// each example's L2 norm across all arrays is clipped to max_norm with the common rule;
// per_layer: each (array, example) slice on its own. norms/coefs get one entry per slice
// (global: the example's norm and coefficient repeated for each array). Returns how many
// examples (global) or slices (per_layer) were clipped.
std::size_t clip_per_example(const Span* slices, std::size_t narrays, std::size_t batch, bool per_layer,
                             double max_norm, double eps, double* norms, double* coefs);

// The sums over the batch of per-example gradients (after clip_per_example): views[a] is
// example 0 of array a (its shape and strides without the batch axis; ndim 0 for a single
// element), batch_strides[a] the byte step between examples, and sums[a] receives
// views[a].n float64 values in C order, each summed over the examples in order. Allocates
// nothing (it runs after the write).
void sum_examples(const Span* views, const std::ptrdiff_t* batch_strides, std::size_t narrays, std::size_t batch,
                  double* const* sums) noexcept;

}  // namespace gradclip
