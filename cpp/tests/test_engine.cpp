// The C++ core on its own, below the Python layer: every CPU target this machine runs, 1 and 2
// threads. Checks the determinism contract (the total norm has the same bits for any target,
// thread count and placement in memory; a list of arrays of one dtype gives the bits of the
// array they make end to end), the scaling and clamping kernels against scalar arithmetic,
// norms against a compensated float64 sum, p-norms for huge and tiny p, the bound rounding
// at float16/bfloat16 midpoints, NaN and signed-zero bits through clamp and scale, the
// overlap rule of writing calls and slices made a range at a time; and writes a digest of the
// exact results of every operation on fixed inputs, the same on every target and thread
// count, for comparing builds for other CPU architectures (see run_digest). A plain
// executable (ctest runs it): prints each failure and exits 1 if there was any.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "gradclip/engine.hpp"
#include "gradclip/types.hpp"

namespace {

using gradclip::DType;
using gradclip::Span;

int g_failures = 0;

#define CHECK(cond, ...)                                                                  \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            ++g_failures;                                                                 \
            std::fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond); \
            std::fprintf(stderr, __VA_ARGS__);                                            \
            std::fprintf(stderr, "\n");                                                   \
        }                                                                                 \
    } while (0)

std::uint64_t bits(double x) {
    std::uint64_t u;
    std::memcpy(&u, &x, sizeof u);
    return u;
}

// Raw storage for n elements of dtype dt starting `offset` bytes into the buffer (unaligned
// when offset is not a multiple of the item size).
struct Buffer {
    std::vector<unsigned char> bytes;
    std::size_t offset = 0;
    char* data() { return reinterpret_cast<char*>(bytes.data() + offset); }
};

std::uint16_t to_half(float f) {
    // exact for the values used here: small integers times powers of two
    const double v = gradclip::round_to_dtype(DType::F16, static_cast<double>(f));
    if (v == 0.0) return 0;
    int e;
    const double m = std::frexp(std::fabs(v), &e);  // v = m 2^e, 0.5 <= m < 1
    const std::uint16_t sign = std::signbit(v) ? 0x8000 : 0;
    if (e - 1 < -14) return static_cast<std::uint16_t>(sign | static_cast<std::uint16_t>(std::ldexp(std::fabs(v), 24)));
    const auto frac = static_cast<std::uint16_t>(std::ldexp(m, 11)) & 0x3ff;
    return static_cast<std::uint16_t>(sign | ((e - 1 + 15) << 10) | frac);
}

std::uint16_t to_bf16(float f) {
    const float r = static_cast<float>(gradclip::round_to_dtype(DType::BF16, static_cast<double>(f)));
    std::uint32_t u;
    std::memcpy(&u, &r, sizeof u);
    return static_cast<std::uint16_t>(u >> 16);
}

