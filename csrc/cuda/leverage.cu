// Leverage scores and truncation rank on the GPU, exact and randomized.
//
// Both paths start from the Gram matrix of each image, G = X Xᵀ (N×N) or Xᵀ X (D×D),
// whichever is smaller, in float32 (float64 for float64 input): one strided-batched cuBLAS
// GEMM that reads 16-bit input directly and accumulates in float32.
//   exact:      one cusolverDnXsyevBatched call diagonalises every G of the batch.
//   randomized: subspace iteration on G from a Gaussian sketch, re-orthonormalised at every
//               step, then Rayleigh–Ritz on the small width×width matrix QᵀGQ.
// The rank cut and the leverage scores then come from one kernel per image. When G is
// XᵀX, its eigenvectors are the right singular vectors V, and the left ones an orthonormal
// basis of X V (left_basis_kernel).
// ‖X‖_F², the energy the rank cut is measured against, is reduced from X itself (from trace(G)
// for 16-bit features, see leverage_typed). For
// select(strategy="pivoted"), a second kernel per image pivots on the same eigenpairs.
// The kernels other than the energy reduction live in randomized.cuh, rank_leverage.cuh and
// pivot.cuh; this file launches them and makes the cuBLAS/cuSOLVER calls.
#include "checks.h"
#include "launch.cuh"
#include "pivot.cuh"
#include "randomized.cuh"
#include "rank_leverage.cuh"
#include "svdprune_cuda.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <climits>
#include <map>
#include <mutex>
#include <type_traits>
#include <utility>
#include <vector>

