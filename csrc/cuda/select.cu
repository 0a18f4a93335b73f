// Token selection from scores: launches the kernels of select.cuh, one block per image, with
// the image's scores sorted in shared memory.
#include "checks.h"
#include "launch.cuh"
#include "select.cuh"
#include "svdprune_cuda.h"

#include <cstdint>
#include <string>

namespace svdprune::cuda {
namespace {

constexpr int kThreads = 512;

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
  const size_t bytes = select_shared_bytes(size, sizeof(scalar_t));
  allow_dynamic_shared_memory(reinterpret_cast<const void*>(select_top_kernel<scalar_t>), bytes);
  launch(select_top_kernel<scalar_t>, static_cast<unsigned>(batch), kThreads, bytes, ctx.stream, scores,
         static_cast<int>(n), static_cast<int>(size), static_cast<int>(budget), indices);
  SVDPRUNE_CHECK_LAUNCH("select_top_kernel");
}

template <typename scalar_t>
void select_adaptive_typed(const Context& ctx, const scalar_t* scores, const int64_t* rank, int64_t batch, int64_t n,
                           double variance, int64_t min_tokens, int64_t max_tokens, bool* mask, int64_t* count) {
  const int64_t size = next_power_of_two(n);
  const size_t bytes = select_shared_bytes(size, sizeof(scalar_t));
  allow_dynamic_shared_memory(reinterpret_cast<const void*>(select_adaptive_kernel<scalar_t>), bytes);
  launch(select_adaptive_kernel<scalar_t>, static_cast<unsigned>(batch), kThreads, bytes, ctx.stream, scores, rank,
         static_cast<int>(n), static_cast<int>(size), variance, min_tokens, max_tokens, mask, count);
  SVDPRUNE_CHECK_LAUNCH("select_adaptive_kernel");
}

}  // namespace

int64_t max_select_tokens(DType dtype) {
  const size_t entry = (dtype == DType::Double ? sizeof(double) : sizeof(float)) + sizeof(int);
  const size_t limit = dynamic_shared_memory_limit();
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
