/* The benchmark's second ceiling: the simplest compiled float32 loops over a flat buffer,
 * built by bench/conftest.py with the machine's C compiler (-O3 -march=native -fopenmp) when
 * the benchmarks start. No intrinsics and no software prefetch: what a plain loop gets from
 * the compiler and the hardware prefetchers. Threads as OpenMP splits a static loop. */
#include <stddef.h>

/* sum of squares, in float32 with 16 independent partial sums (so the compiler vectorises
 * it without reassociating anything) */
double plain_sum_sq(const float* x, size_t n, int threads) {
    double total = 0.0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
    {
        float acc[16] = {0};
        const size_t blocks = n / 16;
#pragma omp for schedule(static)
        for (size_t b = 0; b < blocks; ++b)
            for (int j = 0; j < 16; ++j) acc[j] += x[16 * b + j] * x[16 * b + j];
        for (int j = 0; j < 16; ++j) total += acc[j];
    }
    return total;
}

/* x *= c */
void plain_scale(float* x, size_t n, float c, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (size_t i = 0; i < n; ++i) x[i] *= c;
}