namespace svdprune::cuda {
namespace {

// Randomized range finder. The sketch widths follow the CPU backend's: kInitialSketch
// columns, doubled. The CPU tries them one after the other, reads the rank back after each,
// and hands the image to the exact solver once another sketch would cost more than that solver;
// here that read-back would be a host synchronisation, so the widest sketch within min(N, D)/4
// is used at once (up to kMaxSketch, and up to what the device's shared memory can factorise;
// 128 columns on sm_80 and later GPUs for N = 576, at least as wide as any the CPU runs). A
// wider sketch only refines a narrower one, so every image the CPU accepts at some width is at
// least as well resolved here. An image whose rank does not fit the sketch with kOversample
// columns to spare, which the CPU hands to the exact solver, cannot fall back here without that
// read-back (or without paying the exact solver for every image). Ritz values never exceed the
// eigenvalues they approximate, so the sketch's rank is never below the exact one: it is exact
// where the sketch resolves the spectrum, and where its Ritz values do not reach `variance` of
// the energy before its last kOversample columns (flat spectra, e.g. noise; the trailing Ritz
// values are the least converged, see warp_rank), the rank is reported as unresolved, rank = the
// sketch width, with the scores of all the sketch's Ritz vectors. `auto`
// therefore takes the exact path on CUDA (see resolve_method). Widths of at most kOversample
// take the exact path, as on the CPU.
constexpr int64_t kInitialSketch = 32;
constexpr int64_t kOversample = 8;
constexpr int64_t kMaxSketch = 128;
// Each iteration applies G = X Xᵀ once, like one iteration of the CPU backend.
constexpr int kPowerIterations = 4;

constexpr int kThreads = 256;
// ‖X‖_F² is summed by kEnergyParts blocks per image (enough to keep the GPU busy at batch
// size 1), then the parts are added in a fixed order, so the result is deterministic.
constexpr int kEnergyParts = 64;

template <typename scalar_t>
constexpr cudaDataType kDataType = std::is_same_v<scalar_t, double> ? CUDA_R_64F : CUDA_R_32F;

cudaDataType data_type(DType dtype) {
  switch (dtype) {
    case DType::Half: return CUDA_R_16F;
    case DType::BFloat16: return CUDA_R_16BF;
    case DType::Float: return CUDA_R_32F;
    case DType::Double: return CUDA_R_64F;
  }
  fail("svdprune", "data_type", "unknown dtype");
}

template <typename T>
T* allocate(const Context& ctx, int64_t count) {
  return static_cast<T*>(ctx.allocate(sizeof(T) * static_cast<size_t>(std::max<int64_t>(count, 1))));
}

int to_int(int64_t value, const char* what) {
  if (value < 0 || value > INT_MAX) fail("svdprune", what, "size " + std::to_string(value) + " exceeds 32 bits");
  return static_cast<int>(value);
}

int blocks_for(int64_t count, int threads) {
  return static_cast<int>(std::min<int64_t>((count + threads - 1) / threads, 65535));
}

// What one call writes: scores [batch, n] and rank [batch] and, with pivot_budget > 0, the
// pivot scores [batch, n] of pivot_kernel.
template <typename scalar_t>
struct Outputs {
  scalar_t* scores;
  int64_t* rank;
  int64_t pivot_budget;
  scalar_t* pivot_scores;
};

// ---------------------------------------------------------------------------------------
// Small device helpers

__device__ inline double to_double(__half v) { return static_cast<double>(__half2float(v)); }
__device__ inline double to_double(__nv_bfloat16 v) { return static_cast<double>(__bfloat162float(v)); }
__device__ inline double to_double(float v) { return v; }
__device__ inline double to_double(double v) { return v; }

// v, exactly representable in T (rounded to nearest even where it is not).
template <typename T>
__device__ inline T from_double(double v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __float2bfloat16_rn(static_cast<float>(v));
  } else {
    return static_cast<T>(v);
  }
}

// ---------------------------------------------------------------------------------------
// Kernels

// Reductions over every entry of an image, each split into kEnergyParts parts (see
// reduce_parts): the sum of squares, ‖X‖_F², and the largest |entry| (NaN entries left out, as
// fmax does).
struct SquareSum : Sum {
  static constexpr double kIdentity = 0.0;
  __device__ double entry(double v) const { return v * v; }
};
struct LargestMagnitude : Max {
  static constexpr double kIdentity = 0.0;
  __device__ double entry(double v) const { return fabs(v); }
};

// parts[b * kEnergyParts + p] = `reduction` of part p of image b.
template <typename T, typename Reduction>
__global__ void parts_kernel(const T* x, int64_t elements, Reduction reduction, double* parts) {
  const int64_t chunk = (elements + kEnergyParts - 1) / kEnergyParts;
  const int64_t begin = blockIdx.y * chunk;
  const int64_t end = min64(begin + chunk, elements);
  const T* image = x + static_cast<int64_t>(blockIdx.x) * elements;
  double value = Reduction::kIdentity;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) value = reduction(value, reduction.entry(to_double(image[i])));
  value = block_reduce(value, reduction, Reduction::kIdentity);
  if (threadIdx.x == 0) parts[static_cast<int64_t>(blockIdx.x) * kEnergyParts + blockIdx.y] = value;
}

// parts[b * kEnergyParts + p] = the sum, in double, of part p of the diagonal of image b's m×m
// Gram matrix: its trace, the sum of its eigenvalues, in the layout of the ‖X‖_F² parts.
template <typename scalar_t>
__global__ void trace_parts_kernel(const scalar_t* g, int64_t m, double* parts) {
  const int64_t chunk = (m + kEnergyParts - 1) / kEnergyParts;
  const int64_t begin = blockIdx.y * chunk;
  const int64_t end = min64(begin + chunk, m);
  const scalar_t* image = g + static_cast<int64_t>(blockIdx.x) * m * m;
  double value = 0.0;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) value += image[i * (m + 1)];
  value = block_reduce(value, Sum{}, 0.0);
  if (threadIdx.x == 0) parts[static_cast<int64_t>(blockIdx.x) * kEnergyParts + blockIdx.y] = value;
}

// The power of two, 2^shift, by which rescale_kernel multiplies `image`: shift = -ilogb of its
// largest |entry| when that entry is beyond 2^±safe_exponent, 0 otherwise. An image of zeros, or
// with Inf entries, keeps its scale (the latter is marked invalid, see energy_fits).
__device__ inline int rescale_shift(const double* largest_parts, int64_t image, int safe_exponent) {
  double largest = 0.0;
  for (int p = 0; p < kEnergyParts; ++p) largest = fmax(largest, largest_parts[image * kEnergyParts + p]);
  if (!(largest > 0.0) || !isfinite(largest)) return 0;
  const int exponent = ilogb(largest);
  return exponent > safe_exponent || exponent < -safe_exponent ? -exponent : 0;
}

