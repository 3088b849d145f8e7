// Array layouts: dense or strided, self-overlap, memory bounds, and slices along axes.
#include "engine_impl.hpp"

namespace gradclip {

using namespace impl;  // the engine's internals (engine_impl.hpp)

// ------------------------------------------------------------------ layout
namespace {
// The axes of extent > 1, as (|stride|, extent) pairs sorted by |stride| (an insertion sort:
// at most a handful of axes). Returns how many.
int axes_by_stride(int ndim, const std::ptrdiff_t* shape, const std::ptrdiff_t* strides, std::ptrdiff_t* st,
                   std::ptrdiff_t* sh) noexcept {
    int m = 0;
    for (int d = 0; d < ndim; ++d) {
        if (shape[d] <= 1) continue;
        const std::ptrdiff_t a = strides[d] < 0 ? -strides[d] : strides[d];
        int j = m++;
        while (j > 0 && st[j - 1] > a) {
            st[j] = st[j - 1];
            sh[j] = sh[j - 1];
            --j;
        }
        st[j] = a;
        sh[j] = shape[d];
    }
    return m;
}
}  // namespace

bool describe_array(char* data, int ndim, const std::ptrdiff_t* shape, const std::ptrdiff_t* strides, DType dt,
                    Span& span) noexcept {
    span.dt = dt;
    std::size_t n = 1;
    for (int d = 0; d < ndim; ++d) n *= static_cast<std::size_t>(shape[d]);
    span.n = n;
    span.data = data;
    span.ndim = 0;
    span.shape = nullptr;
    span.strides = nullptr;
    if (n <= 1) return true;
    // axes of extent > 1 sorted by |stride|: dense iff each stride equals the extent so far
    std::ptrdiff_t st[64], sh[64];
    const int m = axes_by_stride(ndim, shape, strides, st, sh);
    auto expected = static_cast<std::ptrdiff_t>(itemsize(dt));
    for (int j = 0; j < m; ++j) {
        if (st[j] != expected) {
            span.ndim = ndim;
            span.shape = shape;
            span.strides = strides;
            return false;
        }
        expected *= sh[j];
    }
    for (int d = 0; d < ndim; ++d)
        if (shape[d] > 1 && strides[d] < 0) span.data += (shape[d] - 1) * strides[d];
    return true;
}

bool may_self_overlap(int ndim, const std::ptrdiff_t* shape, const std::ptrdiff_t* strides, std::size_t isz) noexcept {
    // sorted by |stride|, each axis must step past everything the faster axes cover
    for (int d = 0; d < ndim; ++d)
        if (shape[d] == 0) return false;
    std::ptrdiff_t st[64], sh[64];
    const int m = axes_by_stride(ndim, shape, strides, st, sh);
    auto covered = static_cast<std::ptrdiff_t>(isz);
    for (int j = 0; j < m; ++j) {
        if (st[j] < covered) return true;
        covered += (sh[j] - 1) * st[j];
    }
    return false;
}

bool find_overlap(std::vector<ByteRange>& ranges, std::size_t& first, std::size_t& second) {
    if (ranges.size() < 2) return false;
    const auto by_start = [](const ByteRange& x, const ByteRange& y) {
        return x.lo < y.lo || (x.lo == y.lo && x.id < y.id);
    };
    if (!std::is_sorted(ranges.begin(), ranges.end(), by_start)) std::sort(ranges.begin(), ranges.end(), by_start);
    std::size_t reach = 0;  // the range reaching furthest so far
    for (std::size_t j = 1; j < ranges.size(); ++j) {
        if (ranges[j].lo < ranges[reach].hi) {
            first = ranges[reach].id;
            second = ranges[j].id;
            return true;
        }
        if (ranges[j].hi > ranges[reach].hi) reach = j;
    }
    return false;
}

void byte_bounds(const char* data, int ndim, const std::ptrdiff_t* shape, const std::ptrdiff_t* strides,
                 std::size_t isz, const char*& lo, const char*& hi) noexcept {
    std::ptrdiff_t neg = 0, pos = 0;
    for (int d = 0; d < ndim; ++d) {
        if (shape[d] == 0) {
            lo = hi = data;
            return;
        }
        const std::ptrdiff_t ext = (shape[d] - 1) * strides[d];
        if (ext < 0)
            neg += ext;
        else
            pos += ext;
    }
    lo = data + neg;
    hi = data + pos + static_cast<std::ptrdiff_t>(isz);
}

// ------------------------------------------------------------------ slices
std::size_t count_slices(int ndim, const std::ptrdiff_t* shape, const bool* reduced) noexcept {
    std::size_t outer = 1;
    for (int d = 0; d < ndim; ++d)
        if (!reduced[d]) outer *= static_cast<std::size_t>(shape[d]);
    return outer;
}

void make_slices(char* data, int ndim, const std::ptrdiff_t* shape, const std::ptrdiff_t* strides, DType dt,
                 const bool* reduced, std::ptrdiff_t* slice_meta, std::size_t first, std::size_t count,
                 Span* out) noexcept {
    std::ptrdiff_t kshape[64], kstride[64], idx[64];
    int nk = 0, nr = 0;
    for (int d = 0; d < ndim; ++d) {
        if (reduced[d]) continue;
        kshape[nk] = shape[d];
        kstride[nk] = strides[d];
        idx[nk] = 0;
        ++nk;
    }
    for (int d = 0; d < ndim; ++d)
        if (reduced[d]) slice_meta[nr++] = shape[d];
    for (int d = 0, j = 0; d < ndim; ++d)
        if (reduced[d]) slice_meta[nr + j++] = strides[d];
    if (count == 0) return;  // (a kept axis may have extent 0: no index to start from)
    // the kept-axes index of slice `first`, in C order
    for (int d = nk; d-- > 0;) {
        idx[d] = static_cast<std::ptrdiff_t>(first % static_cast<std::size_t>(kshape[d]));
        first /= static_cast<std::size_t>(kshape[d]);
    }
    for (std::size_t o = 0; o < count; ++o) {
        char* p0 = data;
        for (int d = 0; d < nk; ++d) p0 += idx[d] * kstride[d];
        describe_array(p0, nr, slice_meta, slice_meta + nr, dt, out[o]);
        for (int d = nk; d-- > 0;) {
            if (++idx[d] < kshape[d]) break;
            idx[d] = 0;
        }
    }
}

}  // namespace gradclip
