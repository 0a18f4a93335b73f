// The CUDA kernels of csrc/cuda/*.cuh compiled for the host: each CUDA thread of a block is a
// std::thread, __syncthreads is a barrier of the block, a warp shuffle is a barrier of the warp
// around a shared exchange slot, and blocks run one after the other. The entry points launch
// the kernels as leverage.cu and select.cu do; tests/test_kernels_on_host.py builds this file
// and calls them.
//
// What the emulation cannot show: timing, memory coalescing, reads of uninitialised
// __shared__ variables (here they are zero-initialised statics), and the last bits of device
// math functions (cospi is cos(pi x) here). Threads run freely between the explicit
// barriers, as they may on GPUs with independent thread scheduling. Run it under a sanitizer for
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
using std::log;
using std::min;
using std::sqrt;

struct Dim {
  unsigned x = 0, y = 0, z = 0;
};
thread_local Dim threadIdx;
Dim blockIdx, blockDim, gridDim;

struct uint2 {
  uint32_t x, y;
};
struct uint4 {
  uint32_t x, y, z, w;
};
inline uint2 make_uint2(uint32_t x, uint32_t y) { return {x, y}; }
inline uint4 make_uint4(uint32_t x, uint32_t y, uint32_t z, uint32_t w) { return {x, y, z, w}; }
inline uint32_t __umulhi(uint32_t a, uint32_t b) { return static_cast<uint32_t>((uint64_t{a} * b) >> 32); }
inline double cospi(double x) { return std::cos(3.14159265358979323846 * x); }

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
#include "randomized.cuh"
#include "rank_leverage.cuh"
#include "select.cuh"

namespace {

using namespace svdprune::cuda;

// Runs `kernel` on a grid of blocks × rows_of_blocks blocks of `threads` threads.
template <typename Kernel>
void launch(int blocks, int threads, size_t shared_bytes, Kernel kernel, int rows_of_blocks = 1) {
  blockDim.x = static_cast<unsigned>(threads);
  gridDim.x = static_cast<unsigned>(blocks);
  gridDim.y = static_cast<unsigned>(rows_of_blocks);
  for (int block = 0; block < blocks * rows_of_blocks; ++block) {
    blockIdx.x = static_cast<unsigned>(block % blocks);
    blockIdx.y = static_cast<unsigned>(block / blocks);
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
  }                                                                                                                    \
  extern "C" void gaussian_##suffix(scalar_t* out, int64_t count, uint64_t seed, int blocks, int threads) {           \
    launch(blocks, threads, 0, [&] { gaussian_kernel<scalar_t>(out, count, seed); });                                  \
  }                                                                                                                    \
  extern "C" void solve_rows_##suffix(scalar_t* y, const double* cholesky, const int* keep, int64_t rows, int width,   \
                                      int batch, int rows_per_block) {                                                 \
    const int row_blocks = static_cast<int>((rows + rows_per_block - 1) / rows_per_block);                             \
    launch(                                                                                                            \
        batch, rows_per_block, 0, [&] { solve_rows_kernel<scalar_t, 128>(y, cholesky, keep, rows, width); },           \
        row_blocks);                                                                                                   \
  }

SVDPRUNE_HOST_ENTRY_POINTS(float, float)
SVDPRUNE_HOST_ENTRY_POINTS(double, double)

extern "C" void philox(const uint32_t* counter, const uint32_t* key, uint32_t* out) {
  const uint4 bits = philox4x32_10(make_uint4(counter[0], counter[1], counter[2], counter[3]), make_uint2(key[0], key[1]));
  out[0] = bits.x, out[1] = bits.y, out[2] = bits.z, out[3] = bits.w;
}

extern "C" void widen(const float* in, double* out, int64_t count, int blocks, int threads) {
  launch(blocks, threads, 0, [&] { widen_kernel(in, out, count); });
}

extern "C" double cholesky_drop_tolerance(bool double_columns) {
  return double_columns ? kDropTolerance<double> : kDropTolerance<float>;
}

extern "C" void cholesky(double* gram, int width, double tolerance, int* keep, int batch, int threads) {
  launch(batch, threads, cholesky_shared_bytes(width), [&] { cholesky_kernel(gram, width, tolerance, keep); });
}