template <class T>
T read_as(const void* p) {
    T v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

double from_elem(const char* p, DType dt) {
    switch (dt) {
        case DType::F64:
            return read_as<double>(p);
        case DType::F32:
            return read_as<float>(p);
        case DType::BF16: {
            const std::uint32_t u = static_cast<std::uint32_t>(read_as<std::uint16_t>(p)) << 16;
            return read_as<float>(&u);
        }
        case DType::F16: {
            const auto h = read_as<std::uint16_t>(p);
            const int e = (h >> 10) & 0x1f, m = h & 0x3ff;
            if (e == 31)
                return m != 0         ? std::numeric_limits<double>::quiet_NaN()
                       : (h & 0x8000) ? -std::numeric_limits<double>::infinity()
                                      : std::numeric_limits<double>::infinity();
            const double mag = e == 0 ? std::ldexp(m, -24) : std::ldexp(1024 + m, e - 25);
            return (h & 0x8000) ? -mag : mag;
        }
    }
    return 0.0;
}

// A zeroed buffer for n elements of dtype dt at `offset` bytes in (one spare byte at the end).
Buffer zeroed(DType dt, std::size_t n, std::size_t offset) {
    Buffer b;
    b.offset = offset;
    b.bytes.assign(offset + n * gradclip::itemsize(dt) + 1, 0);
    return b;
}

// Stores v rounded to dtype dt (gradclip's own rounding) as element i of p.
void put(char* p, std::size_t i, DType dt, double v) {
    const double r = gradclip::round_to_dtype(dt, v);
    char* q = p + i * gradclip::itemsize(dt);
    switch (dt) {
        case DType::F64:
            std::memcpy(q, &r, 8);
            break;
        case DType::F32: {
            const float f = static_cast<float>(r);
            std::memcpy(q, &f, 4);
            break;
        }
        case DType::F16: {
            std::uint16_t h;
            if (std::isinf(r))
                h = r > 0 ? 0x7c00 : 0xfc00;
            else if (r != r)
                h = 0x7e00;
            else
                h = to_half(static_cast<float>(r));
            std::memcpy(q, &h, 2);
            break;
        }
        case DType::BF16: {
            const std::uint16_t h = to_bf16(static_cast<float>(r));
            std::memcpy(q, &h, 2);
            break;
        }
    }
}

// Fills n elements with values exactly representable in every dtype (k / 64 for small k,
// so float16 holds them too, and put's rounding leaves them as they are), from a fixed seed.
Buffer make(DType dt, std::size_t n, std::size_t offset, unsigned seed) {
    Buffer b = zeroed(dt, n, offset);
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int> k(-512, 512);
    for (std::size_t i = 0; i < n; ++i) put(b.data(), i, dt, k(rng) / 64.0);
    return b;
}

Span span_of(Buffer& b, DType dt, std::size_t n) {
    Span s;
    s.data = b.data();
    s.n = n;
    s.dt = dt;
    return s;
}

// sum of squares by Neumaier's compensated summation, then the root: a reference good to
// an ulp or so for these inputs
double reference_l2(const std::vector<Span>& spans) {
    double sum = 0.0, c = 0.0;
    for (const Span& s : spans)
        for (std::size_t i = 0; i < s.n; ++i) {
            const double x = from_elem(s.data + i * gradclip::itemsize(s.dt), s.dt);
            const double t = x * x;
            const double y = sum + t;
            c += std::fabs(sum) >= std::fabs(t) ? (sum - y) + t : (t - y) + sum;
            sum = y;
        }
    return std::sqrt(sum + c);
}

const DType kDTypes[] = {DType::F16, DType::BF16, DType::F32, DType::F64};
const char* kNames[] = {"float16", "bfloat16", "float32", "float64"};
const std::size_t kLengths[] = {0, 1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 1000, 70001, 1000003};

// For each (target, threads): fn() must give the same bits as on the first configuration.
template <class F>
void same_bits_everywhere(const char* what, F fn) {
    bool first = true;
    std::uint64_t want = 0;
    for (const std::string& t : gradclip::available_targets()) {
        gradclip::set_target(t);
        for (int threads : {1, 2}) {
            gradclip::set_num_threads(threads);
            const std::uint64_t got = bits(fn());
            if (first) {
                want = got;
                first = false;
            }
            CHECK(got == want, "%s: target %s, %d threads: bits %llx, first configuration %llx", what, t.c_str(),
                  threads, static_cast<unsigned long long>(got), static_cast<unsigned long long>(want));
        }
    }
}

void test_norm_determinism_and_accuracy() {
    for (int d = 0; d < 4; ++d) {
        const DType dt = kDTypes[d];
        for (std::size_t n : kLengths) {
            for (std::size_t offset : {std::size_t{0}, gradclip::itemsize(dt), std::size_t{1}}) {
                Buffer b = make(dt, n, offset, static_cast<unsigned>(n * 7 + static_cast<std::size_t>(d)));
                const Span s = span_of(b, dt, n);
                for (double p : {2.0, 1.0, 3.0, std::numeric_limits<double>::infinity()}) {
                    const gradclip::NormSpec spec = gradclip::make_norm_spec(p);
                    char what[96];
                    std::snprintf(what, sizeof what, "%s n=%zu offset=%zu p=%g", kNames[d], n, offset, p);
                    same_bits_everywhere(what, [&] { return gradclip::total_norm(&s, 1, spec); });
                }
                const double got = gradclip::total_norm(&s, 1, gradclip::make_norm_spec(2.0));
                const double want = reference_l2({s});
                CHECK(std::fabs(got - want) <= 1e-12 * want, "%s n=%zu: l2 %.17g vs compensated %.17g", kNames[d], n,
                      got, want);
            }
        }
    }
}

void test_address_independence() {
    // the same values at another address (another alignment) give the same bits
    for (int d = 0; d < 4; ++d) {
        const DType dt = kDTypes[d];
        const std::size_t n = 4099;
        Buffer a = make(dt, n, 0, 42), b = make(dt, n, 3, 42);
        const Span sa = span_of(a, dt, n), sb = span_of(b, dt, n);
        const double na = gradclip::total_norm(&sa, 1, gradclip::make_norm_spec(2.0));
        const double nb = gradclip::total_norm(&sb, 1, gradclip::make_norm_spec(2.0));
        CHECK(bits(na) == bits(nb), "%s: %.17g at an aligned address, %.17g unaligned", kNames[d], na, nb);
    }
}

// The pieces of a list of one dtype, in elements: a few large and odd sizes, then every size
// 0 .. 70 twice in a scrambled order (the batched kernel's pending block filled from many
// pieces, completed inside a piece or at its end, zero-size pieces between), then the same
// after one odd piece, so that the lanes start elsewhere.
std::vector<std::size_t> concatenation_parts() {
    std::vector<std::size_t> parts = {17, 1000, 1, 65, 300000, 3};
    for (int rep = 0; rep < 2; ++rep) {
        if (rep == 1) parts.push_back(5);
        for (std::size_t i = 0; i <= 70; ++i) parts.push_back((i * 37 + 11) % 71);
    }
    return parts;
}

void test_list_is_its_concatenation() {
    const std::vector<std::size_t> parts = concatenation_parts();
    for (int d = 0; d < 4; ++d) {
        const DType dt = kDTypes[d];
        const std::size_t isz = gradclip::itemsize(dt);
        std::size_t total = 0;
        for (std::size_t p : parts) total += p;
        Buffer whole = make(dt, total, 0, 7);
        std::vector<Buffer> pieces;
        std::vector<Span> spans;
        std::size_t at = 0;
        for (std::size_t p : parts) {
            Buffer piece;
            piece.offset = p % 3 == 0 ? 0 : 1;               // unaligned starts too
            piece.bytes.resize(piece.offset + p * isz + 1);  // never empty
            if (p != 0) std::memcpy(piece.data(), whole.data() + at * isz, p * isz);
            pieces.push_back(std::move(piece));
            at += p;
        }
        for (std::size_t i = 0; i < pieces.size(); ++i) spans.push_back(span_of(pieces[i], dt, parts[i]));
        const Span one = span_of(whole, dt, total);
        for (const std::string& t : gradclip::available_targets()) {
            gradclip::set_target(t);
            for (double p : {2.0, 1.0}) {
                const gradclip::NormSpec spec = gradclip::make_norm_spec(p);
                const double list = gradclip::total_norm(spans.data(), spans.size(), spec);
                const double cat = gradclip::total_norm(&one, 1, spec);
                CHECK(bits(list) == bits(cat), "%s %s p=%g: list %.17g, concatenation %.17g", t.c_str(), kNames[d], p,
                      list, cat);
            }
        }
    }
}

void test_scale_and_clamp_match_scalar_arithmetic() {
    // 0.75 makes exact ties for the float16/bfloat16 stores: x * 1.5 needs one bit more than
    // x, so every x whose last significand bit is set lands halfway between two neighbours
    for (int d = 0; d < 4; ++d) {
        const DType dt = kDTypes[d];
        const std::size_t isz = gradclip::itemsize(dt);
        for (std::size_t n : kLengths) {
            if (n > 70001) continue;
            for (const std::string& t : gradclip::available_targets()) {
                gradclip::set_target(t);
                const Buffer orig = make(dt, n, 1, 99);
                auto x_at = [&](std::size_t i) {
                    return from_elem(reinterpret_cast<const char*>(orig.bytes.data()) + orig.offset + i * isz, dt);
                };
                for (double coef : {0.3, 0.75}) {
                    Buffer b = orig;
                    Span s = span_of(b, dt, n);
                    gradclip::scale_all(&s, 1, coef);
                    for (std::size_t i = 0; i < n; ++i) {
                        const double x = x_at(i);
                        const double got = from_elem(b.data() + i * isz, dt);
                        // float types multiply in float and round once to the element type
                        const double want =
                            dt == DType::F64
                                ? x * coef
                                : gradclip::round_to_dtype(
                                      dt, static_cast<double>(static_cast<float>(x) * static_cast<float>(coef)));
                        CHECK(bits(got) == bits(want), "%s %s n=%zu [%zu]: %.17g scaled by %g: %.17g, expected %.17g",
                              t.c_str(), kNames[d], n, i, x, coef, got, want);
                        if (got != want) break;
                    }
                }
                Buffer c = orig;
                Span sc = span_of(c, dt, n);
                gradclip::clamp_all(&sc, 1, -1.5, 2.0);
                for (std::size_t i = 0; i < n; ++i) {
                    const double x = x_at(i);
                    const double cl = from_elem(c.data() + i * isz, dt);
                    const double cw = x < -1.5 ? -1.5 : x > 2.0 ? 2.0 : x;
                    CHECK(bits(cl) == bits(cw), "%s %s n=%zu [%zu]: clamped %.17g, expected %.17g", t.c_str(),
                          kNames[d], n, i, cl, cw);
                    if (cl != cw) break;
                }
            }
        }
    }
}

void test_extreme_p() {
    // |x| < 1 everywhere: every plain power underflows for huge p; the norm is the max.
    std::vector<double> x = {0.8359375, -0.5, 0.25};
    Span s;
    s.data = reinterpret_cast<char*>(x.data());
    s.n = x.size();
    s.dt = DType::F64;
    for (double p : {1e20, 1e100, 1e308, std::numeric_limits<double>::max()}) {
        const double got = gradclip::total_norm(&s, 1, gradclip::make_norm_spec(p));
        CHECK(got == 0.8359375, "p=%g: %.17g, expected max|x| 0.8359375", p, got);
    }
    // a max below 2^-1001, where the power-of-two rescaling cannot reach [0.5, 1): general p
    // must not underflow to 0 (the true norm is a normal double)
    std::vector<double> z = {0x1p-1015, 0x1p-1016};
    Span u = s;
    u.data = reinterpret_cast<char*>(z.data());
    u.n = z.size();
    for (double p : {3.0, 100.0, 512.0, 1e5}) {
        const double got = gradclip::total_norm(&u, 1, gradclip::make_norm_spec(p));
        const double want = 0x1p-1015 * std::pow(1.0 + std::pow(0.5, p), 1.0 / p);
        CHECK(std::fabs(got - want) <= 1e-12 * want, "tiny max, p=%g: %.17g, expected %.17g", p, got, want);
    }
    // one nonzero element: the norm is |x| for every p > 0
    std::vector<double> y = {0.0, -3.0, 0.0};
    Span t = s;
    t.data = reinterpret_cast<char*>(y.data());
    for (double p : {1e-300, 1e-10, 0.01, 0.5, 3.0, 600.0, 1e20}) {
        const double got = gradclip::total_norm(&t, 1, gradclip::make_norm_spec(p));
        CHECK(got == 3.0, "p=%g: %.17g, expected 3", p, got);
    }
}

void test_bound_rounding() {
    // midpoints between neighbouring values round to the even one, the doubles beside them
    // to the nearer; a float32 intermediate would round some of these twice
    struct Case {
        DType dt;
        double v, want;
    };
    const double up = std::nextafter(1.0 + 0x1p-11, 2.0);  // just above the float16 midpoint
    const Case cases[] = {
        {DType::F16, 1.0 + 0x1p-11, 1.0},                    // tie to even (1.0)
        {DType::F16, up, 1.0 + 0x1p-10},                     // float32 would make it the tie
        {DType::F16, 1.0 + 3 * 0x1p-11, 1.0 + 2 * 0x1p-10},  // tie to even (up)
        {DType::F16, 65519.99999999999, 65504.0},            // below the overflow threshold
        {DType::F16, 65520.0, std::numeric_limits<double>::infinity()},
        {DType::BF16, 1.0 + 0x1p-8, 1.0},
        {DType::BF16, std::nextafter(1.0 + 0x1p-8, 2.0), 1.0 + 0x1p-7},
        {DType::BF16, 1.0039062509313226, 1.0078125},
        {DType::F32, 1.0 + 0x1p-24, 1.0},
        {DType::F32, 1e39, std::numeric_limits<double>::infinity()},
        {DType::F64, 0.1, 0.1},
    };
    for (const Case& c : cases) {
        for (double sign : {1.0, -1.0}) {
            const double got = gradclip::round_to_dtype(c.dt, sign * c.v);
            CHECK(got == sign * c.want, "round_to_dtype(%s, %.17g) = %.17g, expected %.17g",
                  kNames[static_cast<int>(c.dt)], sign * c.v, got, sign * c.want);
        }
    }
}

void test_overlap_rule() {
    char buf[100];
    using R = gradclip::ByteRange;
    struct Case {
        std::vector<R> ranges;
        bool overlap;
    };
    const Case cases[] = {
        {{{buf, buf + 10, 0}, {buf + 10, buf + 20, 1}}, false},                          // touching
        {{{buf + 10, buf + 20, 0}, {buf, buf + 10, 1}}, false},                          // out of order
        {{{buf, buf + 10, 0}, {buf + 9, buf + 20, 1}}, true},                            // one byte
        {{{buf, buf + 50, 0}, {buf + 60, buf + 70, 1}, {buf + 10, buf + 20, 2}}, true},  // nested
        {{{buf, buf + 8, 0}, {buf, buf + 8, 1}}, true},                                  // the same
        {{{buf, buf + 8, 0}}, false},
    };
    for (const Case& c : cases) {
        std::vector<R> r = c.ranges;
        std::size_t a = 99, b = 99;
        const bool got = gradclip::find_overlap(r, a, b);
        CHECK(got == c.overlap, "find_overlap over %zu ranges: %d, expected %d", c.ranges.size(), got, c.overlap);
        if (got) CHECK(a != b && a < c.ranges.size() && b < c.ranges.size(), "ids %zu and %zu", a, b);
    }
}

// make_slices over a range of slices gives exactly the spans of those slices in the full list,
// for any first slice and count (a caller walks many slices a window at a time).
void test_slice_ranges() {
    struct Case {
        std::vector<std::ptrdiff_t> shape, strides;  // strides in bytes, float32 elements
        std::vector<bool> reduced;
    };
    const Case cases[] = {
        {{7, 3}, {12, 4}, {false, true}},                   // rows of a C array
        {{7, 3}, {4, 28}, {true, false}},                   // columns of an F array
        {{4, 5, 6}, {-120, 24, -4}, {false, true, false}},  // reversed axes, middle reduced
        {{3, 4, 5}, {160, 40, 8}, {false, false, true}},    // every other element
        {{2, 3, 4, 5}, {480, 160, 40, 8}, {true, false, true, false}},
        {{5, 1, 6}, {24, 24, 4}, {false, true, true}},
        {{6}, {4}, {false}},                           // 0-d slices
        {{6}, {4}, {true}},                            // one slice
        {{3, 0, 2}, {8, 8, 4}, {false, true, false}},  // empty slices
    };
    std::vector<char> buf(4096);
    char* data = buf.data() + 2048;  // room for the negative strides
    for (const Case& c : cases) {
        const int nd = static_cast<int>(c.shape.size());
        bool red[8];
        for (int d = 0; d < nd; ++d) red[d] = c.reduced[static_cast<std::size_t>(d)];
        const std::size_t n = gradclip::count_slices(nd, c.shape.data(), red);
        std::vector<std::ptrdiff_t> meta_all(2 * c.shape.size()), meta(2 * c.shape.size());
        std::vector<Span> all(n), part(n);
        gradclip::make_slices(data, nd, c.shape.data(), c.strides.data(), DType::F32, red, meta_all.data(), all.data());
        for (std::size_t first = 0; first <= n; ++first) {
            for (std::size_t count = 0; first + count <= n; ++count) {
                gradclip::make_slices(data, nd, c.shape.data(), c.strides.data(), DType::F32, red, meta.data(), first,
                                      count, part.data());
                for (std::size_t i = 0; i < count; ++i) {
                    const Span& a = all[first + i];
                    const Span& b = part[i];
                    bool same = a.data == b.data && a.n == b.n && a.dt == b.dt && a.ndim == b.ndim;
                    for (int d = 0; same && d < a.ndim; ++d)
                        same = a.shape[d] == b.shape[d] && a.strides[d] == b.strides[d];
                    CHECK(same, "%d-d case: slice %zu of the range [%zu, +%zu) differs from the full list", nd,
                          first + i, first, count);
                }
            }
        }
    }
}

// ---------------------------------------------------------------- digest
// The exact results of every operation of the engine on fixed inputs, one line each: doubles
// in hex, written arrays as a 64-bit FNV-1a hash of their bytes. The inputs come from a
// generator written here (splitmix64, bit operations and ldexp only), so every build, on any
// CPU and C++ library, makes the same ones; two digests are comparable across machines (CI
// compares this x86-64 build's with the AArch64 build's run under qemu, see .ci/run), and
// within one run every target and thread count must give the same digest.
//
// A NaN is written as "nan" and a NaN element hashes as one fixed pattern: NaN results are
// NaN on every target, but their sign and payload are not part of the contract across CPU
// architectures (an invalid operation such as inf * 0 gives x86's default NaN, which has the
// sign bit set, and ARM's, which has not).
struct Rng {
    std::uint64_t s;
    std::uint64_t next() {
        std::uint64_t z = (s += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }
    // +-[1, 2) * 2^e for e in [emin, emax], with full 53-bit significands; every 61st value
    // is a zero of either sign
    double value(int emin, int emax) {
        const std::uint64_t u = next(), w = next();
        if (w % 61 == 0) return (w & 0x100) ? -0.0 : 0.0;
        const double m = 1.0 + static_cast<double>(u >> 11) * 0x1p-53;
        const int e = emin + static_cast<int>(w % static_cast<std::uint64_t>(emax - emin + 1));
        return ((w >> 8) & 1) ? -std::ldexp(m, e) : std::ldexp(m, e);
    }
};

// n elements of dtype dt at `offset` bytes into a fresh buffer, +-[1, 2) * 2^[emin, emax].
Buffer random_buffer(DType dt, std::size_t n, std::size_t offset, std::uint64_t seed, int emin, int emax) {
    Buffer b = zeroed(dt, n, offset);
    Rng rng{seed};
    for (std::size_t i = 0; i < n; ++i) put(b.data(), i, dt, rng.value(emin, emax));
    return b;
}

// Whether the element with bit pattern u (little-endian, itemsize bytes) is a NaN.
bool is_nan_bits(DType dt, std::uint64_t u) {
    switch (dt) {
        case DType::F64:
            return (u & 0x7fffffffffffffffull) > 0x7ff0000000000000ull;
        case DType::F32:
            return (u & 0x7fffffffu) > 0x7f800000u;
        case DType::F16:
            return (u & 0x7fffu) > 0x7c00u;
        case DType::BF16:
            return (u & 0x7fffu) > 0x7f80u;
    }
    return false;
}

struct Digest {
    std::vector<std::string> lines;

    void num(const std::string& what, double v) {
        char buf[32];
        if (v != v)
            std::snprintf(buf, sizeof buf, "nan");
        else
            std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(bits(v)));
        lines.push_back(what + " " + buf);
    }
    void nums(const std::string& what, const double* v, std::size_t n) {
        for (std::size_t i = 0; i < n; ++i) num(what + "[" + std::to_string(i) + "]", v[i]);
    }
    // the elements of a span (dense, or ndim 1 strided), NaNs as one pattern
    void elems(const std::string& what, const Span& s) {
        std::uint64_t h = 0xcbf29ce484222325ull;
        const std::size_t isz = gradclip::itemsize(s.dt);
        const std::ptrdiff_t step = s.ndim == 0 ? static_cast<std::ptrdiff_t>(isz) : s.strides[0];
        for (std::size_t i = 0; i < s.n; ++i) {
            std::uint64_t u = 0;
            std::memcpy(&u, s.data + static_cast<std::ptrdiff_t>(i) * step, isz);
            if (is_nan_bits(s.dt, u)) u = ~std::uint64_t{0};
            for (std::size_t j = 0; j < isz; ++j) h = (h ^ ((u >> (8 * j)) & 0xff)) * 0x100000001b3ull;
        }
        char buf[32];
        std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
        lines.push_back(what + " n=" + std::to_string(s.n) + " " + buf);
    }
};

double norm_p(const Span* s, std::size_t n, double p) {
    return gradclip::total_norm(s, n, gradclip::make_norm_spec(p));
}

const double kDigestP[] = {2.0, 1.0, 3.0, 0.5, std::numeric_limits<double>::infinity()};

// A list of arrays, the inputs of one case; every writing operation gets a fresh copy.
// Strided arrays (every `every`-th element of a buffer) take the engine's strided path.
struct Arrays {
    std::string tag;
    std::vector<Buffer> bufs;
    std::vector<std::size_t> n;
    std::vector<DType> dt;
    std::vector<std::ptrdiff_t> shape, stride;  // one entry per array; stride 0: dense

    void add(DType t, std::size_t count, std::size_t offset, std::uint64_t seed, int emin, int emax,
             std::size_t every = 1) {
        bufs.push_back(random_buffer(t, count * every, offset, seed, emin, emax));
        n.push_back(count);
        dt.push_back(t);
        shape.push_back(static_cast<std::ptrdiff_t>(count));
        stride.push_back(every == 1 ? 0 : static_cast<std::ptrdiff_t>(every * gradclip::itemsize(t)));
    }
    // spans over `b` (bufs or a copy of it); they point into this object and into b
    std::vector<Span> view(std::vector<Buffer>& b) const {
        std::vector<Span> out(bufs.size());
        for (std::size_t i = 0; i < out.size(); ++i) {
            out[i].data = b[i].data();
            out[i].n = n[i];
            out[i].dt = dt[i];
            if (stride[i] != 0) {
                out[i].ndim = 1;
                out[i].shape = &shape[i];
                out[i].strides = &stride[i];
            }
        }
        return out;
    }
};

struct Copy {  // a writable copy of a case's arrays
    std::vector<Buffer> bufs;
    std::vector<Span> spans;
    explicit Copy(const Arrays& a) : bufs(a.bufs), spans(a.view(bufs)) {}
};

void digest_writes(Digest& d, const std::string& what, const Copy& c) {
    for (std::size_t i = 0; i < c.spans.size(); ++i) d.elems(what + " [" + std::to_string(i) + "]", c.spans[i]);
}

std::string pname(double p) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "p=%g", p);
    return buf;
}

