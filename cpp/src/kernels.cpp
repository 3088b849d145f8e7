// The SIMD kernels. This one source is compiled once per instruction set:
//   GRADCLIP_TARGET_BASELINE  portable C++ (x86-64 baseline, or any other CPU)
//   GRADCLIP_TARGET_AVX2      -mavx2 -mfma -mf16c
//   GRADCLIP_TARGET_AVX512    -mavx512f -mavx512bw -mavx512dq -mavx512vl (+ the above)
//   GRADCLIP_TARGET_NEON      AArch64 Advanced SIMD (no flags: every AArch64 CPU has it)
// each copy in its own namespace, each exporting one KernelTable.
//
// Determinism contract (see kernels.hpp): element k of a block is accumulated into lane
// k % 32, in index order, in float64, and lanes are combined by combine_lanes(). The vector
// code keeps the 32 lanes in 4 (AVX-512), 8 (AVX2) or 16 (NEON) registers; the scalar code
// keeps them in an array. Products for float64 input are rounded before the add on every
// target (this file is built with -ffp-contract=off, so the compiler fuses nothing), so all
// targets, x86-64 and AArch64 alike, agree to the bit. Inputs narrower than float64 are
// converted exactly and their squares are exact in float64, so there the vector code may use
// an explicit FMA (SqOp): one rounding either way. A NaN result is NaN on every target; the
// sign of a NaN that an invalid operation makes (inf * 0) is the architecture's: set on x86,
// clear on ARM.
#include "kernels.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "half.hpp"

// Software prefetch distances in bytes (see prefetch_ahead): into L1 a little ahead, into L2
// further ahead. Override with -DGRADCLIP_PREFETCH_L1=... / -DGRADCLIP_PREFETCH_L2=...
#ifndef GRADCLIP_PREFETCH_L1
#define GRADCLIP_PREFETCH_L1 1024
#endif
#ifndef GRADCLIP_PREFETCH_L2
#define GRADCLIP_PREFETCH_L2 4096
#endif

#if defined(GRADCLIP_TARGET_AVX512)
#define GRADCLIP_NS avx512
#define GRADCLIP_TARGET_NAME "avx512"
#include <immintrin.h>
#elif defined(GRADCLIP_TARGET_AVX2)
#define GRADCLIP_NS avx2
#define GRADCLIP_TARGET_NAME "avx2"
#include <immintrin.h>
#elif defined(GRADCLIP_TARGET_NEON)
#if defined(__AARCH64EB__)
#error "the NEON kernels load elements as bytes and assume little-endian AArch64"
#endif
#define GRADCLIP_NS neon
#define GRADCLIP_TARGET_NAME "neon"
#include <arm_neon.h>
#else
#define GRADCLIP_NS baseline
#define GRADCLIP_TARGET_NAME "baseline"
#endif

// GRADCLIP_VECTOR: this copy has a vector layer (every target but the baseline).
#if defined(GRADCLIP_TARGET_AVX512) || defined(GRADCLIP_TARGET_AVX2) || defined(GRADCLIP_TARGET_NEON)
#define GRADCLIP_VECTOR 1
#endif

