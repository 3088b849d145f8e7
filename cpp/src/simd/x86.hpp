// What the two x86 layers (simd/avx2.hpp, simd/avx512.hpp) share, included at the end of
// each: the block load made of vload<D>, the clamp, and software prefetch.
#pragma once

#include <immintrin.h>

#include <cstddef>

// Software prefetch distances in bytes (see prefetch_ahead): into L1 a little ahead, into L2
// further ahead. Override with -DGRADCLIP_PREFETCH_L1=... / -DGRADCLIP_PREFETCH_L2=...
#ifndef GRADCLIP_PREFETCH_L1
#define GRADCLIP_PREFETCH_L1 1024
#endif
#ifndef GRADCLIP_PREFETCH_L2
#define GRADCLIP_PREFETCH_L2 4096
#endif

namespace gradclip::simd {
namespace {

// The kAcc vectors of the full block of kLanes elements that starts at element k.
template <DType D>
inline void vload_block(const char* p, std::size_t k, VD* x) noexcept {
    for (std::size_t j = 0; j < kAcc; ++j) x[j] = vload<D>(p, k + j * kW);
}

// NaN kept: x is the second operand of max/min, which (v)maxps / (v)minps return when either
// operand is NaN (and when both are zeros).
template <class V>
inline V vclamp(V x, V lo, V hi) noexcept {
    return vmin(hi, vmax(lo, x));
}

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

}  // namespace
}  // namespace gradclip::simd
