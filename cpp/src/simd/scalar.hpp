// The scalar SIMD layer (the baseline target): portable C++, no intrinsics, one element per
// "vector". It is also the reference for what a layer provides; every simd/<layer>.hpp
// defines, in gradclip::simd:
//
//   reductions, in float64:
//     VD, kW, kAcc        the vector of doubles, its width, and kAcc = kLanes / kW: the 32
//                         lanes of kernels.hpp live in kAcc registers, lane j*kW + i in
//                         lane i of register j
//     vload_block<D>(p, k, x)            x[0 .. kAcc): elements k .. k + kLanes - 1
//     vload_part<D>(p, k, lo, hi)        lanes [lo, hi) of the kW-group at element k (k may be
//                                        negative or past the end: only those lanes are read),
//                                        +0.0 in the others
//     RawBlock<D>         optional (simd/common.hpp): a pending block of the batched kernel
//                         kept as loaded, for the types where that pays
//     vzero vset vadd vmul vabs vdiv vsqrt vmax vstore vloadu_lanes
//     vfma(a, b, c)       a * b + c; used only where a * b is exact, so with one rounding or
//                         two it gives the same bits
//     vhmax(acc)          max over the kAcc registers (NaN is NanTrack's business)
//     NanTrack            add(x) for every block read, any(): was any x NaN
//     kPairKernel         whether this target builds the two-stream kernel (AccPairFn)
//   element-wise writes:
//     VF, kWF             the vector of floats the narrow types compute in, its width
//     vset(float) vmul(VF, VF)
//     vclamp(x, lo, hi)   for VF and VD: min(hi, max(lo, x)) with x86's max(a, b) =
//                         a > b ? a : b and min(a, b) = a < b ? a : b, so a NaN or a zero
//                         of either sign in x comes through with its bits
//     load_f64/f32/f16/bf16, store_f64/f32/f16/bf16   kW resp. kWF elements at p, converted
//                         exactly to float64 / float32, rounded to nearest even on the store
//                         (NaN kept quiet) as half.hpp's scalar conversions do
//   memory:
//     Prefetch, prefetch_policy()        software prefetch where it pays (or nothing): a
//                                        kernel takes prefetch_policy() once and calls
//                                        .ahead(p, bytes) before each block it reads
//     probe_read_vec / probe_rw_vec      the vector body of the bandwidth probes: they do a
//                                        prefix of the words and return its length
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "simd/common.hpp"

namespace gradclip::simd {
namespace {

inline constexpr bool kPairKernel = false;

// ---------------------------------------------------------------- reductions
using VD = double;
constexpr std::size_t kW = 1;
constexpr std::size_t kAcc = kLanes / kW;

template <DType D>
inline void vload_block(const char* p, std::size_t k, VD* x) noexcept {
    for (std::size_t j = 0; j < kAcc; ++j) x[j] = Elem<D>::load(p, k + j);
}
template <DType D>
inline VD vload_part(const char* p, std::ptrdiff_t k, std::size_t lo, std::size_t hi) noexcept {
    return lo < hi ? Elem<D>::load(addr(p, k * static_cast<std::ptrdiff_t>(itemsize(D))), 0) : 0.0;
}
inline VD vzero() noexcept { return 0.0; }
inline VD vset(double x) noexcept { return x; }
inline VD vadd(VD a, VD b) noexcept { return a + b; }
inline VD vmul(VD a, VD b) noexcept { return a * b; }
// Not std::fma: without FMA hardware that is a slow library call, and a * b is exact here.
inline VD vfma(VD a, VD b, VD c) noexcept { return a * b + c; }
inline VD vabs(VD a) noexcept { return std::fabs(a); }
inline VD vdiv(VD a, VD b) noexcept { return a / b; }
inline VD vsqrt(VD a) noexcept { return std::sqrt(a); }
inline VD vmax(VD a, VD b) noexcept { return a > b ? a : b; }
inline void vstore(double* p, VD a) noexcept { *p = a; }
inline VD vloadu_lanes(const double* p) noexcept { return *p; }
inline double vhmax(const VD* acc) noexcept {
    double m = acc[0];
    for (std::size_t j = 1; j < kAcc; ++j) m = vmax(acc[j], m);
    return m;
}
struct NanTrack {
    bool m = false;
    void add(VD x) noexcept { m = m || x != x; }
    bool any() const noexcept { return m; }
};

// ---------------------------------------------------------------- element-wise writes
using VF = float;
constexpr std::size_t kWF = 1;
inline VF vset(float x) noexcept { return x; }
inline VF vmul(VF a, VF b) noexcept { return a * b; }
template <class V>
inline V vclamp(V x, V lo, V hi) noexcept {
    const V t = lo > x ? lo : x;
    return hi < t ? hi : t;
}
inline VD load_f64(const char* p) noexcept { return Elem<DType::F64>::load(p, 0); }
inline void store_f64(char* p, VD v) noexcept { Elem<DType::F64>::store(p, 0, v); }
inline VF load_f32(const char* p) noexcept { return Elem<DType::F32>::loadf(p, 0); }
inline void store_f32(char* p, VF v) noexcept { Elem<DType::F32>::storef(p, 0, v); }
inline VF load_f16(const char* p) noexcept { return Elem<DType::F16>::loadf(p, 0); }
inline void store_f16(char* p, VF v) noexcept { Elem<DType::F16>::storef(p, 0, v); }
inline VF load_bf16(const char* p) noexcept { return Elem<DType::BF16>::loadf(p, 0); }
inline void store_bf16(char* p, VF v) noexcept { Elem<DType::BF16>::storef(p, 0, v); }

// ---------------------------------------------------------------- memory
struct Prefetch {
    bool on = false;
    void ahead(const void*, std::size_t) const noexcept {}
};
inline Prefetch prefetch_policy() noexcept { return Prefetch{}; }
inline std::size_t probe_read_vec(const char*, std::size_t, std::uint64_t&, Prefetch) noexcept { return 0; }
inline std::size_t probe_rw_vec(char*, std::size_t, std::uint64_t, Prefetch) noexcept { return 0; }

}  // namespace
}  // namespace gradclip::simd
