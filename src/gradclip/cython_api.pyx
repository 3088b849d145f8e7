# cython: language_level=3, freethreading_compatible=True
# gradclip.cython_api: the functions declared in cython_api.pxd. Each one is a thin call through
# the C function table gradclip._core exports (cpp/include/gradclip/capi.h), so this module links
# nothing of gradclip's: one engine, one thread count and one CPU target serve Python and Cython.
# Arithmetic and validation live in the engine and cpp/src/capi.cpp, not here.
# freethreading_compatible: the module's only state is the table pointer, set once at import,
# so a free-threaded interpreter need not re-enable the GIL for it (as for gradclip._core).

from cpython.pycapsule cimport PyCapsule_GetPointer
from libc.stdint cimport uint16_t

cdef extern from "gradclip/capi.h" nogil:
    # capi.h's constants under Cython names that do not clash with the .pxd's
    int C_CAPI_VERSION "GRADCLIP_CAPI_VERSION"
    const char* C_CAPI_CAPSULE "GRADCLIP_CAPI_CAPSULE"
    int C_F16 "GRADCLIP_F16"
    int C_BF16 "GRADCLIP_BF16"
    int C_F32 "GRADCLIP_F32"
    int C_F64 "GRADCLIP_F64"
    int C_PROPAGATE "GRADCLIP_PROPAGATE"
    int C_SKIP "GRADCLIP_SKIP"
    int C_ZERO "GRADCLIP_ZERO"
    int C_OK "GRADCLIP_OK"
    int C_NONFINITE "GRADCLIP_NONFINITE"
    int C_E_DTYPE "GRADCLIP_E_DTYPE"
    int C_E_NULL "GRADCLIP_E_NULL"
    int C_E_VALUE "GRADCLIP_E_VALUE"
    int C_E_OVERLAP "GRADCLIP_E_OVERLAP"
    int C_E_NOMEM "GRADCLIP_E_NOMEM"
    int C_E_INTERNAL "GRADCLIP_E_INTERNAL"

    ctypedef struct gradclip_capi:
        int abi_version
        int (*norm)(int dtype, const void* x, size_t n, double p, double* out) noexcept nogil
        int (*sum_pow)(int dtype, const void* x, size_t n, double p, double* out) noexcept nogil
        int (*scale)(int dtype, void* x, size_t n, double coef) noexcept nogil
        int (*clamp)(int dtype, void* x, size_t n, double clip_value) noexcept nogil
        int (*total_norm)(size_t n_buffers, const void* const* ptrs, const size_t* lens,
                          const int* dtypes, double p, double* out) noexcept nogil
        int (*clip_grad_norm)(size_t n_buffers, void* const* ptrs, const size_t* lens,
                              const int* dtypes, double max_norm, double p, double eps,
                              int nonfinite_mode, double* total_norm) noexcept nogil
        int (*clip_grads_with_norm)(size_t n_buffers, void* const* ptrs, const size_t* lens,
                                    const int* dtypes, double max_norm, double total_norm,
                                    double eps) noexcept nogil
        const char* (*strerror)(int code) noexcept nogil
        int (*unscale_clip_grad_norm)(size_t n_buffers, void* const* ptrs, const size_t* lens,
                                      const int* dtypes, double max_norm, double inv_scale,
                                      double p, double eps, double* total_norm,
                                      double* coef) noexcept nogil


# Set once at import, before any cimporting module can call in (its import imports this module
# first), and never changed: reading it without a lock or the GIL is safe.
cdef const gradclip_capi* _api = NULL


def _load():
    """Fetch the table from gradclip._core and check that it is one this module can use."""
    global _api
    # The .pxd's constants must be capi.h's: a mismatch is a bug in this package's sources.
    if (
        (GRADCLIP_OK, GRADCLIP_NONFINITE, GRADCLIP_E_DTYPE, GRADCLIP_E_NULL, GRADCLIP_E_VALUE,
         GRADCLIP_E_OVERLAP, GRADCLIP_E_NOMEM, GRADCLIP_E_INTERNAL, GRADCLIP_F16, GRADCLIP_BF16,
         GRADCLIP_F32, GRADCLIP_F64, GRADCLIP_PROPAGATE, GRADCLIP_SKIP, GRADCLIP_ZERO)
        != (C_OK, C_NONFINITE, C_E_DTYPE, C_E_NULL, C_E_VALUE, C_E_OVERLAP, C_E_NOMEM,
            C_E_INTERNAL, C_F16, C_BF16, C_F32, C_F64, C_PROPAGATE, C_SKIP, C_ZERO)
    ):
        raise ImportError("gradclip.cython_api: the constants of cython_api.pxd differ from capi.h")
    from gradclip import _core

    cdef const gradclip_capi* api = <const gradclip_capi*>PyCapsule_GetPointer(
        _core._C_API, C_CAPI_CAPSULE
    )
    if api.abi_version < C_CAPI_VERSION:
        raise ImportError(
            f"gradclip.cython_api needs revision {C_CAPI_VERSION} of gradclip._core's C API, "
            f"found {api.abi_version}: gradclip._core and gradclip.cython_api come from "
            "different builds; reinstall gradclip"
        )
    _api = api