namespace gradclip::GRADCLIP_NS {
namespace {

using detail::bf16_to_float;
using detail::float_to_bf16;
using detail::float_to_half;
using detail::half_to_float;

// ---------------------------------------------------------------- scalar element access
// memcpy loads: the data may be unaligned (a view at an odd byte offset is legal input).
template <DType D>
struct Elem;

template <>
struct Elem<DType::F64> {
    static double load(const char* p, std::size_t k) noexcept {
        double v;
        std::memcpy(&v, p + 8 * k, 8);
        return v;
    }
};
template <>
struct Elem<DType::F32> {
    static float loadf(const char* p, std::size_t k) noexcept {
        float v;
        std::memcpy(&v, p + 4 * k, 4);
        return v;
    }
    static double load(const char* p, std::size_t k) noexcept { return loadf(p, k); }
    static void storef(char* p, std::size_t k, float v) noexcept { std::memcpy(p + 4 * k, &v, 4); }
};
template <>
struct Elem<DType::F16> {
    static float loadf(const char* p, std::size_t k) noexcept {
        std::uint16_t h;
        std::memcpy(&h, p + 2 * k, 2);
        return half_to_float(h);
    }
    static double load(const char* p, std::size_t k) noexcept { return loadf(p, k); }
    static void storef(char* p, std::size_t k, float v) noexcept {
        const std::uint16_t h = float_to_half(v);
        std::memcpy(p + 2 * k, &h, 2);
    }
};
template <>
struct Elem<DType::BF16> {
    static float loadf(const char* p, std::size_t k) noexcept {
        std::uint16_t h;
        std::memcpy(&h, p + 2 * k, 2);
        return bf16_to_float(h);
    }
    static double load(const char* p, std::size_t k) noexcept { return loadf(p, k); }
    static void storef(char* p, std::size_t k, float v) noexcept {
        const std::uint16_t h = float_to_bf16(v);
        std::memcpy(p + 2 * k, &h, 2);
    }
};

// p + off for an offset that may point before p: masked loads address whole vector groups
// of which only some lanes are inside the array. Computed on integers, not as pointer
// arithmetic outside the array.
[[maybe_unused]] inline const char* addr(const char* p, std::ptrdiff_t off) noexcept {
    return reinterpret_cast<const char*>(reinterpret_cast<std::uintptr_t>(p) + static_cast<std::uintptr_t>(off));
}

// ---------------------------------------------------------------- vector loads
#if defined(GRADCLIP_TARGET_AVX512)
using VD = __m512d;
constexpr std::size_t kW = 8;  // doubles per register
constexpr std::size_t kAcc = kLanes / kW;

template <DType D>
inline VD vload(const char* p, std::size_t k) noexcept;
template <>
inline VD vload<DType::F64>(const char* p, std::size_t k) noexcept {
    return _mm512_loadu_pd(reinterpret_cast<const double*>(p) + k);
}
template <>
inline VD vload<DType::F32>(const char* p, std::size_t k) noexcept {
    return _mm512_cvtps_pd(_mm256_loadu_ps(reinterpret_cast<const float*>(p) + k));
}
template <>
inline VD vload<DType::F16>(const char* p, std::size_t k) noexcept {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2 * k));
    return _mm512_cvtps_pd(_mm256_cvtph_ps(h));
}
template <>
inline VD vload<DType::BF16>(const char* p, std::size_t k) noexcept {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2 * k));
    const __m256i w = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
    return _mm512_cvtps_pd(_mm256_castsi256_ps(w));
}
// Lanes [lo, hi) of an 8-lane group whose lane 0 is element k (k may be negative or past
// the end: only lanes [lo, hi) are read, and masked loads never touch the other lanes'
// memory), zeros elsewhere. A +0.0 lane leaves every accumulator's bits unchanged (the
// accumulators are sums of non-negative terms, or maxima of them).
template <DType D>
inline VD vload_part(const char* p, std::ptrdiff_t k, std::size_t lo, std::size_t hi) noexcept {
    const auto mk = static_cast<__mmask8>(((1u << hi) - 1u) & ~((1u << lo) - 1u));
    const char* q = addr(p, k * static_cast<std::ptrdiff_t>(itemsize(D)));
    if constexpr (D == DType::F64) return _mm512_maskz_loadu_pd(mk, q);
    if constexpr (D == DType::F32) return _mm512_cvtps_pd(_mm256_maskz_loadu_ps(mk, q));
    const __m128i h = _mm_maskz_loadu_epi16(mk, q);
    if constexpr (D == DType::F16) return _mm512_cvtps_pd(_mm256_cvtph_ps(h));
    return _mm512_cvtps_pd(_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)));
}
inline double vhmax(const VD* acc) noexcept {
    const VD a = _mm512_max_pd(_mm512_max_pd(acc[0], acc[1]), _mm512_max_pd(acc[2], acc[3]));
    return _mm512_reduce_max_pd(a);
}
inline VD vzero() noexcept { return _mm512_setzero_pd(); }
inline VD vset(double x) noexcept { return _mm512_set1_pd(x); }
inline VD vadd(VD a, VD b) noexcept { return _mm512_add_pd(a, b); }
inline VD vmul(VD a, VD b) noexcept { return _mm512_mul_pd(a, b); }
inline VD vfma(VD a, VD b, VD c) noexcept { return _mm512_fmadd_pd(a, b, c); }
inline VD vabs(VD a) noexcept { return _mm512_abs_pd(a); }
inline VD vdiv(VD a, VD b) noexcept { return _mm512_div_pd(a, b); }
inline VD vsqrt(VD a) noexcept { return _mm512_sqrt_pd(a); }
inline VD vmax(VD a, VD b) noexcept { return _mm512_max_pd(a, b); }
inline void vstore(double* p, VD a) noexcept { _mm512_storeu_pd(p, a); }
inline VD vloadu_lanes(const double* p) noexcept { return _mm512_loadu_pd(p); }
struct NanTrack {
    __mmask8 m = 0;
    void add(VD x) noexcept { m = static_cast<__mmask8>(m | _mm512_cmp_pd_mask(x, x, _CMP_UNORD_Q)); }
    bool any() const noexcept { return m != 0; }
};
#elif defined(GRADCLIP_TARGET_AVX2)
using VD = __m256d;
constexpr std::size_t kW = 4;
constexpr std::size_t kAcc = kLanes / kW;

template <DType D>
inline VD vload(const char* p, std::size_t k) noexcept;
template <>
inline VD vload<DType::F64>(const char* p, std::size_t k) noexcept {
    return _mm256_loadu_pd(reinterpret_cast<const double*>(p) + k);
}
template <>
inline VD vload<DType::F32>(const char* p, std::size_t k) noexcept {
    return _mm256_cvtps_pd(_mm_loadu_ps(reinterpret_cast<const float*>(p) + k));
}
template <>
inline VD vload<DType::F16>(const char* p, std::size_t k) noexcept {
    const __m128i h = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 2 * k));
    return _mm256_cvtps_pd(_mm_cvtph_ps(h));
}
template <>
inline VD vload<DType::BF16>(const char* p, std::size_t k) noexcept {
    const __m128i h = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 2 * k));
    const __m128i w = _mm_slli_epi32(_mm_cvtepu16_epi32(h), 16);
    return _mm256_cvtps_pd(_mm_castsi128_ps(w));
}
// Lanes [lo, hi) of a 4-lane group whose lane 0 is element k; see the AVX-512 version.
inline __m128i mask32x4(std::size_t lo, std::size_t hi) noexcept {
    const __m128i idx = _mm_setr_epi32(0, 1, 2, 3);
    return _mm_and_si128(_mm_cmpgt_epi32(_mm_set1_epi32(static_cast<int>(hi)), idx),
                         _mm_cmpgt_epi32(idx, _mm_set1_epi32(static_cast<int>(lo) - 1)));
}
template <DType D>
inline VD vload_part(const char* p, std::ptrdiff_t k, std::size_t lo, std::size_t hi) noexcept {
    const char* q = addr(p, k * static_cast<std::ptrdiff_t>(itemsize(D)));
    if constexpr (D == DType::F64) {
        return _mm256_maskload_pd(reinterpret_cast<const double*>(q), _mm256_cvtepi32_epi64(mask32x4(lo, hi)));
    } else if constexpr (D == DType::F32) {
        return _mm256_cvtps_pd(_mm_maskload_ps(reinterpret_cast<const float*>(q), mask32x4(lo, hi)));
    } else {
        // no 16-bit masked load in AVX2: gather the lanes in a register
        std::uint64_t bits = 0;
        for (std::size_t i = lo; i < hi; ++i) {
            std::uint16_t h;
            std::memcpy(&h, q + 2 * i, 2);
            bits |= static_cast<std::uint64_t>(h) << (16 * i);
        }
        const __m128i h = _mm_cvtsi64_si128(static_cast<long long>(bits));
        if constexpr (D == DType::F16) return _mm256_cvtps_pd(_mm_cvtph_ps(h));
        return _mm256_cvtps_pd(_mm_castsi128_ps(_mm_slli_epi32(_mm_cvtepu16_epi32(h), 16)));
    }
}
inline double vhmax(const VD* acc) noexcept {
    __m256d a = acc[0];
    for (std::size_t j = 1; j < 8; ++j) a = _mm256_max_pd(a, acc[j]);
    const __m128d c = _mm_max_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    return _mm_cvtsd_f64(_mm_max_sd(c, _mm_unpackhi_pd(c, c)));
}
inline VD vzero() noexcept { return _mm256_setzero_pd(); }
inline VD vset(double x) noexcept { return _mm256_set1_pd(x); }
inline VD vadd(VD a, VD b) noexcept { return _mm256_add_pd(a, b); }
inline VD vmul(VD a, VD b) noexcept { return _mm256_mul_pd(a, b); }
inline VD vfma(VD a, VD b, VD c) noexcept { return _mm256_fmadd_pd(a, b, c); }
inline VD vabs(VD a) noexcept { return _mm256_andnot_pd(_mm256_set1_pd(-0.0), a); }
inline VD vdiv(VD a, VD b) noexcept { return _mm256_div_pd(a, b); }
inline VD vsqrt(VD a) noexcept { return _mm256_sqrt_pd(a); }
inline VD vmax(VD a, VD b) noexcept { return _mm256_max_pd(a, b); }
inline void vstore(double* p, VD a) noexcept { _mm256_storeu_pd(p, a); }
inline VD vloadu_lanes(const double* p) noexcept { return _mm256_loadu_pd(p); }
struct NanTrack {
    __m256d m = _mm256_setzero_pd();
    void add(VD x) noexcept { m = _mm256_or_pd(m, _mm256_cmp_pd(x, x, _CMP_UNORD_Q)); }
    bool any() const noexcept { return _mm256_movemask_pd(m) != 0; }
};
#elif defined(GRADCLIP_TARGET_NEON)
using VD = float64x2_t;
constexpr std::size_t kW = 2;
constexpr std::size_t kAcc = kLanes / kW;  // 16 of the 32 vector registers

