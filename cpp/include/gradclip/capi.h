/* gradclip's C ABI: a versioned table of plain C function pointers onto the same engine (the
 * same dispatched SIMD kernels, the same OpenMP team, the same thread count and CPU target)
 * the Python API uses. gradclip._core exports the table as a PyCapsule named
 * GRADCLIP_CAPI_CAPSULE; gradclip.cython_api wraps it for Cython code.
 *
 * C, not C++, on purpose: a consumer compiled by another compiler, or as C, must agree with it
 * on layout and calling convention, so it uses only C types and no exceptions cross it.
 * Nothing here needs the GIL: every function may be called from any thread without it, and from
 * several threads at once on different buffers.
 *
 * Every buffer is dense (n consecutive elements from its pointer; any alignment). float16 and
 * bfloat16 elements are uint16_t bit patterns. Every function validates all of its arguments
 * before it writes anything; on a nonzero return nothing has been written, except where a code
 * below says otherwise.
 */
#ifndef GRADCLIP_CAPI_H
#define GRADCLIP_CAPI_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Revision of the table. Members are only ever appended; a consumer built against revision V
 * requires abi_version >= V. */
#define GRADCLIP_CAPI_VERSION 2
#define GRADCLIP_CAPI_CAPSULE "gradclip._core._C_API"

/* Element types (the values of gradclip::DType). */
#define GRADCLIP_F16 0
#define GRADCLIP_BF16 1
#define GRADCLIP_F32 2
#define GRADCLIP_F64 3

/* What clip_grad_norm does when the total norm is NaN or infinite. Python's "raise" is SKIP
 * with GRADCLIP_NONFINITE treated as an error by the caller. */
#define GRADCLIP_PROPAGATE 0 /* PyTorch's arithmetic: coef = max_norm / (norm + eps) as is */
#define GRADCLIP_SKIP 1      /* write nothing, return GRADCLIP_NONFINITE */
#define GRADCLIP_ZERO 2      /* set every element to +0.0 */

/* Return codes: 0 success, > 0 success with something to report, < 0 error (nothing written;
 * outputs untouched). */
#define GRADCLIP_OK 0
#define GRADCLIP_NONFINITE 1  /* SKIP mode: the total norm is NaN or inf; nothing written */
#define GRADCLIP_E_DTYPE (-1) /* a dtype code is not one of GRADCLIP_F16 .. GRADCLIP_F64 */
#define GRADCLIP_E_NULL (-2)  /* a NULL pointer where data or an output is needed */
/* a bad scalar (p, max_norm, clip_value, eps, total_norm, nonfinite mode), or a length whose
   byte size overflows */
#define GRADCLIP_E_VALUE (-3)
#define GRADCLIP_E_OVERLAP (-4)  /* two buffers of one writing call share memory */
#define GRADCLIP_E_NOMEM (-5)    /* out of memory */
#define GRADCLIP_E_INTERNAL (-6) /* any other failure inside gradclip (a bug: please report) */

typedef struct gradclip_capi {
    int abi_version; /* GRADCLIP_CAPI_VERSION of the build that filled the table */

    /* *out = p-norm of x[0..n) in float64 (p > 0, or +inf for max |x|); never overflows or
     * underflows where the true norm is a finite normal double; n == 0 gives 0. */
    int (*norm)(int dtype, const void* x, size_t n, double p, double* out);
    /* *out = sum |x_i|^p (max |x_i| for p = +inf), for callers combining buffers themselves.
     * Computed as norm^p from the overflow-safe norm: within a few ulps of the float64 sum,
     * +inf when the sum exceeds the double range (combine norms instead when that matters). */
    int (*sum_pow)(int dtype, const void* x, size_t n, double p, double* out);
    /* x *= coef in place, coef rounded to float for float16/bfloat16/float32 and each product
     * rounded once to the element type. Any coef (NaN and inf included); coef == 1 writes
     * nothing. */
    int (*scale)(int dtype, void* x, size_t n, double coef);
    /* x = clamp(x, -v, v) in place, v = clip_value rounded to the element type (finite,
     * >= 0); NaN stays NaN. */
    int (*clamp)(int dtype, void* x, size_t n, double clip_value);

    /* Multi-buffer calls: buffer i is ptrs[i][0..lens[i]) of type dtypes[i]. */
    /* *out = p-norm of all elements of all buffers together (read only; buffers may overlap). */
    int (*total_norm)(size_t n_buffers, const void* const* ptrs, const size_t* lens, const int* dtypes, double p,
                      double* out);
    /* Global norm clipping, as gradclip.clip_grad_norm_: coef = min(1, max_norm / (norm + eps)),
     * nothing written when coef is 1. max_norm finite > 0, eps finite >= 0, p > 0 or +inf.
     * *total_norm (may be NULL) gets the pre-clip total norm, also when GRADCLIP_NONFINITE is
     * returned. Buffers must not overlap (GRADCLIP_E_OVERLAP). */
    int (*clip_grad_norm)(size_t n_buffers, void* const* ptrs, const size_t* lens, const int* dtypes, double max_norm,
                          double p, double eps, int nonfinite_mode, double* total_norm);
    /* As gradclip.clip_grads_with_norm_: scale by min(1, max_norm / (total_norm + eps)) with a
     * total norm computed elsewhere (total_norm >= 0, or NaN / inf). */
    int (*clip_grads_with_norm)(size_t n_buffers, void* const* ptrs, const size_t* lens, const int* dtypes,
                                double max_norm, double total_norm, double eps);

    /* A static, NUL-terminated description of a return code (never NULL). */
    const char* (*strerror)(int code);

    /* Revision 2 and later. */
    /* As gradclip.unscale_clip_grad_norm_: the norm of the unscaled gradients
     * (||g|| * inv_scale) from one read pass, then, when it is finite and no element's unscaled
     * value x * inv_scale (rounded to its type) is infinite, one pass multiplying by
     * inv_scale * min(1, max_norm / (norm + eps)). Otherwise nothing is written and
     * GRADCLIP_NONFINITE is returned. max_norm and inv_scale finite > 0, eps finite >= 0.
     * *total_norm (may be NULL) gets the unscaled norm (+inf on an overflow), *coef (may be
     * NULL) the clipping coefficient (1 when not clipping). */
    int (*unscale_clip_grad_norm)(size_t n_buffers, void* const* ptrs, const size_t* lens, const int* dtypes,
                                  double max_norm, double inv_scale, double p, double eps, double* total_norm,
                                  double* coef);
} gradclip_capi;

/* The table; it lives for the whole process. */
const gradclip_capi* gradclip_capi_table(void);

#ifdef __cplusplus
}
#endif

#endif /* GRADCLIP_CAPI_H */
