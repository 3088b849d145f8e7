# gradclip's Cython API: call gradclip's kernels on raw pointers from Cython, without the GIL.
#
#     from gradclip.cython_api cimport norm_f32, clip_grad_norm, GRADCLIP_OK
#
# Build with gradclip.get_include() on Cython's include path (cythonize(...,
# include_path=[gradclip.get_include()])); nothing needs to be linked, and no C header is needed:
# importing the extension imports gradclip.cython_api, whose functions call through a table of C
# function pointers exported by gradclip._core. Both front doors share one engine, so
# gradclip.set_num_threads, OMP_NUM_THREADS and the CPU target (GRADCLIP_CPU_TARGET) apply here
# too, and results have the same bits as the Python API's.
#
# Every function is `noexcept nogil`, may run in several threads at once on different buffers,
# and returns an int code (below) instead of raising; it validates all of its arguments before
# writing anything, and writes nothing and leaves its outputs untouched on a negative code.
# Buffers are dense: n consecutive elements from the pointer, any alignment; float16 and
# bfloat16 data are passed as their uint16_t bit patterns. Norms are accumulated in float64.
# Calls from inside a prange / OpenMP parallel region run on the calling thread (nested
# parallelism is off by default) and give the same bits.

from libc.stdint cimport uint16_t

# The C names differ from capi.h's so the module's own build, which includes capi.h, does not
# clash; the values are capi.h's (checked when gradclip.cython_api is imported).
cdef enum:
    # return codes: 0 success, > 0 success with something to report, < 0 error
    GRADCLIP_OK "__pyx_gradclip_OK" = 0
    GRADCLIP_NONFINITE "__pyx_gradclip_NONFINITE" = 1  # SKIP mode: the norm is NaN/inf, nothing written
    GRADCLIP_E_DTYPE "__pyx_gradclip_E_DTYPE" = -1  # unknown dtype code
    GRADCLIP_E_NULL "__pyx_gradclip_E_NULL" = -2  # NULL pointer with n > 0, or NULL output
    GRADCLIP_E_VALUE "__pyx_gradclip_E_VALUE" = -3  # bad p / max_norm / clip_value / eps / mode / n
    GRADCLIP_E_OVERLAP "__pyx_gradclip_E_OVERLAP" = -4  # two buffers of a writing call share memory
    GRADCLIP_E_NOMEM "__pyx_gradclip_E_NOMEM" = -5  # out of memory
    GRADCLIP_E_INTERNAL "__pyx_gradclip_E_INTERNAL" = -6  # any other internal failure (a bug)
    # dtype codes for the multi-buffer functions
    GRADCLIP_F16 "__pyx_gradclip_F16" = 0
    GRADCLIP_BF16 "__pyx_gradclip_BF16" = 1
    GRADCLIP_F32 "__pyx_gradclip_F32" = 2
    GRADCLIP_F64 "__pyx_gradclip_F64" = 3
    # clip_grad_norm's nonfinite modes (Python's "raise" is SKIP with GRADCLIP_NONFINITE an error)
    GRADCLIP_PROPAGATE "__pyx_gradclip_PROPAGATE" = 0  # PyTorch: coef = max_norm / (norm + eps)
    GRADCLIP_SKIP "__pyx_gradclip_SKIP" = 1  # write nothing, return GRADCLIP_NONFINITE
    GRADCLIP_ZERO "__pyx_gradclip_ZERO" = 2  # set every element to +0.0

# ---- one buffer
# *out = the p-norm of x[0..n) (p > 0, or INFINITY for max |x|), overflow- and underflow-safe;
# n == 0 gives 0.0.
cdef int norm_f16(const uint16_t* x, size_t n, double p, double* out) noexcept nogil
cdef int norm_bf16(const uint16_t* x, size_t n, double p, double* out) noexcept nogil
cdef int norm_f32(const float* x, size_t n, double p, double* out) noexcept nogil
cdef int norm_f64(const double* x, size_t n, double p, double* out) noexcept nogil

