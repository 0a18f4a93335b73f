// The CUDA kernels of csrc/cuda/*.cuh compiled for the host, in the emulation of
// tests/cuda_host/emulation.h (a host thread per CUDA thread, barriers for __syncthreads and
// warp shuffles). The entry points launch the kernels as leverage.cu and select.cu do;
// tests/test_kernels_on_host.py builds this file and calls them.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#include "launch.cuh"
#include "pivot.cuh"
#include "randomized.cuh"
#include "rank_leverage.cuh"
#include "select.cuh"

namespace {

using namespace svdprune::cuda;

// Launches `kernel` on `grid` blocks of `threads` threads with `shared_bytes` of dynamic shared
// memory; a launch the device would refuse aborts.
template <typename... Params, typename... Args>
void run(void (*kernel)(Params...), dim3 grid, int threads, size_t shared_bytes, Args... args) {
  cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), cudaFuncAttributeMaxDynamicSharedMemorySize,
                       static_cast<int>(shared_bytes));
  launch(kernel, grid, dim3(static_cast<unsigned>(threads)), shared_bytes, nullptr, args...);
  if (const cudaError_t error = cudaGetLastError(); error != cudaSuccess) {
    std::fprintf(stderr, "kernel launch failed: %s\n", cudaGetErrorString(error));
    std::abort();
  }
}

}  // namespace

// Entry points, one per kernel and scalar type, with the launch configuration as arguments.
#define SVDPRUNE_HOST_ENTRY_POINTS(scalar_t, suffix)                                                                   \
  extern "C" void rank_leverage_##suffix(const scalar_t* values, int64_t count, const scalar_t* vectors, int64_t rows, \
                                         const double* energy_parts, int energy_parts_per_image, const int* info,      \
                                         double variance, double slack, int64_t resolvable, scalar_t* scores,          \
                                         int64_t* rank, int batch, int threads) {                                      \
    run(rank_leverage_kernel<scalar_t>, batch, threads, 0, values, count, vectors, rows, energy_parts,                 \
        energy_parts_per_image, info, variance, slack, resolvable, scores, rank);                                      \
  }                                                                                                                    \
  extern "C" void left_basis_##suffix(const scalar_t* values, int64_t count, scalar_t* vectors, int64_t rows,         \
                                      const double* energy_parts, int energy_parts_per_image, const int* info,         \
                                      double variance, double slack, int64_t resolvable, int64_t max_pivots,           \
                                      double* coefficients, int batch, int threads) {                                  \
    run(left_basis_kernel<scalar_t>, batch, threads, 0, values, count, vectors, rows, energy_parts,                    \
        energy_parts_per_image, info, variance, slack, resolvable, max_pivots, coefficients);                          \
  }                                                                                                                    \
  extern "C" void pivot_##suffix(const scalar_t* values, int64_t count, const scalar_t* vectors, int n,               \
                                 const double* energy_parts, int energy_parts_per_image, const int* info,              \
                                 double slack, int max_pivots, bool rows_in_shared,                                    \
                                 scalar_t* workspace, const scalar_t* scores, scalar_t* pivot_scores, int batch,       \
                                 int threads) {                                                                        \
    run(pivot_kernel<scalar_t>, batch, threads, pivot_shared_bytes(n, max_pivots, sizeof(scalar_t), rows_in_shared),   \
        values, count, vectors, n, energy_parts, energy_parts_per_image, info, slack, max_pivots, rows_in_shared,      \
        workspace, scores, pivot_scores);                                                                              \
  }                                                                                                                    \
  extern "C" void select_top_##suffix(const scalar_t* scores, int n, int budget, int64_t* indices, int batch,          \
                                      int threads) {                                                                   \
    const int size = static_cast<int>(next_power_of_two(n));                                                           \
    run(select_top_kernel<scalar_t>, batch, threads, select_shared_bytes(size, sizeof(scalar_t)), scores, n, size,     \
        budget, indices);                                                                                              \
  }                                                                                                                    \
  extern "C" void select_adaptive_##suffix(const scalar_t* scores, const int64_t* rank, int n, double variance,        \
                                           int64_t min_tokens, int64_t max_tokens, bool* mask, int64_t* count,         \
                                           int batch, int threads) {                                                   \
    const int size = static_cast<int>(next_power_of_two(n));                                                           \
    run(select_adaptive_kernel<scalar_t>, batch, threads, select_shared_bytes(size, sizeof(scalar_t)), scores, rank,   \
        n, size, variance, min_tokens, max_tokens, mask, count);                                                       \
  }                                                                                                                    \
  extern "C" void gaussian_##suffix(scalar_t* out, int64_t count, uint64_t seed, int blocks, int threads) {           \
    run(gaussian_kernel<scalar_t>, blocks, threads, 0, out, count, seed);                                              \
  }                                                                                                                    \
  extern "C" void solve_rows_##suffix(scalar_t* y, const double* cholesky, const int* keep, int64_t rows, int width,   \
                                      uint32_t refill_pass, uint64_t seed, int batch, int rows_per_block) {            \
    const unsigned row_blocks = static_cast<unsigned>((rows + rows_per_block - 1) / rows_per_block);                   \
    run(solve_rows_kernel<scalar_t, 128>, dim3(batch, row_blocks), rows_per_block, 0, y, cholesky, keep, rows, width,  \
        refill_pass, seed);                                                                                            \
  }

SVDPRUNE_HOST_ENTRY_POINTS(float, float)
SVDPRUNE_HOST_ENTRY_POINTS(double, double)

extern "C" void philox(const uint32_t* counter, const uint32_t* key, uint32_t* out) {
  const uint4 bits = philox4x32_10(make_uint4(counter[0], counter[1], counter[2], counter[3]), make_uint2(key[0], key[1]));
  out[0] = bits.x, out[1] = bits.y, out[2] = bits.z, out[3] = bits.w;
}

extern "C" void widen(const float* in, double* out, int64_t count, int blocks, int threads) {
  run(widen_kernel, blocks, threads, 0, in, out, count);
}

extern "C" double cholesky_drop_tolerance(bool double_columns) {
  return double_columns ? kDropTolerance<double> : kDropTolerance<float>;
}

extern "C" void cholesky(double* gram, int width, double tolerance, int* keep, int batch, int threads) {
  run(cholesky_kernel, batch, threads, cholesky_shared_bytes(width), gram, width, tolerance, keep);
}