// Byte loads and stores: vld1q_u8 has no alignment requirement, so a view at an odd byte
// offset is read the same way as an aligned one (the double/float forms assume element
// alignment in C++ terms). Little-endian, so lane i holds element i.
inline const std::uint8_t* u8(const char* p) noexcept { return reinterpret_cast<const std::uint8_t*>(p); }
inline std::uint8_t* u8(char* p) noexcept { return reinterpret_cast<std::uint8_t*>(p); }

// Widening: float16 -> float32 by FCVTL/FCVTL2 (base Advanced SIMD, exact), bfloat16 ->
// float32 by a 16-bit shift (SHLL), float32 -> float64 by FCVTL/FCVTL2 (exact).
inline float32x4_t f16_lo(float16x8_t h) noexcept { return vcvt_f32_f16(vget_low_f16(h)); }
inline float32x4_t f16_hi(float16x8_t h) noexcept { return vcvt_high_f32_f16(h); }
inline float32x4_t bf16_lo(uint16x8_t h) noexcept { return vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(h), 16)); }
inline float32x4_t bf16_hi(uint16x8_t h) noexcept { return vreinterpretq_f32_u32(vshll_high_n_u16(h, 16)); }
inline void widen(float32x4_t f, VD* x) noexcept {
    x[0] = vcvt_f64_f32(vget_low_f32(f));
    x[1] = vcvt_high_f64_f32(f);
}

// The kAcc vectors of the full block of kLanes elements that starts at element k: x[j] holds
// elements k + 2j and k + 2j + 1, i.e. lanes 2j and 2j + 1. Each load takes 16 bytes.
template <DType D>
inline void vload_block(const char* p, std::size_t k, VD* x) noexcept {
    const char* q = p + k * itemsize(D);
    if constexpr (D == DType::F64) {
        for (std::size_t j = 0; j < kAcc; ++j) x[j] = vreinterpretq_f64_u8(vld1q_u8(u8(q + 16 * j)));
    } else if constexpr (D == DType::F32) {
        for (std::size_t j = 0; j < kAcc; j += 2) widen(vreinterpretq_f32_u8(vld1q_u8(u8(q + 8 * j))), x + j);
    } else {
        for (std::size_t j = 0; j < kAcc; j += 4) {
            const uint8x16_t b = vld1q_u8(u8(q + 4 * j));
            if constexpr (D == DType::F16) {
                const float16x8_t h = vreinterpretq_f16_u8(b);
                widen(f16_lo(h), x + j);
                widen(f16_hi(h), x + j + 2);
            } else {
                const uint16x8_t h = vreinterpretq_u16_u8(b);
                widen(bf16_lo(h), x + j);
                widen(bf16_hi(h), x + j + 2);
            }
        }
    }
}
// Lanes [lo, hi) of a 2-lane group whose lane 0 is element k (k may be negative or past the
// end), zeros elsewhere; see the AVX-512 version. No masked loads in NEON: the lanes inside
// the array are copied into a zeroed register image, and narrow ones converted as above.
template <DType D>
inline VD vload_part(const char* p, std::ptrdiff_t k, std::size_t lo, std::size_t hi) noexcept {
    const char* q = addr(p, k * static_cast<std::ptrdiff_t>(itemsize(D)));
    std::uint8_t img[16] = {};
    for (std::size_t i = lo; i < hi; ++i) std::memcpy(img + i * itemsize(D), q + i * itemsize(D), itemsize(D));
    const uint8x16_t b = vld1q_u8(img);
    if constexpr (D == DType::F64) return vreinterpretq_f64_u8(b);
    if constexpr (D == DType::F32) return vcvt_f64_f32(vget_low_f32(vreinterpretq_f32_u8(b)));
    if constexpr (D == DType::F16) return vcvt_f64_f32(vget_low_f32(f16_lo(vreinterpretq_f16_u8(b))));
    return vcvt_f64_f32(vget_low_f32(bf16_lo(vreinterpretq_u16_u8(b))));
}
// FMAX returns NaN when either operand is NaN (unlike x86's maxpd, which returns its second
// operand), so a NaN reaches the final maximum by itself; it is returned as the canonical
// quiet NaN that the other targets return.
inline double vhmax(const VD* acc) noexcept {
    VD a = acc[0];
    for (std::size_t j = 1; j < kAcc; ++j) a = vmaxq_f64(a, acc[j]);
    const double m = vmaxvq_f64(a);
    return m != m ? std::numeric_limits<double>::quiet_NaN() : m;
}
inline VD vzero() noexcept { return vdupq_n_f64(0.0); }
inline VD vset(double x) noexcept { return vdupq_n_f64(x); }
inline VD vadd(VD a, VD b) noexcept { return vaddq_f64(a, b); }
inline VD vmul(VD a, VD b) noexcept { return vmulq_f64(a, b); }
inline VD vfma(VD a, VD b, VD c) noexcept { return vfmaq_f64(c, a, b); }  // a * b + c, one rounding
inline VD vabs(VD a) noexcept { return vabsq_f64(a); }
inline VD vdiv(VD a, VD b) noexcept { return vdivq_f64(a, b); }
inline VD vsqrt(VD a) noexcept { return vsqrtq_f64(a); }
inline VD vmax(VD a, VD b) noexcept { return vmaxq_f64(a, b); }
inline void vstore(double* p, VD a) noexcept { vst1q_f64(p, a); }
inline VD vloadu_lanes(const double* p) noexcept { return vld1q_f64(p); }
struct NanTrack {  // not needed: see vhmax
    void add(VD) noexcept {}
    bool any() const noexcept { return false; }
};
#endif

