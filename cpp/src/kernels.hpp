// The per-instruction-set kernel table.
//
// cpp/src/kernels.cpp is compiled once per target (baseline, avx2, avx512, neon), each copy in
// its own namespace over its own SIMD layer (cpp/src/simd/), and each fills one KernelTable. Every kernel is serial:
// threads belong to the engine.
//
// Reductions follow a fixed lane layout so that every target returns the same bits: the
// engine gives every element a lane (its index in the chunk, modulo kLanes), each lane adds
// its elements in index order, and a chunk's lanes are combined by combine_lanes() below.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "gradclip/types.hpp"

namespace gradclip {

inline constexpr std::size_t kLanes = 32;

// lanes[(lane0 + i) % kLanes] += (|x_i| * scale)^2 (sum_sq) resp. |x_i| * scale (sum_abs)
// for i = 0 .. n-1, in index order within each lane; `lanes` holds kLanes doubles, and
// lane0 < kLanes. `scale` is a power of two (1.0 on the fast pass), so it multiplies exactly.
using AccFn = void (*)(const void* p, std::size_t n, std::size_t lane0, double scale, double* lanes);
// max |x| over the block; NaN if any element is NaN.
using MaxFn = double (*)(const void* p, std::size_t n);
// x = x * coef, with coef rounded to float for float16/bfloat16/float32 data and the
// product rounded once to the element type (float16/bfloat16 multiply in float32).
using ScaleFn = void (*)(void* p, std::size_t n, double coef);
// x = min(hi, max(lo, x)) with NaN kept; lo/hi must be representable in the element type.
using ClampFn = void (*)(void* p, std::size_t n, double lo, double hi);

// A run of dense segments of one element type whose lanes continue from one to the next
// (the segments of a chunk in the stream layout: many small arrays back to back).
struct Piece {
    const void* p;
    std::size_t n;
};
// AccFn over pieces[0 .. m): the first piece starts at lane lane0, each later one at the lane
// after the previous one's last element. Every lane gets the same terms in the same order as
// from m AccFn calls (so the same bits); the partial blocks where pieces meet are assembled
// into whole blocks first, instead of each being a block of its own, and the lanes stay in
// registers from piece to piece.
using AccManyFn = void (*)(const Piece* pieces, std::size_t m, std::size_t lane0, double scale, double* lanes);

// AccFn over two dense blocks of n elements at once, each from lane 0 into its own lanes:
// the same bits as two AccFn calls, with the two read streams interleaved (two chunks of
// one large array, read by one thread at ~4% more bandwidth than one stream after the other
// on a 2-core Xeon with AVX-512). Null on targets that lack the registers for two sets of
// lanes (AVX2, NEON) or where it was not measured.
using AccPairFn = void (*)(const void* p0, const void* p1, std::size_t n, double scale, double* lanes0, double* lanes1);

// p-norms for p = hs / 2, hs = 1 .. kMaxHalfSteps except 2 and 4 (p = 1 and 2 have their own
// kernels): lanes[(lane0 + i) % kLanes] += pow_half_steps(|x_i| * scale / div, hs), the
// division skipped when div is 1 (exact either way). Other p use std::pow in the engine.
using PowFn = void (*)(const void* p, std::size_t n, std::size_t lane0, double scale, double div, unsigned hs,
                       double* lanes);
inline constexpr unsigned kMaxHalfSteps = 256;  // p up to 128

// 2p when p is a multiple of 1/2 that the power kernels take, else 0.
static inline unsigned half_steps_of(double p) noexcept {
    const double h = 2.0 * p;
    if (!(h >= 1.0 && h <= kMaxHalfSteps)) return 0;  // also false for NaN
    const auto hs = static_cast<unsigned>(h);
    return static_cast<double>(hs) == h ? hs : 0;
}

// t ** (hs / 2) for t >= 0 (or NaN): t ** (hs / 2 rounded down) by repeated squaring, times
// sqrt(t) when hs is odd. A fixed sequence of correctly rounded multiplies and one square
// root, so scalar and vector code (T double or a vector of doubles, with their mul and sqrt)
// give the same bits on every target. At most 2 log2(hs) roundings: relative error below
// 16 * 2^-53 for hs <= 256 (std::pow is within 1 ulp but differs between C libraries). The
// partial powers lie between 1 and the result, so none overflows or underflows unless the
// result does.
template <class T, class Mul, class Sqrt>
static inline T pow_half_steps(T t, unsigned hs, Mul mul, Sqrt sqrt_fn) noexcept {
    unsigned m = hs >> 1;
    T r = t;
    bool have = false;
    T b = t;
    while (m != 0) {
        if ((m & 1u) != 0) {
            r = have ? mul(r, b) : b;
            have = true;
        }
        m >>= 1;
        if (m != 0) b = mul(b, b);
    }
    if ((hs & 1u) != 0) {
        const T h = sqrt_fn(t);
        r = have ? mul(r, h) : h;
    }
    return r;
}

// pow_half_steps for one double (the scalar paths of every target and of the engine).
static inline double pow_half_steps(double t, unsigned hs) noexcept {
    return pow_half_steps(t, hs, [](double a, double b) { return a * b; }, [](double a) { return std::sqrt(a); });
}

// Bandwidth probes for the benchmarks' ceiling: the simplest full-speed read of n 64-bit
// words (an XOR over several accumulators), and a read+write that stores every word back
// plus k (the caller passes k = 0 from a run-time value, so data do not change).
using ProbeReadFn = std::uint64_t (*)(const void* p, std::size_t nwords);
using ProbeWriteFn = void (*)(void* p, std::size_t nwords, std::uint64_t k);

struct KernelTable {
    const char* name;
    ProbeReadFn probe_read;
    ProbeWriteFn probe_rw;
    AccFn sum_sq[kNumDTypes];
    AccFn sum_abs[kNumDTypes];
    PowFn sum_pow[kNumDTypes];
    AccManyFn sum_sq_many[kNumDTypes];
    AccManyFn sum_abs_many[kNumDTypes];
    AccPairFn sum_sq_pair[kNumDTypes];
    MaxFn max_abs[kNumDTypes];
    ScaleFn scale[kNumDTypes];
    ClampFn clamp[kNumDTypes];
};

// The fixed combination tree shared by all targets (and by the engine's scalar paths):
// lanes j, j+8, j+16, j+24 first (as four 8-wide registers added pairwise), then
// halving the 8 remaining lanes three times.
static inline double combine_lanes(const double* l) noexcept {
    double a[8];
    for (int j = 0; j < 8; ++j) a[j] = (l[j] + l[j + 8]) + (l[j + 16] + l[j + 24]);
    double b[4];
    for (int j = 0; j < 4; ++j) b[j] = a[j] + a[j + 4];
    const double c0 = b[0] + b[2];
    const double c1 = b[1] + b[3];
    return c0 + c1;
}

// Each target's table (kernels.cpp); dispatch.cpp declares the others from the build's
// list, the baseline is the one every build has.
namespace baseline {
const KernelTable& kernel_table() noexcept;
}

}  // namespace gradclip