// The reading and writing operations of one array (or any list): norms, scale and clamp.
void digest_basic(Digest& d, const Arrays& a, double lo, double hi) {
    Copy in(a);
    const std::string& t = a.tag;
    for (double p : kDigestP) d.num(t + " norm " + pname(p), norm_p(in.spans.data(), in.spans.size(), p));
    for (double coef : {0.3, 0.75, 1.7e-3}) {  // 0.75: ties in the narrow stores
        Copy c(a);
        gradclip::scale_all(c.spans.data(), c.spans.size(), coef);
        digest_writes(d, t + " scale " + std::to_string(coef), c);
    }
    for (double l : {lo, 0.0}) {  // [0, hi] keeps -0.0
        Copy c(a);
        gradclip::clamp_all(c.spans.data(), c.spans.size(), l, hi);
        digest_writes(d, t + " clamp " + std::to_string(l), c);
    }
}

// The composite operations on a list of arrays.
void digest_composite(Digest& d, const Arrays& a, const Arrays& w, double max_norm) {
    const std::string& t = a.tag;
    const std::size_t n = a.bufs.size();
    std::vector<double> norms(n), wnorms(n), coefs(n);
    {
        Copy c(a);
        for (double p : {2.0, 3.0, std::numeric_limits<double>::infinity()}) {
            gradclip::span_norms(c.spans.data(), n, gradclip::make_norm_spec(p), norms.data());
            d.nums(t + " span_norms " + pname(p), norms.data(), n);
            d.num(t + " norm_of_norms " + pname(p),
                  gradclip::norm_of_norms(norms.data(), n, gradclip::make_norm_spec(p)));
        }
    }
    for (int variant = 0; variant < 3; ++variant) {  // plain, with span norms, zero when non-finite
        Copy c(a);
        double coef = 0.0;
        const bool per_span = variant == 1;
        const auto mode = variant == 2 ? gradclip::NonFinite::Zero : gradclip::NonFinite::Propagate;
        const double norm = gradclip::clip_total(c.spans.data(), n, gradclip::make_norm_spec(2.0), max_norm, 1e-6, mode,
                                                 nullptr, &coef, per_span ? norms.data() : nullptr);
        const std::string what = t + (variant == 0 ? " clip_total"
                                      : per_span   ? " clip_total+norms"
                                                   : " clip_total zero");
        d.num(what + " norm", norm);
        d.num(what + " coef", coef);
        if (per_span) d.nums(what + " norms", norms.data(), n);
        digest_writes(d, what, c);
    }
    {
        Copy c(a);
        gradclip::clip_each(c.spans.data(), n, gradclip::make_norm_spec(2.0), max_norm / 4, 1e-6,
                            gradclip::NonFinite::Propagate, norms.data());
        d.nums(t + " clip_each norms", norms.data(), n);
        digest_writes(d, t + " clip_each", c);
    }
    {
        Copy c(a);
        double coef = 0.0;
        const double norm = gradclip::unscale_clip(c.spans.data(), n, gradclip::make_norm_spec(2.0), max_norm, 0.37,
                                                   1e-6, &coef, nullptr);
        d.num(t + " unscale_clip norm", norm);
        d.num(t + " unscale_clip coef", coef);
        digest_writes(d, t + " unscale_clip", c);
    }
    {
        Copy c(a), wc(w);
        gradclip::adaptive_clip(c.spans.data(), wc.spans.data(), n, gradclip::make_norm_spec(2.0), 0.01, 1e-3,
                                norms.data(), wnorms.data(), coefs.data());
        d.nums(t + " agc gnorms", norms.data(), n);
        d.nums(t + " agc wnorms", wnorms.data(), n);
        d.nums(t + " agc coefs", coefs.data(), n);
        digest_writes(d, t + " agc", c);
    }
}

