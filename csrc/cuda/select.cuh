// Token selection from scores, one block per image: the block sorts the image's scores in
// shared memory (bitonic network), highest first with ties to the lower index, which is the
// order of the CPU backend's stable descending sort; select.cu launches these kernels. Like
// block.cuh, free of CUDA runtime calls.
#pragma once

#include "block.cuh"

#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>

namespace svdprune::cuda {

// Entries the sort handles for n scores: the next power of two.
inline int64_t next_power_of_two(int64_t n) {
  int64_t size = 1;
  while (size < n) size *= 2;
  return size;
}

// Shared memory of the selection kernels for `size` entries of a score and an index.
inline size_t select_shared_bytes(int64_t size, size_t score_bytes) {
  return static_cast<size_t>(size) * (score_bytes + sizeof(int));
}

// Strict total order of (score, index) entries: scores descending, NaN after every number,
// the padding entries (index >= n) last, and ties (equal scores, or both NaN) by index.
template <typename scalar_t>
__device__ bool comes_first(scalar_t score_a, int index_a, scalar_t score_b, int index_b, int n) {
  const int group_a = index_a >= n ? 2 : (isnan(score_a) ? 1 : 0);
  const int group_b = index_b >= n ? 2 : (isnan(score_b) ? 1 : 0);
  if (group_a != group_b) return group_a < group_b;
  if (group_a == 0 && score_a != score_b) return score_a > score_b;
  return index_a < index_b;
}

// Loads image `blockIdx.x` of `scores` into shared memory and sorts it; returns the arrays.
template <typename scalar_t>
__device__ void load_and_sort(const scalar_t* scores, int n, int size, scalar_t*& score, int*& index) {
  score = reinterpret_cast<scalar_t*>(dynamic_shared_memory());
  index = reinterpret_cast<int*>(score + size);
  const scalar_t* image = scores + static_cast<int64_t>(blockIdx.x) * n;
  for (int i = threadIdx.x; i < size; i += blockDim.x) {
    score[i] = i < n ? image[i] : scalar_t(0);
    index[i] = i;
  }
  __syncthreads();
  bitonic_sort(
      size, [&](int a, int b) { return comes_first(score[a], index[a], score[b], index[b], n); },
      [&](int a, int b) {
        const scalar_t s = score[a];
        score[a] = score[b];
        score[b] = s;
        const int t = index[a];
        index[a] = index[b];
        index[b] = t;
      });
}

template <typename scalar_t>
__global__ void select_top_kernel(const scalar_t* scores, int n, int size, int budget, int64_t* indices) {
  scalar_t* score;
  int* index;
  load_and_sort(scores, n, size, score, index);
  // The first `budget` entries are the selection; sort their indices ascending.
  for (int i = threadIdx.x; i < size; i += blockDim.x) {
    if (i >= budget) index[i] = INT_MAX;
  }
  __syncthreads();
  bitonic_sort(
      size, [&](int a, int b) { return index[a] < index[b]; },
      [&](int a, int b) {
        const int t = index[a];
        index[a] = index[b];
        index[b] = t;
      });
  for (int i = threadIdx.x; i < budget; i += blockDim.x) indices[static_cast<int64_t>(blockIdx.x) * budget + i] = index[i];
}

// Number of positions t among the n sorted scores whose running sum, accumulated in double
// and rounded to scalar_t as the CPU backend's cumsum does, is below `target`. One warp; each
// lane scans a contiguous segment after an exclusive scan of the segment sums.
template <typename scalar_t>
__device__ int64_t count_cumulative_below(const scalar_t* sorted, int n, scalar_t target) {
  const int lane = threadIdx.x & 31;
  const int per_lane = (n + 31) / 32;
  const int begin = min(n, lane * per_lane), end = min(n, begin + per_lane);
  double segment = 0.0;
  for (int t = begin; t < end; ++t) segment += static_cast<double>(sorted[t]);
  double running = warp_exclusive_sum(segment);
  long long below_target = 0;
  for (int t = begin; t < end; ++t) {
    running += static_cast<double>(sorted[t]);
    if (static_cast<scalar_t>(running) < target) ++below_target;
  }
  for (int offset = 16; offset > 0; offset >>= 1) below_target += __shfl_xor_sync(kFullMask, below_target, offset);
  return below_target;
}

template <typename scalar_t>
__global__ void select_adaptive_kernel(const scalar_t* scores, const int64_t* rank, int n, int size, double variance,
                                       int64_t min_tokens, int64_t max_tokens, bool* mask, int64_t* count) {
  scalar_t* score;
  int* index;
  load_and_sort(scores, n, size, score, index);
  __shared__ int64_t kept;
  if (threadIdx.x < 32) {
    // The CPU backend forms the target in the score dtype: rank.to(dtype) * variance.
    const scalar_t target = static_cast<scalar_t>(rank[blockIdx.x]) * static_cast<scalar_t>(variance);
    int64_t c = count_cumulative_below(score, n, target) + 1;
    c = target > scalar_t(0) ? (c < n ? c : n) : 0;
    c = c < min_tokens ? min_tokens : c;
    c = c > max_tokens ? max_tokens : c;
    if (threadIdx.x == 0) kept = c;
  }
  __syncthreads();
  bool* image_mask = mask + static_cast<int64_t>(blockIdx.x) * n;
  for (int t = threadIdx.x; t < n; t += blockDim.x) image_mask[index[t]] = t < kept;
  if (threadIdx.x == 0) count[blockIdx.x] = kept;
}

}  // namespace svdprune::cuda