#if defined(GRADCLIP_TARGET_AVX512) || defined(GRADCLIP_TARGET_AVX2)
// The kAcc vectors of the full block of kLanes elements that starts at element k.
template <DType D>
inline void vload_block(const char* p, std::size_t k, VD* x) noexcept {
    for (std::size_t j = 0; j < kAcc; ++j) x[j] = vload<D>(p, k + j * kW);
}
#endif

// ---------------------------------------------------------------- prefetch
#if defined(GRADCLIP_TARGET_AVX512) || defined(GRADCLIP_TARGET_AVX2)
constexpr std::size_t kPrefetchL1 = GRADCLIP_PREFETCH_L1;
constexpr std::size_t kPrefetchL2 = GRADCLIP_PREFETCH_L2;
// Software prefetch of the cache lines kPrefetchL2 bytes ahead of a block of `bytes` about to
// be read (and written) into L2, and of those kPrefetchL1 ahead into L1. On one core the
// hardware prefetchers alone leave a loop that converts each float32 to float64 at ~0.8 of
// a plain float32 loop's read rate; one distance into L1 gets it to ~0.9 (the best of 1-8
// KiB), both together to ~1.0-1.05 (measured on a 2-core Xeon with AVX-512, 256 MiB).
inline void prefetch_ahead(const void* p, std::size_t bytes) noexcept {
    const char* q = static_cast<const char*>(p);
    for (std::size_t b = 0; b < bytes; b += 64) {
        _mm_prefetch(q + kPrefetchL2 + b, _MM_HINT_T1);
        _mm_prefetch(q + kPrefetchL1 + b, _MM_HINT_T0);
    }
}
#elif defined(GRADCLIP_TARGET_NEON)
// None on NEON: the third of the bandwidth that software prefetch wins back was measured on
// x86 cores; whether it helps (or hurts) an ARM core's stream prefetchers has not been
// measured, so the NEON copy issues none rather than guess.
inline void prefetch_ahead(const void*, std::size_t) noexcept {}
#endif

// ---------------------------------------------------------------- reductions
// Scaled = false on the fast pass (scale 1): the multiply by the scale is skipped. For inputs
// narrower than float64, x*x is exact in float64, so a fused multiply-add gives the same bits
// as the separate multiply and add of the other targets; float64 keeps the two roundings.
template <DType D, bool Scaled>
struct SqOp {
    static double step(double acc, double x, double s) noexcept {
        const double t = Scaled ? x * s : x;
        return acc + t * t;
    }
#if defined(GRADCLIP_VECTOR)
    static VD vstep(VD acc, VD x, VD s) noexcept {
        const VD t = Scaled ? vmul(x, s) : x;
        if constexpr (D != DType::F64) return vfma(t, t, acc);
        return vadd(acc, vmul(t, t));
    }
#endif
};

template <DType D, bool Scaled>
struct AbsOp {
    static double step(double acc, double x, double s) noexcept { return acc + std::fabs(Scaled ? x * s : x); }
#if defined(GRADCLIP_VECTOR)
    static VD vstep(VD acc, VD x, VD s) noexcept { return vadd(acc, vabs(Scaled ? vmul(x, s) : x)); }
#endif
};

// |x * scale / div| ** (hs / 2) (kernels.hpp: pow_half_steps); Scaled and Divided as in
// SqOp (scale 1 and div 1 are skipped: multiplying or dividing by 1 is exact). HS > 0 fixes
// hs at compile time, so the squaring loop unrolls (same operations as the run-time form).
template <bool Scaled, bool Divided, unsigned HS>
struct PowOp {
    double div;
    unsigned hs;
    unsigned steps() const noexcept { return HS != 0 ? HS : hs; }
    double step(double acc, double x, double s) const noexcept {
        double t = std::fabs(Scaled ? x * s : x);
        if (Divided) t = t / div;
        return acc + pow_half_steps(t, steps());
    }
#if defined(GRADCLIP_VECTOR)
    VD vdv = vset(div);
    VD vstep(VD acc, VD x, VD s) const noexcept {
        VD t = vabs(Scaled ? vmul(x, s) : x);
        if (Divided) t = vdiv(t, vdv);
        return vadd(acc,
                    pow_half_steps(t, steps(), [](VD a, VD b) { return vmul(a, b); }, [](VD a) { return vsqrt(a); }));
    }
#endif
};

template <DType D, class Op>
void accumulate(const void* vp, std::size_t n, std::size_t lane0, double scale, double* lanes,
                const Op& op = Op{}) noexcept {
    const char* p = static_cast<const char*>(vp);
#if defined(GRADCLIP_VECTOR)
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
        prefetch_ahead(p + uk * itemsize(D), kBlockBytes);  // a few KiB ahead, one per cache line
        VD x[kAcc];
        vload_block<D>(p, uk, x);
        for (std::size_t j = 0; j < kAcc; ++j) acc[j] = op.vstep(acc[j], x[j], s);
    }
    if (k < sn) partial(k);
    for (std::size_t j = 0; j < kAcc; ++j) vstore(lanes + j * kW, acc[j]);