// Per-example clipping: the arrays of `a` are [batch, n_i / batch] (dense, n_i a multiple of
// batch), each example a slice.
void digest_per_example(Digest& d, const Arrays& a, std::size_t batch, double max_norm) {
    for (bool per_layer : {false, true}) {
        Copy c(a);
        std::vector<Span> slices;
        for (const Span& s : c.spans) {
            for (std::size_t b = 0; b < batch; ++b) {
                Span e = s;
                e.n = s.n / batch;
                e.data = s.data + b * e.n * gradclip::itemsize(s.dt);
                slices.push_back(e);
            }
        }
        std::vector<double> norms(slices.size()), coefs(slices.size());
        const std::size_t clipped = gradclip::clip_per_example(slices.data(), c.spans.size(), batch, per_layer,
                                                               max_norm, 1e-6, norms.data(), coefs.data());
        const std::string what = a.tag + (per_layer ? " per_example per_layer" : " per_example");
        d.num(what + " clipped", static_cast<double>(clipped));
        d.nums(what + " norms", norms.data(), norms.size());
        d.nums(what + " coefs", coefs.data(), coefs.size());
        digest_writes(d, what, c);
    }
}

// The inputs, made once (making them costs more than the operations under emulation).
struct DigestInputs {
    std::vector<std::pair<Arrays, std::pair<double, double>>> basic;  // arrays, clamp bounds
    Arrays mixed, mixed_w, special, batched;
    std::vector<double> to_round;
};