// out = x with each image multiplied by 2^rescale_shift: exact (ldexp), except for entries that
// end up below the smallest normal number of T, some 2^126 times smaller than the largest one.
template <typename T>
__global__ void rescale_kernel(const T* x, int64_t elements, const double* largest_parts, int safe_exponent, T* out) {
  const int64_t chunk = (elements + kEnergyParts - 1) / kEnergyParts;
  const int64_t begin = blockIdx.y * chunk;
  const int64_t end = min64(begin + chunk, elements);
  const int64_t offset = static_cast<int64_t>(blockIdx.x) * elements;
  const int shift = rescale_shift(largest_parts, blockIdx.x, safe_exponent);
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    out[offset + i] = from_double<T>(ldexp(to_double(x[offset + i]), shift));
  }
}

// ---------------------------------------------------------------------------------------
// Library calls

// C = op(A) op(B) for every matrix of a strided batch (column-major). Float results use the
// pedantic float32 compute type for float32 inputs, so that TF32 stays out even when the
// handle allows it; 16-bit inputs go to tensor cores with float32 accumulation.
void gemm(const Context& ctx, cublasOperation_t transa, cublasOperation_t transb, int64_t m, int64_t n, int64_t k,
          const void* a, cudaDataType a_type, int64_t lda, int64_t stride_a, const void* b, cudaDataType b_type,
          int64_t ldb, int64_t stride_b, void* c, cudaDataType c_type, int64_t ldc, int64_t stride_c, int64_t batch) {
  const int im = to_int(m, "gemm m"), in = to_int(n, "gemm n"), ik = to_int(k, "gemm k");
  const int ilda = to_int(lda, "gemm lda"), ildb = to_int(ldb, "gemm ldb"), ildc = to_int(ldc, "gemm ldc");
  const int ibatch = to_int(batch, "gemm batch");
  if (c_type == CUDA_R_64F) {
    const double one = 1.0, zero = 0.0;
    SVDPRUNE_CUBLAS_CHECK(cublasGemmStridedBatchedEx(ctx.blas, transa, transb, im, in, ik, &one, a, a_type, ilda,
                                                     stride_a, b, b_type, ildb, stride_b, &zero, c, c_type, ildc,
                                                     stride_c, ibatch, CUBLAS_COMPUTE_64F, CUBLAS_GEMM_DEFAULT));
  } else {
    const float one = 1.0f, zero = 0.0f;
    const cublasComputeType_t compute = a_type == CUDA_R_32F ? CUBLAS_COMPUTE_32F_PEDANTIC : CUBLAS_COMPUTE_32F;
    SVDPRUNE_CUBLAS_CHECK(cublasGemmStridedBatchedEx(ctx.blas, transa, transb, im, in, ik, &one, a, a_type, ilda,
                                                     stride_a, b, b_type, ildb, stride_b, &zero, c, c_type, ildc,
                                                     stride_c, ibatch, compute, CUBLAS_GEMM_DEFAULT));
  }
}

