// Rank cut and leverage scores from the eigenpairs of each image's Gram matrix, and the left
// singular vectors from X V when the Gram matrix is XᵀX; leverage.cu runs the eigensolvers and
// launches these. Like block.cuh, free of CUDA runtime calls.
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
// otherwise (the ops rescale every image first, see rescale, so only NaN/Inf input fails here).
// The CPU backend raises on NaN/Inf; here the image is marked invalid (rank 0, NaN scores),
// since raising would need a host synchronisation.
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

// Rank cut of one image, by a whole warp, from its `count` eigenvalues in ascending order: the
// smallest k whose k largest reach variance · (1 - slack) · `total` (‖X‖_F²), or `count` if they
// do not, or if k exceeds `resolvable` while every eigenvalue carries energy (rank = count reports
// an unresolved rank); 0 for an image of zero energy or one that is not `valid`. A sketch of
// `count` columns resolves only ranks with some columns to spare: its trailing Ritz values are
// the least converged, they run low, and a cut among them overshoots the exact rank. Unless the
// smallest Ritz value carries no energy (at most slack times the largest): then the sketch holds
// a direction outside X's range, so it spans all of it and its Ritz values are the eigenvalues.
template <typename scalar_t>
__device__ int64_t warp_rank(const scalar_t* values, int64_t count, double total, bool valid, double variance,
                             double slack, int64_t resolvable) {
  if (!valid || !(total > 0.0)) return 0;
  const int64_t first = first_reaching(values, count, variance * total * (1.0 - slack));
  const bool spans_the_range = static_cast<double>(values[0]) <= slack * static_cast<double>(values[count - 1]);
  return first < count && (first < resolvable || spans_the_range) ? first + 1 : count;
}

// What the first warp of an image's block works out before anything else, the same in every
// lane: ‖X‖_F², whether the image can be analysed at all (energy_fits, and the eigensolver
// succeeded) and its rank (warp_rank).
struct ImageCut {
  double total;
  bool valid;
  int64_t rank;
};

template <typename scalar_t>
__device__ ImageCut warp_image_cut(const scalar_t* values, int64_t count, const double* energy_parts,
                                   int energy_parts_per_image, const int* info, int64_t image, double variance,
                                   double slack, int64_t resolvable) {
  double total = threadIdx.x == 0 ? image_energy(energy_parts, energy_parts_per_image, image) : 0.0;
  total = __shfl_sync(kFullMask, total, 0);
  const bool valid = energy_fits<scalar_t>(total) && info[image] == 0;
  return {total, valid, warp_rank(values, count, total, valid, variance, slack, resolvable)};
}