DigestInputs digest_inputs() {
    DigestInputs in;
    std::uint64_t seed = 1;
    const std::size_t lengths[] = {0, 1, 31, 32, 33, 1000, 70001, 140001};
    struct Range {
        DType dt;
        int emin, emax;
    };
    // every dtype at ordinary magnitudes; then the ends of each range: float16 subnormals,
    // bfloat16/float32 near their largest values, float64 where the plain sum of squares
    // overflows or underflows (the rescaled pass)
    const Range ranges[] = {{DType::F16, -12, 4},    {DType::BF16, -12, 4},    {DType::F32, -12, 4},
                            {DType::F64, -12, 4},    {DType::F16, -24, -15},   {DType::F16, 8, 15},
                            {DType::BF16, 100, 126}, {DType::F32, 100, 126},   {DType::F32, -149, -127},
                            {DType::F64, 600, 700},  {DType::F64, -700, -600}, {DType::F64, -1074, -1030}};
    for (const Range& r : ranges) {
        const bool ordinary = r.emin == -12;
        for (std::size_t n : lengths) {
            if (!ordinary && n != 1000 && n != 70001) continue;
            for (std::size_t offset : {std::size_t{0}, std::size_t{1}}) {
                Arrays a;
                char tag[80];
                std::snprintf(tag, sizeof tag, "%s n=%zu off=%zu e=[%d,%d]", kNames[static_cast<int>(r.dt)], n, offset,
                              r.emin, r.emax);
                a.tag = tag;
                a.add(r.dt, n, offset, seed++, r.emin, r.emax);
                const double hi = gradclip::round_to_dtype(r.dt, std::ldexp(1.1, r.emax - 1));
                const double lo = gradclip::round_to_dtype(r.dt, -std::ldexp(1.3, r.emax - 2));
                in.basic.push_back({std::move(a), {lo, hi}});
            }
        }
    }
    // a list of every dtype, sizes that cross chunks and make the call threaded, odd offsets,
    // an empty array and two strided views
    for (Arrays* a : {&in.mixed, &in.mixed_w}) {
        a->tag = "mixed";
        a->add(DType::F32, 300001, 0, seed++, -12, 4);
        a->add(DType::F16, 70001, 2, seed++, -12, 4);
        a->add(DType::BF16, 1000, 1, seed++, -12, 4);
        a->add(DType::F64, 131077, 3, seed++, -12, 4);
        a->add(DType::F32, 0, 0, seed++, -12, 4);
        a->add(DType::F64, 1, 0, seed++, -12, 4);
        a->add(DType::F16, 200003, 0, seed++, -12, 4);
        a->add(DType::F64, 40000, 0, seed++, -12, 4, 2);
        a->add(DType::F32, 3001, 1, seed++, -12, 4, 3);
    }
    // non-finite values: an infinite norm (propagate makes inf * 0 = NaN) and a NaN norm
    in.special.tag = "special";
    in.special.add(DType::F32, 1000, 0, seed++, -4, 4);
    in.special.add(DType::F16, 5000, 0, seed++, -4, 4);
    in.special.add(DType::F64, 70, 0, seed++, -4, 4);
    put(in.special.bufs[0].data(), 17, DType::F32, std::numeric_limits<double>::infinity());
    put(in.special.bufs[1].data(), 4000, DType::F16, -std::numeric_limits<double>::infinity());
    in.batched.tag = "batched";
    in.batched.add(DType::F32, 8 * 20000, 0, seed++, -12, 4);
    in.batched.add(DType::F16, 8 * 3001, 0, seed++, -12, 4);
    in.batched.add(DType::F64, 8 * 7, 0, seed++, -12, 4);
    Rng rng{seed++};
    for (int i = 0; i < 4000; ++i) in.to_round.push_back(rng.value(-30, 20));
    for (double m : {65504.0, 65519.0, 65520.0, 0x1.fep127, 0x1.ffp127, 0x1.fffffep127, 0x1.ffffffp127, 1e300})
        in.to_round.push_back(m);
    return in;
}

