// CUDA kernels run on the host, for tests: each CUDA thread of a block is a fiber (a ucontext
// with a stack of its own) on the launching thread, __syncthreads is a barrier of the block's
// fibers and a warp shuffle a barrier of the warp's around a shared exchange slot; a fiber runs
// until it reaches a barrier or returns, and a barrier opens once every fiber that has not
// returned waits at it. The blocks of a grid run one after the other. Included through the
// stand-in <cuda_runtime.h> of this directory, so that the same sources (csrc/cuda/*.cuh, *.cu)
// compile for the GPU under nvcc and for this emulation under g++.
//
// What the emulation cannot show: timing, memory coalescing, reads of uninitialised __shared__
// variables (here they are zero-initialised statics), and the last bits of device math functions
// (cospi is cos(pi x) here). Under -fsanitize=thread every fiber is a thread to ThreadSanitizer
// and the barriers are its only synchronisation, so it reports races between a block's threads
// (a missing __syncthreads) whatever the order the fibers happen to run in; under
// -fsanitize=address it reports out-of-bounds accesses (the dynamic shared memory is a heap
// block of exactly the launch's size).
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
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
inline uint3 threadIdx, blockIdx;  // threadIdx is set for each fiber as it is resumed
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

#if defined(__SANITIZE_THREAD__)
extern "C" {
void* __tsan_get_current_fiber();
void* __tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void* fiber);
void __tsan_switch_to_fiber(void* fiber, unsigned flags);
void __tsan_acquire(void* address);
void __tsan_release(void* address);
void AnnotateIgnoreWritesBegin(const char* file, int line);
void AnnotateIgnoreWritesEnd(const char* file, int line);
}
#endif

