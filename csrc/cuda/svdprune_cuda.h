// CUDA implementation of the svdprune ops, free of torch headers so that nvcc compiles it
// quickly. The ATen glue (ops_impl.h, run by svdprune_cuda.cpp) validates arguments, prepares the input and
// passes plain device pointers, torch's current stream and its cuBLAS handle; every
// temporary buffer comes from `Context::allocate`, i.e. from torch's caching allocator.
//
// Nothing here synchronises with the host: no device-to-host copies, no stream or device
// synchronisation, solver status codes stay on the device. That keeps the ops usable under
// CUDA graph capture and torch.compile.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <cstddef>
#include <cstdint>
#include <functional>

namespace svdprune::cuda {

enum class DType { Half, BFloat16, Float, Double };

// Most matrices one cusolverDnXsyevBatched call is given: it fails with
// CUSOLVER_STATUS_INVALID_VALUE on batches of about 32k matrices (not documented).
constexpr int64_t kMaxSolverBatch = 16384;

struct Context {
  cudaStream_t stream;
  // Already bound to `stream` and to torch's cuBLAS workspace by the caller: rebinding it
  // here would reset that workspace.
  cublasHandle_t blas;
  // Device memory that stays valid until the op returns (stream-ordered reuse afterwards).
  std::function<void*(size_t bytes)> allocate;
  // Lowered by tests only, to run small batches through several eigensolver calls.
  int64_t max_solver_batch = kMaxSolverBatch;
};

// A batch of images: `batch` row-major, contiguous [n, d] matrices.
struct Features {
  const void* data;
  DType dtype;
  int64_t batch, n, d;
};

// Copies `features` into `out` (same dtype and layout), each image multiplied by the power of two
// that brings its largest |entry| near 1 when that entry is beyond 2^±safe_exponent: exact, and
// leverage and rank do not depend on the scale, while the Gram product, which holds squares of
// the entries, would overflow or underflow float32 (or float64) otherwise. Images of zeros or
// with NaN/Inf entries keep their scale. float16 needs none (its squares fit float32) and is
// refused.
void rescale(const Context& ctx, const Features& features, int safe_exponent, void* out);

// Sketch width of the randomized path for an image with min(N, D) = `rank_bound`, or 0 when
// no sketch could ever be accepted and the exact path is used (see leverage.cu).
int64_t sketch_width(int64_t rank_bound);

// Largest min(N, D) the batched eigensolver accepts (n * n must fit in 32 bits).
constexpr int64_t kMaxGramSize = 46340;

// Largest n at which cusolverDnXsyevBatched is known to run under CUDA graph capture: on an H200
// (cuSOLVER 12.0.4) the randomized path's 32, 64 and 128 captured and replayed, while the exact
// path's 576 failed with CUSOLVER_STATUS_EXECUTION_FAILED. An op whose eigenproblem is larger
// raises before calling the solver when its stream is being captured (ops_impl.h). The
// eigensolver matrix of scripts/gpu_check.sh measures which sizes capture.
constexpr int64_t kMaxCapturedEigenSize = 128;

// Leverage scores [batch, n] (float, double for double input) and truncation rank [batch].
// `features` must be float or double when `center` was applied or d < n (the glue widens
// it): half/bfloat16 input is only read by the Gram product, which accumulates in float.
// `width` = 0 selects the exact path, otherwise the randomized one with that sketch width.
// With pivot_budget > 0 it also writes `pivot_scores` [batch, n] (the scores' dtype): the
// leverage scores with the tokens of the greedy column pivoting on the top min(pivot_budget,
// non-zero rank) left singular vectors raised to +inf, so that select_top of them with
// budget = pivot_budget is the pivoted selection; pivot_scores is null otherwise.
void leverage(const Context& ctx, const Features& features, double variance, double slack, int64_t width,
              uint64_t seed, void* scores, int64_t* rank, int64_t pivot_budget, void* pivot_scores);

// Per image, the `budget` highest scores (ties to the lower index), written as indices in
// ascending order: indices [batch, budget].
void select_top(const Context& ctx, const void* scores, DType dtype, int64_t batch, int64_t n, int64_t budget,
                int64_t* indices);

// Per image, the fewest highest-score tokens whose cumulative score reaches
// variance * rank, clamped to [min_tokens, max_tokens]: mask [batch, n], count [batch].
void select_adaptive(const Context& ctx, const void* scores, DType dtype, const int64_t* rank, int64_t batch,
                     int64_t n, double variance, int64_t min_tokens, int64_t max_tokens, bool* mask, int64_t* count);

// Largest n the selection kernels handle (the block sorts n scores in shared memory).
int64_t max_select_tokens(DType dtype);

}  // namespace svdprune::cuda