std::vector<std::string> run_digest(const DigestInputs& in) {
    Digest d;
    for (const auto& [a, bounds] : in.basic) digest_basic(d, a, bounds.first, bounds.second);
    digest_basic(d, in.mixed, -0.5, 0.75);
    digest_composite(d, in.mixed, in.mixed_w, 40.0);
    digest_basic(d, in.special, -0.5, 0.75);
    digest_composite(d, in.special, in.mixed_w, 40.0);
    {  // a NaN norm
        Arrays nan = in.special;
        put(nan.bufs[2].data(), 3, DType::F64, std::numeric_limits<double>::quiet_NaN());
        digest_composite(d, nan, in.mixed_w, 40.0);
    }
    digest_per_example(d, in.batched, 8, 30.0);
    for (int k = 0; k < 4; ++k)
        for (double v : in.to_round)
            d.num(std::string("round_to_dtype ") + kNames[k], gradclip::round_to_dtype(kDTypes[k], v));
    return d.lines;
}

// The digest on every target and thread count: all must be equal (the first difference is
// reported). Returns the digest.
std::vector<std::string> test_digest_everywhere() {
    const DigestInputs in = digest_inputs();
    std::vector<std::string> first;
    std::string first_config;
    for (const std::string& t : gradclip::available_targets()) {
        gradclip::set_target(t);
        for (int threads : {1, 2}) {
            gradclip::set_num_threads(threads);
            const std::vector<std::string> got = run_digest(in);
            const std::string config = t + ", " + std::to_string(threads) + " threads";
            if (first.empty()) {
                first = got;
                first_config = config;
                continue;
            }
            CHECK(got.size() == first.size(), "digest on %s: %zu lines, %zu on %s", config.c_str(), got.size(),
                  first.size(), first_config.c_str());
            for (std::size_t i = 0; i < got.size() && i < first.size(); ++i) {
                if (got[i] != first[i]) {
                    CHECK(got[i] == first[i], "digest on %s: '%s', on %s: '%s'", config.c_str(), got[i].c_str(),
                          first_config.c_str(), first[i].c_str());
                    break;
                }
            }
        }
    }
    return first;
}

