// The avx2 SIMD layer (what it provides: simd/scalar.hpp). AVX2 with FMA and F16C: -mavx2 -mfma -mf16c. 4 doubles or 8
// floats a register.
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "simd/common.hpp"

namespace gradclip::simd {
namespace {

inline constexpr bool kPairKernel = false;  // one set of lanes takes half the 16 registers

// ---------------------------------------------------------------- reductions
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
// Lanes [lo, hi) of a 4-lane group whose lane 0 is element k; see simd/avx512.hpp.
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
// RawBlock<F32>: a pending float32 block of the batched kernel as four 8-float registers,
// filled by masked loads (one per 32 bytes, where a lane group at a time takes eight 4-lane
// ones) and widened once, when full. AVX2's masked loads zero the lanes outside the mask, so
// a merge is an OR into lanes that are +0.0: the same bits. Named registers rather than an
// array, so that the compiler keeps them in registers from piece to piece.
template <>
struct RawBlock<DType::F32> {
    static constexpr bool kHave = true;
    static_assert(kLanes == 32 && kW == 4, "four 8-float registers, two 4-double accumulators each");
    __m256 v0, v1, v2, v3;
    // lanes [lo, hi) of the 8-float group g of the block whose lane 0 is element k, +0.0 elsewhere
    // (vlo = lo - 1 and vhi = hi in every lane)
    static __m256 part(const char* p, std::ptrdiff_t k, __m256i vlo, __m256i vhi, int g) noexcept {
        const int b = 8 * g;
        const __m256i idx = _mm256_setr_epi32(b, b + 1, b + 2, b + 3, b + 4, b + 5, b + 6, b + 7);
        const __m256i m = _mm256_and_si256(_mm256_cmpgt_epi32(vhi, idx), _mm256_cmpgt_epi32(idx, vlo));
        return _mm256_maskload_ps(reinterpret_cast<const float*>(addr(p, (k + b) * 4)), m);
    }
    void zero() noexcept { v0 = v1 = v2 = v3 = _mm256_setzero_ps(); }
    void merge(const char* p, std::ptrdiff_t k, std::size_t lo, std::size_t hi) noexcept {
        const __m256i vlo = _mm256_set1_epi32(static_cast<int>(lo) - 1);
        const __m256i vhi = _mm256_set1_epi32(static_cast<int>(hi));
        v0 = _mm256_or_ps(v0, part(p, k, vlo, vhi, 0));
        v1 = _mm256_or_ps(v1, part(p, k, vlo, vhi, 1));
        v2 = _mm256_or_ps(v2, part(p, k, vlo, vhi, 2));
        v3 = _mm256_or_ps(v3, part(p, k, vlo, vhi, 3));
    }
    void load(const char* p, std::ptrdiff_t k, std::size_t hi) noexcept {
        zero();
        merge(p, k, 0, hi);
    }
    static void widen2(__m256 v, VD* x) noexcept {
        x[0] = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
        x[1] = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
    }
    void widen(VD* x) const noexcept {
        widen2(v0, x);
        widen2(v1, x + 2);
        widen2(v2, x + 4);
        widen2(v3, x + 6);
    }
};
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

// ---------------------------------------------------------------- element-wise writes
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

}  // namespace
}  // namespace gradclip::simd

// vload_block, vclamp and Prefetch, over the definitions above
#include "simd/x86.hpp"

namespace gradclip::simd {
namespace {

// ---------------------------------------------------------------- bandwidth probes
inline std::size_t probe_read_vec(const char* b, std::size_t n, std::uint64_t& out, Prefetch pf) noexcept {
    std::size_t k = 0;
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (; k + 16 <= n; k += 16) {
        const char* q = b + 8 * k;
        if (pf.on)
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
    return k;
}
inline std::size_t probe_rw_vec(char* b, std::size_t n, std::uint64_t k64, Prefetch pf) noexcept {
    std::size_t k = 0;
    const __m256i d = _mm256_set1_epi64x(static_cast<long long>(k64));
    for (; k + 16 <= n; k += 16) {
        pf.ahead(b + 8 * k, 128);
        for (std::size_t j = 0; j < 4; ++j) {
            auto* q = reinterpret_cast<__m256i*>(b + 8 * k + 32 * j);
            _mm256_storeu_si256(q, _mm256_add_epi64(_mm256_loadu_si256(q), d));
        }
    }
    return k;
}

}  // namespace
}  // namespace gradclip::simd
