// Kernels of the randomized range finder: the Gaussian sketch (Philox4x32-10) and the two
// halves of a CholeskyQR pass (Cholesky factorisation of each Gram matrix, then Y L⁻ᵀ);
// leverage.cu launches them around its cuBLAS products. Like block.cuh, free of CUDA runtime
// calls.
#pragma once

#include "block.cuh"

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace svdprune::cuda {

// Philox4x32-10 (Salmon et al., SC'11): a counter-based generator, so every entry of the
// sketch is a pure function of (seed, position) and the sketch is the same for every image,
// every batch size and every launch configuration.
__device__ inline uint4 philox4x32_10(uint4 counter, uint2 key) {
  constexpr uint32_t kMultiplier0 = 0xD2511F53u, kMultiplier1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      key.x += kWeyl0;
      key.y += kWeyl1;
    }
    const uint32_t high0 = __umulhi(kMultiplier0, counter.x), low0 = kMultiplier0 * counter.x;
    const uint32_t high1 = __umulhi(kMultiplier1, counter.z), low1 = kMultiplier1 * counter.z;
    counter = make_uint4(high1 ^ counter.y ^ key.x, low1, high0 ^ counter.w ^ key.y, low0);
  }
  return counter;
}

// A standard normal number (Box–Muller on two 32-bit uniforms in (0, 1)) for `counter`, in
// double precision so that --use_fast_math does not change it.
__device__ inline double standard_normal(uint4 counter, uint64_t seed) {
  const uint4 bits = philox4x32_10(counter, make_uint2(static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)));
  constexpr double kTwoToMinus32 = 2.3283064365386963e-10;
  const double u1 = (static_cast<double>(bits.x) + 0.5) * kTwoToMinus32;
  const double u2 = (static_cast<double>(bits.y) + 0.5) * kTwoToMinus32;
  return sqrt(-2.0 * log(u1)) * cospi(2.0 * u2);
}

// out[i] = standard normal entry i of the sketch for `seed`.
template <typename scalar_t>
__global__ void gaussian_kernel(scalar_t* out, int64_t count, uint64_t seed) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = static_cast<scalar_t>(
        standard_normal(make_uint4(static_cast<uint32_t>(i), static_cast<uint32_t>(i >> 32), 0u, 0u), seed));
  }
}

// out = in, widened to double.
static __global__ void widen_kernel(const float* in, double* out, int64_t count) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = in[i];
  }
}

// Shared memory of cholesky_kernel: the lower triangle of a width×width double matrix,
// packed by columns, its original diagonal and the kept flags.
inline size_t cholesky_shared_bytes(int64_t width) {
  return static_cast<size_t>(width * (width + 1) / 2) * sizeof(double) + width * (sizeof(double) + sizeof(int));
}

// Relative pivot at or below which cholesky_kernel drops a column of columns stored in
// scalar_t, i.e. treats it as in the span of the previous ones. The pivots come from a Gram
// matrix formed in double, whose rounding leaves an exactly dependent column a pivot of up to
// about width · 1e-16 of its squared norm; float columns, rounded to 6e-8 of their norm, leave
// about 1e-14. A smaller tolerance keeps such columns, and 1/sqrt(pivot) then blows their
// rounding noise up into a unit column that is not orthogonal to the others. Dropped: relative
// residuals below 1e-6 (double) and 1e-5 (float), far below what the rank cut can see.
template <typename scalar_t>
constexpr double kDropTolerance = std::is_same_v<scalar_t, double> ? 1e-12 : 1e-10;

// Offset of element (i, j), i >= j, of the column-packed lower triangle of a width×width matrix.
__device__ inline int packed(int i, int j, int width) { return j * width - j * (j - 1) / 2 + (i - j); }

