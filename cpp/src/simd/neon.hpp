// The neon SIMD layer (what it provides: simd/scalar.hpp): AArch64 Advanced SIMD, no flags
// (every AArch64 CPU has it). 2 doubles or 4 floats a register.
#pragma once

#if defined(__AARCH64EB__)
#error "the NEON kernels load elements as bytes and assume little-endian AArch64"
#endif

#include <arm_neon.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>

#include "simd/common.hpp"

namespace gradclip::simd {
namespace {

inline constexpr bool kPairKernel = false;  // not measured on an ARM core

// ---------------------------------------------------------------- reductions
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
// end), zeros elsewhere; see simd/avx512.hpp. No masked loads in NEON: the lanes inside
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

// ---------------------------------------------------------------- element-wise writes
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

// ---------------------------------------------------------------- memory
// None on NEON: the bandwidth that software prefetch wins back was measured on Intel x86
// cores (on AMD Zen 4 it costs bandwidth instead); whether it helps an ARM core's stream prefetchers has not been
// measured, so the NEON copy issues none rather than guess.
struct Prefetch {
    bool on = false;
    void ahead(const void*, std::size_t) const noexcept {}
};
inline Prefetch prefetch_policy() noexcept { return Prefetch{}; }

// ---------------------------------------------------------------- bandwidth probes
inline std::size_t probe_read_vec(const char* b, std::size_t n, std::uint64_t& out, Prefetch) noexcept {
    std::size_t k = 0;
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
    return k;
}
inline std::size_t probe_rw_vec(char* b, std::size_t n, std::uint64_t k64, Prefetch) noexcept {
    std::size_t k = 0;
    const uint64x2_t d = vdupq_n_u64(k64);
    for (; k + 8 <= n; k += 8) {
        for (std::size_t j = 0; j < 4; ++j) {
            char* q = b + 8 * k + 16 * j;
            vst1q_u8(u8(q), vreinterpretq_u8_u64(vaddq_u64(vreinterpretq_u64_u8(vld1q_u8(u8(q))), d)));
        }
    }
    return k;
}

}  // namespace
}  // namespace gradclip::simd