// cuSOLVER handles: a process-wide pool per (device, stream), of which each eigensolver call
// borrows one for its duration. A handle is bound to one stream for good: it goes back to the
// pool when the host call returns, while its work may still run on the GPU, and a call on
// another stream must not overlap that work on the same handle (cuSOLVER calls cuBLAS, whose
// results are not deterministic for one handle on parallel streams). A later call on the same
// stream is queued behind it. There are thus never more handles than calls that ran at once on
// each stream, whatever the threads (a short-lived thread leaks nothing), and no handle is shared
// by two calls at a time (cuSOLVER requires that).
// A handle is only created outside CUDA graph capture. Under capture, a stream without a handle
// (torch.cuda.graph captures on a stream of its own, after a warm-up on another) adopts an idle
// handle of the device and keeps it: capturing runs nothing on the GPU. The first call on a
// device under capture fails and asks for a warm-up call before capturing. The handles are never
// destroyed: at process exit the CUDA context may already be gone.
class SolverHandle {
 public:
  explicit SolverHandle(cudaStream_t stream) : stream_(stream) {
    SVDPRUNE_CUDA_CHECK(cudaGetDevice(&device_));
    const bool captured = capturing(stream);
    {
      const std::lock_guard<std::mutex> lock(mutex());
      handle_ = take(idle()[{device_, stream}]);
      for (auto it = idle().begin(); handle_ == nullptr && captured && it != idle().end(); ++it) {
        if (it->first.first == device_) handle_ = take(it->second);
      }
    }
    if (handle_ == nullptr) {
      if (captured) {
        fail("cuSOLVER", "cusolverDnCreate",
             "no idle handle while a CUDA graph is being captured: run the op once on this device before capturing");
      }
      SVDPRUNE_CUSOLVER_CHECK(cusolverDnCreate(&handle_));
    }
    SVDPRUNE_CUSOLVER_CHECK(cusolverDnSetStream(handle_, stream));
  }
  ~SolverHandle() {
    const std::lock_guard<std::mutex> lock(mutex());
    idle()[{device_, stream_}].push_back(handle_);
  }
  SolverHandle(const SolverHandle&) = delete;
  SolverHandle& operator=(const SolverHandle&) = delete;
  cusolverDnHandle_t get() const { return handle_; }

 private:
  using Pool = std::map<std::pair<int, cudaStream_t>, std::vector<cusolverDnHandle_t>>;
  static std::mutex& mutex() {
    static std::mutex pool_mutex;
    return pool_mutex;
  }
  static Pool& idle() {
    static auto* pool = new Pool;  // never destroyed, see above
    return *pool;
  }
  static cusolverDnHandle_t take(std::vector<cusolverDnHandle_t>& handles) {
    if (handles.empty()) return nullptr;
    const cusolverDnHandle_t handle = handles.back();
    handles.pop_back();
    return handle;
  }

  int device_ = 0;
  cudaStream_t stream_;
  cusolverDnHandle_t handle_ = nullptr;
};

struct SolverParams {
  cusolverDnParams_t params = nullptr;
  SolverParams() { SVDPRUNE_CUSOLVER_CHECK(cusolverDnCreateParams(&params)); }
  ~SolverParams() { cusolverDnDestroyParams(params); }
  SolverParams(const SolverParams&) = delete;
  SolverParams& operator=(const SolverParams&) = delete;
};

// Eigenvalues (ascending) and eigenvectors (in place of `a`) of `batch` symmetric n×n
// matrices, lower triangles read; info[i] != 0 marks a matrix the solver failed on. The
// batched solver limits n * n * batch to 32 bits, and batches to about 32k matrices, so larger
// batches go in several calls of at most ctx.max_solver_batch matrices.
template <typename scalar_t>
void eigh_batched(const Context& ctx, int64_t n, int64_t batch, scalar_t* a, scalar_t* values, int* info) {
  constexpr cudaDataType type = kDataType<scalar_t>;
  const SolverHandle solver(ctx.stream);
  const SolverParams params;
  const int64_t chunk = std::min<int64_t>({batch, ctx.max_solver_batch, std::max<int64_t>(1, INT_MAX / (n * n))});
  size_t device_bytes = 0, host_bytes = 0;
  for (const int64_t size : {chunk, batch % chunk}) {
    if (size == 0) continue;
    size_t device = 0, host = 0;
    SVDPRUNE_CUSOLVER_CHECK(cusolverDnXsyevBatched_bufferSize(solver.get(), params.params, CUSOLVER_EIG_MODE_VECTOR,
                                                              CUBLAS_FILL_MODE_LOWER, n, type, a, n, type, values,
                                                              type, &device, &host, size));
    device_bytes = std::max(device_bytes, device);
    host_bytes = std::max(host_bytes, host);
  }
  // A host workspace would be used by the host while the call runs, which a CUDA graph cannot
  // replay; no version of the batched solver asks for one so far.
  if (host_bytes > 0 && capturing(ctx.stream)) {
    fail("cuSOLVER", "cusolverDnXsyevBatched", "needs a host workspace, which CUDA graph capture cannot record");
  }
  void* device_workspace = ctx.allocate(std::max<size_t>(device_bytes, 1));
  // The solver uses its host workspace during the call only (torch frees its own right after).
  thread_local std::vector<char> host_workspace;
  host_workspace.resize(std::max<size_t>({host_workspace.size(), host_bytes, 1}));
  for (int64_t begin = 0; begin < batch; begin += chunk) {
    const int64_t size = std::min(chunk, batch - begin);
    SVDPRUNE_CUSOLVER_CHECK(cusolverDnXsyevBatched(solver.get(), params.params, CUSOLVER_EIG_MODE_VECTOR,
                                                   CUBLAS_FILL_MODE_LOWER, n, type, a + begin * n * n, n, type,
                                                   values + begin * n, type, device_workspace, device_bytes,
                                                   host_workspace.data(), host_bytes, info + begin, size));
  }
}