namespace host_emulation {

#if defined(__SANITIZE_THREAD__)
constexpr unsigned kTsanNoSync = 1;  // __tsan_switch_to_fiber_no_sync: a switch orders nothing
inline void tsan_acquire(void* address) { __tsan_acquire(address); }
inline void tsan_release(void* address) { __tsan_release(address); }
// The scheduler's bookkeeping (which fiber runs, threadIdx, fiber states) is handed over at every
// switch; ordering it through ThreadSanitizer would order the fibers too and hide their races.
#define SVDPRUNE_BOOKKEEPING(statement)           \
  AnnotateIgnoreWritesBegin(__FILE__, __LINE__); \
  statement;                                     \
  AnnotateIgnoreWritesEnd(__FILE__, __LINE__)
#else
inline void tsan_acquire(void*) {}
inline void tsan_release(void*) {}
#define SVDPRUNE_BOOKKEEPING(statement) statement
#endif

enum class State { kReady, kAtBlockBarrier, kAtWarpBarrier, kDone };

struct Fiber {
  static constexpr size_t kStackBytes = 256 * 1024;
  ucontext_t context;
  std::unique_ptr<char[]> stack{new char[kStackBytes]};
  State state = State::kDone;
#if defined(__SANITIZE_THREAD__)
  void* tsan = __tsan_create_fiber(0);
#endif
};

// The block being run: its fibers (kept, with their stacks, for the next blocks), the one
// running, the launching thread's context, the kernel body and the barriers' sync tokens.
inline std::vector<std::unique_ptr<Fiber>> fibers;
inline int current = -1;
inline ucontext_t scheduler;
inline const std::function<void()>* body = nullptr;
inline char block_token, warp_tokens[32], launch_token;
inline uint64_t exchange[32][32];  // [warp][lane]
inline unsigned char* block_shared = nullptr;

inline void fiber_main() {
  tsan_acquire(&launch_token);  // what the launching thread wrote before the launch
  (*body)();
  SVDPRUNE_BOOKKEEPING(fibers[current]->state = State::kDone);
  tsan_release(&launch_token);  // for the launching thread, after the block
}  // returns to `scheduler` through uc_link

// Switches from the launching thread to fiber i until it waits at a barrier or returns.
inline void resume(int i, void* scheduler_tsan) {
  (void)scheduler_tsan;
  Fiber& fiber = *fibers[i];
  SVDPRUNE_BOOKKEEPING(current = i);
  SVDPRUNE_BOOKKEEPING(threadIdx.x = static_cast<unsigned>(i));
#if defined(__SANITIZE_THREAD__)
  __tsan_switch_to_fiber(fiber.tsan, kTsanNoSync);
#endif
  swapcontext(&scheduler, &fiber.context);
#if defined(__SANITIZE_THREAD__)
  __tsan_switch_to_fiber(scheduler_tsan, kTsanNoSync);
#endif
}

// Called by a fiber: waits, in `state`, until the scheduler opens the barrier.
inline void wait(State state, char* token) {
  Fiber& self = *fibers[current];
  SVDPRUNE_BOOKKEEPING(self.state = state);
  tsan_release(token);
  swapcontext(&self.context, &scheduler);
  tsan_acquire(token);
}

// The value `source` lane of the calling thread's warp passed in; every lane of the warp calls.
template <typename T>
T shuffle(T value, int source) {
  static_assert(sizeof(T) <= sizeof(uint64_t));
  const unsigned warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  std::memcpy(&exchange[warp][lane], &value, sizeof(T));
  wait(State::kAtWarpBarrier, &warp_tokens[warp]);
  T result = value;
  if (source >= 0 && source < 32) std::memcpy(&result, &exchange[warp][source], sizeof(T));
  wait(State::kAtWarpBarrier, &warp_tokens[warp]);
  return result;
}

inline int lane_id() { return static_cast<int>(threadIdx.x % 32); }

// Opens the barriers that every live fiber concerned has reached: a warp's, or else the block's.
// Returns false when no fiber can go on (a barrier that some live fiber never reaches).
inline bool open_barriers(int threads) {
  bool opened = false;
  for (int warp = 0; warp * 32 < threads; ++warp) {
    bool all = true, any = false;
    for (int i = warp * 32; i < std::min(threads, warp * 32 + 32); ++i) {
      if (fibers[i]->state == State::kDone) continue;
      any = true;
      all &= fibers[i]->state == State::kAtWarpBarrier;
    }
    if (!any || !all) continue;
    for (int i = warp * 32; i < std::min(threads, warp * 32 + 32); ++i) {
      if (fibers[i]->state != State::kDone) fibers[i]->state = State::kReady;
    }
    opened = true;
  }
  if (opened) return true;
  bool all = true;
  for (int i = 0; i < threads; ++i) {
    all &= fibers[i]->state == State::kDone || fibers[i]->state == State::kAtBlockBarrier;
  }
  if (!all) return false;
  for (int i = 0; i < threads; ++i) {
    if (fibers[i]->state == State::kAtBlockBarrier) fibers[i]->state = State::kReady;
  }
  return true;
}

// Runs the kernel `kernel_body` as every thread of every block of `grid` (x and y).
// The caller has checked the configuration (see launch_kernel in cuda_runtime.h).
inline void run_grid(dim3 grid, dim3 block, size_t shared_bytes, const std::function<void()>& kernel_body) {
  const int threads = static_cast<int>(block.x);
  blockDim = block;
  gridDim = grid;
  body = &kernel_body;
  while (static_cast<int>(fibers.size()) < threads) fibers.push_back(std::make_unique<Fiber>());
#if defined(__SANITIZE_THREAD__)
  void* scheduler_tsan = __tsan_get_current_fiber();
#else
  void* scheduler_tsan = nullptr;
#endif
  for (unsigned y = 0; y < grid.y; ++y) {
    for (unsigned x = 0; x < grid.x; ++x) {
      blockIdx.x = x;
      blockIdx.y = y;
      std::vector<unsigned char> shared(shared_bytes);  // exactly the launch's size, for -fsanitize=address
      block_shared = shared.data();
      tsan_release(&launch_token);
      for (int i = 0; i < threads; ++i) {
        Fiber& fiber = *fibers[i];
        getcontext(&fiber.context);
        fiber.context.uc_stack.ss_sp = fiber.stack.get();
        fiber.context.uc_stack.ss_size = Fiber::kStackBytes;
        fiber.context.uc_link = &scheduler;
        makecontext(&fiber.context, fiber_main, 0);
        fiber.state = State::kReady;
      }
      int done = 0;
      while (done < threads) {
        for (int i = 0; i < threads; ++i) {
          if (fibers[i]->state != State::kReady) continue;
          resume(i, scheduler_tsan);
          done += fibers[i]->state == State::kDone;
        }
        if (done < threads && !open_barriers(threads)) {
          std::fprintf(stderr, "emulation: a barrier that some threads of the block never reach\n");
          std::abort();
        }
      }
      tsan_acquire(&launch_token);
    }
  }
  block_shared = nullptr;
  body = nullptr;
}

}  // namespace host_emulation

inline void __syncthreads() { host_emulation::wait(host_emulation::State::kAtBlockBarrier, &host_emulation::block_token); }
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