// Left singular vectors of one image per block from `vectors` = X V (rows × count, column-major,
// one column per eigenvalue in ascending order, so the leading direction is the last column):
// the leading `columns` = max(rank, max_pivots) of them, from the largest eigenvalue down (rank as
// in rank_leverage_kernel), are replaced in place by orthonormal columns whose leading m span the
// leading m columns of X V, for every m. Leverage (the leading rank) and pivoting (the leading
// max_pivots) depend on nothing else. Dividing each column by its sigma instead would amplify the
// eigensolver's rounding of V towards directions of larger sigma_j by sigma_j / sigma_i, and at a
// deep cut (variance 0.999 over a long tail) the columns would not be orthonormal, nor the scores
// sum to the rank. Classical Gram–Schmidt applied twice per column, which restores orthogonality
// to working precision, with the products accumulated in double and the coefficients in
// `coefficients` [batch, count]; a triangular factor like this one keeps the spans nested, where
// a rotation of all the columns (an eigendecomposition of their Gram matrix) would not. Columns
// whose eigenvalue is at most slack times the largest carry no energy and become zero. Images of
// zero energy, or that fail energy_fits, or whose eigensolver failed are left as they are.
template <typename scalar_t>
__global__ void left_basis_kernel(const scalar_t* values, int64_t count, scalar_t* vectors, int64_t rows,
                                  const double* energy_parts, int energy_parts_per_image, const int* info,
                                  double variance, double slack, int64_t resolvable, int64_t max_pivots,
                                  double* coefficients) {
  const int64_t image = blockIdx.x;
  const scalar_t* image_values = values + image * count;
  scalar_t* image_vectors = vectors + image * rows * count;
  double* r = coefficients + image * count;
  __shared__ int64_t shared_columns, shared_kept;
  __shared__ double warp_sums[32];
  if (threadIdx.x < 32) {
    const ImageCut cut = warp_image_cut(image_values, count, energy_parts, energy_parts_per_image, info, image,
                                        variance, slack, resolvable);
    if (threadIdx.x == 0) {
      const int64_t wanted = cut.rank > max_pivots ? cut.rank : max_pivots;
      const int64_t columns = cut.valid && cut.total > 0.0 ? min64(wanted, count) : 0;
      const double floor = static_cast<double>(image_values[count - 1]) * slack;
      int64_t kept = 0;
      while (kept < columns && static_cast<double>(image_values[count - 1 - kept]) > floor) ++kept;
      shared_columns = columns;
      shared_kept = kept;
    }
  }
  __syncthreads();
  const int64_t columns = shared_columns, kept = shared_kept;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  auto column = [&](int64_t t) { return image_vectors + (count - 1 - t) * rows; };
  for (int64_t t = 0; t < kept; ++t) {
    scalar_t* a = column(t);
    for (int pass = 0; pass < 2; ++pass) {
      for (int64_t j = warp; j < t; j += warps) {  // r_j = q_jᵀ a, a warp per j
        const scalar_t* q = column(j);
        double dot = 0.0;
        for (int64_t i = lane; i < rows; i += 32) dot += static_cast<double>(q[i]) * static_cast<double>(a[i]);
        dot = warp_sum(dot);
        if (lane == 0) r[j] = dot;
      }
      __syncthreads();
      for (int64_t i = threadIdx.x; i < rows; i += blockDim.x) {  // a -= Σ_j r_j q_j
        double v = static_cast<double>(a[i]);
        for (int64_t j = 0; j < t; ++j) v -= r[j] * static_cast<double>(column(j)[i]);
        a[i] = static_cast<scalar_t>(v);
      }
      __syncthreads();
    }
    double sum = 0.0;
    for (int64_t i = threadIdx.x; i < rows; i += blockDim.x) sum += static_cast<double>(a[i]) * static_cast<double>(a[i]);
    sum = warp_sum(sum);
    if (lane == 0) warp_sums[warp] = sum;
    __syncthreads();
    double norm2 = 0.0;
    for (int w = 0; w < warps; ++w) norm2 += warp_sums[w];
    const double scale = norm2 > 0.0 ? 1.0 / sqrt(norm2) : 0.0;
    for (int64_t i = threadIdx.x; i < rows; i += blockDim.x) a[i] = static_cast<scalar_t>(static_cast<double>(a[i]) * scale);
    __syncthreads();
  }
  for (int64_t t = kept; t < columns; ++t) {
    for (int64_t i = threadIdx.x; i < rows; i += blockDim.x) column(t)[i] = scalar_t(0);
  }
}

// Rank cut (warp_rank) and leverage scores of one image per block, from `count` eigenpairs in
// ascending order (`vectors`: rows × count, column-major, orthonormal left singular vectors):
// the score of row j is the sum over the rank's leading columns of vector[j]². An image whose
// energy is zero gets rank 0 and zero scores; one that fails energy_fits (NaN/Inf input, or too
// large for the compute dtype) or whose eigensolver reported an error gets rank 0 and NaN scores.
template <typename scalar_t>
__global__ void rank_leverage_kernel(const scalar_t* values, int64_t count, const scalar_t* vectors, int64_t rows,
                                     const double* energy_parts, int energy_parts_per_image, const int* info,
                                     double variance, double slack, int64_t resolvable, scalar_t* scores,
                                     int64_t* rank) {
  const int64_t image = blockIdx.x;
  const scalar_t* image_values = values + image * count;
  const scalar_t* image_vectors = vectors + image * rows * count;
  __shared__ int64_t shared_rank;
  __shared__ bool shared_valid;
  if (threadIdx.x < 32) {
    const ImageCut cut = warp_image_cut(image_values, count, energy_parts, energy_parts_per_image, info, image,
                                        variance, slack, resolvable);
    if (threadIdx.x == 0) {
      shared_rank = cut.rank;
      shared_valid = cut.valid;
    }
  }
  __syncthreads();
  const int64_t k = shared_rank;
  for (int64_t j = threadIdx.x; j < rows; j += blockDim.x) {
    double score = 0.0;
    for (int64_t t = 0; t < k; ++t) {
      const double v = static_cast<double>(image_vectors[j + (count - 1 - t) * rows]);
      score += v * v;
    }
    scores[image * rows + j] = shared_valid ? static_cast<scalar_t>(score) : static_cast<scalar_t>(NAN);
  }
  if (threadIdx.x == 0) rank[image] = k;
}

}  // namespace svdprune::cuda