// ---------------------------------------------------------------------------------------
// Pipeline

// G = X Xᵀ (n ≤ d) or Xᵀ X, m×m column-major per image. X row-major [n, d] is, column-major,
// the d×n matrix Xᵀ with leading dimension d.
template <typename scalar_t>
void gram(const Context& ctx, const Features& f, scalar_t* g) {
  const cudaDataType in = data_type(f.dtype);
  constexpr cudaDataType out = kDataType<scalar_t>;
  if (f.n <= f.d) {
    gemm(ctx, CUBLAS_OP_T, CUBLAS_OP_N, f.n, f.n, f.d, f.data, in, f.d, f.n * f.d, f.data, in, f.d, f.n * f.d, g, out,
         f.n, f.n * f.n, f.batch);
  } else {
    gemm(ctx, CUBLAS_OP_N, CUBLAS_OP_T, f.d, f.d, f.n, f.data, in, f.d, f.n * f.d, f.data, in, f.d, f.n * f.d, g, out,
         f.d, f.d * f.d, f.batch);
  }
}

// Scores and rank (and the pivot scores, when asked for) from `count` eigenpairs of G per
// image: `values` [batch, count] ascending, `basis` [batch] m×count; ranks above `resolvable`
// are reported as unresolved (see warp_rank). For n ≤ d the basis holds left singular vectors;
// otherwise right ones V, and the left ones come from X V (left_basis_kernel).
template <typename scalar_t>
void finish(const Context& ctx, const Features& f, const scalar_t* values, int64_t count, int64_t resolvable,
            const scalar_t* basis, const int* info, const double* energy_parts, double variance, double slack,
            const Outputs<scalar_t>& out) {
  constexpr cudaDataType type = kDataType<scalar_t>;
  const scalar_t* vectors = basis;
  if (f.n > f.d) {
    if (data_type(f.dtype) != type) fail("svdprune", "leverage", "features must be in the compute dtype when D < N");
    scalar_t* projected = allocate<scalar_t>(ctx, f.batch * f.n * count);
    gemm(ctx, CUBLAS_OP_T, CUBLAS_OP_N, f.n, count, f.d, f.data, type, f.d, f.n * f.d, basis, type, f.d,
         f.d * count, projected, type, f.n, f.n * count, f.batch);
    double* coefficients = allocate<double>(ctx, f.batch * count);
    launch(left_basis_kernel<scalar_t>, static_cast<unsigned>(f.batch), kThreads, 0, ctx.stream, values, count,
           projected, f.n, energy_parts, kEnergyParts, info, variance, slack, resolvable, out.pivot_budget,
           coefficients);
    SVDPRUNE_CHECK_LAUNCH("left_basis_kernel");
    vectors = projected;
  }
  launch(rank_leverage_kernel<scalar_t>, static_cast<unsigned>(f.batch), kThreads, 0, ctx.stream, values, count,
         vectors, f.n, energy_parts, kEnergyParts, info, variance, slack, resolvable, out.scores, out.rank);
  SVDPRUNE_CHECK_LAUNCH("rank_leverage_kernel");
  if (out.pivot_budget == 0) return;

  // The rows of U_m go to shared memory where they fit (64 × 576 in float on sm_90), else to
  // global memory, where the block's working set stays in L2.
  const int64_t max_pivots = std::min(out.pivot_budget, count);
  const bool rows_in_shared =
      pivot_shared_bytes(f.n, max_pivots, sizeof(scalar_t), true) <= dynamic_shared_memory_limit();
  const size_t shared_bytes = pivot_shared_bytes(f.n, max_pivots, sizeof(scalar_t), rows_in_shared);
  scalar_t* workspace = rows_in_shared ? nullptr : allocate<scalar_t>(ctx, f.batch * max_pivots * f.n);
  allow_dynamic_shared_memory(reinterpret_cast<const void*>(pivot_kernel<scalar_t>), shared_bytes);
  launch(pivot_kernel<scalar_t>, static_cast<unsigned>(f.batch), kThreads, shared_bytes, ctx.stream, values, count,
         vectors, to_int(f.n, "pivot n"), energy_parts, kEnergyParts, info, slack, static_cast<int>(max_pivots),
         rows_in_shared, workspace, static_cast<const scalar_t*>(out.scores), out.pivot_scores);
  SVDPRUNE_CHECK_LAUNCH("pivot_kernel");
}