#else
    std::size_t lane = lane0;
    for (std::size_t i = 0; i < n; ++i) {
        lanes[lane] = op.step(lanes[lane], Elem<D>::load(p, i), scale);
        lane = lane + 1 == kLanes ? 0 : lane + 1;
    }
#endif
}

// accumulate() over consecutive pieces (kernels.hpp: AccManyFn). Whole blocks inside a piece
// are added as they are read; the lanes of a block that spans pieces (or that a piece only
// begins or ends) are gathered from each piece by masked loads into a pending block (zeros
// elsewhere; x + 0.0 is x but for the sign of a zero, which neither |x| nor x * x keeps),
// which is added once full, and at the end if partly filled. Each lane still gets its terms
// in index order, one per block, so the bits are those of one accumulate() call per piece.
template <DType D, class Op>
void accumulate_many(const Piece* pieces, std::size_t m, std::size_t lane0, double scale, double* lanes,
                     const Op& op = Op{}) noexcept {
#if defined(GRADCLIP_VECTOR)
    VD acc[kAcc], pend[kAcc];
    for (std::size_t j = 0; j < kAcc; ++j) {
        acc[j] = vloadu_lanes(lanes + j * kW);
        pend[j] = vzero();
    }
    const VD s = vset(scale);
    constexpr auto kL = static_cast<std::ptrdiff_t>(kLanes);
    constexpr auto kWs = static_cast<std::ptrdiff_t>(kW);
    std::size_t lane = lane0;  // lanes [0, lane) of the pending block are filled
    for (std::size_t i = 0; i < m; ++i) {
        const char* p = static_cast<const char*>(pieces[i].p);
        const auto sn = static_cast<std::ptrdiff_t>(pieces[i].n);
        // the piece's elements [0, sn) sit at lanes lane, lane + 1, ...: its first block
        // starts at element k = -lane
        std::ptrdiff_t k = -static_cast<std::ptrdiff_t>(lane);
        if (lane != 0 || sn < kL) {
            for (std::size_t j = 0; j < kAcc; ++j) {
                const std::ptrdiff_t g = k + static_cast<std::ptrdiff_t>(j) * kWs;
                const std::ptrdiff_t lo = g < 0 ? -g : 0;
                const std::ptrdiff_t hi = sn - g < kWs ? sn - g : kWs;
                if (hi > lo)
                    pend[j] =
                        vadd(pend[j], vload_part<D>(p, g, static_cast<std::size_t>(lo), static_cast<std::size_t>(hi)));
            }
            if (k + kL > sn) {  // the piece ends inside this block
                lane = static_cast<std::size_t>(sn - k);
                continue;
            }
            for (std::size_t j = 0; j < kAcc; ++j) {
                acc[j] = op.vstep(acc[j], pend[j], s);
                pend[j] = vzero();
            }
            k += kL;
        }
        constexpr std::size_t kBlockBytes = kLanes * itemsize(D);
        for (; k + kL <= sn; k += kL) {
            const auto uk = static_cast<std::size_t>(k);
            prefetch_ahead(p + uk * itemsize(D), kBlockBytes);
            VD x[kAcc];
            vload_block<D>(p, uk, x);
            for (std::size_t j = 0; j < kAcc; ++j) acc[j] = op.vstep(acc[j], x[j], s);
        }
        lane = static_cast<std::size_t>(sn - k);
        if (lane != 0) {  // the tail starts a new pending block at lane 0
            for (std::size_t j = 0; j < kAcc; ++j) {
                const std::ptrdiff_t g = k + static_cast<std::ptrdiff_t>(j) * kWs;
                const std::ptrdiff_t hi = sn - g < kWs ? sn - g : kWs;
                if (hi > 0) pend[j] = vload_part<D>(p, g, 0, static_cast<std::size_t>(hi));
            }
        }
    }
    if (lane != 0)
        for (std::size_t j = 0; j < kAcc; ++j) acc[j] = op.vstep(acc[j], pend[j], s);
    for (std::size_t j = 0; j < kAcc; ++j) vstore(lanes + j * kW, acc[j]);
#else
    std::size_t lane = lane0;
    for (std::size_t i = 0; i < m; ++i) {
        accumulate<D>(pieces[i].p, pieces[i].n, lane, scale, lanes, op);
        lane = (lane + pieces[i].n) % kLanes;
    }
#endif
}

