// Block- and warp-level building blocks of the kernels in csrc/cuda/*.cuh. Like those
// kernels they call no CUDA runtime function and reach dynamic shared memory only through
// dynamic_shared_memory(), so that tests/kernels_on_host.cpp can compile them for the host.
#pragma once

#include <climits>
#include <cmath>
#include <cstdint>

namespace svdprune::cuda {

constexpr unsigned kFullMask = 0xffffffffu;

#ifdef __CUDACC__
// The block's dynamic shared memory (the size given at launch), 8-byte aligned.
__device__ inline double* dynamic_shared_memory() {
  extern __shared__ double shared_storage[];
  return shared_storage;
}
#endif

__device__ inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

struct Sum {
  __device__ double operator()(double a, double b) const { return a + b; }
};
struct Max {  // NaN is the lack of a value, as in fmax
  __device__ double operator()(double a, double b) const { return fmax(a, b); }
};

// `combine` (Sum or Max) over the block, with `identity` its neutral value; the result is valid
// in thread 0. Call at most once per kernel.
template <typename Combine>
__device__ inline double block_reduce(double value, Combine combine, double identity) {
  __shared__ double warp_values[32];
  for (int offset = 16; offset > 0; offset >>= 1) value = combine(value, __shfl_down_sync(kFullMask, value, offset));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_values[warp] = value;
  __syncthreads();
  if (warp == 0) {
    value = lane < static_cast<int>(blockDim.x >> 5) ? warp_values[lane] : identity;
    for (int offset = 16; offset > 0; offset >>= 1) value = combine(value, __shfl_down_sync(kFullMask, value, offset));
  }
  return value;
}

// Sum of `value` over a whole warp, the same in every lane (each step adds a and b in both
// lanes of a pair, and a + b == b + a).
__device__ inline double warp_sum(double value) {
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_xor_sync(kFullMask, value, offset);
  return value;
}

// Per lane of a whole warp, the sum of `value` over the lanes below it (0 in lane 0).
__device__ inline double warp_exclusive_sum(double value) {
  const int lane = threadIdx.x & 31;
  double inclusive = value;
  for (int offset = 1; offset < 32; offset <<= 1) {
    const double below = __shfl_up_sync(kFullMask, inclusive, offset);
    if (lane >= offset) inclusive += below;
  }
  const double exclusive = __shfl_up_sync(kFullMask, inclusive, 1);
  return lane == 0 ? 0.0 : exclusive;
}

// The (value, index) pair with the largest value, ties to the lower index, over the block;
// valid in thread 0. Threads without a candidate pass (-1, INT_MAX). Call at most once per
// __syncthreads-separated phase: `warp_values` / `warp_indices` ([32] each) are reused.
template <typename scalar_t>
__device__ void block_argmax(scalar_t& value, int& index, scalar_t* warp_values, int* warp_indices) {
  auto reduce_warp = [&] {
    for (int offset = 16; offset > 0; offset >>= 1) {
      const scalar_t other_value = __shfl_down_sync(kFullMask, value, offset);
      const int other_index = __shfl_down_sync(kFullMask, index, offset);
      if (other_value > value || (other_value == value && other_index < index)) {
        value = other_value;
        index = other_index;
      }
    }
  };
  reduce_warp();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    warp_values[warp] = value;
    warp_indices[warp] = index;
  }
  __syncthreads();
  if (warp == 0) {
    const bool filled = lane < static_cast<int>(blockDim.x >> 5);
    value = filled ? warp_values[lane] : scalar_t(-1);
    index = filled ? warp_indices[lane] : INT_MAX;
    reduce_warp();
  }
}

// Bitonic sort of `size` (a power of two) entries in shared memory by the whole block:
// before(a, b) says whether entry a goes before entry b, swap(a, b) exchanges the two. Each
// compare-exchange pair is owned by one thread per step.
template <typename Before, typename Swap>
__device__ void bitonic_sort(int size, Before before, Swap swap) {
  for (int k = 2; k <= size; k <<= 1) {
    for (int j = k >> 1; j > 0; j >>= 1) {
      for (int i = threadIdx.x; i < size; i += blockDim.x) {
        const int partner = i ^ j;
        if (partner <= i) continue;
        const bool ascending_section = (i & k) == 0;
        if (before(partner, i) == ascending_section) swap(i, partner);
      }
      __syncthreads();
    }
  }
}

}  // namespace svdprune::cuda