_load()

ABI_VERSION = _api.abi_version


cdef int norm_f16(const uint16_t* x, size_t n, double p, double* out) noexcept nogil:
    return _api.norm(C_F16, x, n, p, out)

cdef int norm_bf16(const uint16_t* x, size_t n, double p, double* out) noexcept nogil:
    return _api.norm(C_BF16, x, n, p, out)

cdef int norm_f32(const float* x, size_t n, double p, double* out) noexcept nogil:
    return _api.norm(C_F32, x, n, p, out)

cdef int norm_f64(const double* x, size_t n, double p, double* out) noexcept nogil:
    return _api.norm(C_F64, x, n, p, out)


cdef int sum_pow_f16(const uint16_t* x, size_t n, double p, double* out) noexcept nogil:
    return _api.sum_pow(C_F16, x, n, p, out)

cdef int sum_pow_bf16(const uint16_t* x, size_t n, double p, double* out) noexcept nogil:
    return _api.sum_pow(C_BF16, x, n, p, out)

cdef int sum_pow_f32(const float* x, size_t n, double p, double* out) noexcept nogil:
    return _api.sum_pow(C_F32, x, n, p, out)

cdef int sum_pow_f64(const double* x, size_t n, double p, double* out) noexcept nogil:
    return _api.sum_pow(C_F64, x, n, p, out)


cdef int scale_f16(uint16_t* x, size_t n, double coef) noexcept nogil:
    return _api.scale(C_F16, x, n, coef)

cdef int scale_bf16(uint16_t* x, size_t n, double coef) noexcept nogil:
    return _api.scale(C_BF16, x, n, coef)

cdef int scale_f32(float* x, size_t n, double coef) noexcept nogil:
    return _api.scale(C_F32, x, n, coef)

cdef int scale_f64(double* x, size_t n, double coef) noexcept nogil:
    return _api.scale(C_F64, x, n, coef)


cdef int clamp_f16(uint16_t* x, size_t n, double clip_value) noexcept nogil:
    return _api.clamp(C_F16, x, n, clip_value)

cdef int clamp_bf16(uint16_t* x, size_t n, double clip_value) noexcept nogil:
    return _api.clamp(C_BF16, x, n, clip_value)

cdef int clamp_f32(float* x, size_t n, double clip_value) noexcept nogil:
    return _api.clamp(C_F32, x, n, clip_value)

cdef int clamp_f64(double* x, size_t n, double clip_value) noexcept nogil:
    return _api.clamp(C_F64, x, n, clip_value)


cdef int total_norm(size_t n_buffers, void* const* ptrs, const size_t* lens, const int* dtypes,
                    double norm_type, double* out) noexcept nogil:
    # void* const* in the Cython signature so a plain void** or void*[] passes without a cast
    # (C does not convert void** to const void* const* implicitly)
    return _api.total_norm(n_buffers, <const void* const*>ptrs, lens, dtypes, norm_type, out)


cdef int clip_grad_norm(size_t n_buffers, void* const* ptrs, const size_t* lens, const int* dtypes,
                        double max_norm, double norm_type, double eps, int nonfinite,
                        double* total_norm) noexcept nogil:
    return _api.clip_grad_norm(n_buffers, ptrs, lens, dtypes, max_norm, norm_type, eps, nonfinite,
                               total_norm)


cdef int clip_grads_with_norm(size_t n_buffers, void* const* ptrs, const size_t* lens,
                              const int* dtypes, double max_norm, double total_norm,
                              double eps) noexcept nogil:
    return _api.clip_grads_with_norm(n_buffers, ptrs, lens, dtypes, max_norm, total_norm, eps)


cdef int unscale_clip_grad_norm(size_t n_buffers, void* const* ptrs, const size_t* lens,
                                const int* dtypes, double max_norm, double inv_scale,
                                double norm_type, double eps, double* total_norm,
                                double* coef) noexcept nogil:
    return _api.unscale_clip_grad_norm(n_buffers, ptrs, lens, dtypes, max_norm, inv_scale,
                                       norm_type, eps, total_norm, coef)


cdef const char* error_message(int code) noexcept nogil:
    return _api.strerror(code)


def _error_message(int code) -> str:
    """The description of a return code, for Python callers and tests."""
    return error_message(code).decode()