#if defined(GRADCLIP_TARGET_AVX512)
// accumulate() over two blocks of n elements from lane 0, whole blocks interleaved; the
// partial last blocks go through accumulate() itself, which adds them as it would have.
template <DType D, class Op>
void accumulate_pair(const void* vp0, const void* vp1, std::size_t n, double scale, double* lanes0,
                     double* lanes1) noexcept {
    const Op op{};
    const char* p0 = static_cast<const char*>(vp0);
    const char* p1 = static_cast<const char*>(vp1);
    VD a0[kAcc], a1[kAcc];
    for (std::size_t j = 0; j < kAcc; ++j) {
        a0[j] = vloadu_lanes(lanes0 + j * kW);
        a1[j] = vloadu_lanes(lanes1 + j * kW);
    }
    const VD s = vset(scale);
    constexpr std::size_t kBlockBytes = kLanes * itemsize(D);
    std::size_t k = 0;
    for (; k + kLanes <= n; k += kLanes) {
        prefetch_ahead(p0 + k * itemsize(D), kBlockBytes);
        prefetch_ahead(p1 + k * itemsize(D), kBlockBytes);
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

template <DType D>
void sum_sq_pair(const void* p0, const void* p1, std::size_t n, double scale, double* lanes0, double* lanes1) noexcept {
    if (scale == 1.0)
        accumulate_pair<D, SqOp<D, false>>(p0, p1, n, scale, lanes0, lanes1);
    else
        accumulate_pair<D, SqOp<D, true>>(p0, p1, n, scale, lanes0, lanes1);
}
#endif

template <DType D>
void sum_sq_many(const Piece* pieces, std::size_t m, std::size_t lane0, double scale, double* lanes) noexcept {
    if (scale == 1.0)
        accumulate_many<D, SqOp<D, false>>(pieces, m, lane0, scale, lanes);
    else
        accumulate_many<D, SqOp<D, true>>(pieces, m, lane0, scale, lanes);
}
template <DType D>
void sum_abs_many(const Piece* pieces, std::size_t m, std::size_t lane0, double scale, double* lanes) noexcept {
    if (scale == 1.0)
        accumulate_many<D, AbsOp<D, false>>(pieces, m, lane0, scale, lanes);
    else
        accumulate_many<D, AbsOp<D, true>>(pieces, m, lane0, scale, lanes);
}

template <DType D>
void sum_sq(const void* p, std::size_t n, std::size_t lane0, double scale, double* lanes) noexcept {
    if (scale == 1.0)
        accumulate<D, SqOp<D, false>>(p, n, lane0, scale, lanes);
    else
        accumulate<D, SqOp<D, true>>(p, n, lane0, scale, lanes);
}
template <DType D>
void sum_abs(const void* p, std::size_t n, std::size_t lane0, double scale, double* lanes) noexcept {
    if (scale == 1.0)
        accumulate<D, AbsOp<D, false>>(p, n, lane0, scale, lanes);
    else
        accumulate<D, AbsOp<D, true>>(p, n, lane0, scale, lanes);
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
#if defined(GRADCLIP_VECTOR)
    VD acc[kAcc];
    for (std::size_t j = 0; j < kAcc; ++j) acc[j] = vzero();
    NanTrack nt;
    constexpr std::size_t kBlockBytes = kLanes * itemsize(D);
    for (; k + kLanes <= n; k += kLanes) {
        prefetch_ahead(p + k * itemsize(D), kBlockBytes);
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
#else
    double m = 0.0;
    bool nan = false;
    for (; k < n; ++k) {
        const double a = std::fabs(Elem<D>::load(p, k));
        if (a != a) nan = true;
        m = a > m ? a : m;
    }
    return nan ? std::numeric_limits<double>::quiet_NaN() : m;
#endif
}

// ---------------------------------------------------------------- element-wise writes
// The vector layer of the writes. Each element type is loaded into, and stored from,
// vectors of the precision it is computed in: float64 for float64; float32 for float32,
// float16 and bfloat16, which multiply and clamp in float32 and round once, to nearest even,
// on the store (as the scalar Elem<D>::storef does, so every target writes the same bits).
#if defined(GRADCLIP_TARGET_AVX512)
using VF = __m512;
constexpr std::size_t kWF = 16;  // floats per register
inline VF vset(float x) noexcept { return _mm512_set1_ps(x); }
inline VF vmul(VF a, VF b) noexcept { return _mm512_mul_ps(a, b); }
inline VF vmin(VF a, VF b) noexcept { return _mm512_min_ps(a, b); }
inline VF vmax(VF a, VF b) noexcept { return _mm512_max_ps(a, b); }
inline VD vmin(VD a, VD b) noexcept { return _mm512_min_pd(a, b); }
inline VD load_f64(const char* p) noexcept { return _mm512_loadu_pd(reinterpret_cast<const double*>(p)); }
inline void store_f64(char* p, VD v) noexcept { _mm512_storeu_pd(reinterpret_cast<double*>(p), v); }
inline VF load_f32(const char* p) noexcept { return _mm512_loadu_ps(reinterpret_cast<const float*>(p)); }
inline void store_f32(char* p, VF v) noexcept { _mm512_storeu_ps(reinterpret_cast<float*>(p), v); }
inline VF load_f16(const char* p) noexcept {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline void store_f16(char* p, VF v) noexcept {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                        _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
inline VF load_bf16(const char* p) noexcept {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline void store_bf16(char* p, VF v) noexcept {
    // round to nearest even on the bit pattern; NaN -> quiet NaN (same rule as float_to_bf16)
    const __m512i u = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
}
#elif defined(GRADCLIP_TARGET_AVX2)
using VF = __m256;
constexpr std::size_t kWF = 8;
inline VF vset(float x) noexcept { return _mm256_set1_ps(x); }
inline VF vmul(VF a, VF b) noexcept { return _mm256_mul_ps(a, b); }
inline VF vmin(VF a, VF b) noexcept { return _mm256_min_ps(a, b); }
inline VF vmax(VF a, VF b) noexcept { return _mm256_max_ps(a, b); }
inline VD vmin(VD a, VD b) noexcept { return _mm256_min_pd(a, b); }
inline VD load_f64(const char* p) noexcept { return _mm256_loadu_pd(reinterpret_cast<const double*>(p)); }
inline void store_f64(char* p, VD v) noexcept { _mm256_storeu_pd(reinterpret_cast<double*>(p), v); }
inline VF load_f32(const char* p) noexcept { return _mm256_loadu_ps(reinterpret_cast<const float*>(p)); }
inline void store_f32(char* p, VF v) noexcept { _mm256_storeu_ps(reinterpret_cast<float*>(p), v); }
inline VF load_f16(const char* p) noexcept {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline void store_f16(char* p, VF v) noexcept {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
inline VF load_bf16(const char* p) noexcept {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
inline void store_bf16(char* p, VF v) noexcept {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
    const __m256i nanr = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    r = _mm256_blendv_epi8(r, nanr, nan);
    // 8 x u32 (each <= 0xffff) -> 8 x u16: pack with zeros, then gather the two 64-bit halves
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, _mm256_setzero_si256()), 0xD8);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
}
#endif
#if defined(GRADCLIP_TARGET_AVX512) || defined(GRADCLIP_TARGET_AVX2)
// NaN kept: x is the second operand of max/min, which (v)maxps / (v)minps return when either
// operand is NaN (and when both are zeros).
template <class V>
inline V vclamp(V x, V lo, V hi) noexcept {
    return vmin(hi, vmax(lo, x));
}
#elif defined(GRADCLIP_TARGET_NEON)
using VF = float32x4_t;
constexpr std::size_t kWF = 4;
inline VF vset(float x) noexcept { return vdupq_n_f32(x); }
inline VF vmul(VF a, VF b) noexcept { return vmulq_f32(a, b); }
// The x86 targets' clamp, min(hi, max(lo, x)) with their max(a, b) = a > b ? a : b and
// min(a, b) = a < b ? a : b, as compares and selects: x comes through with its exact bits
// when it is NaN or a zero of either sign. NEON's FMAX/FMIN would quiet a signalling NaN and
// order -0 below +0.
inline VF vclamp(VF x, VF lo, VF hi) noexcept {
    const VF t = vbslq_f32(vcgtq_f32(lo, x), lo, x);
    return vbslq_f32(vcltq_f32(hi, t), hi, t);
}
inline VD vclamp(VD x, VD lo, VD hi) noexcept {
    const VD t = vbslq_f64(vcgtq_f64(lo, x), lo, x);
    return vbslq_f64(vcltq_f64(hi, t), hi, t);
}
inline VD load_f64(const char* p) noexcept { return vreinterpretq_f64_u8(vld1q_u8(u8(p))); }
inline void store_f64(char* p, VD v) noexcept { vst1q_u8(u8(p), vreinterpretq_u8_f64(v)); }
inline VF load_f32(const char* p) noexcept { return vreinterpretq_f32_u8(vld1q_u8(u8(p))); }
inline void store_f32(char* p, VF v) noexcept { vst1q_u8(u8(p), vreinterpretq_u8_f32(v)); }
inline VF load_f16(const char* p) noexcept { return vcvt_f32_f16(vreinterpret_f16_u8(vld1_u8(u8(p)))); }
inline void store_f16(char* p, VF v) noexcept {
    // FCVTN rounds to nearest even (the FPCR default) and quiets a NaN keeping its top
    // payload bits, as float_to_half does
    vst1_u8(u8(p), vreinterpret_u8_f16(vcvt_f16_f32(v)));
}
inline VF load_bf16(const char* p) noexcept {
    return vreinterpretq_f32_u32(vshll_n_u16(vreinterpret_u16_u8(vld1_u8(u8(p))), 16));
}
inline void store_bf16(char* p, VF v) noexcept {
    // round to nearest even on the bit pattern; NaN -> quiet NaN (same rule as float_to_bf16)
    const uint32x4_t u = vreinterpretq_u32_f32(v);
    const uint32x4_t lsb = vandq_u32(vshrq_n_u32(u, 16), vdupq_n_u32(1));
    const uint32x4_t r = vshrq_n_u32(vaddq_u32(u, vaddq_u32(lsb, vdupq_n_u32(0x7fff))), 16);
    const uint32x4_t nanr = vorrq_u32(vshrq_n_u32(u, 16), vdupq_n_u32(0x40));
    const uint32x4_t ordered = vceqq_f32(v, v);  // all ones where v is not NaN
    vst1_u8(u8(p), vreinterpret_u8_u16(vmovn_u32(vbslq_u32(ordered, r, nanr))));
}
#endif

// Native<D>: T, the type element D is computed in; scalar load/store of element k; and on
// the SIMD targets V, kW lanes, and vector load/store of elements k .. k + kW - 1.
template <DType D>
struct Native;
template <>
struct Native<DType::F64> {
    using T = double;
    static T load1(const char* p, std::size_t k) noexcept { return Elem<DType::F64>::load(p, k); }
    static void store1(char* p, std::size_t k, T v) noexcept { std::memcpy(p + 8 * k, &v, 8); }
#if defined(GRADCLIP_VECTOR)
    using V = VD;
    static constexpr std::size_t kW = ::gradclip::GRADCLIP_NS::kW;
    static V load(const char* p, std::size_t k) noexcept { return load_f64(p + 8 * k); }
    static void store(char* p, std::size_t k, V v) noexcept { store_f64(p + 8 * k, v); }
#endif
};
template <DType D>
struct NarrowNative {  // float32, float16, bfloat16: computed in float32
    using T = float;
    static T load1(const char* p, std::size_t k) noexcept { return Elem<D>::loadf(p, k); }
    static void store1(char* p, std::size_t k, T v) noexcept { Elem<D>::storef(p, k, v); }
#if defined(GRADCLIP_VECTOR)
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
#endif
};
template <>
struct Native<DType::F32> : NarrowNative<DType::F32> {};
template <>
struct Native<DType::F16> : NarrowNative<DType::F16> {};
template <>
struct Native<DType::BF16> : NarrowNative<DType::BF16> {};

// x = op(x) for every element: whole 256-byte blocks (4 cache lines, prefetched ahead), then
// whole vectors, then a scalar tail. op has scalar(T) and, on SIMD targets, vec(V).
template <DType D, class Op>
void map_inplace(void* vp, std::size_t n, const Op& op) noexcept {
    using N = Native<D>;
    char* b = static_cast<char*>(vp);
    std::size_t k = 0;
#if defined(GRADCLIP_VECTOR)
    constexpr std::size_t kBlockBytes = 256;
    constexpr std::size_t kBlock = kBlockBytes / itemsize(D);
    for (; k + kBlock <= n; k += kBlock) {
        prefetch_ahead(b + k * itemsize(D), kBlockBytes);
        for (std::size_t j = 0; j < kBlock; j += N::kW) N::store(b, k + j, op.vec(N::load(b, k + j)));
    }
    for (; k + N::kW <= n; k += N::kW) N::store(b, k, op.vec(N::load(b, k)));
#endif
    for (; k < n; ++k) N::store1(b, k, op.scalar(N::load1(b, k)));
}

// x * coef, with coef rounded to the computing type (float for the narrow types).
template <DType D>
struct ScaleOp {
    using T = typename Native<D>::T;
    T c;
    T scalar(T x) const noexcept { return x * c; }
#if defined(GRADCLIP_VECTOR)
    typename Native<D>::V vc = vset(c);
    typename Native<D>::V vec(typename Native<D>::V x) const noexcept { return vmul(x, vc); }
#endif
};

// min(hi, max(lo, x)) with NaN kept (vclamp above); for lo <= hi the scalar form has the same
// behaviour, zeros of either sign included.
template <DType D>
struct ClampOp {
    using T = typename Native<D>::T;
    T lo, hi;
    T scalar(T x) const noexcept { return x < lo ? lo : (x > hi ? hi : x); }
#if defined(GRADCLIP_VECTOR)
    typename Native<D>::V vlo = vset(lo), vhi = vset(hi);
    typename Native<D>::V vec(typename Native<D>::V x) const noexcept { return vclamp(x, vlo, vhi); }
#endif
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
std::uint64_t probe_read(const void* vp, std::size_t n) noexcept {
    const char* b = static_cast<const char*>(vp);
    std::size_t k = 0;
    std::uint64_t out = 0;
#if defined(GRADCLIP_TARGET_AVX512)
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (; k + 32 <= n; k += 32) {
        const char* q = b + 8 * k;
        for (std::size_t j = 0; j < 256; j += 64) _mm_prefetch(q + 4096 + j, _MM_HINT_T0);
        a0 = _mm512_xor_si512(a0, _mm512_loadu_si512(q));
        a1 = _mm512_xor_si512(a1, _mm512_loadu_si512(q + 64));
        a2 = _mm512_xor_si512(a2, _mm512_loadu_si512(q + 128));
        a3 = _mm512_xor_si512(a3, _mm512_loadu_si512(q + 192));
    }
    out = static_cast<std::uint64_t>(
        _mm512_reduce_or_epi64(_mm512_xor_si512(_mm512_xor_si512(a0, a1), _mm512_xor_si512(a2, a3))));
#elif defined(GRADCLIP_TARGET_AVX2)
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (; k + 16 <= n; k += 16) {
        const char* q = b + 8 * k;
        for (std::size_t j = 0; j < 128; j += 64) _mm_prefetch(q + 4096 + j, _MM_HINT_T0);
        a0 = _mm256_xor_si256(a0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q)));
        a1 = _mm256_xor_si256(a1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 32)));
        a2 = _mm256_xor_si256(a2, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 64)));
        a3 = _mm256_xor_si256(a3, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 96)));
    }
    alignas(32) std::uint64_t t[4];
    _mm256_store_si256(reinterpret_cast<__m256i*>(t),
                       _mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3)));
    out = t[0] ^ t[1] ^ t[2] ^ t[3];
