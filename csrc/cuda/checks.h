// Status checks for the CUDA runtime, cuBLAS and cuSOLVER. Failures throw std::runtime_error,
// which the dispatcher turns into a Python RuntimeError naming the call that failed.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>

namespace svdprune::cuda {

inline const char* cusolver_status_name(cusolverStatus_t status) {
  switch (status) {
    case CUSOLVER_STATUS_SUCCESS: return "CUSOLVER_STATUS_SUCCESS";
    case CUSOLVER_STATUS_NOT_INITIALIZED: return "CUSOLVER_STATUS_NOT_INITIALIZED";
    case CUSOLVER_STATUS_ALLOC_FAILED: return "CUSOLVER_STATUS_ALLOC_FAILED";
    case CUSOLVER_STATUS_INVALID_VALUE: return "CUSOLVER_STATUS_INVALID_VALUE";
    case CUSOLVER_STATUS_ARCH_MISMATCH: return "CUSOLVER_STATUS_ARCH_MISMATCH";
    case CUSOLVER_STATUS_EXECUTION_FAILED: return "CUSOLVER_STATUS_EXECUTION_FAILED";
    case CUSOLVER_STATUS_INTERNAL_ERROR: return "CUSOLVER_STATUS_INTERNAL_ERROR";
    case CUSOLVER_STATUS_NOT_SUPPORTED: return "CUSOLVER_STATUS_NOT_SUPPORTED";
    default: return "unknown cuSOLVER status";
  }
}

[[noreturn]] inline void fail(const std::string& library, const std::string& call, const std::string& status) {
  throw std::runtime_error("svdprune: " + library + " call " + call + " failed: " + status);
}

inline void check_cuda(cudaError_t status, const char* call) {
  if (status != cudaSuccess) fail("CUDA", call, cudaGetErrorString(status));
}

inline void check_cublas(cublasStatus_t status, const char* call) {
  if (status != CUBLAS_STATUS_SUCCESS) fail("cuBLAS", call, cublasGetStatusString(status));
}

inline void check_cusolver(cusolverStatus_t status, const char* call) {
  if (status != CUSOLVER_STATUS_SUCCESS) fail("cuSOLVER", call, cusolver_status_name(status));
}

// Whether `stream` is being captured into a CUDA graph.
inline bool capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  check_cuda(cudaStreamIsCapturing(stream, &status), "cudaStreamIsCapturing");
  return status != cudaStreamCaptureStatusNone;
}

// Shared memory one block may opt into on the current device.
inline size_t shared_memory_limit() {
  int device = 0, limit = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
             "cudaDeviceGetAttribute(MaxSharedMemoryPerBlockOptin)");
  return static_cast<size_t>(limit);
}

// Dynamic shared memory a launch may ask for on the current device, leaving room for the few
// bytes of static shared memory the pivot and selection kernels declare.
inline size_t dynamic_shared_memory_limit() { return shared_memory_limit() - 1024; }

// Lets `kernel` use `bytes` of dynamic shared memory on the current device (past the 48 KiB a
// launch may use by default). The attribute is set once per kernel, device and size, so that
// calls made while a CUDA graph is being captured only launch kernels.
inline void allow_dynamic_shared_memory(const void* kernel, size_t bytes) {
  constexpr size_t kDefaultBytes = 48 * 1024;
  if (bytes <= kDefaultBytes) return;
  int device = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  static std::mutex mutex;
  static std::map<std::pair<const void*, int>, size_t> allowed;
  const std::lock_guard<std::mutex> lock(mutex);
  size_t& current = allowed[{kernel, device}];
  if (bytes <= current) return;
  check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)),
             "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
  current = bytes;
}

}  // namespace svdprune::cuda

#define SVDPRUNE_CUDA_CHECK(expr) ::svdprune::cuda::check_cuda((expr), #expr)
#define SVDPRUNE_CUBLAS_CHECK(expr) ::svdprune::cuda::check_cublas((expr), #expr)
#define SVDPRUNE_CUSOLVER_CHECK(expr) ::svdprune::cuda::check_cusolver((expr), #expr)
// Launch configuration errors are reported by cudaGetLastError, which does not synchronise.
#define SVDPRUNE_CHECK_LAUNCH(name) ::svdprune::cuda::check_cuda(cudaGetLastError(), name)