// In-place Cholesky factorisation S = L Lᵀ of each width×width Gram matrix (column-major,
// lower triangle read and overwritten by L), in double precision, one block per matrix. A
// column whose remaining pivot is at most `tolerance` times its original diagonal is
// numerically in the span of the previous ones (a rank-deficient image, or a zero column of
// an earlier pass): it is dropped, i.e. its column of L is zero and keep[column] = 0. NaN
// pivots are dropped the same way, so the kernel always finishes.
static __global__ void cholesky_kernel(double* gram, int width, double tolerance, int* keep) {
  double* a = dynamic_shared_memory();
  double* original_diagonal = a + width * (width + 1) / 2;
  int* kept = reinterpret_cast<int*>(original_diagonal + width);
  double* matrix = gram + static_cast<int64_t>(blockIdx.x) * width * width;
  for (int j = 0; j < width; ++j) {
    for (int i = j + threadIdx.x; i < width; i += blockDim.x) a[packed(i, j, width)] = matrix[i + j * width];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < width; i += blockDim.x) original_diagonal[i] = a[packed(i, i, width)];
  __syncthreads();
  for (int k = 0; k < width; ++k) {
    if (threadIdx.x == 0) {
      const double pivot = a[packed(k, k, width)];
      kept[k] = pivot > tolerance * original_diagonal[k];
      a[packed(k, k, width)] = kept[k] ? sqrt(pivot) : 0.0;
    }
    __syncthreads();
    const double diagonal = a[packed(k, k, width)];
    for (int i = k + 1 + threadIdx.x; i < width; i += blockDim.x) {
      a[packed(i, k, width)] = kept[k] ? a[packed(i, k, width)] / diagonal : 0.0;
    }
    __syncthreads();
    const int rest = width - k - 1;
    for (int e = threadIdx.x; e < rest * rest; e += blockDim.x) {
      const int i = k + 1 + e % rest, j = k + 1 + e / rest;
      if (j <= i) a[packed(i, j, width)] -= a[packed(i, k, width)] * a[packed(j, k, width)];
    }
    __syncthreads();
  }
  for (int j = 0; j < width; ++j) {
    for (int i = j + threadIdx.x; i < width; i += blockDim.x) matrix[i + j * width] = a[packed(i, j, width)];
  }
  for (int i = threadIdx.x; i < width; i += blockDim.x) keep[static_cast<int64_t>(blockIdx.x) * width + i] = kept[i];
}

// Y ← Y L⁻ᵀ row by row (forward substitution in double), so that Y = Q Lᵀ with Q having
// orthonormal columns. A dropped column becomes zero or, with refill_pass > 0, a fresh Gaussian
// column (entry (row, column) from the counter (row, column, refill_pass, 1), the same for every
// image), so that the sketch keeps its width: a zero column would stay zero through every later
// power iteration. The next CholeskyQR pass orthonormalises the refilled columns. All threads of
// a warp read the same element of L at a time, so L is read from global memory (cached)
// whatever the width, which is at most max_width.
template <typename scalar_t, int max_width>
__global__ void solve_rows_kernel(scalar_t* y, const double* cholesky, const int* keep, int64_t rows, int width,
                                  uint32_t refill_pass, uint64_t seed) {
  const int64_t row = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (row >= rows) return;
  const double* l = cholesky + static_cast<int64_t>(blockIdx.x) * width * width;
  const int* kept = keep + static_cast<int64_t>(blockIdx.x) * width;
  scalar_t* image = y + static_cast<int64_t>(blockIdx.x) * rows * width;
  double q[max_width];
  for (int i = 0; i < width; ++i) {
    double v = 0.0;
    if (kept[i]) {
      v = static_cast<double>(image[row + i * rows]);
      for (int j = 0; j < i; ++j) v -= q[j] * l[i + j * width];
      v /= l[i + i * width];
    }
    q[i] = v;
  }
  for (int i = 0; i < width; ++i) {
    const bool refill = !kept[i] && refill_pass > 0;
    const double v =
        refill ? standard_normal(make_uint4(static_cast<uint32_t>(row), static_cast<uint32_t>(i), refill_pass, 1u), seed)
               : q[i];
    image[row + i * rows] = static_cast<scalar_t>(v);
  }
}

}  // namespace svdprune::cuda
