// The checks a writing call needs beyond the parse: writeable arrays, none whose elements
// share memory, no two that overlap (byte ranges swept in address order, pairs whose bounds
// intersect decided exactly), and the check that two batches are apart. Runs on every
// writing call, before anything is written.
#include <algorithm>
#include <atomic>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "bindings.hpp"

namespace gradclip_py {
namespace {
// numpy.shares_memory's max_work for one pair of views whose bounds intersect: the QKV split
// and interleaved views take 1; a contrived pair of 2-d views with co-prime strides needs
// about 1e5 and is then refused as undecided.
constexpr long kExactOverlapWork = 1L << 16;

[[noreturn]] void overlap_error(const Batch& b, std::size_t first, std::size_t second, bool undecided = false) {
    if (b.pos[first] > b.pos[second]) std::swap(first, second);
    const Span& sa = b.spans[first];
    const Span& sc = b.spans[second];
    const std::string pair = b.at(b.pos[first]) + " and " + b.at(b.pos[second]);
    const bool same_bytes = sa.data == sc.data && sa.n * gradclip::itemsize(sa.dt) == sc.n * gradclip::itemsize(sc.dt);
    if (same_bytes && sa.ndim == 0 && sc.ndim == 0)
        throw py::value_error(pair + " are the same memory; each gradient must appear once");
    if (undecided)
        throw py::value_error(pair +
                              " may overlap in memory: their memory bounds intersect, and deciding whether they "
                              "share an element exceeded gradclip's work bound (numpy.shares_memory with "
                              "max_work=" +
                              std::to_string(kExactOverlapWork) + "); use views of separate buffers");
    throw py::value_error(pair + " overlap in memory (they share at least one element)");
}

// Called when the memory bounds of some arrays intersect (find_overlap), which views of one
// buffer that interleave or split its rows do without sharing a byte (qkv[:, :32] and
// qkv[:, 32:64]; buf[0::2] and buf[1::2]). Decides every such pair exactly with NumPy's
// solver, numpy.shares_memory, which bounds its work by max_work (a pair beyond it counts as
// overlapping). Off the common path: only a call whose bounds check failed gets here. Sets
// `first`, `second` to a pair that shares an element (or could not be decided, `undecided`)
// and returns true, or returns false when every pair is disjoint. `ranges` is sorted by lo.
bool exact_overlap(const Batch& b, const std::vector<gradclip::ByteRange>& ranges, std::size_t& first,
                   std::size_t& second, bool& undecided) {
    // kept for the interpreter's lifetime, as is_masked's type
    static PyObject* shares = py::object(py::module_::import("numpy").attr("shares_memory")).release().ptr();
    static PyObject* too_hard =
        py::object(py::module_::import("numpy.exceptions").attr("TooHardError")).release().ptr();
    const py::handle f(shares);
    for (std::size_t j = 1; j < ranges.size(); ++j) {
        for (std::size_t i = 0; i < j; ++i) {
            if (ranges[i].hi <= ranges[j].lo) continue;  // sorted by lo: ranges[i] ends before j starts
            try {
                const bool share =
                    f(b.keep[ranges[i].id], b.keep[ranges[j].id], py::arg("max_work") = kExactOverlapWork).cast<bool>();
                if (!share) continue;
                undecided = false;
            } catch (py::error_already_set& e) {
                if (!e.matches(py::handle(too_hard))) throw;
                undecided = true;
            }
            first = ranges[i].id;
            second = ranges[j].id;
            return true;
        }
    }
    return false;
}

// ------------------------------------------------------------------ the overlap check's order
// find_overlap sweeps the arrays' bounds in address order. A training loop passes the same
// arrays in the same order every step, and their addresses seldom come sorted (NumPy reuses
// freed blocks of every size), so every call would sort them again: about half of what a
// one-shot call costs per array beyond a GradientSet's call. The order that sorted the last
// writing call's bounds is kept, and a call's bounds are first put in that order: when they
// come out sorted, find_overlap's O(n) check passes and it skips its sort; otherwise it sorts
// as before. Either way the sweep sees the bounds sorted by its own rule, so the outcome (and
// which pair an error names) is the same. One process-wide slot, taken and given back with
// atomic exchanges: a second thread checking at the same time sorts as before.
struct SortedOrder {
    std::vector<std::size_t> ids;          // the id of each bound, in address order
    std::vector<gradclip::ByteRange> tmp;  // a call's bounds gathered in that order
};
std::atomic<SortedOrder*> g_order{nullptr};  // leaked at exit on purpose, as _init's helpers

// Puts `bounds` (ids 0..n-1 at their own positions) in the remembered order, when it is one
// for n bounds.
void reorder(std::vector<gradclip::ByteRange>& bounds, SortedOrder& o) {
    const std::size_t n = bounds.size();
    if (o.ids.size() != n) return;
    o.tmp.resize(n);  // may throw std::bad_alloc: before anything is written
    for (std::size_t j = 0; j < n; ++j) o.tmp[j] = bounds[o.ids[j]];
    bounds.swap(o.tmp);
}

// Remembers the order of `bounds` (sorted by find_overlap) for the next call, and gives the
// slot back.
void remember(const std::vector<gradclip::ByteRange>& bounds, std::unique_ptr<SortedOrder> o) {
    o->ids.resize(bounds.size());  // may throw: then the next call sorts again
    for (std::size_t j = 0; j < bounds.size(); ++j) o->ids[j] = bounds[j].id;
    SortedOrder* expected = nullptr;
    if (g_order.compare_exchange_strong(expected, o.get(), std::memory_order_acq_rel)) o.release();
}

}  // namespace

// What a writing call needs beyond parse: writeable arrays, none whose elements share memory,
// no two that overlap. Throws ValueError naming the position; a read-only array's message
// names the copying alternative.
void check_writable(const Batch& b, bool just_parsed) {
    const std::size_t m = b.keep.size();
    // parse saw every array dense and writeable a moment ago, and no Python code has run
    // since: only the overlap check is left
    const bool known = just_parsed && b.dense_writeable;
    std::vector<gradclip::ByteRange> bounds(m > 1 ? m : 0);  // id: index into spans
    std::size_t used = 0;
    // (the fields are stored one by one into the vector: a range built on the stack and then
    // copied in was read back before its stores had landed, a stall of ~5 ns per array)
    const auto add = [&bounds, &used](const char* lo, const char* hi, std::size_t k) {
        gradclip::ByteRange& r = bounds[used++];
        r.lo = lo;
        r.hi = hi;
        r.id = k;
    };
    for (std::size_t k = 0; k < m; ++k) {
        if (known) {
            const Span& sp = b.spans[k];
            if (sp.n != 0 && m > 1) add(sp.data, sp.data + sp.n * gradclip::itemsize(sp.dt), k);
            continue;
        }
        const auto* proxy = py::detail::array_proxy(b.keep[k].ptr());
        if ((proxy->flags & py::detail::npy_api::NPY_ARRAY_WRITEABLE_) == 0) {
            // the copying alternative is named to callers of in-place functions only (`out`
            // belongs to a caller of the copying functions)
            throw py::value_error(
                b.at(b.pos[k]) + " is read-only; gradclip writes in place and needs a writeable array" +
                (b.arg == "out" ? std::string() : " (gradclip.clip_by_global_norm returns clipped copies instead)"));
        }
        const Span& sp = b.spans[k];
        if (sp.n == 0) continue;  // nothing to write
        const int nd = proxy->nd;
        const std::ptrdiff_t* shape = b.meta.data() + b.meta_off[k];
        const std::ptrdiff_t* strides = shape + nd;
        const std::size_t isz = gradclip::itemsize(sp.dt);
        const bool dense = sp.ndim == 0;
        if (!dense && gradclip::may_self_overlap(nd, shape, strides, isz)) {
            throw py::value_error(b.at(b.pos[k]) +
                                  " has elements that share memory (e.g. a stride-0 view); writing to it in "
                                  "place would apply the update more than once");
        }
        if (m < 2) continue;
        if (dense) {
            add(sp.data, sp.data + sp.n * isz, k);
        } else {
            const char* lo;
            const char* hi;
            gradclip::byte_bounds(proxy->data, nd, shape, strides, isz, lo, hi);
            add(lo, hi, k);
        }
    }
    bounds.resize(used);  // shrinks: cannot throw
    if (bounds.size() < 2) return;
    // the remembered order applies when every array has bounds (ids are then positions)
    std::unique_ptr<SortedOrder> order;
    if (bounds.size() == m) {
        order.reset(g_order.exchange(nullptr, std::memory_order_acq_rel));
        if (!order) order = std::make_unique<SortedOrder>();  // may throw: nothing written yet
        reorder(bounds, *order);
    }
    std::size_t first, second;
    bool undecided = false;
    if (gradclip::find_overlap(bounds, first, second) && exact_overlap(b, bounds, first, second, undecided))
        overlap_error(b, first, second, undecided);
    if (order) remember(bounds, std::move(order));  // bounds is sorted now, whatever find_overlap found
}

void check_apart(const Batch& d, const Batch& q, const std::function<bool(std::size_t, std::size_t)>& allowed,
                 const std::function<std::string(std::size_t, std::size_t)>& message) {
    std::vector<gradclip::ByteRange> ranges;
    ranges.reserve(d.keep.size());
    for (std::size_t k = 0; k < d.keep.size(); ++k) {
        if (d.spans[k].n == 0) continue;
        const char* lo;
        const char* hi;
        d.bounds(k, lo, hi);
        ranges.push_back({lo, hi, k});
    }
    std::sort(ranges.begin(), ranges.end(),
              [](const gradclip::ByteRange& x, const gradclip::ByteRange& y) { return x.lo < y.lo; });
    for (std::size_t j = 0; j < q.keep.size(); ++j) {
        if (q.spans[j].n == 0) continue;
        const char* lo;
        const char* hi;
        q.bounds(j, lo, hi);
        // d's arrays are disjoint, so sorted by lo their hi ascend too
        auto it = std::upper_bound(ranges.begin(), ranges.end(), lo,
                                   [](const char* x, const gradclip::ByteRange& r) { return x < r.hi; });
        for (; it != ranges.end() && it->lo < hi; ++it)
            if (!allowed(it->id, j)) throw py::value_error(message(it->id, j));
    }
}

}  // namespace gradclip_py
