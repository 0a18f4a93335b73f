// Rank cut and leverage scores from the eigenpairs of each image's Gram matrix; leverage.cu
// runs the eigensolvers and launches these. Like block.cuh, free of CUDA runtime calls.
#pragma once

#include "block.cuh"

#include <cfloat>
#include <cmath>
#include <cstdint>

namespace svdprune::cuda {

// ‖X‖_F² of `image` from its `parts` partial sums, added in a fixed order (one thread).
__device__ inline double image_energy(const double* energy_parts, int parts, int64_t image) {
  double total = 0.0;
  for (int p = 0; p < parts; ++p) total += energy_parts[image * parts + p];
  return total;
}

// Whether an image with ‖X‖_F² = `total` can be analysed in scalar_t: the total is finite (no
// NaN/Inf in the features) and fits the compute dtype, whose Gram matrix would overflow
// otherwise. The CPU backend raises on such an image; here it is marked invalid (rank 0, NaN
// scores), since raising would need a host synchronisation.
template <typename scalar_t>
__device__ inline bool energy_fits(double total) {
  return isfinite(total) && total <= (sizeof(scalar_t) == sizeof(double) ? DBL_MAX : static_cast<double>(FLT_MAX));
}

// Position, counted from the largest of the `count` ascending `values`, at which the running
// sum of max(value, 0) first reaches `threshold`; `count` if it never does. NaN propagates
// through the sum as in the CPU backend. Called by a whole warp; each lane scans a contiguous
// segment after an exclusive scan of the segment sums.
template <typename scalar_t>
__device__ int64_t first_reaching(const scalar_t* values, int64_t count, double threshold) {
  const int lane = threadIdx.x & 31;
  const int64_t per_lane = (count + 31) / 32;
  const int64_t begin = min64(count, lane * per_lane);
  const int64_t end = min64(count, begin + per_lane);
  auto clamped = [&](int64_t position) {
    const double v = static_cast<double>(values[count - 1 - position]);
    return v < 0.0 ? 0.0 : v;
  };
  double segment = 0.0;
  for (int64_t t = begin; t < end; ++t) segment += clamped(t);
  double running = warp_exclusive_sum(segment);
  long long first = count;
  for (int64_t t = begin; t < end; ++t) {
    running += clamped(t);
    if (running >= threshold) {
      first = t;
      break;
    }
  }
  for (int offset = 16; offset > 0; offset >>= 1) {
    const long long other = __shfl_xor_sync(kFullMask, first, offset);
    first = other < first ? other : first;
  }
  return first;
}

// Rank cut and leverage scores of one image per block, from `count` eigenpairs in ascending
// order (`vectors`: rows × count, column-major). The rank is the smallest k whose k largest
// eigenvalues reach variance · (1 - slack) · ‖X‖_F², or `count` if they do not or if k exceeds
// `resolvable` (a sketch of `count` columns only resolves ranks with some columns to spare, so
// rank = count reports an unresolved rank); the score of
// row j is the sum over those k columns of vector[j]², divided by the eigenvalue when the
// vectors are X V (then columns with an eigenvalue at most slack times the largest carry no
// energy and are skipped, as on the CPU). An image whose energy is zero gets rank 0 and zero
// scores; one that fails energy_fits (NaN/Inf input, or too large for the compute dtype) or whose
// eigensolver reported an error gets rank 0 and NaN scores.
template <typename scalar_t>
__global__ void rank_leverage_kernel(const scalar_t* values, int64_t count, const scalar_t* vectors, int64_t rows,
                                     const double* energy_parts, int energy_parts_per_image, const int* info,
                                     double variance, double slack, int64_t resolvable, bool divide_by_value,
                                     scalar_t* scores, int64_t* rank) {
  const int64_t image = blockIdx.x;
  const scalar_t* image_values = values + image * count;
  const scalar_t* image_vectors = vectors + image * rows * count;
  __shared__ int64_t shared_rank;
  __shared__ bool shared_valid;
  __shared__ double shared_floor;
  if (threadIdx.x < 32) {
    double total = threadIdx.x == 0 ? image_energy(energy_parts, energy_parts_per_image, image) : 0.0;
    total = __shfl_sync(kFullMask, total, 0);
    const bool valid = energy_fits<scalar_t>(total) && info[image] == 0;
    int64_t k = 0;
    if (valid && total > 0.0) {
      const int64_t first = first_reaching(image_values, count, variance * total * (1.0 - slack));
      k = first < count && first < resolvable ? first + 1 : count;
    }
    if (threadIdx.x == 0) {
      shared_rank = k;
      shared_valid = valid;
      shared_floor = static_cast<double>(image_values[count - 1]) * slack;
    }
  }
  __syncthreads();
  const int64_t k = shared_rank;
  for (int64_t j = threadIdx.x; j < rows; j += blockDim.x) {
    double score = 0.0;
    for (int64_t t = 0; t < k; ++t) {
      const int64_t column = count - 1 - t;
      const double v = static_cast<double>(image_vectors[j + column * rows]);
      if (!divide_by_value) {
        score += v * v;
      } else {
        const double value = static_cast<double>(image_values[column]);
        if (value > shared_floor) score += v * v / value;
      }
    }
    scores[image * rows + j] = shared_valid ? static_cast<scalar_t>(score) : static_cast<scalar_t>(NAN);
  }
  if (threadIdx.x == 0) rank[image] = k;
}

}  // namespace svdprune::cuda
