// Chunk plans: built per call into the call's scratch, or once for a fixed list (PlanCache);
// the pool of scratch memory calls borrow.
#include <atomic>

#include "engine_impl.hpp"

namespace gradclip {

using namespace impl;  // the engine's internals (engine_impl.hpp)

void impl::build_plan(const Span* spans, std::size_t n, Plan& s, Layout layout) {
    build_plan(spans, n, s, layout, [](std::size_t) { return true; });
}

void impl::reserve_plan(Plan& s, std::size_t spans, std::size_t bytes) {
    // the sizes build_plan asks for (its max_chunks), for any plan within these bounds
    const std::size_t max_chunks = bytes / kChunkBytes + spans + 1;
    s.segs.reserve(max_chunks + spans);
    s.first.reserve(max_chunks + 1);
    s.offset.reserve(max_chunks + 1);
}

// ------------------------------------------------------------------ scratch pool
namespace {
// Enough for every thread of a busy process to hold a few at once (composite calls nest up
// to three); beyond it a lease allocates and frees its own.
constexpr std::size_t kPoolSlots = 64;
std::atomic<Scratch*> g_pool[kPoolSlots];
}  // namespace

ScratchLease::ScratchLease() : s_(nullptr) {
    for (auto& slot : g_pool) {
        if (slot.load(std::memory_order_relaxed) == nullptr) continue;
        s_ = slot.exchange(nullptr, std::memory_order_acquire);
        if (s_ != nullptr) return;
    }
    s_ = new Scratch;  // may throw std::bad_alloc: before the caller has written anything
}

ScratchLease::~ScratchLease() {
    for (auto& slot : g_pool) {
        Scratch* expected = nullptr;
        if (slot.load(std::memory_order_relaxed) == nullptr &&
            slot.compare_exchange_strong(expected, s_, std::memory_order_release, std::memory_order_relaxed))
            return;
    }
    delete s_;
}

// ------------------------------------------------------------------ cached plans
struct PlanCache::Impl {
    Plan stream;
    Plan per_span;
};

PlanCache::PlanCache(const Span* spans, std::size_t n) : impl_(new Impl) {
    build_plan(spans, n, impl_->stream, Layout::Stream);
    build_plan(spans, n, impl_->per_span, Layout::PerSpan);
}
PlanCache::~PlanCache() = default;

const Plan& impl::plan_for(Scratch& ws, const Span* spans, std::size_t n, Layout layout, const PlanCache* cached) {
    if (cached != nullptr) return layout == Layout::Stream ? cached->impl().stream : cached->impl().per_span;
    build_plan(spans, n, ws.plan, layout);
    return ws.plan;
}

}  // namespace gradclip
