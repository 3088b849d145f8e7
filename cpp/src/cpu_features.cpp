// Run-time CPU feature checks (cpu_features.hpp).
#include "cpu_features.hpp"

#include <cstddef>
#include <cstring>

namespace gradclip {
namespace {

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
// __builtin_cpu_supports takes only a string literal, hence one line per name. It reads what
// CPUID reports, and for AVX and AVX-512 also that the OS saves those registers (XGETBV).
bool cpu_has(const char* name, std::size_t len) noexcept {
    __builtin_cpu_init();
    const auto is = [&](const char* s) { return std::strlen(s) == len && std::strncmp(s, name, len) == 0; };
    if (is("avx2")) return __builtin_cpu_supports("avx2");
    if (is("fma")) return __builtin_cpu_supports("fma");
    if (is("f16c")) return __builtin_cpu_supports("f16c");
    if (is("avx512f")) return __builtin_cpu_supports("avx512f");
    if (is("avx512bw")) return __builtin_cpu_supports("avx512bw");
    if (is("avx512dq")) return __builtin_cpu_supports("avx512dq");
    if (is("avx512vl")) return __builtin_cpu_supports("avx512vl");
    return false;
}
#else
// No feature a target asks for can be checked here: only targets that ask for none run.
bool cpu_has(const char*, std::size_t) noexcept { return false; }
#endif

}  // namespace

bool cpu_has_all(const char* features) noexcept {
    const char* p = features;
    while (*p != '\0') {
        if (*p == ' ') {
            ++p;
            continue;
        }
        const std::size_t len = std::strcspn(p, " ");
        if (!cpu_has(p, len)) return false;
        p += len;
    }
    return true;
}

}  // namespace gradclip
