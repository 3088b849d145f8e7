// The avx512 SIMD layer (what it provides: simd/scalar.hpp). AVX-512 (F, BW, DQ, VL, with AVX2, FMA and F16C):
// -mavx512f -mavx512bw -mavx512dq -mavx512vl -mavx2 -mfma -mf16c. 8 doubles or 16 floats a register.
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "simd/common.hpp"

namespace gradclip::simd {
namespace {

// two sets of 32 lanes fit in the 32 registers (AccPairFn)
inline constexpr bool kPairKernel = true;

// ---------------------------------------------------------------- reductions
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
// RawBlock<F32>: a pending float32 block of the batched kernel as four 8-float registers,
// filled by merge-masked loads (cut from one 32-bit lane mask, no branch per register) and
// widened once, when full, instead of widening and adding every piece's part of it. Named
// registers rather than an array, so that the compiler keeps them in registers from piece to
// piece. On Zen 4, W4 (100 arrays of 100 float32): -0.4 us a call (bench/README.md).
template <>
struct RawBlock<DType::F32> {
    static constexpr bool kHave = true;
    static_assert(kLanes == 32 && kW == 8, "four 8-float registers, one per 8-double accumulator");
    __m256 v0, v1, v2, v3;
    static const char* at(const char* p, std::ptrdiff_t k, int g) noexcept { return addr(p, (k + 8 * g) * 4); }
    static __mmask8 part(std::uint32_t mk, int g) noexcept { return static_cast<__mmask8>(mk >> (8 * g)); }
    void zero() noexcept { v0 = v1 = v2 = v3 = _mm256_setzero_ps(); }
    void merge(const char* p, std::ptrdiff_t k, std::size_t lo, std::size_t hi) noexcept {
        const std::uint32_t mk = lane_bits(lo, hi);
        v0 = _mm256_mask_loadu_ps(v0, part(mk, 0), at(p, k, 0));
        v1 = _mm256_mask_loadu_ps(v1, part(mk, 1), at(p, k, 1));
        v2 = _mm256_mask_loadu_ps(v2, part(mk, 2), at(p, k, 2));
        v3 = _mm256_mask_loadu_ps(v3, part(mk, 3), at(p, k, 3));
    }
    void load(const char* p, std::ptrdiff_t k, std::size_t hi) noexcept {
        zero();
        merge(p, k, 0, hi);
    }
    void widen(VD* x) const noexcept {
        x[0] = _mm512_cvtps_pd(v0);
        x[1] = _mm512_cvtps_pd(v1);
        x[2] = _mm512_cvtps_pd(v2);
        x[3] = _mm512_cvtps_pd(v3);
    }
};
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

// ---------------------------------------------------------------- element-wise writes
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

}  // namespace
}  // namespace gradclip::simd

// vload_block, vclamp and Prefetch, over the definitions above
#include "simd/x86.hpp"

namespace gradclip::simd {
namespace {

// ---------------------------------------------------------------- bandwidth probes
inline std::size_t probe_read_vec(const char* b, std::size_t n, std::uint64_t& out, Prefetch pf) noexcept {
    std::size_t k = 0;
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (; k + 32 <= n; k += 32) {
        const char* q = b + 8 * k;
        if (pf.on)
            for (std::size_t j = 0; j < 256; j += 64) _mm_prefetch(q + 4096 + j, _MM_HINT_T0);
        a0 = _mm512_xor_si512(a0, _mm512_loadu_si512(q));
        a1 = _mm512_xor_si512(a1, _mm512_loadu_si512(q + 64));
        a2 = _mm512_xor_si512(a2, _mm512_loadu_si512(q + 128));
        a3 = _mm512_xor_si512(a3, _mm512_loadu_si512(q + 192));
    }
    out = static_cast<std::uint64_t>(
        _mm512_reduce_or_epi64(_mm512_xor_si512(_mm512_xor_si512(a0, a1), _mm512_xor_si512(a2, a3))));
    return k;
}
inline std::size_t probe_rw_vec(char* b, std::size_t n, std::uint64_t k64, Prefetch pf) noexcept {
    std::size_t k = 0;
    const __m512i d = _mm512_set1_epi64(static_cast<long long>(k64));
    for (; k + 32 <= n; k += 32) {
        pf.ahead(b + 8 * k, 256);
        for (std::size_t j = 0; j < 4; ++j) {
            char* q = b + 8 * k + 64 * j;
            _mm512_storeu_si512(q, _mm512_add_epi64(_mm512_loadu_si512(q), d));
        }
    }
    return k;
}

}  // namespace
}  // namespace gradclip::simd