template <typename scalar_t>
void leverage_exact(const Context& ctx, const Features& f, scalar_t* g, const double* energy_parts, double variance,
                    double slack, const Outputs<scalar_t>& out) {
  const int64_t m = std::min(f.n, f.d);
  scalar_t* values = allocate<scalar_t>(ctx, f.batch * m);
  int* info = allocate<int>(ctx, f.batch);
  eigh_batched(ctx, m, f.batch, g, values, info);
  finish(ctx, f, values, m, m, g, info, energy_parts, variance, slack, out);
}

// Makes the columns of every rows×width matrix of `y` orthonormal in place (CholeskyQR with
// the Gram matrix and the factorisation in double precision; `passes` = 2 is CholeskyQR2,
// which restores orthogonality to working precision). Rank-deficient columns are refilled with
// fresh Gaussian columns for the power iteration `iteration` (see solve_rows_kernel), except in
// the last pass of the `final` basis, where they become zero.
template <typename scalar_t>
void orthonormalize(const Context& ctx, scalar_t* y, int64_t batch, int64_t rows, int64_t width, int passes,
                    bool final, uint32_t iteration, uint64_t seed, double* y_double, double* gram_double, int* keep) {
  const int w = static_cast<int>(width);
  const size_t shared_bytes = cholesky_shared_bytes(width);
  allow_dynamic_shared_memory(reinterpret_cast<const void*>(cholesky_kernel), shared_bytes);
  for (int pass = 0; pass < passes; ++pass) {
    const double* source = nullptr;
    if constexpr (std::is_same_v<scalar_t, double>) {
      source = y;
    } else {
      const int64_t count = batch * rows * width;
      launch(widen_kernel, blocks_for(count, kThreads), kThreads, 0, ctx.stream, static_cast<const float*>(y),
             y_double, count);
      SVDPRUNE_CHECK_LAUNCH("widen_kernel");
      source = y_double;
    }
    gemm(ctx, CUBLAS_OP_T, CUBLAS_OP_N, width, width, rows, source, CUDA_R_64F, rows, rows * width, source,
         CUDA_R_64F, rows, rows * width, gram_double, CUDA_R_64F, width, width * width, batch);
    launch(cholesky_kernel, static_cast<unsigned>(batch), kThreads, shared_bytes, ctx.stream, gram_double, w,
           kDropTolerance<scalar_t>, keep);
    SVDPRUNE_CHECK_LAUNCH("cholesky_kernel");
    constexpr int kRowsPerBlock = 128;
    const dim3 grid(static_cast<unsigned>(batch), static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock));
    const uint32_t refill_pass = final && pass == passes - 1 ? 0 : 2 * iteration + static_cast<uint32_t>(pass) + 1;
    launch(solve_rows_kernel<scalar_t, kMaxSketch>, grid, kRowsPerBlock, 0, ctx.stream, y,
           static_cast<const double*>(gram_double), static_cast<const int*>(keep), rows, w, refill_pass, seed);
    SVDPRUNE_CHECK_LAUNCH("solve_rows_kernel");
  }
}