# *out = sum |x_i|^p (max |x_i| for p = INFINITY), for combining buffers yourself: computed as
# norm**p from the safe norm, so within a few ulps of the float64 sum and +inf where that sum
# overflows (total_norm and clip_grad_norm below combine buffers without that limit).
cdef int sum_pow_f16(const uint16_t* x, size_t n, double p, double* out) noexcept nogil
cdef int sum_pow_bf16(const uint16_t* x, size_t n, double p, double* out) noexcept nogil
cdef int sum_pow_f32(const float* x, size_t n, double p, double* out) noexcept nogil
cdef int sum_pow_f64(const double* x, size_t n, double p, double* out) noexcept nogil

# x *= coef in place (coef rounded to float for 16/32-bit data, each product rounded once to
# the element type); any coef; coef == 1.0 writes nothing.
cdef int scale_f16(uint16_t* x, size_t n, double coef) noexcept nogil
cdef int scale_bf16(uint16_t* x, size_t n, double coef) noexcept nogil
cdef int scale_f32(float* x, size_t n, double coef) noexcept nogil
cdef int scale_f64(double* x, size_t n, double coef) noexcept nogil

# x = clamp(x, -v, v) in place with v = clip_value rounded to the element type, as
# gradclip.clip_grad_value_; clip_value finite and >= 0; NaN stays NaN.
cdef int clamp_f16(uint16_t* x, size_t n, double clip_value) noexcept nogil
cdef int clamp_bf16(uint16_t* x, size_t n, double clip_value) noexcept nogil
cdef int clamp_f32(float* x, size_t n, double clip_value) noexcept nogil
cdef int clamp_f64(double* x, size_t n, double clip_value) noexcept nogil

# ---- many buffers: buffer i is ptrs[i][0..lens[i]) with element type dtypes[i] (GRADCLIP_F16 ..
# GRADCLIP_F64); ptrs, lens and dtypes may be NULL when n_buffers == 0.

# *out = the p-norm of all elements of all buffers together, as gradclip.get_total_norm
# (read only; buffers may overlap).
cdef int total_norm(size_t n_buffers, void* const* ptrs, const size_t* lens, const int* dtypes,
                    double norm_type, double* out) noexcept nogil

# Global norm clipping in place, as gradclip.clip_grad_norm_: coef = max_norm / (norm + eps),
# applied when < 1 (nothing written otherwise). max_norm finite > 0, eps finite >= 0 (1e-6 in
# the Python API), nonfinite one of GRADCLIP_PROPAGATE / SKIP / ZERO. *total_norm (may be NULL)
# gets the pre-clip norm, also when GRADCLIP_NONFINITE is returned. Buffers must not overlap.
cdef int clip_grad_norm(size_t n_buffers, void* const* ptrs, const size_t* lens, const int* dtypes,
                        double max_norm, double norm_type, double eps, int nonfinite,
                        double* total_norm) noexcept nogil

# Scale by min(1, max_norm / (total_norm + eps)) with a norm computed elsewhere, as
# gradclip.clip_grads_with_norm_ (total_norm >= 0, NaN or inf). Buffers must not overlap.
cdef int clip_grads_with_norm(size_t n_buffers, void* const* ptrs, const size_t* lens,
                              const int* dtypes, double max_norm, double total_norm,
                              double eps) noexcept nogil

# Mixed precision, as gradclip.unscale_clip_grad_norm_: undo a loss scale (inv_scale = 1 / S)
# and clip the unscaled gradients to max_norm, in two passes. Returns C_NONFINITE, with nothing
# written, when the norm is NaN or inf or when unscaling would overflow an element's type
# (then *total_norm is inf). total_norm and coef may be NULL.
cdef int unscale_clip_grad_norm(size_t n_buffers, void* const* ptrs, const size_t* lens,
                                const int* dtypes, double max_norm, double inv_scale,
                                double norm_type, double eps, double* total_norm,
                                double* coef) noexcept nogil

# A static description of a return code (never NULL).
cdef const char* error_message(int code) noexcept nogil
