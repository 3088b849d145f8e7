// The C++ core on its own, below the Python layer: every CPU target this machine runs, 1 and 2
// threads. Checks the determinism contract (the total norm has the same bits for any target,
// thread count and placement in memory; a list of arrays of one dtype gives the bits of the
// array they make end to end), the scaling and clamping kernels against scalar arithmetic,
// norms against a compensated float64 sum, p-norms for huge and tiny p, the bound rounding
// at float16/bfloat16 midpoints and the overlap rule of writing calls. A plain executable
// (ctest runs it): prints each failure and exits 1 if there was any.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
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

double from_elem(const char* p, DType dt) {
    switch (dt) {
        case DType::F64: {
            double v;
            std::memcpy(&v, p, 8);
            return v;
        }
        case DType::F32: {
            float v;
            std::memcpy(&v, p, 4);
            return v;
        }
        case DType::BF16: {
            std::uint16_t h;
            std::memcpy(&h, p, 2);
            const std::uint32_t u = static_cast<std::uint32_t>(h) << 16;
            float f;
            std::memcpy(&f, &u, 4);
            return f;
        }
        case DType::F16: {
            std::uint16_t h;
            std::memcpy(&h, p, 2);
            const int e = (h >> 10) & 0x1f, m = h & 0x3ff;
            const double mag = e == 0 ? std::ldexp(m, -24) : std::ldexp(1024 + m, e - 25);
            return (h & 0x8000) ? -mag : mag;
        }
    }
    return 0.0;
}

// Fills n elements with values exactly representable in every dtype (k / 64 for small k,
// so float16 holds them too), from a fixed seed.
Buffer make(DType dt, std::size_t n, std::size_t offset, unsigned seed) {
    Buffer b;
    b.offset = offset;
    b.bytes.assign(offset + n * gradclip::itemsize(dt) + 1, 0);
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int> k(-512, 512);
    for (std::size_t i = 0; i < n; ++i) {
        const double v = k(rng) / 64.0;
        char* p = b.data() + i * gradclip::itemsize(dt);
        switch (dt) {
            case DType::F64:
                std::memcpy(p, &v, 8);
                break;
            case DType::F32: {
                const float f = static_cast<float>(v);
                std::memcpy(p, &f, 4);
                break;
            }
            case DType::F16: {
                const std::uint16_t h = to_half(static_cast<float>(v));
                std::memcpy(p, &h, 2);
                break;
            }
            case DType::BF16: {
                const std::uint16_t h = to_bf16(static_cast<float>(v));
                std::memcpy(p, &h, 2);
                break;
            }
        }
    }
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

void test_list_is_its_concatenation() {
    for (int d = 0; d < 4; ++d) {
        const DType dt = kDTypes[d];
        const std::size_t isz = gradclip::itemsize(dt);
        const std::size_t parts[] = {17, 1000, 1, 65, 300000, 3};
        std::size_t total = 0;
        for (std::size_t p : parts) total += p;
        Buffer whole = make(dt, total, 0, 7);
        std::vector<Buffer> pieces;
        std::vector<Span> spans;
        std::size_t at = 0;
        for (std::size_t p : parts) {
            Buffer piece;
            piece.offset = 0;
            piece.bytes.assign(whole.bytes.begin() + static_cast<std::ptrdiff_t>(at * isz),
                               whole.bytes.begin() + static_cast<std::ptrdiff_t>((at + p) * isz));
            pieces.push_back(std::move(piece));
            at += p;
        }
        for (std::size_t i = 0; i < pieces.size(); ++i) spans.push_back(span_of(pieces[i], dt, parts[i]));
        const Span one = span_of(whole, dt, total);
        for (double p : {2.0, 1.0}) {
            const gradclip::NormSpec spec = gradclip::make_norm_spec(p);
            const double list = gradclip::total_norm(spans.data(), spans.size(), spec);
            const double cat = gradclip::total_norm(&one, 1, spec);
            CHECK(bits(list) == bits(cat), "%s p=%g: list %.17g, concatenation %.17g", kNames[d], p, list, cat);
        }
    }
}

void test_scale_and_clamp_match_scalar_arithmetic() {
    for (int d = 0; d < 4; ++d) {
        const DType dt = kDTypes[d];
        const std::size_t isz = gradclip::itemsize(dt);
        for (std::size_t n : kLengths) {
            if (n > 70001) continue;
            for (const std::string& t : gradclip::available_targets()) {
                gradclip::set_target(t);
                Buffer b = make(dt, n, 1, 99);
                const Buffer orig = b;
                Span s = span_of(b, dt, n);
                const double coef = 0.3;
                gradclip::scale_all(&s, 1, coef);
                Buffer c = orig;
                Span sc = span_of(c, dt, n);
                gradclip::clamp_all(&sc, 1, -1.5, 2.0);
                for (std::size_t i = 0; i < n; ++i) {
                    const double x =
                        from_elem(reinterpret_cast<const char*>(orig.bytes.data()) + orig.offset + i * isz, dt);
                    const double got = from_elem(b.data() + i * isz, dt);
                    // float types multiply in float and round once to the element type
                    const double want =
                        dt == DType::F64
                            ? x * coef
                            : gradclip::round_to_dtype(
                                  dt, static_cast<double>(static_cast<float>(x) * static_cast<float>(coef)));
                    CHECK(bits(got) == bits(want), "%s %s n=%zu [%zu]: scaled %.17g, expected %.17g", t.c_str(),
                          kNames[d], n, i, got, want);
                    const double cl = from_elem(c.data() + i * isz, dt);
                    const double cw = x < -1.5 ? -1.5 : x > 2.0 ? 2.0 : x;
                    CHECK(bits(cl) == bits(cw), "%s %s n=%zu [%zu]: clamped %.17g, expected %.17g", t.c_str(),
                          kNames[d], n, i, cl, cw);
                    if (got != want || cl != cw) break;
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

}  // namespace

int main() {
    const std::vector<std::string> targets = gradclip::available_targets();
    std::printf("targets:");
    for (const std::string& t : targets) std::printf(" %s", t.c_str());
    std::printf("; OpenMP: %s\n", gradclip::have_openmp() ? "yes" : "no");
    const std::string best = targets.back();
    test_norm_determinism_and_accuracy();
    test_address_independence();
    test_list_is_its_concatenation();
    test_scale_and_clamp_match_scalar_arithmetic();
    gradclip::set_target(best);
    gradclip::set_num_threads(2);
    test_extreme_p();
    test_bound_rounding();
    test_overlap_rule();
    if (g_failures != 0) {
        std::printf("%d checks failed\n", g_failures);
        return 1;
    }
    std::printf("all checks passed\n");
    return 0;
}
