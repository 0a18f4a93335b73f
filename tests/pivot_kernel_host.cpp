// csrc/cuda/pivot.cuh compiled for the host: each CUDA thread of a block is a std::thread,
// __syncthreads is a barrier of the block, a warp shuffle is a barrier of the warp around a
// shared exchange slot, and blocks run one after the other. Its entry points launch pivot_kernel
// as leverage.cu does; tests/test_pivot_kernel.py builds this file and calls them.
//
// Run under a sanitizer to catch what the emulation can (races between threads of a block,
// e.g. a missing __syncthreads, with -fsanitize=thread; out-of-bounds shared or global accesses
// with -fsanitize=address): see tests/test_pivot_kernel.py.
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

using std::isfinite;
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
}  // namespace

#define __global__
#define __device__
#define __shared__ static  // one instance per kernel instantiation, shared by the block's threads

inline void __syncthreads() { block_barrier->arrive_and_wait(); }

template <typename T>
T __shfl_down_sync(unsigned, T value, int offset) {
  static_assert(sizeof(T) <= sizeof(uint64_t));
  const unsigned warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  std::memcpy(&exchange[warp][lane], &value, sizeof(T));
  warp_barriers[warp]->arrive_and_wait();
  T result = value;
  if (lane + offset < 32) std::memcpy(&result, &exchange[warp][lane + offset], sizeof(T));
  warp_barriers[warp]->arrive_and_wait();
  return result;
}

inline double* dynamic_shared_memory() { return reinterpret_cast<double*>(block_shared); }

#include "pivot.cuh"

namespace {

template <typename Kernel>
void launch(unsigned blocks, unsigned threads, size_t shared_bytes, Kernel kernel) {
  blockDim.x = threads;
  for (unsigned block = 0; block < blocks; ++block) {
    blockIdx.x = block;
    std::barrier<> barrier(threads);
    block_barrier = &barrier;
    warp_barriers.clear();
    for (unsigned warp = 0; warp < threads / 32; ++warp) warp_barriers.push_back(std::make_unique<std::barrier<>>(32));
    std::vector<unsigned char> shared(shared_bytes);  // exactly the launch's size, for -fsanitize=address
    block_shared = shared.data();
    std::vector<std::thread> block_threads;
    for (unsigned thread = 0; thread < threads; ++thread) {
      block_threads.emplace_back([thread, &kernel] {
        threadIdx.x = thread;
        kernel();
      });
    }
    for (std::thread& t : block_threads) t.join();
  }
}

template <typename scalar_t>
void pivot(const scalar_t* values, int64_t count, const scalar_t* vectors, int n, const double* energy_parts,
           int energy_parts_per_image, const int* info, double slack, bool divide_by_value, int max_pivots,
           bool rows_in_shared, scalar_t* workspace, const scalar_t* scores, scalar_t* pivot_scores, int batch,
           int threads) {
  const size_t shared_bytes = svdprune::cuda::pivot_shared_bytes(n, max_pivots, sizeof(scalar_t), rows_in_shared);
  launch(batch, threads, shared_bytes, [&] {
    svdprune::cuda::pivot_kernel<scalar_t>(values, count, vectors, n, energy_parts, energy_parts_per_image, info, slack,
                                           divide_by_value, max_pivots, rows_in_shared, workspace, scores,
                                           pivot_scores);
  });
}

}  // namespace

extern "C" {
void pivot_float(const float* values, int64_t count, const float* vectors, int n, const double* energy_parts,
                 int energy_parts_per_image, const int* info, double slack, bool divide_by_value, int max_pivots,
                 bool rows_in_shared, float* workspace, const float* scores, float* pivot_scores, int batch,
                 int threads) {
  pivot(values, count, vectors, n, energy_parts, energy_parts_per_image, info, slack, divide_by_value, max_pivots,
        rows_in_shared, workspace, scores, pivot_scores, batch, threads);
}

void pivot_double(const double* values, int64_t count, const double* vectors, int n, const double* energy_parts,
                  int energy_parts_per_image, const int* info, double slack, bool divide_by_value, int max_pivots,
                  bool rows_in_shared, double* workspace, const double* scores, double* pivot_scores, int batch,
                  int threads) {
  pivot(values, count, vectors, n, energy_parts, energy_parts_per_image, info, slack, divide_by_value, max_pivots,
        rows_in_shared, workspace, scores, pivot_scores, batch, threads);
}
}
