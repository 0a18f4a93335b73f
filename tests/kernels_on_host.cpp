// The CUDA kernels of csrc/cuda/*.cuh compiled for the host: each CUDA thread of a block is a
// std::thread, __syncthreads is a barrier of the block, a warp shuffle is a barrier of the warp
// around a shared exchange slot, and blocks run one after the other. The entry points launch
// the kernels as leverage.cu and select.cu do; tests/test_kernels_on_host.py builds this file
// and calls them.
//
// What the emulation cannot show: timing, memory coalescing, and reads of uninitialised
// __shared__ variables (here they are zero-initialised statics). Run it under a sanitizer for
// races between a block's threads (-fsanitize=thread: a missing __syncthreads) and for
// out-of-bounds accesses (-fsanitize=address), see tests/test_kernels_on_host.py.
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

using std::isfinite;
using std::isnan;
using std::min;
using std::sqrt;

struct Dim {
  unsigned x = 0, y = 0, z = 0;
};
thread_local Dim threadIdx;
Dim blockIdx, blockDim;

namespace {
std::barrier<>* block_barrier = nullptr;
std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
uint64_t exchange[32][32];  // [warp][lane]
unsigned char* block_shared = nullptr;

// The value `source` lane of the calling thread's warp passed in; every lane of the warp calls.
template <typename T>
T shuffle(T value, int source) {
  static_assert(sizeof(T) <= sizeof(uint64_t));
  const unsigned warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  std::memcpy(&exchange[warp][lane], &value, sizeof(T));
  warp_barriers[warp]->arrive_and_wait();
  T result = value;
  if (source >= 0 && source < 32) std::memcpy(&result, &exchange[warp][source], sizeof(T));
  warp_barriers[warp]->arrive_and_wait();
  return result;
}

int lane_id() { return static_cast<int>(threadIdx.x % 32); }
}  // namespace

#define __global__
#define __device__
#define __shared__ static  // one instance per kernel instantiation, shared by the block's threads

inline void __syncthreads() { block_barrier->arrive_and_wait(); }
template <typename T>
T __shfl_sync(unsigned, T value, int source) {
  return shuffle(value, source);
}
template <typename T>
T __shfl_up_sync(unsigned, T value, int offset) {
  return shuffle(value, lane_id() - offset);  // lanes below `offset` keep their own value
}
template <typename T>
T __shfl_down_sync(unsigned, T value, int offset) {
  return shuffle(value, lane_id() + offset);  // lanes past the warp keep their own value
}
template <typename T>
T __shfl_xor_sync(unsigned, T value, int mask) {
  return shuffle(value, lane_id() ^ mask);
}

inline double* dynamic_shared_memory() { return reinterpret_cast<double*>(block_shared); }

#include "pivot.cuh"
#include "rank_leverage.cuh"
#include "select.cuh"

namespace {

using namespace svdprune::cuda;

template <typename Kernel>
void launch(int blocks, int threads, size_t shared_bytes, Kernel kernel) {
  blockDim.x = static_cast<unsigned>(threads);
  for (int block = 0; block < blocks; ++block) {
    blockIdx.x = static_cast<unsigned>(block);
    std::barrier<> barrier(threads);
    block_barrier = &barrier;
    warp_barriers.clear();
    for (int warp = 0; warp < threads / 32; ++warp) warp_barriers.push_back(std::make_unique<std::barrier<>>(32));
    std::vector<unsigned char> shared(shared_bytes);  // exactly the launch's size, for -fsanitize=address
    block_shared = shared.data();
    std::vector<std::thread> block_threads;
    for (int thread = 0; thread < threads; ++thread) {
      block_threads.emplace_back([thread, &kernel] {
        threadIdx.x = static_cast<unsigned>(thread);
        kernel();
      });
    }
    for (std::thread& t : block_threads) t.join();
  }
}

}  // namespace

// Entry points, one per kernel and scalar type, with the launch configuration as arguments.
#define SVDPRUNE_HOST_ENTRY_POINTS(scalar_t, suffix)                                                                   \
  extern "C" void rank_leverage_##suffix(const scalar_t* values, int64_t count, const scalar_t* vectors, int64_t rows, \
                                         const double* energy_parts, int energy_parts_per_image, const int* info,      \
                                         double variance, double slack, bool divide_by_value, scalar_t* scores,        \
                                         int64_t* rank, int batch, int threads) {                                      \
    launch(batch, threads, 0, [&] {                                                                                    \
      rank_leverage_kernel<scalar_t>(values, count, vectors, rows, energy_parts, energy_parts_per_image, info,         \
                                     variance, slack, divide_by_value, scores, rank);                                  \
    });                                                                                                                \
  }                                                                                                                    \
  extern "C" void pivot_##suffix(const scalar_t* values, int64_t count, const scalar_t* vectors, int n,               \
                                 const double* energy_parts, int energy_parts_per_image, const int* info,              \
                                 double slack, bool divide_by_value, int max_pivots, bool rows_in_shared,              \
                                 scalar_t* workspace, const scalar_t* scores, scalar_t* pivot_scores, int batch,       \
                                 int threads) {                                                                        \
    launch(batch, threads, pivot_shared_bytes(n, max_pivots, sizeof(scalar_t), rows_in_shared), [&] {                  \
      pivot_kernel<scalar_t>(values, count, vectors, n, energy_parts, energy_parts_per_image, info, slack,             \
                             divide_by_value, max_pivots, rows_in_shared, workspace, scores, pivot_scores);            \
    });                                                                                                                \
  }                                                                                                                    \
  extern "C" void select_top_##suffix(const scalar_t* scores, int n, int budget, int64_t* indices, int batch,          \
                                      int threads) {                                                                   \
    const int size = static_cast<int>(next_power_of_two(n));                                                           \
    launch(batch, threads, select_shared_bytes(size, sizeof(scalar_t)),                                                \
           [&] { select_top_kernel<scalar_t>(scores, n, size, budget, indices); });                                    \
  }                                                                                                                    \
  extern "C" void select_adaptive_##suffix(const scalar_t* scores, const int64_t* rank, int n, double variance,        \
                                           int64_t min_tokens, int64_t max_tokens, bool* mask, int64_t* count,         \
                                           int batch, int threads) {                                                   \
    const int size = static_cast<int>(next_power_of_two(n));                                                           \
    launch(batch, threads, select_shared_bytes(size, sizeof(scalar_t)), [&] {                                          \
      select_adaptive_kernel<scalar_t>(scores, rank, n, size, variance, min_tokens, max_tokens, mask, count);          \
    });                                                                                                                \
  }

SVDPRUNE_HOST_ENTRY_POINTS(float, float)
SVDPRUNE_HOST_ENTRY_POINTS(double, double)
