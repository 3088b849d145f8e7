// Plain data types shared by the kernels, the engine and the bindings.
// Nothing here knows about Python.
#pragma once

#include <cstddef>
#include <cstdint>

namespace gradclip {

// Element types the kernels handle. The values index the per-dtype kernel tables.
enum class DType : std::uint8_t { F16 = 0, BF16 = 1, F32 = 2, F64 = 3 };
inline constexpr int kNumDTypes = 4;

static constexpr std::size_t itemsize(DType dt) noexcept { return dt == DType::F64 ? 8 : dt == DType::F32 ? 4 : 2; }

// One array as the engine sees it.
//
// ndim == 0: a dense block of n elements starting at `data` (its lowest address),
//            read in memory order. C, F and reversed dense arrays all end up here.
// ndim  > 0: a strided view; `data` is the address of element [0, ..., 0], `shape`
//            and `strides` (bytes, may be negative) have ndim entries, elements are
//            visited in C order. The pointed-to shape/strides must outlive the call.
struct Span {
    char* data = nullptr;
    std::size_t n = 0;
    DType dt = DType::F32;
    int ndim = 0;
    const std::ptrdiff_t* shape = nullptr;
    const std::ptrdiff_t* strides = nullptr;
};

enum class NormKind : std::uint8_t { L1, L2, Linf, Lp };

struct NormSpec {
    NormKind kind = NormKind::L2;
    double p = 2.0;  // used by Lp only
};

// Classifies p into the kind with a dedicated kernel. p must be > 0 or +inf.
NormSpec make_norm_spec(double p) noexcept;

// What to do when a total norm is NaN or infinite.
enum class NonFinite : std::uint8_t {
    Propagate,  // PyTorch's arithmetic: apply max_norm / (norm + eps) as is
    Skip,       // write nothing (the caller may raise)
    Zero,       // set every element to +0.0
};

}  // namespace gradclip
