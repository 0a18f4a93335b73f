// The pivot kernel of select(strategy="pivoted") on CUDA; leverage.cu launches it on the
// eigenpairs of rank_leverage_kernel. Like block.cuh, free of CUDA runtime calls.
#pragma once

#include "block.cuh"
#include "rank_leverage.cuh"

#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>

namespace svdprune::cuda {

// Shared memory of pivot_kernel: the rows of U_m when they fit (`rows_in_shared`), the pivot
// direction and one taken flag per token.
inline size_t pivot_shared_bytes(int64_t n, int64_t max_pivots, size_t scalar_bytes, bool rows_in_shared) {
  const int64_t rows = rows_in_shared ? max_pivots * n : 0;
  return static_cast<size_t>(rows + max_pivots) * scalar_bytes + static_cast<size_t>(n) * sizeof(int);
}

// Pivoted selection of one image per block, the CPU backend's pivot_tokens: greedy column
// pivoting on U_mᵀ with m = min(max_pivots, number of eigenvalues above slack times the
// largest), from the same eigenpairs as rank_leverage_kernel (then `scores` holds its leverage
// scores). Each step takes the untaken token whose remaining row of U_m has the largest norm
// (ties to the lower index) and projects that row's direction out of the other untaken rows.
// The rows are stored coordinate-major, rows[i * n + j] for token j, so that the threads, one
// token each, read consecutive addresses: in shared memory when they fit, else in `workspace`
// ([batch, max_pivots, n]). The output is the leverage scores with the picked tokens raised to
// +inf; its top `budget` (select_top, max_pivots = budget) are the picked tokens and then the
// highest-leverage others, which is how the CPU fills a budget beyond the non-zero rank. An
// image whose energy is zero or fails energy_fits, or whose eigensolver failed, picks no token.
template <typename scalar_t>
__global__ void pivot_kernel(const scalar_t* values, int64_t count, const scalar_t* vectors, int n,
                             const double* energy_parts, int energy_parts_per_image, const int* info, double slack,
                             int max_pivots, bool rows_in_shared, scalar_t* workspace,
                             const scalar_t* scores, scalar_t* pivot_scores) {
  const int64_t image = blockIdx.x;
  const scalar_t* image_values = values + image * count;
  const scalar_t* image_vectors = vectors + image * n * count;
  scalar_t* shared_rows = reinterpret_cast<scalar_t*>(dynamic_shared_memory());
  scalar_t* direction = shared_rows + (rows_in_shared ? static_cast<int64_t>(max_pivots) * n : 0);
  int* taken = reinterpret_cast<int*>(direction + max_pivots);
  scalar_t* rows = rows_in_shared ? shared_rows : workspace + image * max_pivots * n;
  __shared__ int shared_pivots, shared_pick;
  __shared__ scalar_t shared_norm;
  __shared__ scalar_t warp_norms[32];
  __shared__ int warp_picks[32];

  if (threadIdx.x == 0) {
    const double total = image_energy(energy_parts, energy_parts_per_image, image);
    int m = 0;
    if (energy_fits<scalar_t>(total) && total > 0.0 && info[image] == 0) {
      const double floor = static_cast<double>(image_values[count - 1]) * slack;
      while (m < max_pivots && m < count && static_cast<double>(image_values[count - 1 - m]) > floor) ++m;
    }
    shared_pivots = m;
  }
  for (int j = threadIdx.x; j < n; j += blockDim.x) taken[j] = 0;
  __syncthreads();
  const int m = shared_pivots;
  // Column i of U_m is column count-1-i of the vectors.
  for (int64_t e = threadIdx.x; e < static_cast<int64_t>(m) * n; e += blockDim.x) {
    const int64_t i = e / n, j = e % n;
    rows[e] = image_vectors[j + (count - 1 - i) * n];
  }
  __syncthreads();

  for (int step = 0; step < m; ++step) {
    scalar_t best_norm = -1;
    int best = INT_MAX;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
      if (taken[j]) continue;
      scalar_t norm = 0;
      for (int i = 0; i < m; ++i) norm += rows[i * n + j] * rows[i * n + j];
      if (norm > best_norm) best_norm = norm, best = j;  // NaN norms are never picked
    }
    block_argmax(best_norm, best, warp_norms, warp_picks);
    if (threadIdx.x == 0) {
      shared_pick = best;
      shared_norm = best_norm;
      if (best != INT_MAX) taken[best] = 1;
    }
    __syncthreads();
    const int pick = shared_pick;
    if (pick == INT_MAX) break;  // only NaN rows left: the budget is filled by leverage
    const scalar_t scale = shared_norm > 0 ? scalar_t(1) / sqrt(shared_norm) : scalar_t(0);
    for (int i = threadIdx.x; i < m; i += blockDim.x) direction[i] = rows[i * n + pick] * scale;
    __syncthreads();
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
      if (taken[j]) continue;
      scalar_t dot = 0;
      for (int i = 0; i < m; ++i) dot += rows[i * n + j] * direction[i];
      for (int i = 0; i < m; ++i) rows[i * n + j] -= dot * direction[i];
    }
    __syncthreads();
  }
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    pivot_scores[image * n + j] = taken[j] ? static_cast<scalar_t>(INFINITY) : scores[image * n + j];
  }
}

}  // namespace svdprune::cuda
