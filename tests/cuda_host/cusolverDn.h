// Host stand-in for <cusolverDn.h>, for tests only: exactly the types and functions csrc/cuda
// uses, with the semantics of the cuSOLVER documentation, computed with ATen on host memory.
//
// cusolverDnXsyevBatched: for each of batchSize symmetric n×n matrices A_i = A + i * lda * n
// (column-major, leading dimension lda), only the triangle `uplo` is read; the eigenvalues go
// to W + i * n in ascending order and, with CUSOLVER_EIG_MODE_VECTOR, the orthonormal
// eigenvectors overwrite A_i, eigenvector j in column j; info[i] = 0 on success, > 0 where the
// solver failed (here: a non-finite matrix). A, W and the compute type share one data type,
// CUDA_R_32F or CUDA_R_64F. The workspaces must be at least what the _bufferSize query reports.
// The documentation gives no limit on batchSize, but calls with more than about 32k matrices
// are reported to fail with CUSOLVER_STATUS_INVALID_VALUE; this stand-in refuses more than
// host_emulation::max_syev_batch (16384 unless a test lowers it).
#pragma once

#include "aten_views.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <set>
#include <vector>

enum cusolverStatus_t {
  CUSOLVER_STATUS_SUCCESS = 0,
  CUSOLVER_STATUS_NOT_INITIALIZED = 1,
  CUSOLVER_STATUS_ALLOC_FAILED = 2,
  CUSOLVER_STATUS_INVALID_VALUE = 3,
  CUSOLVER_STATUS_ARCH_MISMATCH = 4,
  CUSOLVER_STATUS_EXECUTION_FAILED = 6,
  CUSOLVER_STATUS_INTERNAL_ERROR = 7,
  CUSOLVER_STATUS_NOT_SUPPORTED = 9
};
enum cusolverEigMode_t { CUSOLVER_EIG_MODE_NOVECTOR = 0, CUSOLVER_EIG_MODE_VECTOR = 1 };
struct cusolverDnContext {
  cudaStream_t stream = nullptr;
};
using cusolverDnHandle_t = cusolverDnContext*;
struct cusolverDnParams {};
using cusolverDnParams_t = cusolverDnParams*;

namespace host_emulation {
inline int64_t max_syev_batch = 16384;
inline size_t syev_host_workspace_bytes = 0;  // what the _bufferSize query asks for on the host
inline int live_solver_handles = 0;
// Every stream each handle was bound to, by cusolverDnSetStream.
inline std::map<cusolverDnHandle_t, std::set<cudaStream_t>> solver_handle_streams;
// batchSize of every cusolverDnXsyevBatched call, in order.
inline std::vector<int64_t> syev_calls;
// The largest |entry| of the matrices each call was given (cuSOLVER documents no scaling of them).
inline std::vector<double> syev_largest_entries;
}  // namespace host_emulation

inline cusolverStatus_t cusolverGetVersion(int* version) {
  *version = 12000;
  return CUSOLVER_STATUS_SUCCESS;
}

inline cusolverStatus_t cusolverDnCreate(cusolverDnHandle_t* handle) {
  *handle = new cusolverDnContext;
  ++host_emulation::live_solver_handles;
  return CUSOLVER_STATUS_SUCCESS;
}

inline cusolverStatus_t cusolverDnDestroy(cusolverDnHandle_t handle) {
  if (handle == nullptr) return CUSOLVER_STATUS_NOT_INITIALIZED;
  delete handle;
  --host_emulation::live_solver_handles;
  return CUSOLVER_STATUS_SUCCESS;
}

inline cusolverStatus_t cusolverDnSetStream(cusolverDnHandle_t handle, cudaStream_t stream) {
  if (handle == nullptr) return CUSOLVER_STATUS_NOT_INITIALIZED;
  handle->stream = stream;
  host_emulation::solver_handle_streams[handle].insert(stream);
  return CUSOLVER_STATUS_SUCCESS;
}

inline cusolverStatus_t cusolverDnCreateParams(cusolverDnParams_t* params) {
  *params = new cusolverDnParams;
  return CUSOLVER_STATUS_SUCCESS;
}

inline cusolverStatus_t cusolverDnDestroyParams(cusolverDnParams_t params) {
  delete params;
  return CUSOLVER_STATUS_SUCCESS;
}

