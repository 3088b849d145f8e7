// CPU targets (the kernel table in use, chosen at import) and the thread count.
#include <atomic>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "engine_impl.hpp"

#if defined(_WIN32)
#include <windows.h>
#else
#include <pthread.h>
#endif

#if defined(GRADCLIP_WITH_OPENMP) && (defined(__unix__) || defined(__APPLE__))
#include <pthread.h>
#endif

namespace gradclip {

using namespace impl;  // the engine's internals (engine_impl.hpp)

namespace {

// ------------------------------------------------------------------ dispatch
std::atomic<const KernelTable*> g_table{nullptr};

struct TargetEntry {
    const char* name;
    const KernelTable& (*get)() noexcept;
    bool (*supported)() noexcept;
};

bool always() noexcept { return true; }

#if defined(GRADCLIP_HAVE_AVX2)
bool has_avx2() noexcept {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
#endif
#if defined(GRADCLIP_HAVE_AVX512)
bool has_avx512() noexcept {
    __builtin_cpu_init();
    return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
}
#endif

#if defined(GRADCLIP_HAVE_NEON)
// Built only for AArch64, where Advanced SIMD needs no run-time check: the architecture pairs
// it with floating point (a core has both or neither), the AArch64 ABIs of Linux, macOS and
// Windows require floating point, and compilers enable it by default. The float16 <-> float32
// conversions the kernels use (FCVTL/FCVTN) are part of it since ARMv8.0.
bool has_neon() noexcept { return true; }
#endif

// Worst first.
const TargetEntry kTargets[] = {
    {"baseline", baseline::kernel_table, always},
#if defined(GRADCLIP_HAVE_AVX2)
    {"avx2", avx2::kernel_table, has_avx2},
#endif
#if defined(GRADCLIP_HAVE_AVX512)
    {"avx512", avx512::kernel_table, has_avx512},
#endif
#if defined(GRADCLIP_HAVE_NEON)
    {"neon", neon::kernel_table, has_neon},
#endif
};

// ------------------------------------------------------------------ threads
std::atomic<int> g_threads{0};  // 0: follow OpenMP's own setting
// Set in a child process made by fork(): libgomp's thread pool does not survive a fork, and
// a child's first parallel region would wait forever for the parent's pool threads. The
// child runs every call on its calling thread instead. (Without OpenMP there is no pool.)
#if defined(GRADCLIP_WITH_OPENMP)
std::atomic<bool> g_forked{false};
#endif
#if defined(GRADCLIP_WITH_OPENMP) && (defined(__unix__) || defined(__APPLE__))
void mark_forked_child() { g_forked.store(true, std::memory_order_relaxed); }
#endif

// The threads whose OpenMP team warm_threads created. Only they run calls on a team: the
// runtime creates a team on a thread's first parallel region and ends the process when it
// cannot (libgomp: "Out of memory allocating ..." or "Thread creation failed"), so a call
// on any other thread runs on that thread alone and cannot die there. A fixed table of
// thread keys, no allocation; beyond its size a thread stays serial.
constexpr int kTeamSlots = 64;
std::atomic<std::uintptr_t> g_team_threads[kTeamSlots];

std::uintptr_t thread_key() noexcept {
#if defined(_WIN32)
    return static_cast<std::uintptr_t>(GetCurrentThreadId()) + 1;
#else
    const pthread_t self = pthread_self();
    std::uintptr_t key = 0;
    static_assert(sizeof(self) <= sizeof(key), "pthread_t fits a uintptr_t");
    std::memcpy(&key, &self, sizeof(self));
    return key + 1;  // never 0, the empty slot
#endif
}

void register_team_thread() noexcept {
    const std::uintptr_t key = thread_key();
    for (auto& slot : g_team_threads)
        if (slot.load(std::memory_order_relaxed) == key) return;
    for (auto& slot : g_team_threads) {
        std::uintptr_t empty = 0;
        if (slot.compare_exchange_strong(empty, key, std::memory_order_relaxed)) return;
    }
}

}  // namespace

bool impl::team_ready() noexcept {
    const std::uintptr_t key = thread_key();
    for (const auto& slot : g_team_threads) {
        const std::uintptr_t k = slot.load(std::memory_order_relaxed);
        if (k == key) return true;
        if (k == 0) return false;
    }
    return false;
}

const KernelTable& impl::table() noexcept {
    const KernelTable* t = g_table.load(std::memory_order_acquire);
    return t ? *t : baseline::kernel_table();
}

// ------------------------------------------------------------------ targets
std::vector<std::string> available_targets() {
    std::vector<std::string> out;
    for (const TargetEntry& t : kTargets)
        if (t.supported()) out.emplace_back(t.name);
    return out;
}

const char* current_target() noexcept { return table().name; }

bool set_target(const std::string& name) noexcept {
    for (const TargetEntry& t : kTargets) {
        if (name == t.name && t.supported()) {
            g_table.store(&t.get(), std::memory_order_release);
            return true;
        }
    }
    return false;
}

bool init_target(const char* forced) noexcept {
#if defined(GRADCLIP_WITH_OPENMP) && (defined(__unix__) || defined(__APPLE__))
    static const bool registered = pthread_atfork(nullptr, nullptr, mark_forked_child) == 0;
    (void)registered;
#endif
    const TargetEntry* best = &kTargets[0];
    for (const TargetEntry& t : kTargets)
        if (t.supported()) best = &t;
    g_table.store(&best->get(), std::memory_order_release);
    if (forced == nullptr || *forced == '\0') return true;
    return set_target(forced);
}

// ------------------------------------------------------------------ threads
void set_num_threads(int n) noexcept {
    if (n < 1) n = 1;
    g_threads.store(n, std::memory_order_relaxed);
#if defined(GRADCLIP_WITH_OPENMP)
    omp_set_num_threads(n);
#endif
    warm_threads();
}

void warm_threads() noexcept {
#if defined(GRADCLIP_WITH_OPENMP)
    const int n = get_num_threads();
    if (n <= 1) return;
    // An empty region: the OpenMP runtime creates the calling thread's team and keeps it, so
    // later calls of this thread with up to n threads reuse it instead of creating threads.
    volatile int sink = 0;
#pragma omp parallel num_threads(n)
    {
        sink = sink + 0;
    }
    register_team_thread();
#endif
}

int get_num_threads() noexcept {
#if defined(GRADCLIP_WITH_OPENMP)
    if (g_forked.load(std::memory_order_relaxed)) return 1;
    // omp_get_max_threads() carries OMP_NUM_THREADS and threadpoolctl's limits for this thread
    const int omp = omp_get_max_threads();
    const int mine = g_threads.load(std::memory_order_relaxed);
    return mine > 0 ? std::min(mine, omp) : omp;
#else
    return 1;
#endif
}

bool have_openmp() noexcept {
#if defined(GRADCLIP_WITH_OPENMP)
    return true;
#else
    return false;
#endif
}

}  // namespace gradclip
