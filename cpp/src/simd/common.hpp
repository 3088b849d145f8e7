// What every target's SIMD layer (simd/<layer>.hpp) builds on: scalar access to one element
// of each type, and address arithmetic for masked loads. Portable C++.
//
// Everything in simd/ has internal linkage (an unnamed namespace): each header is compiled
// into one kernel copy per target, each with its own -m flags, and a function with external
// linkage shared between them could be resolved by the linker to the AVX-512 copy and then
// run on a CPU without AVX-512 (half.hpp is static inline for the same reason).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "gradclip/types.hpp"
#include "half.hpp"
#include "kernels.hpp"

namespace gradclip::simd {
namespace {

// Element k of type T at p, and its store: memcpy, as the data may be unaligned (a view at an
// odd byte offset is legal input).
template <class T>
inline T raw_load(const char* p, std::size_t k) noexcept {
    T v;
    std::memcpy(&v, p + sizeof(T) * k, sizeof(T));
    return v;
}
template <class T>
inline void raw_store(char* p, std::size_t k, T v) noexcept {
    std::memcpy(p + sizeof(T) * k, &v, sizeof(T));
}

template <DType D>
struct Elem;

template <>
struct Elem<DType::F64> {
    static double load(const char* p, std::size_t k) noexcept { return raw_load<double>(p, k); }
    static void store(char* p, std::size_t k, double v) noexcept { raw_store(p, k, v); }
};
template <>
struct Elem<DType::F32> {
    static float loadf(const char* p, std::size_t k) noexcept { return raw_load<float>(p, k); }
    static double load(const char* p, std::size_t k) noexcept { return loadf(p, k); }
    static void storef(char* p, std::size_t k, float v) noexcept { raw_store(p, k, v); }
};
// float16 and bfloat16: 16-bit patterns, computed in float32 (half.hpp's conversions).
template <float (*ToFloat)(std::uint16_t) noexcept, std::uint16_t (*FromFloat)(float) noexcept>
struct Elem16 {
    static float loadf(const char* p, std::size_t k) noexcept { return ToFloat(raw_load<std::uint16_t>(p, k)); }
    static double load(const char* p, std::size_t k) noexcept { return loadf(p, k); }
    static void storef(char* p, std::size_t k, float v) noexcept { raw_store(p, k, FromFloat(v)); }
};
template <>
struct Elem<DType::F16> : Elem16<detail::half_to_float, detail::float_to_half> {};
template <>
struct Elem<DType::BF16> : Elem16<detail::bf16_to_float, detail::float_to_bf16> {};

// RawBlock<D>: a pending block of kLanes elements of type D held as loaded, before widening,
// for the batched kernel (kernels.cpp: accumulate_many). None by default; a layer that has one
// for D specializes it with kHave = true and zero(), merge(p, k, lo, hi) (lanes [lo, hi) of
// the block whose lane 0 is element k, into lanes that are +0.0; the others unchanged),
// load(p, k, hi) (lanes [0, hi), +0.0 in the others) and widen(x) (the block as x[0 .. kAcc)).
template <DType D>
struct RawBlock {
    static constexpr bool kHave = false;
};

// The bits [lo, hi) of a 32-bit lane mask (lo <= hi <= 32).
inline std::uint32_t lane_bits(std::size_t lo, std::size_t hi) noexcept {
    return static_cast<std::uint32_t>(((std::uint64_t{1} << hi) - 1u) & ~((std::uint64_t{1} << lo) - 1u));
}

// p + off for an offset that may point before p: masked loads address whole vector groups
// of which only some lanes are inside the array. Computed on integers, not as pointer
// arithmetic outside the array.
inline const char* addr(const char* p, std::ptrdiff_t off) noexcept {
    return reinterpret_cast<const char*>(reinterpret_cast<std::uintptr_t>(p) + static_cast<std::uintptr_t>(off));
}

}  // namespace
}  // namespace gradclip::simd