#elif defined(GRADCLIP_TARGET_NEON)
    uint64x2_t a0 = vdupq_n_u64(0), a1 = a0, a2 = a0, a3 = a0;
    for (; k + 8 <= n; k += 8) {
        const char* q = b + 8 * k;
        a0 = veorq_u64(a0, vreinterpretq_u64_u8(vld1q_u8(u8(q))));
        a1 = veorq_u64(a1, vreinterpretq_u64_u8(vld1q_u8(u8(q + 16))));
        a2 = veorq_u64(a2, vreinterpretq_u64_u8(vld1q_u8(u8(q + 32))));
        a3 = veorq_u64(a3, vreinterpretq_u64_u8(vld1q_u8(u8(q + 48))));
    }
    const uint64x2_t a = veorq_u64(veorq_u64(a0, a1), veorq_u64(a2, a3));
    out = vgetq_lane_u64(a, 0) ^ vgetq_lane_u64(a, 1);
#endif
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
    std::size_t k = 0;
#if defined(GRADCLIP_TARGET_AVX512)
    const __m512i d = _mm512_set1_epi64(static_cast<long long>(k64));
    for (; k + 32 <= n; k += 32) {
        prefetch_ahead(b + 8 * k, 256);
        for (std::size_t j = 0; j < 4; ++j) {
            char* q = b + 8 * k + 64 * j;
            _mm512_storeu_si512(q, _mm512_add_epi64(_mm512_loadu_si512(q), d));
        }
    }