template <typename scalar_t>
void leverage_randomized(const Context& ctx, const Features& f, const scalar_t* g, int64_t width, uint64_t seed,
                         const double* energy_parts, double variance, double slack, const Outputs<scalar_t>& out) {
  constexpr cudaDataType type = kDataType<scalar_t>;
  const int64_t m = std::min(f.n, f.d), batch = f.batch, block = m * width;
  scalar_t* omega = allocate<scalar_t>(ctx, block);
  launch(gaussian_kernel<scalar_t>, blocks_for(block, kThreads), kThreads, 0, ctx.stream, omega, block, seed);
  SVDPRUNE_CHECK_LAUNCH("gaussian_kernel");

  scalar_t* q = allocate<scalar_t>(ctx, batch * block);
  scalar_t* y = allocate<scalar_t>(ctx, batch * block);
  double* y_double = std::is_same_v<scalar_t, double> ? nullptr : allocate<double>(ctx, batch * block);
  double* gram_double = allocate<double>(ctx, batch * width * width);
  int* keep = allocate<int>(ctx, batch * width);
  auto apply_gram = [&](const scalar_t* x, int64_t stride_x, scalar_t* out) {
    gemm(ctx, CUBLAS_OP_N, CUBLAS_OP_N, m, width, m, g, type, m, m * m, x, type, m, stride_x, out, type, m, block,
         batch);
  };

  // The same sketch (batch stride 0) for every image, so an image's result does not depend
  // on its position in the batch. Orthogonality matters only for the final basis: the
  // intermediate ones need one CholeskyQR pass, the last one two.
  apply_gram(omega, 0, y);
  orthonormalize(ctx, y, batch, m, width, 1, false, 0, seed, y_double, gram_double, keep);
  std::swap(q, y);
  for (int iteration = 1; iteration <= kPowerIterations; ++iteration) {
    apply_gram(q, block, y);
    const bool final = iteration == kPowerIterations;
    orthonormalize(ctx, y, batch, m, width, final ? 2 : 1, final, iteration, seed, y_double, gram_double, keep);
    std::swap(q, y);
  }

  // Rayleigh–Ritz: eigenpairs (S, Ritz values) of C = Qᵀ G Q, then the Ritz vectors Q S.
  apply_gram(q, block, y);
  scalar_t* c = allocate<scalar_t>(ctx, batch * width * width);
  gemm(ctx, CUBLAS_OP_T, CUBLAS_OP_N, width, width, m, q, type, m, block, y, type, m, block, c, type, width,
       width * width, batch);
  scalar_t* ritz_values = allocate<scalar_t>(ctx, batch * width);
  int* info = allocate<int>(ctx, batch);
  eigh_batched(ctx, width, batch, c, ritz_values, info);
  gemm(ctx, CUBLAS_OP_N, CUBLAS_OP_N, m, width, width, q, type, m, block, c, type, width, width * width, y, type, m,
       block, batch);
  finish(ctx, f, ritz_values, width, width - kOversample, y, info, energy_parts, variance, slack, out);
}

// parts [batch, kEnergyParts] of `reduction` over each image of the features, whatever their dtype.
template <typename Reduction>
void reduce_parts(const Context& ctx, const Features& f, Reduction reduction, double* parts) {
  const dim3 grid(static_cast<unsigned>(f.batch), kEnergyParts);
  const int64_t elements = f.n * f.d;
  auto run = [&](auto* x) { launch(parts_kernel<std::remove_const_t<std::remove_pointer_t<decltype(x)>>, Reduction>,
                                   grid, kThreads, 0, ctx.stream, x, elements, reduction, parts); };
  switch (f.dtype) {
    case DType::Half: run(static_cast<const __half*>(f.data)); break;
    case DType::BFloat16: run(static_cast<const __nv_bfloat16*>(f.data)); break;
    case DType::Float: run(static_cast<const float*>(f.data)); break;
    case DType::Double: run(static_cast<const double*>(f.data)); break;
  }
  SVDPRUNE_CHECK_LAUNCH("parts_kernel");
}

