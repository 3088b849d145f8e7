// Scalar float16 / bfloat16 <-> float32 conversions, portable C++ (no intrinsics).
// Internal linkage on purpose: this header is compiled into TUs built with different -m
// flags, and an inline function shared across them could be resolved by the linker to the
// AVX-512 copy and then run on a CPU without AVX-512.
// Used by the baseline target, by vector tails and by the strided path. They round to
// nearest even like the hardware conversions (vcvtps2ph with imm 0, i.e. IEEE 754
// roundTiesToEven), so every target writes the same bits for non-NaN values.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>

namespace gradclip::detail {

static inline std::uint32_t f32_bits(float f) noexcept {
    std::uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}

static inline float f32_from_bits(std::uint32_t u) noexcept {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

// binary64 -> binary32, rounded to nearest even (IEEE 754's default), with out-of-range
// values going to +-inf or +-FLT_MAX explicitly: a plain cast of a finite double beyond the
// float range is undefined behaviour in C++.
static inline float narrow_to_float(double v) noexcept {
    const double a = v < 0 ? -v : v;
    if (a > 0x1.fffffep127) {  // beyond FLT_MAX
        // FLT_MAX + half an ulp (2^103) and above round to inf (the tie goes to the even 2^128)
        const float big = a >= 0x1.ffffffp127 ? std::numeric_limits<float>::infinity() : 0x1.fffffep127f;
        return v < 0 ? -big : big;
    }
    return static_cast<float>(v);  // in range, or NaN
}

// binary16 -> binary32, exact.
static inline float half_to_float(std::uint16_t h) noexcept {
    const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
    const std::uint32_t exp = (h >> 10) & 0x1fu;
    const std::uint32_t mant = h & 0x3ffu;
    if (exp == 0) {
        // zero or subnormal: mant * 2^-24 is exact in float
        const float mag = static_cast<float>(mant) * 5.9604644775390625e-8f;
        return sign ? -mag : mag;
    }
    if (exp == 31) return f32_from_bits(sign | 0x7f800000u | (mant << 13));
    return f32_from_bits(sign | ((exp + 112u) << 23) | (mant << 13));
}

// binary32 -> binary16, round to nearest even; overflow gives inf, NaN stays a quiet NaN.
static inline std::uint16_t float_to_half(float f) noexcept {
    const std::uint32_t u = f32_bits(f);
    const std::uint32_t sign = (u >> 16) & 0x8000u;
    const std::uint32_t x = u & 0x7fffffffu;
    if (x >= 0x7f800000u) {  // inf or NaN
        if (x == 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7c00u);
        return static_cast<std::uint16_t>(sign | 0x7e00u | ((x >> 13) & 0x3ffu));
    }
    if (x >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // >= 65520
    if (x >= 0x38800000u) {
        // normal result: rebias the exponent (127 -> 15) and round the 13 dropped bits;
        // a carry out of the mantissa correctly bumps the exponent.
        const std::uint32_t r = x - ((127u - 15u) << 23);
        const std::uint32_t h = (r + 0xfffu + ((r >> 13) & 1u)) >> 13;
        return static_cast<std::uint16_t>(sign | h);
    }
    if (x < 0x33000000u) return static_cast<std::uint16_t>(sign);  // < 2^-25 (ties to 0)
    // subnormal result: value / 2^-24 rounded to an integer (1024 encodes 2^-14 exactly)
    const std::uint32_t e = x >> 23;                      // 102 .. 112
    const std::uint32_t m = (x & 0x7fffffu) | 0x800000u;  // 24-bit significand
    const std::uint32_t shift = 126u - e;                 // 14 .. 24
    std::uint32_t q = m >> shift;
    const std::uint32_t rem = m & ((1u << shift) - 1u);
    const std::uint32_t halfway = 1u << (shift - 1u);
    if (rem > halfway || (rem == halfway && (q & 1u))) ++q;
    return static_cast<std::uint16_t>(sign | q);
}

// bfloat16 -> binary32, exact.
static inline float bf16_to_float(std::uint16_t b) noexcept {
    return f32_from_bits(static_cast<std::uint32_t>(b) << 16);
}

// binary32 -> bfloat16, round to nearest even; NaN stays a quiet NaN.
static inline std::uint16_t float_to_bf16(float f) noexcept {
    const std::uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40u);
    return static_cast<std::uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

}  // namespace gradclip::detail
