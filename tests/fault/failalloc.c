/* failalloc: an LD_PRELOAD shim that makes the n-th heap allocation from now fail, once.
 *
 * Built by tests/test_fault_injection.py with the machine's C compiler and preloaded into the
 * subprocess that drives the calls under test (never into the test runner itself):
 *
 *     cc -shared -fPIC -O2 -o libfailalloc.so failalloc.c -ldl
 *     LD_PRELOAD=./libfailalloc.so python driver.py
 *
 * It interposes malloc, calloc, realloc, posix_memalign, aligned_alloc, memalign, valloc and
 * pvalloc (free too, for its bootstrap buffer) and forwards to the next definition
 * (dlsym(RTLD_NEXT, ...): glibc's). C++'s operator new calls malloc, so it is covered as well.
 * Control, callable through ctypes:
 *
 *     failalloc_arm(n)      n > 0: the n-th allocation from now fails (NULL, errno ENOMEM),
 *                           exactly once; n = 0: count only. Either way the count restarts.
 *     failalloc_disarm()    no further failure; the count goes on
 *     failalloc_count()     allocations since the last failalloc_arm (the failed one included)
 *     failalloc_failed()    allocations failed since the last failalloc_arm (0 or 1)
 *
 * Allocations of every thread count. dlsym may itself allocate (glibc's dlerror state uses
 * calloc) before the real functions are known: those requests are served from a small static
 * buffer, never counted, and free() ignores pointers into it.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef void* (*malloc_fn)(size_t);
typedef void* (*calloc_fn)(size_t, size_t);
typedef void* (*realloc_fn)(void*, size_t);
typedef void (*free_fn)(void*);
typedef int (*posix_memalign_fn)(void**, size_t, size_t);
typedef void* (*aligned_alloc_fn)(size_t, size_t);
typedef void* (*valloc_fn)(size_t);

static malloc_fn real_malloc;
static calloc_fn real_calloc;
static realloc_fn real_realloc;
static free_fn real_free;
static posix_memalign_fn real_posix_memalign;
static aligned_alloc_fn real_aligned_alloc;
static aligned_alloc_fn real_memalign;
static valloc_fn real_valloc;
static valloc_fn real_pvalloc;

/* ---- bootstrap: requests made while dlsym runs */
static _Alignas(64) unsigned char boot_buf[64 * 1024];
static atomic_size_t boot_used;
static atomic_int resolving;

static void* boot_alloc(size_t size) {
    size_t need = (size + 63) & ~(size_t)63;
    size_t at = atomic_fetch_add(&boot_used, need);
    if (at + need > sizeof boot_buf) {
        errno = ENOMEM;
        return NULL;
    }
    return boot_buf + at; /* static storage: already zero, as calloc needs */
}

static int is_boot(const void* p) {
    return (const unsigned char*)p >= boot_buf && (const unsigned char*)p < boot_buf + sizeof boot_buf;
}

static void resolve(void) {
    if (real_free != NULL || atomic_load(&resolving)) return;
    atomic_store(&resolving, 1);
    real_malloc = (malloc_fn)dlsym(RTLD_NEXT, "malloc");
    real_calloc = (calloc_fn)dlsym(RTLD_NEXT, "calloc");
    real_realloc = (realloc_fn)dlsym(RTLD_NEXT, "realloc");
    real_posix_memalign = (posix_memalign_fn)dlsym(RTLD_NEXT, "posix_memalign");
    real_aligned_alloc = (aligned_alloc_fn)dlsym(RTLD_NEXT, "aligned_alloc");
    real_memalign = (aligned_alloc_fn)dlsym(RTLD_NEXT, "memalign");
    real_valloc = (valloc_fn)dlsym(RTLD_NEXT, "valloc");
    real_pvalloc = (valloc_fn)dlsym(RTLD_NEXT, "pvalloc");
    real_free = (free_fn)dlsym(RTLD_NEXT, "free");
    atomic_store(&resolving, 0);
}

__attribute__((constructor)) static void failalloc_init(void) { resolve(); }

/* ---- the counter */
static atomic_long target; /* > 0: the allocation number that fails */
static atomic_long counted;
static atomic_long n_failed;

/* 1 when this allocation is to fail */
static int should_fail(void) {
    long n = atomic_fetch_add(&counted, 1) + 1;
    long t = atomic_load(&target);
    if (t > 0 && n == t && atomic_compare_exchange_strong(&target, &t, 0)) {
        atomic_fetch_add(&n_failed, 1);
        return 1;
    }
    return 0;
}

void failalloc_arm(long n) {
    atomic_store(&target, 0);
    atomic_store(&counted, 0);
    atomic_store(&n_failed, 0);
    atomic_store(&target, n > 0 ? n : 0);
}

void failalloc_disarm(void) { atomic_store(&target, 0); }

long failalloc_count(void) { return atomic_load(&counted); }

long failalloc_failed(void) { return atomic_load(&n_failed); }

/* ---- the interposed functions */
void* malloc(size_t size) {
    if (atomic_load(&resolving)) return boot_alloc(size);
    resolve();
    if (should_fail()) {
        errno = ENOMEM;
        return NULL;
    }
    return real_malloc(size);
}

void* calloc(size_t n, size_t size) {
    if (atomic_load(&resolving)) {
        if (size != 0 && n > SIZE_MAX / size) {
            errno = ENOMEM;
            return NULL;
        }
        return boot_alloc(n * size);
    }
    resolve();
    if (should_fail()) {
        errno = ENOMEM;
        return NULL;
    }
    return real_calloc(n, size);
}

void* realloc(void* p, size_t size) {
    if (p != NULL && is_boot(p)) {
        /* a bootstrap block moves to the real heap (its old size is unknown: copy what fits) */
        void* q = malloc(size);
        if (q != NULL) {
            size_t room = (size_t)(boot_buf + sizeof boot_buf - (unsigned char*)p);
            memcpy(q, p, size < room ? size : room);
        }
        return q;
    }
    if (atomic_load(&resolving)) return boot_alloc(size);
    resolve();
    if (size != 0 && should_fail()) { /* realloc(p, 0) frees: not an allocation */
        errno = ENOMEM;
        return NULL;
    }
    return real_realloc(p, size);
}

void free(void* p) {
    if (p == NULL || is_boot(p)) return;
    resolve();
    if (real_free != NULL) real_free(p); /* NULL only while dlsym runs: nothing to free yet */
}

int posix_memalign(void** out, size_t alignment, size_t size) {
    resolve();
    if (should_fail()) return ENOMEM;
    return real_posix_memalign(out, alignment, size);
}

void* aligned_alloc(size_t alignment, size_t size) {
    resolve();
    if (should_fail()) {
        errno = ENOMEM;
        return NULL;
    }
    return real_aligned_alloc(alignment, size);
}

void* memalign(size_t alignment, size_t size) {
    resolve();
    if (should_fail()) {
        errno = ENOMEM;
        return NULL;
    }
    return real_memalign(alignment, size);
}

void* valloc(size_t size) {
    resolve();
    if (should_fail()) {
        errno = ENOMEM;
        return NULL;
    }
    return real_valloc(size);
}

void* pvalloc(size_t size) {
    resolve();
    if (should_fail()) {
        errno = ENOMEM;
        return NULL;
    }
    return real_pvalloc(size);
}