#elif defined(GRADCLIP_TARGET_AVX2)
    const __m256i d = _mm256_set1_epi64x(static_cast<long long>(k64));
    for (; k + 16 <= n; k += 16) {
        prefetch_ahead(b + 8 * k, 128);
        for (std::size_t j = 0; j < 4; ++j) {
            auto* q = reinterpret_cast<__m256i*>(b + 8 * k + 32 * j);
            _mm256_storeu_si256(q, _mm256_add_epi64(_mm256_loadu_si256(q), d));
        }
    }
#elif defined(GRADCLIP_TARGET_NEON)
    const uint64x2_t d = vdupq_n_u64(k64);
    for (; k + 8 <= n; k += 8) {
        for (std::size_t j = 0; j < 4; ++j) {
            char* q = b + 8 * k + 16 * j;
            vst1q_u8(u8(q), vreinterpretq_u8_u64(vaddq_u64(vreinterpretq_u64_u8(vld1q_u8(u8(q))), d)));
        }
    }
#endif
    for (; k < n; ++k) {
        std::uint64_t w;
        std::memcpy(&w, b + 8 * k, 8);
        w += k64;
        std::memcpy(b + 8 * k, &w, 8);
    }
}

// The table is indexed by DType: F16, BF16, F32, F64.
const KernelTable kTable = {
    GRADCLIP_TARGET_NAME,
    probe_read,
    probe_rw,
    {sum_sq<DType::F16>, sum_sq<DType::BF16>, sum_sq<DType::F32>, sum_sq<DType::F64>},
    {sum_abs<DType::F16>, sum_abs<DType::BF16>, sum_abs<DType::F32>, sum_abs<DType::F64>},
    {sum_pow<DType::F16>, sum_pow<DType::BF16>, sum_pow<DType::F32>, sum_pow<DType::F64>},
    {sum_sq_many<DType::F16>, sum_sq_many<DType::BF16>, sum_sq_many<DType::F32>, sum_sq_many<DType::F64>},
    {sum_abs_many<DType::F16>, sum_abs_many<DType::BF16>, sum_abs_many<DType::F32>, sum_abs_many<DType::F64>},
#if defined(GRADCLIP_TARGET_AVX512)
    {sum_sq_pair<DType::F16>, sum_sq_pair<DType::BF16>, sum_sq_pair<DType::F32>, sum_sq_pair<DType::F64>},
#else
    {nullptr, nullptr, nullptr, nullptr},
#endif
    {max_abs<DType::F16>, max_abs<DType::BF16>, max_abs<DType::F32>, max_abs<DType::F64>},
    {scale<DType::F16>, scale<DType::BF16>, scale<DType::F32>, scale<DType::F64>},
    {clamp<DType::F16>, clamp<DType::BF16>, clamp<DType::F32>, clamp<DType::F64>},
};

}  // namespace

const KernelTable& kernel_table() noexcept { return kTable; }

}  // namespace gradclip::GRADCLIP_NS