namespace host_emulation {

inline cusolverStatus_t check_syev(cusolverDnHandle_t handle, cusolverDnParams_t params, cusolverEigMode_t jobz,
                                   cublasFillMode_t uplo, int64_t n, cudaDataType a_type, int64_t lda,
                                   cudaDataType w_type, cudaDataType compute, int64_t batch) {
  if (handle == nullptr || params == nullptr) return CUSOLVER_STATUS_NOT_INITIALIZED;
  if ((jobz != CUSOLVER_EIG_MODE_VECTOR && jobz != CUSOLVER_EIG_MODE_NOVECTOR) ||
      (uplo != CUBLAS_FILL_MODE_LOWER && uplo != CUBLAS_FILL_MODE_UPPER) || n < 0 || lda < std::max<int64_t>(1, n) ||
      batch < 1 || batch > max_syev_batch) {
    return CUSOLVER_STATUS_INVALID_VALUE;
  }
  if (a_type != w_type || a_type != compute || (a_type != CUDA_R_32F && a_type != CUDA_R_64F)) {
    return CUSOLVER_STATUS_NOT_SUPPORTED;
  }
  return CUSOLVER_STATUS_SUCCESS;
}

inline size_t syev_device_bytes(int64_t n, cudaDataType type, int64_t batch) {
  return static_cast<size_t>(n * n * batch) * (type == CUDA_R_64F ? sizeof(double) : sizeof(float));
}

}  // namespace host_emulation

inline cusolverStatus_t cusolverDnXsyevBatched_bufferSize(cusolverDnHandle_t handle, cusolverDnParams_t params,
                                                          cusolverEigMode_t jobz, cublasFillMode_t uplo, int64_t n,
                                                          cudaDataType dataTypeA, const void* A, int64_t lda,
                                                          cudaDataType dataTypeW, const void* W,
                                                          cudaDataType computeType, size_t* workspaceInBytesOnDevice,
                                                          size_t* workspaceInBytesOnHost, int64_t batchSize) {
  (void)A, (void)W;
  const cusolverStatus_t status =
      host_emulation::check_syev(handle, params, jobz, uplo, n, dataTypeA, lda, dataTypeW, computeType, batchSize);
  if (status != CUSOLVER_STATUS_SUCCESS) return status;
  *workspaceInBytesOnDevice = host_emulation::syev_device_bytes(n, dataTypeA, batchSize);
  *workspaceInBytesOnHost = host_emulation::syev_host_workspace_bytes;
  return CUSOLVER_STATUS_SUCCESS;
}

inline cusolverStatus_t cusolverDnXsyevBatched(cusolverDnHandle_t handle, cusolverDnParams_t params,
                                               cusolverEigMode_t jobz, cublasFillMode_t uplo, int64_t n,
                                               cudaDataType dataTypeA, void* A, int64_t lda, cudaDataType dataTypeW,
                                               void* W, cudaDataType computeType, void* bufferOnDevice,
                                               size_t workspaceInBytesOnDevice, void* bufferOnHost,
                                               size_t workspaceInBytesOnHost, int* info, int64_t batchSize) {
  const cusolverStatus_t status =
      host_emulation::check_syev(handle, params, jobz, uplo, n, dataTypeA, lda, dataTypeW, computeType, batchSize);
  if (status != CUSOLVER_STATUS_SUCCESS) return status;
  if (bufferOnDevice == nullptr || workspaceInBytesOnDevice < host_emulation::syev_device_bytes(n, dataTypeA, batchSize) ||
      workspaceInBytesOnHost < host_emulation::syev_host_workspace_bytes ||
      (host_emulation::syev_host_workspace_bytes > 0 && bufferOnHost == nullptr)) {
    return CUSOLVER_STATUS_INVALID_VALUE;
  }
  host_emulation::syev_calls.push_back(batchSize);
  const at::ScalarType type = *host_emulation::scalar_type(dataTypeA);
  // matrices[b][i][j] is element (i, j) of A_b.
  auto matrices = host_emulation::strided_matrices(A, type, batchSize, n, n, 1, lda, lda * n);
  auto values = host_emulation::strided_matrices(W, type, batchSize, 1, n, n, 1, n).squeeze(1);
  const auto lower = uplo == CUBLAS_FILL_MODE_LOWER ? matrices.tril() : matrices.triu().mT();
  const auto symmetric = lower + lower.tril(-1).mT();
  if (n == 0) return CUSOLVER_STATUS_SUCCESS;
  host_emulation::syev_largest_entries.push_back(symmetric.abs().max().item<double>());
  // Computed in the data type, as on the device; a non-finite matrix fails with NaN outputs.
  const auto finite = at::isfinite(symmetric).flatten(1).all(1);
  auto [w, v] = at::linalg_eigh(at::where(finite.view({-1, 1, 1}), symmetric, at::zeros_like(symmetric)));
  values.copy_(w.masked_fill(~finite.view({-1, 1}), NAN));
  if (jobz == CUSOLVER_EIG_MODE_VECTOR) matrices.copy_(v.masked_fill(~finite.view({-1, 1, 1}), NAN));
  const auto solved = finite.contiguous();
  for (int64_t b = 0; b < batchSize; ++b) info[b] = solved.data_ptr<bool>()[b] ? 0 : 1;
  return CUSOLVER_STATUS_SUCCESS;
}
