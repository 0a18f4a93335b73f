// Token selection from leverage scores: one block per image sorts the image's scores in
// shared memory (bitonic network), highest first with ties to the lower index, which is the
// order of the CPU backend's stable descending sort.
#include "checks.h"
#include "svdprune_cuda.h"

#include <algorithm>
#include <climits>
#include <cstdint>

namespace svdprune::cuda {
namespace {

constexpr int kThreads = 512;
constexpr unsigned kFullMask = 0xffffffffu;

int64_t next_power_of_two(int64_t n) {
  int64_t size = 1;
  while (size < n) size *= 2;
  return size;
}

template <typename scalar_t>
size_t shared_bytes(int64_t size) {
  return static_cast<size_t>(size) * (sizeof(scalar_t) + sizeof(int));
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

// Bitonic sort of `size` (a power of two) entries in shared memory; each compare-exchange
// pair is owned by one thread per step.
template <typename scalar_t>
__device__ void sort_by_score(scalar_t* score, int* index, int size, int n) {
  for (int k = 2; k <= size; k <<= 1) {
    for (int j = k >> 1; j > 0; j >>= 1) {
      for (int i = threadIdx.x; i < size; i += blockDim.x) {
        const int partner = i ^ j;
        if (partner <= i) continue;
        const bool in_order_section = (i & k) == 0;
        const bool partner_first = comes_first(score[partner], index[partner], score[i], index[i], n);
        if (partner_first == in_order_section) {
          const scalar_t s = score[i];
          score[i] = score[partner];
          score[partner] = s;
          const int t = index[i];
          index[i] = index[partner];
          index[partner] = t;
        }
      }
      __syncthreads();
    }
  }
}

__device__ void sort_ascending(int* value, int size) {
  for (int k = 2; k <= size; k <<= 1) {
    for (int j = k >> 1; j > 0; j >>= 1) {
      for (int i = threadIdx.x; i < size; i += blockDim.x) {
        const int partner = i ^ j;
        if (partner <= i) continue;
        const bool in_order_section = (i & k) == 0;
        if ((value[partner] < value[i]) == in_order_section && value[partner] != value[i]) {
          const int t = value[i];
          value[i] = value[partner];
          value[partner] = t;
        }
      }
      __syncthreads();
    }
  }
}

// Loads image `blockIdx.x` of `scores` into shared memory and sorts it; returns the arrays.
template <typename scalar_t>
__device__ void load_and_sort(const scalar_t* scores, int n, int size, scalar_t*& score, int*& index) {
  extern __shared__ double shared_storage[];
  score = reinterpret_cast<scalar_t*>(shared_storage);
  index = reinterpret_cast<int*>(score + size);
  const scalar_t* image = scores + static_cast<int64_t>(blockIdx.x) * n;
  for (int i = threadIdx.x; i < size; i += blockDim.x) {
    score[i] = i < n ? image[i] : scalar_t(0);
    index[i] = i;
  }
  __syncthreads();
  sort_by_score(score, index, size, n);
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
  sort_ascending(index, size);
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
  double inclusive = segment;
  for (int offset = 1; offset < 32; offset <<= 1) {
    const double below = __shfl_up_sync(kFullMask, inclusive, offset);
    if (lane >= offset) inclusive += below;
  }
  double running = __shfl_up_sync(kFullMask, inclusive, 1);
  if (lane == 0) running = 0.0;
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

int shared_memory_limit() {
  int device = 0, limit = 0;
  SVDPRUNE_CUDA_CHECK(cudaGetDevice(&device));
  SVDPRUNE_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return limit;
}

void check_tokens(DType dtype, int64_t n) {
  if (n > max_select_tokens(dtype)) {
    fail("svdprune", "select", "N=" + std::to_string(n) + " exceeds the " + std::to_string(max_select_tokens(dtype)) +
                                   " tokens one block can sort on this device");
  }
}

template <typename scalar_t>
void select_top_typed(const Context& ctx, const scalar_t* scores, int64_t batch, int64_t n, int64_t budget,
                      int64_t* indices) {
  const int64_t size = next_power_of_two(n);
  const size_t bytes = shared_bytes<scalar_t>(size);
  allow_dynamic_shared_memory(reinterpret_cast<const void*>(select_top_kernel<scalar_t>), bytes);
  select_top_kernel<scalar_t><<<static_cast<unsigned>(batch), kThreads, bytes, ctx.stream>>>(
      scores, static_cast<int>(n), static_cast<int>(size), static_cast<int>(budget), indices);
  SVDPRUNE_CHECK_LAUNCH("select_top_kernel");
}

template <typename scalar_t>
void select_adaptive_typed(const Context& ctx, const scalar_t* scores, const int64_t* rank, int64_t batch, int64_t n,
                           double variance, int64_t min_tokens, int64_t max_tokens, bool* mask, int64_t* count) {
  const int64_t size = next_power_of_two(n);
  const size_t bytes = shared_bytes<scalar_t>(size);
  allow_dynamic_shared_memory(reinterpret_cast<const void*>(select_adaptive_kernel<scalar_t>), bytes);
  select_adaptive_kernel<scalar_t><<<static_cast<unsigned>(batch), kThreads, bytes, ctx.stream>>>(
      scores, rank, static_cast<int>(n), static_cast<int>(size), variance, min_tokens, max_tokens, mask, count);
  SVDPRUNE_CHECK_LAUNCH("select_adaptive_kernel");
}

}  // namespace

int64_t max_select_tokens(DType dtype) {
  const size_t entry = (dtype == DType::Double ? sizeof(double) : sizeof(float)) + sizeof(int);
  // Leave room for the kernels' few bytes of static shared memory.
  const size_t limit = static_cast<size_t>(shared_memory_limit()) - 1024;
  int64_t size = 1;
  while (static_cast<size_t>(2 * size) * entry <= limit) size *= 2;
  return size;
}

void select_top(const Context& ctx, const void* scores, DType dtype, int64_t batch, int64_t n, int64_t budget,
                int64_t* indices) {
  if (batch == 0) return;
  check_tokens(dtype, n);
  if (dtype == DType::Double) {
    select_top_typed(ctx, static_cast<const double*>(scores), batch, n, budget, indices);
  } else {
    select_top_typed(ctx, static_cast<const float*>(scores), batch, n, budget, indices);
  }
}

void select_adaptive(const Context& ctx, const void* scores, DType dtype, const int64_t* rank, int64_t batch,
                     int64_t n, double variance, int64_t min_tokens, int64_t max_tokens, bool* mask, int64_t* count) {
  if (batch == 0) return;
  check_tokens(dtype, n);
  if (dtype == DType::Double) {
    select_adaptive_typed(ctx, static_cast<const double*>(scores), rank, batch, n, variance, min_tokens, max_tokens,
                          mask, count);
  } else {
    select_adaptive_typed(ctx, static_cast<const float*>(scores), rank, batch, n, variance, min_tokens, max_tokens,
                          mask, count);
  }
}

}  // namespace svdprune::cuda