// NaN and signed zeros through clamp and scale, on every target: clamp returns a NaN or a zero
// of either sign with its exact bits (float16/bfloat16 NaNs come out quiet, as every store to
// them makes them); scale quiets a NaN and keeps its sign and payload.
void test_nan_and_zero_bits() {
    struct Case {
        DType dt;
        std::uint64_t in, clamped, scaled;  // bit patterns
    };
    const Case cases[] = {
        {DType::F64, 0x7ff0000000000123ull, 0x7ff0000000000123ull, 0x7ff8000000000123ull},  // signalling
        {DType::F64, 0xfff8000000000456ull, 0xfff8000000000456ull, 0xfff8000000000456ull},  // quiet, negative
        {DType::F64, 0x8000000000000000ull, 0x8000000000000000ull, 0x8000000000000000ull},  // -0.0
        {DType::F64, 0x0000000000000000ull, 0x0000000000000000ull, 0x0000000000000000ull},
        {DType::F32, 0x7f800123u, 0x7f800123u, 0x7fc00123u},
        {DType::F32, 0xffc00456u, 0xffc00456u, 0xffc00456u},
        {DType::F32, 0x80000000u, 0x80000000u, 0x80000000u},
        {DType::F16, 0x7c05u, 0x7e05u, 0x7e05u},
        {DType::F16, 0xfe06u, 0xfe06u, 0xfe06u},
        {DType::F16, 0x8000u, 0x8000u, 0x8000u},
        {DType::BF16, 0x7f85u, 0x7fc5u, 0x7fc5u},
        {DType::BF16, 0xffc6u, 0xffc6u, 0xffc6u},
        {DType::BF16, 0x8000u, 0x8000u, 0x8000u},
    };
    const std::size_t n = 1000;  // vector blocks and a scalar tail
    for (const std::string& t : gradclip::available_targets()) {
        gradclip::set_target(t);
        for (const Case& c : cases) {
            const std::size_t isz = gradclip::itemsize(c.dt);
            for (int op = 0; op < 2; ++op) {
                Buffer b;
                b.offset = 1;
                b.bytes.assign(1 + n * isz, 0);
                for (std::size_t i = 0; i < n; ++i) std::memcpy(b.data() + i * isz, &c.in, isz);  // little-endian
                Span s = span_of(b, c.dt, n);
                if (op == 0)
                    gradclip::clamp_all(&s, 1, 0.0, 2.0);
                else
                    gradclip::scale_all(&s, 1, 0.5);
                const std::uint64_t want = op == 0 ? c.clamped : c.scaled;
                for (std::size_t i = 0; i < n; ++i) {
                    std::uint64_t got = 0;
                    std::memcpy(&got, b.data() + i * isz, isz);
                    CHECK(got == want, "%s %s %s of %llx [%zu]: %llx, expected %llx", t.c_str(),
                          kNames[static_cast<int>(c.dt)], op == 0 ? "clamp" : "scale",
                          static_cast<unsigned long long>(c.in), i, static_cast<unsigned long long>(got),
                          static_cast<unsigned long long>(want));
                    if (got != want) break;
                }
            }
        }
    }
}

}  // namespace

