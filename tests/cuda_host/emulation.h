// CUDA kernels run on the host, for tests: each CUDA thread of a block is a host thread of a
// persistent pool, __syncthreads is a barrier of the block, a warp shuffle is a barrier of the
// warp around a shared exchange slot, and the blocks of a grid run one after the other.
// Included through the stand-in <cuda_runtime.h> of this directory, so that the same sources
// (csrc/cuda/*.cuh, *.cu) compile for the GPU under nvcc and for this emulation under g++.
//
// What the emulation cannot show: timing, memory coalescing, reads of uninitialised
// __shared__ variables (here they are zero-initialised statics), and the last bits of device
// math functions (cospi is cos(pi x) here). Threads run freely between the explicit barriers,
// as they may on GPUs with independent thread scheduling. Built with -fsanitize=thread it
// reports races between a block's threads (a missing __syncthreads), with -fsanitize=address
// out-of-bounds accesses (the dynamic shared memory is a heap block of exactly the launch's size).
#pragma once

#include <barrier>
#include <climits>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

using std::isfinite;
using std::isnan;
using std::log;
using std::min;
using std::sqrt;

struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};
struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x = 1, unsigned y = 1, unsigned z = 1) : x(x), y(y), z(z) {}
};
inline thread_local uint3 threadIdx;
inline uint3 blockIdx;
inline dim3 blockDim, gridDim;

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

#define __global__
#define __device__
#define __host__
#define __shared__ static  // one instance per kernel instantiation, shared by the block's threads

namespace host_emulation {

// Host threads that run the CUDA threads of one block at a time; they persist between
// launches, since starting a thread costs more than most blocks' work.
class ThreadPool {
 public:
  ~ThreadPool() {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    start_.notify_all();
    for (std::thread& worker : workers_) worker.join();
  }

  // Runs body() on `threads` workers, with threadIdx.x = 0 .. threads-1; returns when all are done.
  void run(int threads, const std::function<void()>& body) {
    std::unique_lock<std::mutex> lock(mutex_);
    while (static_cast<int>(workers_.size()) < threads) {
      const int id = static_cast<int>(workers_.size());
      workers_.emplace_back([this, id] { work(id); });
    }
    body_ = &body;
    active_ = threads;
    remaining_ = threads;
    ++generation_;
    start_.notify_all();
    done_.wait(lock, [this] { return remaining_ == 0; });
    body_ = nullptr;
  }

 private:
  void work(int id) {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    while (true) {
      start_.wait(lock, [&] { return stopping_ || (generation_ != seen && id < active_); });
      if (stopping_) return;
      seen = generation_;
      const std::function<void()>* body = body_;
      lock.unlock();
      threadIdx.x = static_cast<unsigned>(id);
      (*body)();
      lock.lock();
      if (--remaining_ == 0) done_.notify_one();
    }
  }

  std::mutex mutex_;
  std::condition_variable start_, done_;
  std::vector<std::thread> workers_;
  const std::function<void()>* body_ = nullptr;
  uint64_t generation_ = 0;
  int active_ = 0, remaining_ = 0;
  bool stopping_ = false;
};

inline ThreadPool& pool() {
  static ThreadPool threads;
  return threads;
}

// State of the block being run.
inline std::unique_ptr<std::barrier<>> block_barrier;
inline std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
inline uint64_t exchange[32][32];  // [warp][lane]
inline unsigned char* block_shared = nullptr;

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

inline int lane_id() { return static_cast<int>(threadIdx.x % 32); }

// Runs body() as every thread of every block of `grid` (x and y), blocks one after the other.
// The caller has checked the configuration (see launch in csrc/cuda/launch.cuh).
inline void run_grid(dim3 grid, dim3 block, size_t shared_bytes, const std::function<void()>& body) {
  const int threads = static_cast<int>(block.x);
  blockDim = block;
  gridDim = grid;
  for (unsigned y = 0; y < grid.y; ++y) {
    for (unsigned x = 0; x < grid.x; ++x) {
      blockIdx.x = x;
      blockIdx.y = y;
      block_barrier = std::make_unique<std::barrier<>>(threads);
      warp_barriers.clear();
      for (int warp = 0; warp < (threads + 31) / 32; ++warp) {
        warp_barriers.push_back(std::make_unique<std::barrier<>>(std::min(32, threads - 32 * warp)));
      }
      std::vector<unsigned char> shared(shared_bytes);  // exactly the launch's size, for -fsanitize=address
      block_shared = shared.data();
      pool().run(threads, body);
    }
  }
  block_shared = nullptr;
}

}  // namespace host_emulation

inline void __syncthreads() { host_emulation::block_barrier->arrive_and_wait(); }
template <typename T>
T __shfl_sync(unsigned, T value, int source) {
  return host_emulation::shuffle(value, source);
}
template <typename T>
T __shfl_up_sync(unsigned, T value, int offset) {
  return host_emulation::shuffle(value, host_emulation::lane_id() - offset);  // lanes below `offset` keep their own
}
template <typename T>
T __shfl_down_sync(unsigned, T value, int offset) {
  return host_emulation::shuffle(value, host_emulation::lane_id() + offset);  // lanes past the warp keep their own
}
template <typename T>
T __shfl_xor_sync(unsigned, T value, int mask) {
  return host_emulation::shuffle(value, host_emulation::lane_id() ^ mask);
}

inline double* dynamic_shared_memory() { return reinterpret_cast<double*>(host_emulation::block_shared); }
