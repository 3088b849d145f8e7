// Chunk plans: built per call into a per-thread buffer, or once for a fixed list (PlanCache).
#include "engine_impl.hpp"

namespace gradclip {

using namespace impl;  // the engine's internals (engine_impl.hpp)

thread_local Plan impl::t_plan;
thread_local Work impl::t_work;

void impl::build_plan(const Span* spans, std::size_t n, Plan& s, Layout layout) {
    build_plan(spans, n, s, layout, [](std::size_t) { return true; });
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

const Plan& impl::plan_for(const Span* spans, std::size_t n, Layout layout, const PlanCache* cached) {
    if (cached != nullptr) return layout == Layout::Stream ? cached->impl().stream : cached->impl().per_span;
    build_plan(spans, n, t_plan, layout);
    return t_plan;
}

}  // namespace gradclip