// Options: --digest FILE writes the digest of every operation on fixed inputs (see
// run_digest) to FILE, to be compared with another build's; --require-target NAME fails
// unless NAME is among the targets this build and CPU run.
int main(int argc, char** argv) {
    const char* digest_file = nullptr;
    std::vector<std::string> required;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--digest" && i + 1 < argc) {
            digest_file = argv[++i];
        } else if (a == "--require-target" && i + 1 < argc) {
            required.emplace_back(argv[++i]);
        } else {
            std::fprintf(stderr, "usage: %s [--digest FILE] [--require-target NAME]...\n", argv[0]);
            return 2;
        }
    }
    const std::vector<std::string> targets = gradclip::available_targets();
    std::printf("targets:");
    for (const std::string& t : targets) std::printf(" %s", t.c_str());
    std::printf("; OpenMP: %s\n", gradclip::have_openmp() ? "yes" : "no");
    for (const std::string& r : required) {
        bool found = false;
        for (const std::string& t : targets) found = found || t == r;
        CHECK(found, "target %s is not available", r.c_str());
    }
    const std::string best = targets.back();
    test_norm_determinism_and_accuracy();
    test_address_independence();
    test_list_is_its_concatenation();
    test_scale_and_clamp_match_scalar_arithmetic();
    test_nan_and_zero_bits();
    const std::vector<std::string> digest = test_digest_everywhere();
    gradclip::set_target(best);
    gradclip::set_num_threads(2);
    test_extreme_p();
    test_bound_rounding();
    test_overlap_rule();
    test_slice_ranges();
    if (digest_file != nullptr) {
        std::FILE* f = std::fopen(digest_file, "w");
        CHECK(f != nullptr, "cannot write %s", digest_file);
        if (f != nullptr) {
            for (const std::string& line : digest) std::fprintf(f, "%s\n", line.c_str());
            CHECK(std::fclose(f) == 0, "cannot write %s", digest_file);
            std::printf("digest: %zu lines in %s\n", digest.size(), digest_file);
        }
    }
    if (g_failures != 0) {
        std::printf("%d checks failed\n", g_failures);
        return 1;
    }
    std::printf("all checks passed\n");
    return 0;
}
