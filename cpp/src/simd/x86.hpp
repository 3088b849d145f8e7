// What the two x86 layers (simd/avx2.hpp, simd/avx512.hpp) share, included at the end of
// each: the block load made of vload<D>, the clamp, and software prefetch.
#pragma once

#include <cpuid.h>
#include <immintrin.h>

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <cstring>

// Software prefetch distances in bytes (see Prefetch): into L1 a little ahead, into L2
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

// Whether software prefetch pays on this CPU. On a 2-core Xeon with AVX-512 the hardware
// prefetchers alone leave a loop that converts each float32 to float64 at ~0.8 of a plain
// float32 loop's read rate; one distance into L1 gets it to ~0.9 (the best of 1-8 KiB), both
// together to ~1.0-1.05 (256 MiB). On AMD Zen 4 (EPYC, family 19h model 11h) the same
// prefetches cost a fifth of the bandwidth instead, in both the read pass and the read+write
// pass and with either vector width (one thread, 256 MiB of float32: the read pass at ~0.8
// of the plain loop with them, ~1.05-1.1 without; the one into L1 is the one that hurts, the
// one into L2 alone is neutral): Zen's own stream prefetchers keep ahead of the loop, and
// PREFETCHT0 1 KiB ahead only competes with them for the core's outstanding misses. So AMD's
// Zen family (17h and later, also Hygon's) gets none; every other x86 CPU keeps them.
// GRADCLIP_SW_PREFETCH=0 or 1 in the environment overrides the choice (read once, when the
// target is chosen), to measure both ways on one machine.
inline bool sw_prefetch_pays() noexcept {
    if (const char* e = std::getenv("GRADCLIP_SW_PREFETCH")) {
        if (std::strcmp(e, "0") == 0) return false;
        if (std::strcmp(e, "1") == 0) return true;
    }
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (__get_cpuid(0, &a, &b, &c, &d) == 0) return true;
    char vendor[13];
    std::memcpy(vendor, &b, 4);
    std::memcpy(vendor + 4, &d, 4);
    std::memcpy(vendor + 8, &c, 4);
    vendor[12] = '\0';
    const bool amd = std::strcmp(vendor, "AuthenticAMD") == 0 || std::strcmp(vendor, "HygonGenuine") == 0;
    if (!amd || __get_cpuid(1, &a, &b, &c, &d) == 0) return true;
    unsigned family = (a >> 8) & 0xfu;
    if (family == 0xfu) family += (a >> 20) & 0xffu;
    return family < 0x17u;
}

// Software prefetch of the cache lines kPrefetchL2 bytes ahead of a block of `bytes` about to
// be read (and written) into L2, and of those kPrefetchL1 ahead into L1, where it pays
// (sw_prefetch_pays; kernels take a Prefetch once per call).
// always_inline: GCC 12 judges a function that only prefetches to have no side effects
// (ipa-pure-const) and deletes the calls it did not inline, prefetches and all.
struct Prefetch {
    bool on;
    __attribute__((always_inline)) void ahead(const void* p, std::size_t bytes) const noexcept {
        if (!on) return;
        const char* q = static_cast<const char*>(p);
        for (std::size_t b = 0; b < bytes; b += 64) {
            _mm_prefetch(q + kPrefetchL2 + b, _MM_HINT_T1);
            _mm_prefetch(q + kPrefetchL1 + b, _MM_HINT_T0);
        }
    }
};
// Decided on the first call (a kernel of this target runs only on a CPU that has it) and kept
// in an atomic: threads that race there compute the same value.
inline Prefetch prefetch_policy() noexcept {
    static std::atomic<int> state{-1};
    int s = state.load(std::memory_order_relaxed);
    if (s < 0) {
        s = sw_prefetch_pays() ? 1 : 0;
        state.store(s, std::memory_order_relaxed);
    }
    return Prefetch{s != 0};
}

}  // namespace
}  // namespace gradclip::simd
