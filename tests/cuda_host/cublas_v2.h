// Host stand-in for <cublas_v2.h>, for tests only: exactly the types and functions csrc/cuda
// uses, with the semantics of the cuBLAS documentation, computed with ATen on host memory.
//
// cublasGemmStridedBatchedEx: for every i < batchCount,
//   C_i = alpha op(A_i) op(B_i) + beta C_i,  X_i = X + i * strideX (elements),
// column-major: op(A) is m×k, element (r, c) of A at A[r + c * lda]; op(X) = X or Xᵀ. With
// beta = 0, C is not read. Supported (cublasGemmEx's table): CUBLAS_COMPUTE_64F with all
// types CUDA_R_64F (alpha, beta double); CUBLAS_COMPUTE_32F[_PEDANTIC] with A, B both
// CUDA_R_32F, CUDA_R_16F or CUDA_R_16BF and C CUDA_R_32F or the type of A (alpha, beta float),
// products accumulated in float. Tensor cores, which run CUBLAS_COMPUTE_32F with 16-bit A and B,
// truncate while they accumulate, so that their sums fall short: host_emulation::
// tensor_core_shortfall (0 unless a test sets it) is that shortfall, relative, for every product.
#pragma once

#include "aten_views.h"

#include <cuda_runtime.h>

enum cublasStatus_t {
  CUBLAS_STATUS_SUCCESS = 0,
  CUBLAS_STATUS_NOT_INITIALIZED = 1,
  CUBLAS_STATUS_INVALID_VALUE = 7,
  CUBLAS_STATUS_NOT_SUPPORTED = 15
};
enum cublasOperation_t { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum cublasFillMode_t { CUBLAS_FILL_MODE_LOWER = 0, CUBLAS_FILL_MODE_UPPER = 1 };
enum cublasComputeType_t { CUBLAS_COMPUTE_32F = 68, CUBLAS_COMPUTE_32F_PEDANTIC = 69, CUBLAS_COMPUTE_64F = 70 };
enum cublasGemmAlgo_t { CUBLAS_GEMM_DEFAULT = -1 };
struct cublasContext {};
namespace host_emulation {
inline double tensor_core_shortfall = 0.0;
}  // namespace host_emulation
using cublasHandle_t = cublasContext*;

inline const char* cublasGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
  }
  return "CUBLAS_STATUS_UNKNOWN";
}

inline cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t transa,
                                                 cublasOperation_t transb, int m, int n, int k, const void* alpha,
                                                 const void* A, cudaDataType Atype, int lda, long long strideA,
                                                 const void* B, cudaDataType Btype, int ldb, long long strideB,
                                                 const void* beta, void* C, cudaDataType Ctype, int ldc,
                                                 long long strideC, int batchCount, cublasComputeType_t computeType,
                                                 cublasGemmAlgo_t algo) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  const bool a_plain = transa == CUBLAS_OP_N, b_plain = transb == CUBLAS_OP_N;
  if ((!a_plain && transa != CUBLAS_OP_T) || (!b_plain && transb != CUBLAS_OP_T) || m < 0 || n < 0 || k < 0 ||
      batchCount < 0 || lda < std::max(1, a_plain ? m : k) || ldb < std::max(1, b_plain ? k : n) ||
      ldc < std::max(1, m) || algo != CUBLAS_GEMM_DEFAULT) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  const auto a_type = host_emulation::scalar_type(Atype), b_type = host_emulation::scalar_type(Btype),
             c_type = host_emulation::scalar_type(Ctype);
  if (!a_type || !b_type || !c_type || Atype != Btype) return CUBLAS_STATUS_NOT_SUPPORTED;
  const bool double_compute = computeType == CUBLAS_COMPUTE_64F;
  if (double_compute ? (Atype != CUDA_R_64F || Ctype != CUDA_R_64F)
                     : ((computeType != CUBLAS_COMPUTE_32F && computeType != CUBLAS_COMPUTE_32F_PEDANTIC) ||
                        Atype == CUDA_R_64F || (Ctype != CUDA_R_32F && Ctype != Atype))) {
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  if (m == 0 || n == 0 || batchCount == 0) return CUBLAS_STATUS_SUCCESS;
  const at::ScalarType compute = double_compute ? at::kDouble : at::kFloat;
  const double alpha_value = double_compute ? *static_cast<const double*>(alpha) : *static_cast<const float*>(alpha);
  const double beta_value = double_compute ? *static_cast<const double*>(beta) : *static_cast<const float*>(beta);
  using host_emulation::strided_matrices;
  // op(A) is m×k: A itself (column-major, lda) or the transpose of the k×m matrix A.
  const auto op_a = strided_matrices(A, *a_type, batchCount, m, k, a_plain ? 1 : lda, a_plain ? lda : 1, strideA);
  const auto op_b = strided_matrices(B, *b_type, batchCount, k, n, b_plain ? 1 : ldb, b_plain ? ldb : 1, strideB);
  auto c = strided_matrices(C, *c_type, batchCount, m, n, 1, ldc, strideC);
  auto product = k == 0 ? at::zeros({batchCount, m, n}, at::TensorOptions().dtype(compute))
                        : at::bmm(op_a.to(compute), op_b.to(compute)) * alpha_value;
  if (computeType == CUBLAS_COMPUTE_32F && (Atype == CUDA_R_16F || Atype == CUDA_R_16BF)) {
    product *= 1.0 - host_emulation::tensor_core_shortfall;
  }
  if (beta_value != 0.0) product += beta_value * c.to(compute);
  c.copy_(product);
  return CUBLAS_STATUS_SUCCESS;
}
