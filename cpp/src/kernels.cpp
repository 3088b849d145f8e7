// The kernels, written once over a SIMD layer. This source is compiled once per CPU target
// (cpp/CMakeLists.txt, gradclip_kernel_target), each copy with its own flags, in its own
// namespace gradclip::GRADCLIP_NS, over its own layer GRADCLIP_SIMD_HEADER (simd/scalar.hpp
// for the baseline, simd/avx2.hpp, simd/avx512.hpp, simd/neon.hpp; simd/scalar.hpp says what
// a layer provides), each exporting one KernelTable. Adding a target adds a layer and a
// CMake line, not a line here.
//
// Determinism contract (see kernels.hpp): element k of a block is accumulated into lane
// k % 32, in index order, in float64, and lanes are combined by combine_lanes(). The layers
// keep the 32 lanes in 4 (AVX-512), 8 (AVX2), 16 (NEON) or 32 (scalar) registers. Products
// for float64 input are rounded before the add on every target (this file is built with
// -ffp-contract=off, so the compiler fuses nothing), so all targets, x86-64 and AArch64
// alike, agree to the bit. Inputs narrower than float64 are converted exactly and their
// squares are exact in float64, so there the code may use vfma (SqOp): one rounding or two,
// the same bits. A NaN result is NaN on every target; the sign of a NaN that an invalid
// operation makes (inf * 0) is the architecture's: set on x86, clear on ARM.
#include "kernels.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#if !defined(GRADCLIP_NS) || !defined(GRADCLIP_SIMD_HEADER)
#error "build through cpp/CMakeLists.txt (gradclip_kernel_target), which names the target and its layer"
#endif
#include GRADCLIP_SIMD_HEADER

// Unrolls the loop over a block's registers that follows, early enough that the arrays of
// registers it indexes stay in registers across the loop over pieces (accumulate_many).
#if defined(__GNUC__) || defined(__clang__)
#define GRADCLIP_UNROLL _Pragma("GCC unroll 8")
#else
#define GRADCLIP_UNROLL
#endif

#define GRADCLIP_STRINGIFY2(x) #x
#define GRADCLIP_STRINGIFY(x) GRADCLIP_STRINGIFY2(x)

