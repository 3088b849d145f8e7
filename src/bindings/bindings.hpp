// gradclip._core: the only Python-facing C++. It turns a sequence of arrays into spans,
// validates all of them before anything is written, releases the GIL and calls the engine.
// No arithmetic on gradient data happens here. One file per job: module.cpp registers,
// batch.cpp parses (pytree walk, dtypes, shapes), writable.cpp checks what a write needs
// (writeability, overlap), torch_grads.cpp reads torch tensors, gradset.cpp is
// the GradientSet and its one-shot functions, copies.cpp the functional copies, slices.cpp
// the operations over slices (clip_by_norm, AGC, per-example), runtime.cpp the CPU target,
// thread and probe functions. This header is what they share.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "gradclip/engine.hpp"

namespace gradclip_py {

namespace py = pybind11;
using gradclip::DType;
using gradclip::NonFinite;
using gradclip::Span;

// The validated arrays of one call. `keep` holds references so the memory stays alive
// while the GIL is released.
struct Batch {
    std::vector<Span> spans;       // one per array (None entries excluded)
    std::vector<std::size_t> pos;  // leaf position of each span (depth first, dicts in order)
    std::vector<py::array> keep;
    std::vector<std::ptrdiff_t> meta;   // shape then strides of every kept array
    std::vector<std::size_t> meta_off;  // where each kept array's shape starts in meta
    std::size_t npos = 0;               // leaves, None included
    // every array was dense and writeable when parse read it (set by its flat-list fast path
    // only; check_writable trusts it only right after the parse)
    bool dense_writeable = false;
    // How positions are named in errors: `arg` for a single array, arg[i] for a flat list, and
    // the path through the containers (grads['enc'][0]) when the input was nested (`root`).
    std::string arg = "grads";
    bool single = false;
    py::object root;
    py::object names;  // a flattened JAX tree that names its leaves (leaf_name), else null

    std::string at(std::size_t leaf) const;
    // The memory bounds [lo, hi) of kept array k.
    void bounds(std::size_t k, const char*& lo, const char*& hi) const;
};

// Validates every leaf of `grads` and describes it; throws TypeError naming the argument and
// position. Nothing is written here. `write` tells the Python helper that views non-ndarrays
// whether the call writes (it refuses parameters then); the checks a write needs beyond that
// are check_writable's.
void parse(const py::handle& grads, const std::string& arg, bool single, Batch& b, bool write = true);

// What a writing call needs beyond parse: writeable arrays, none whose elements share memory,
// no two that overlap. Throws ValueError naming the position. `just_parsed`: `b` was parsed
// in this same call with no Python code run since (then the flags parse read still hold).
void check_writable(const Batch& b, bool just_parsed = false);

// Refuses a pair of arrays, array k of `d` (whose arrays are disjoint) and array j of `q`,
// whose memory bounds intersect, unless allowed(k, j); message(k, j) says why. Zero-size
// arrays never overlap.
void check_apart(const Batch& d, const Batch& q, const std::function<bool(std::size_t, std::size_t)>& allowed,
                 const std::function<std::string(std::size_t, std::size_t)>& message);

inline gradclip::NormSpec spec_from(double p) { return gradclip::make_norm_spec(p); }

// Per-position output: norms of the spans at their positions, 0.0 for None entries. Made
// (allocated) before a writing call's write, filled after it with scatter.
py::array_t<double> positions_array(const Batch& b);
py::array_t<double> scatter(const Batch& b, const std::vector<double>& per_span, py::array_t<double> out);
py::array_t<double> scatter(const Batch& b, const std::vector<double>& per_span);

// Each file's registrations, called by module.cpp in this order.
void register_batch(py::module_& m);
void register_runtime(py::module_& m);
void register_gradset(py::module_& m);
void register_copies(py::module_& m);
void register_slices(py::module_& m);

}  // namespace gradclip_py