template <typename scalar_t>
void leverage_typed(const Context& ctx, const Features& f, double variance, double slack, int64_t width,
                    uint64_t seed, const Outputs<scalar_t>& out) {
  double* energy_parts = allocate<double>(ctx, f.batch * kEnergyParts);
  const int64_t m = std::min(f.n, f.d);
  scalar_t* g = allocate<scalar_t>(ctx, f.batch * m * m);
  gram(ctx, f, g);
  if (f.dtype == DType::Half || f.dtype == DType::BFloat16) {
    // The Gram product of 16-bit features runs on tensor cores, whose float32 accumulation
    // truncates: trace(G), which G's eigenvalues sum to, falls short of ‖X‖_F² (by some 1e-5 of it
    // at D = 8192, the whole rank slack), and the cut would never reach variance 1. The cut is
    // measured against trace(G) instead, summed in double before the solver overwrites G.
    launch(trace_parts_kernel<scalar_t>, dim3(static_cast<unsigned>(f.batch), kEnergyParts), kThreads, 0, ctx.stream,
           static_cast<const scalar_t*>(g), m, energy_parts);
    SVDPRUNE_CHECK_LAUNCH("trace_parts_kernel");
  } else {
    reduce_parts(ctx, f, SquareSum{}, energy_parts);
  }
  if (width == 0) {
    leverage_exact(ctx, f, g, energy_parts, variance, slack, out);
  } else {
    leverage_randomized(ctx, f, g, width, seed, energy_parts, variance, slack, out);
  }
}

template <typename T>
void rescale_typed(const Context& ctx, const Features& f, int safe_exponent, T* out) {
  double* largest_parts = allocate<double>(ctx, f.batch * kEnergyParts);
  reduce_parts(ctx, f, LargestMagnitude{}, largest_parts);
  const dim3 grid(static_cast<unsigned>(f.batch), kEnergyParts);
  launch(rescale_kernel<T>, grid, kThreads, 0, ctx.stream, static_cast<const T*>(f.data), f.n * f.d,
         static_cast<const double*>(largest_parts), safe_exponent, out);
  SVDPRUNE_CHECK_LAUNCH("rescale_kernel");
}

}  // namespace

void rescale(const Context& ctx, const Features& features, int safe_exponent, void* out) {
  if (features.batch == 0) return;
  switch (features.dtype) {
    case DType::Half: fail("svdprune", "rescale", "float16 features need no rescaling");
    case DType::BFloat16: rescale_typed(ctx, features, safe_exponent, static_cast<__nv_bfloat16*>(out)); break;
    case DType::Float: rescale_typed(ctx, features, safe_exponent, static_cast<float*>(out)); break;
    case DType::Double: rescale_typed(ctx, features, safe_exponent, static_cast<double*>(out)); break;
  }
}

int64_t sketch_width(int64_t rank_bound) {
  const size_t shared_limit = shared_memory_limit();
  int64_t largest = kMaxSketch;
  while (largest > kInitialSketch && cholesky_shared_bytes(largest) > shared_limit) largest /= 2;
  const int64_t limit = std::min(rank_bound / 4, largest);
  int64_t width = std::min(kInitialSketch, limit);
  while (width > 0 && 2 * width <= limit) width *= 2;
  return width > kOversample ? width : 0;
}

void leverage(const Context& ctx, const Features& features, double variance, double slack, int64_t width,
              uint64_t seed, void* scores, int64_t* rank, int64_t pivot_budget, void* pivot_scores) {
  if (features.batch == 0) return;
  if (width < 0 || width > kMaxSketch || width > std::min(features.n, features.d)) {
    fail("svdprune", "leverage", "invalid sketch width " + std::to_string(width));
  }
  if (pivot_budget < 0 || pivot_budget > features.n || (pivot_budget > 0) != (pivot_scores != nullptr)) {
    fail("svdprune", "leverage", "invalid pivot budget " + std::to_string(pivot_budget));
  }
  if (features.dtype == DType::Double) {
    leverage_typed(ctx, features, variance, slack, width, seed,
                   Outputs<double>{static_cast<double*>(scores), rank, pivot_budget, static_cast<double*>(pivot_scores)});
  } else {
    leverage_typed(ctx, features, variance, slack, width, seed,
                   Outputs<float>{static_cast<float*>(scores), rank, pivot_budget, static_cast<float*>(pivot_scores)});
  }
}

}  // namespace svdprune::cuda