namespace gradclip::GRADCLIP_NS {
namespace {

using namespace simd;  // this target's layer

// ---------------------------------------------------------------- reductions
// Scaled = false on the fast pass (scale 1): the multiply by the scale is skipped. For inputs
// narrower than float64, x*x is exact in float64, so a fused multiply-add gives the same bits
// as the separate multiply and add of the other targets; float64 keeps the two roundings.
template <DType D, bool Scaled>
struct SqOp {
    static VD vstep(VD acc, VD x, VD s) noexcept {
        const VD t = Scaled ? vmul(x, s) : x;
        if constexpr (D != DType::F64) return vfma(t, t, acc);
        return vadd(acc, vmul(t, t));
    }
};

template <DType D, bool Scaled>
struct AbsOp {
    static VD vstep(VD acc, VD x, VD s) noexcept { return vadd(acc, vabs(Scaled ? vmul(x, s) : x)); }
};

// |x * scale / div| ** (hs / 2) (kernels.hpp: pow_half_steps); Scaled and Divided as in
// SqOp (scale 1 and div 1 are skipped: multiplying or dividing by 1 is exact). HS > 0 fixes
// hs at compile time, so the squaring loop unrolls (same operations as the run-time form).
template <bool Scaled, bool Divided, unsigned HS>
struct PowOp {
    double div;
    unsigned hs;
    unsigned steps() const noexcept { return HS != 0 ? HS : hs; }
    VD vdv = vset(div);
    VD vstep(VD acc, VD x, VD s) const noexcept {
        VD t = vabs(Scaled ? vmul(x, s) : x);
        if (Divided) t = vdiv(t, vdv);
        return vadd(acc,
                    pow_half_steps(t, steps(), [](VD a, VD b) { return vmul(a, b); }, [](VD a) { return vsqrt(a); }));
    }
};

template <DType D, class Op>
void accumulate(const void* vp, std::size_t n, std::size_t lane0, double scale, double* lanes,
                const Op& op = Op{}) noexcept {
    const char* p = static_cast<const char*>(vp);
    const Prefetch pf = prefetch_policy();
    VD acc[kAcc];
    for (std::size_t j = 0; j < kAcc; ++j) acc[j] = vloadu_lanes(lanes + j * kW);
    const VD s = vset(scale);
    const auto sn = static_cast<std::ptrdiff_t>(n);
    constexpr auto kL = static_cast<std::ptrdiff_t>(kLanes);
    constexpr auto kWs = static_cast<std::ptrdiff_t>(kW);
    // Blocks of kLanes elements; block lane 0 is element k (k < 0 for the first block when
    // lane0 > 0). Full blocks use plain loads, a partial first or last block masked loads.
    auto partial = [&](std::ptrdiff_t kb) {
        for (std::size_t j = 0; j < kAcc; ++j) {
            const std::ptrdiff_t g = kb + static_cast<std::ptrdiff_t>(j) * kWs;  // element in lane j*kW
            const std::ptrdiff_t lo = g < 0 ? -g : 0;
            const std::ptrdiff_t hi = sn - g < kWs ? sn - g : kWs;
            if (hi > lo)
                acc[j] = op.vstep(acc[j],
                                  vload_part<D>(p, g, static_cast<std::size_t>(lo), static_cast<std::size_t>(hi)), s);
        }
    };
    std::ptrdiff_t k = -static_cast<std::ptrdiff_t>(lane0);
    if (k < 0 || sn < kL) {
        partial(k);
        k += kL;
    }
    constexpr std::size_t kBlockBytes = kLanes * itemsize(D);
    for (; k + kL <= sn; k += kL) {
        const auto uk = static_cast<std::size_t>(k);
        pf.ahead(p + uk * itemsize(D), kBlockBytes);  // a few KiB ahead, one per cache line
        VD x[kAcc];
        vload_block<D>(p, uk, x);
        for (std::size_t j = 0; j < kAcc; ++j) acc[j] = op.vstep(acc[j], x[j], s);
    }
    if (k < sn) partial(k);
    for (std::size_t j = 0; j < kAcc; ++j) vstore(lanes + j * kW, acc[j]);
}

// The pending block of accumulate_many, kept as float64 registers: lanes [lo, hi) of the
// block whose lane 0 is element k (k may be negative, k + hi may pass the end: only those
// lanes are read) are loaded one register at a time (vload_part, +0.0 in the other lanes of
// a register; a register without such lanes is not read) and added into lanes that are
// +0.0 (x + 0.0 is x but for the sign of a zero, which neither |x| nor x * x keeps).
template <DType D>
struct WideBlock {
    VD v[kAcc];
    static void load_lanes(const char* p, std::ptrdiff_t k, std::size_t lo, std::size_t hi, VD* x) noexcept {
        for (std::size_t j = 0; j < kAcc; ++j) {
            const std::size_t b = j * kW;
            const std::size_t l = lo > b ? lo - b : 0;
            const std::size_t h = hi > b ? std::min(hi - b, kW) : 0;
            x[j] = h > l ? vload_part<D>(p, k + static_cast<std::ptrdiff_t>(b), l, h) : vzero();
        }
    }
    void zero() noexcept {
        for (std::size_t j = 0; j < kAcc; ++j) v[j] = vzero();
    }
    void merge(const char* p, std::ptrdiff_t k, std::size_t lo, std::size_t hi) noexcept {
        VD x[kAcc];
        load_lanes(p, k, lo, hi, x);
        for (std::size_t j = 0; j < kAcc; ++j) v[j] = vadd(v[j], x[j]);
    }
    void load(const char* p, std::ptrdiff_t k, std::size_t hi) noexcept { load_lanes(p, k, 0, hi, v); }
    void widen(VD* x) const noexcept {
        for (std::size_t j = 0; j < kAcc; ++j) x[j] = v[j];
    }
};
// The layer's RawBlock<D> where it has one (a float32 block kept as loaded and widened once,
// when full: simd/common.hpp), else WideBlock<D>. Either gives the same bits: until the block
// is added, its lanes hold the elements exactly (but for the sign of a zero in WideBlock).
template <DType D>
using PendingBlock = std::conditional_t<RawBlock<D>::kHave, RawBlock<D>, WideBlock<D>>;

// accumulate() over consecutive pieces (kernels.hpp: AccManyFn). Whole blocks inside a piece
// are added as they are read; the lanes of a block that spans pieces (or that a piece only
// begins or ends) are gathered from each piece by masked loads into a pending block (+0.0
// elsewhere), which is added once full, and at the end if partly filled. Each lane still gets
// its terms in index order, one per block, so the bits are those of one accumulate() call per
// piece. The accumulators and the pending block stay in registers from piece to piece (the
// loops over registers are unrolled for that: an array indexed in a loop that is not is kept
// in memory).
template <DType D, class Op>
void accumulate_many(const Piece* pieces, std::size_t m, std::size_t lane0, double scale, double* lanes,
                     const Op& op = Op{}) noexcept {
    const Prefetch pf = prefetch_policy();
    VD acc[kAcc];
    GRADCLIP_UNROLL
    for (std::size_t j = 0; j < kAcc; ++j) acc[j] = vloadu_lanes(lanes + j * kW);
    PendingBlock<D> pend;
    pend.zero();
    const VD s = vset(scale);
    const auto add_block = [&](const VD* x) {
        GRADCLIP_UNROLL
        for (std::size_t j = 0; j < kAcc; ++j) acc[j] = op.vstep(acc[j], x[j], s);
    };
    constexpr auto kL = static_cast<std::ptrdiff_t>(kLanes);
    std::size_t lane = lane0;  // lanes [0, lane) of the pending block are filled, the others +0.0
    for (std::size_t i = 0; i < m; ++i) {
        const char* p = static_cast<const char*>(pieces[i].p);
        const auto sn = static_cast<std::ptrdiff_t>(pieces[i].n);
        // the piece's elements [0, sn) sit at lanes lane, lane + 1, ...: its first block
        // starts at element k = -lane
        std::ptrdiff_t k = -static_cast<std::ptrdiff_t>(lane);
        if (lane != 0 || sn < kL) {
            // lanes [lane, min(lane + sn, kLanes)) of this block are the piece's
            pend.merge(p, k, lane, static_cast<std::size_t>(std::min(sn - k, kL)));
            if (k + kL > sn) {  // the piece ends inside this block
                lane = static_cast<std::size_t>(sn - k);
                continue;
            }
            VD x[kAcc];
            pend.widen(x);
            add_block(x);  // the pending block is refilled below, before it is read again
            k += kL;
        }
        constexpr std::size_t kBlockBytes = kLanes * itemsize(D);
        for (; k + kL <= sn; k += kL) {
            const auto uk = static_cast<std::size_t>(k);
            pf.ahead(p + uk * itemsize(D), kBlockBytes);
            VD x[kAcc];
            vload_block<D>(p, uk, x);
            add_block(x);
        }
        lane = static_cast<std::size_t>(sn - k);
        if (lane != 0)
            pend.load(p, k, lane);  // the tail starts a new pending block at lane 0
        else
            pend.zero();
    }
    if (lane != 0) {
        VD x[kAcc];
        pend.widen(x);
        add_block(x);
    }
    GRADCLIP_UNROLL
    for (std::size_t j = 0; j < kAcc; ++j) vstore(lanes + j * kW, acc[j]);
}

// accumulate() over two blocks of n elements from lane 0, whole blocks interleaved; the
// partial last blocks go through accumulate() itself, which adds them as it would have.
template <DType D, class Op>
void accumulate_pair(const void* vp0, const void* vp1, std::size_t n, double scale, double* lanes0,
                     double* lanes1) noexcept {
    const Op op{};
    const char* p0 = static_cast<const char*>(vp0);
    const char* p1 = static_cast<const char*>(vp1);
    const Prefetch pf = prefetch_policy();
    VD a0[kAcc], a1[kAcc];
    for (std::size_t j = 0; j < kAcc; ++j) {
        a0[j] = vloadu_lanes(lanes0 + j * kW);
        a1[j] = vloadu_lanes(lanes1 + j * kW);
    }
    const VD s = vset(scale);
    constexpr std::size_t kBlockBytes = kLanes * itemsize(D);
    std::size_t k = 0;
    for (; k + kLanes <= n; k += kLanes) {
        pf.ahead(p0 + k * itemsize(D), kBlockBytes);
        pf.ahead(p1 + k * itemsize(D), kBlockBytes);
        VD x0[kAcc], x1[kAcc];
        vload_block<D>(p0, k, x0);
        vload_block<D>(p1, k, x1);
        for (std::size_t j = 0; j < kAcc; ++j) {
            a0[j] = op.vstep(a0[j], x0[j], s);
            a1[j] = op.vstep(a1[j], x1[j], s);
        }
    }
    for (std::size_t j = 0; j < kAcc; ++j) {
        vstore(lanes0 + j * kW, a0[j]);
        vstore(lanes1 + j * kW, a1[j]);
    }
    if (k < n) {
        accumulate<D, Op>(p0 + k * itemsize(D), n - k, 0, scale, lanes0);
        accumulate<D, Op>(p1 + k * itemsize(D), n - k, 0, scale, lanes1);
    }
}

// f(std::bool_constant<Scaled>{}): the kernel with the multiply by the scale, or without it
// (scale 1, the fast pass).
template <class F>
inline void by_scale(double scale, F&& f) noexcept {
    if (scale == 1.0)
        f(std::false_type{});
    else
        f(std::true_type{});
}

template <DType D>
void sum_sq_pair(const void* p0, const void* p1, std::size_t n, double scale, double* lanes0, double* lanes1) noexcept {
    by_scale(scale, [&](auto s) { accumulate_pair<D, SqOp<D, s()>>(p0, p1, n, scale, lanes0, lanes1); });
}
// AccFn and AccManyFn for SqOp (sum_sq) and AbsOp (sum_abs).
template <template <DType, bool> class Op, DType D>
void sum_one(const void* p, std::size_t n, std::size_t lane0, double scale, double* lanes) noexcept {
    by_scale(scale, [&](auto s) { accumulate<D, Op<D, s()>>(p, n, lane0, scale, lanes); });
}
template <template <DType, bool> class Op, DType D>
void sum_many(const Piece* pieces, std::size_t m, std::size_t lane0, double scale, double* lanes) noexcept {
    by_scale(scale, [&](auto s) { accumulate_many<D, Op<D, s()>>(pieces, m, lane0, scale, lanes); });
}

template <DType D, bool Scaled, bool Divided>
void sum_pow_as(const void* p, std::size_t n, std::size_t lane0, double scale, double div, unsigned hs,
                double* lanes) noexcept {
    switch (hs) {  // the common p: 1.5, 2.5, 3, 4
        case 3:
            return accumulate<D>(p, n, lane0, scale, lanes, PowOp<Scaled, Divided, 3>{div, hs});
        case 5:
            return accumulate<D>(p, n, lane0, scale, lanes, PowOp<Scaled, Divided, 5>{div, hs});
        case 6:
            return accumulate<D>(p, n, lane0, scale, lanes, PowOp<Scaled, Divided, 6>{div, hs});
        case 8:
            return accumulate<D>(p, n, lane0, scale, lanes, PowOp<Scaled, Divided, 8>{div, hs});
        default:
            return accumulate<D>(p, n, lane0, scale, lanes, PowOp<Scaled, Divided, 0>{div, hs});
    }
}

template <DType D>
void sum_pow(const void* p, std::size_t n, std::size_t lane0, double scale, double div, unsigned hs,
             double* lanes) noexcept {
    const bool scaled = scale != 1.0, divided = div != 1.0;
    if (!scaled && !divided) return sum_pow_as<D, false, false>(p, n, lane0, scale, div, hs, lanes);
    if (!divided) return sum_pow_as<D, true, false>(p, n, lane0, scale, div, hs, lanes);
    if (!scaled) return sum_pow_as<D, false, true>(p, n, lane0, scale, div, hs, lanes);
    return sum_pow_as<D, true, true>(p, n, lane0, scale, div, hs, lanes);
}

// max is exact and order-free, so only the NaN rule needs care: vmaxpd drops a NaN that is
// already in the accumulator, hence the separate NaN tracker (NEON's FMAX keeps it: vhmax).
template <DType D>
double max_abs(const void* vp, std::size_t n) noexcept {
    const char* p = static_cast<const char*>(vp);
    std::size_t k = 0;
    VD acc[kAcc];
    for (std::size_t j = 0; j < kAcc; ++j) acc[j] = vzero();
    NanTrack nt;
    const Prefetch pf = prefetch_policy();
    constexpr std::size_t kBlockBytes = kLanes * itemsize(D);
    for (; k + kLanes <= n; k += kLanes) {
        pf.ahead(p + k * itemsize(D), kBlockBytes);
        VD x[kAcc];
        vload_block<D>(p, k, x);
        for (std::size_t j = 0; j < kAcc; ++j) {
            nt.add(x[j]);
            acc[j] = vmax(acc[j], vabs(x[j]));
        }
    }
    for (std::size_t j = 0; k + j * kW < n; ++j) {
        const VD x = vload_part<D>(p, static_cast<std::ptrdiff_t>(k + j * kW), 0, std::min(kW, n - (k + j * kW)));
        nt.add(x);
        acc[j] = vmax(acc[j], vabs(x));
    }
    return nt.any() ? std::numeric_limits<double>::quiet_NaN() : vhmax(acc);
}

// Native<D>: T, the type element D is computed in; scalar load/store of element k; V, kW
// lanes, and vector load/store of elements k .. k + kW - 1. Each element type is loaded
// into, and stored from, vectors of the precision it is computed in: float64 for float64;
// float32 for float32, float16 and bfloat16, which multiply and clamp in float32 and round
// once, to nearest even, on the store (as the scalar Elem<D>::storef does, so every target
// writes the same bits).
template <DType D>
struct Native;
template <>
struct Native<DType::F64> {
    using T = double;
    static T load1(const char* p, std::size_t k) noexcept { return Elem<DType::F64>::load(p, k); }
    static void store1(char* p, std::size_t k, T v) noexcept { Elem<DType::F64>::store(p, k, v); }
    using V = VD;
    static constexpr std::size_t kW = simd::kW;
    static V load(const char* p, std::size_t k) noexcept { return load_f64(p + 8 * k); }
    static void store(char* p, std::size_t k, V v) noexcept { store_f64(p + 8 * k, v); }
};
template <DType D>
struct NarrowNative {  // float32, float16, bfloat16: computed in float32
    using T = float;
    static T load1(const char* p, std::size_t k) noexcept { return Elem<D>::loadf(p, k); }
    static void store1(char* p, std::size_t k, T v) noexcept { Elem<D>::storef(p, k, v); }
    using V = VF;
    static constexpr std::size_t kW = kWF;
    static V load(const char* p, std::size_t k) noexcept {
        const char* q = p + k * itemsize(D);
        if constexpr (D == DType::F32) return load_f32(q);
        if constexpr (D == DType::F16) return load_f16(q);
        return load_bf16(q);
    }
    static void store(char* p, std::size_t k, V v) noexcept {
        char* q = p + k * itemsize(D);
        if constexpr (D == DType::F32) return store_f32(q, v);
        if constexpr (D == DType::F16) return store_f16(q, v);
        return store_bf16(q, v);
    }
};
template <>
struct Native<DType::F32> : NarrowNative<DType::F32> {};
template <>
struct Native<DType::F16> : NarrowNative<DType::F16> {};
template <>
struct Native<DType::BF16> : NarrowNative<DType::BF16> {};

// x = op(x) for every element: whole 256-byte blocks (4 cache lines, prefetched ahead), then
// whole vectors, then the tail. op has scalar(T) and vec(V). The tail is the last whole
// vector of the span, computed before anything is written and stored last: it writes the
// elements it shares with the vectors before it again, with the bits they already have (op
// is element-wise), instead of a scalar loop of up to kW - 1 elements. Spans shorter than a
// vector go element by element.
template <DType D, class Op>
void map_inplace(void* vp, std::size_t n, const Op& op) noexcept {
    using N = Native<D>;
    char* b = static_cast<char*>(vp);
    if (n < N::kW) {
        for (std::size_t k = 0; k < n; ++k) N::store1(b, k, op.scalar(N::load1(b, k)));
        return;
    }
    const std::size_t last = n - N::kW;
    const bool ragged = n % N::kW != 0;
    typename N::V tail{};
    if (ragged) tail = op.vec(N::load(b, last));
    const Prefetch pf = prefetch_policy();
    std::size_t k = 0;
    constexpr std::size_t kBlockBytes = 256;
    constexpr std::size_t kBlock = kBlockBytes / itemsize(D);
    for (; k + kBlock <= n; k += kBlock) {
        pf.ahead(b + k * itemsize(D), kBlockBytes);
        for (std::size_t j = 0; j < kBlock; j += N::kW) N::store(b, k + j, op.vec(N::load(b, k + j)));
    }
    for (; k + N::kW <= n; k += N::kW) N::store(b, k, op.vec(N::load(b, k)));
    if (ragged) N::store(b, last, tail);
}

// x * coef, with coef rounded to the computing type (float for the narrow types).
template <DType D>
struct ScaleOp {
    using T = typename Native<D>::T;
    T c;
    T scalar(T x) const noexcept { return x * c; }
    typename Native<D>::V vc = vset(c);
    typename Native<D>::V vec(typename Native<D>::V x) const noexcept { return vmul(x, vc); }
};

// min(hi, max(lo, x)) with NaN kept (the layer's vclamp); for lo <= hi the scalar form has the same
// behaviour, zeros of either sign included.
template <DType D>
struct ClampOp {
    using T = typename Native<D>::T;
    T lo, hi;
    T scalar(T x) const noexcept { return x < lo ? lo : (x > hi ? hi : x); }
    typename Native<D>::V vlo = vset(lo), vhi = vset(hi);
    typename Native<D>::V vec(typename Native<D>::V x) const noexcept { return vclamp(x, vlo, vhi); }
};

template <DType D>
void scale(void* p, std::size_t n, double coef) noexcept {
    if constexpr (D == DType::F64) {
        map_inplace<D>(p, n, ScaleOp<D>{coef});
    } else {
        map_inplace<D>(p, n, ScaleOp<D>{detail::narrow_to_float(coef)});  // any double: no UB
    }
}

template <DType D>
void clamp(void* p, std::size_t n, double lo, double hi) noexcept {
    using T = typename Native<D>::T;  // lo and hi are representable in D, so exactly in T
    map_inplace<D>(p, n, ClampOp<D>{static_cast<T>(lo), static_cast<T>(hi)});
}

// ---------------------------------------------------------------- bandwidth probes
// The layer's vector body does a prefix of the words; the rest here.
std::uint64_t probe_read(const void* vp, std::size_t n) noexcept {
    const char* b = static_cast<const char*>(vp);
    std::uint64_t out = 0;
    std::size_t k = probe_read_vec(b, n, out, prefetch_policy());
    std::uint64_t acc[8] = {};
    for (; k + 8 <= n; k += 8) {
        for (std::size_t j = 0; j < 8; ++j) {
            std::uint64_t w;
            std::memcpy(&w, b + 8 * (k + j), 8);
            acc[j] ^= w;
        }
    }
    for (; k < n; ++k) {
        std::uint64_t w;
        std::memcpy(&w, b + 8 * k, 8);
        acc[0] ^= w;
    }
    for (std::size_t j = 0; j < 8; ++j) out ^= acc[j];
    return out;
}

void probe_rw(void* vp, std::size_t n, std::uint64_t k64) noexcept {
    char* b = static_cast<char*>(vp);
    std::size_t k = probe_rw_vec(b, n, k64, prefetch_policy());
    for (; k < n; ++k) {
        std::uint64_t w;
        std::memcpy(&w, b + 8 * k, 8);
        w += k64;
        std::memcpy(b + 8 * k, &w, 8);
    }
}

// The pair kernel where the layer has the registers for it (kPairKernel), else none.
template <DType D>
constexpr AccPairFn pair_fn() noexcept {
    if constexpr (kPairKernel) {
        return sum_sq_pair<D>;
    } else {
        return nullptr;
    }
}

// The table is indexed by DType: F16, BF16, F32, F64.
const KernelTable kTable = {
    GRADCLIP_STRINGIFY(GRADCLIP_NS),
    probe_read,
    probe_rw,
    {sum_one<SqOp, DType::F16>, sum_one<SqOp, DType::BF16>, sum_one<SqOp, DType::F32>, sum_one<SqOp, DType::F64>},
    {sum_one<AbsOp, DType::F16>, sum_one<AbsOp, DType::BF16>, sum_one<AbsOp, DType::F32>, sum_one<AbsOp, DType::F64>},
    {sum_pow<DType::F16>, sum_pow<DType::BF16>, sum_pow<DType::F32>, sum_pow<DType::F64>},
    {sum_many<SqOp, DType::F16>, sum_many<SqOp, DType::BF16>, sum_many<SqOp, DType::F32>, sum_many<SqOp, DType::F64>},
    {sum_many<AbsOp, DType::F16>, sum_many<AbsOp, DType::BF16>, sum_many<AbsOp, DType::F32>,
     sum_many<AbsOp, DType::F64>},
    {pair_fn<DType::F16>(), pair_fn<DType::BF16>(), pair_fn<DType::F32>(), pair_fn<DType::F64>()},
    {max_abs<DType::F16>, max_abs<DType::BF16>, max_abs<DType::F32>, max_abs<DType::F64>},
    {scale<DType::F16>, scale<DType::BF16>, scale<DType::F32>, scale<DType::F64>},
    {clamp<DType::F16>, clamp<DType::BF16>, clamp<DType::F32>, clamp<DType::F64>},
};

}  // namespace

const KernelTable& kernel_table() noexcept { return kTable; }

}  // namespace gradclip::GRADCLIP_NS
