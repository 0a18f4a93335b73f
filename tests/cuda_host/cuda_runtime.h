// Host stand-in for <cuda_runtime.h>, for tests only: the kernel emulation (emulation.h) and
// exactly the CUDA runtime types and functions that csrc/cuda uses, with the documented
// semantics, on one emulated device of compute capability 9.0 (H100 shared-memory limits).
#pragma once

#include "emulation.h"

#include <algorithm>
#include <cfloat>
#include <cstddef>
#include <map>

enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorInvalidConfiguration = 9 };
enum cudaDeviceAttr { cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaStreamCaptureStatus {
  cudaStreamCaptureStatusNone = 0,
  cudaStreamCaptureStatusActive = 1,
  cudaStreamCaptureStatusInvalidated = 2
};
enum cudaDataType { CUDA_R_32F = 0, CUDA_R_64F = 1, CUDA_R_16F = 2, CUDA_R_16BF = 14 };
using cudaDataType_t = cudaDataType;
struct CUstream_st;
using cudaStream_t = CUstream_st*;

namespace host_emulation {
// 227 KiB, compute capability 9.0; tests lower it to see the device-dependent limits.
inline int shared_memory_per_block_optin = 232448;
constexpr size_t kDefaultDynamicSharedBytes = 48 * 1024;
inline cudaError_t last_error = cudaSuccess;
inline std::map<const void*, int> dynamic_shared_allowed;  // per kernel, from cudaFuncSetAttribute
// Streams the test marks as being captured into a CUDA graph (cudaStreamIsCapturing reports it).
inline std::map<cudaStream_t, bool> capturing;
}  // namespace host_emulation

inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int device) {
  if (device != 0 || attribute != cudaDevAttrMaxSharedMemoryPerBlockOptin) return cudaErrorInvalidValue;
  *value = host_emulation::shared_memory_per_block_optin;
  return cudaSuccess;
}

inline cudaError_t cudaFuncSetAttribute(const void* kernel, cudaFuncAttribute attribute, int value) {
  if (attribute != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
      value > host_emulation::shared_memory_per_block_optin) {
    return cudaErrorInvalidValue;
  }
  host_emulation::dynamic_shared_allowed[kernel] = value;
  return cudaSuccess;
}

// Returns and resets the error of the last launch.
inline cudaError_t cudaGetLastError() {
  const cudaError_t error = host_emulation::last_error;
  host_emulation::last_error = cudaSuccess;
  return error;
}

inline const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
  }
  return "unrecognized error code";
}

inline cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* status) {
  const auto marked = host_emulation::capturing.find(stream);
  *status = marked != host_emulation::capturing.end() && marked->second ? cudaStreamCaptureStatusActive
                                                                          : cudaStreamCaptureStatusNone;
  return cudaSuccess;
}

namespace host_emulation {

// kernel<<<grid, block, shared_bytes, stream>>>(args...): a launch the device would refuse
// (block beyond 1024 threads, an empty grid, more dynamic shared memory than the kernel was
// allowed) runs nothing and leaves the error for cudaGetLastError.
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, Args... args) {
  const auto allowed = dynamic_shared_allowed.find(reinterpret_cast<const void*>(kernel));
  const size_t shared_limit =
      allowed == dynamic_shared_allowed.end() ? kDefaultDynamicSharedBytes : static_cast<size_t>(allowed->second);
  if (block.x == 0 || block.x > 1024 || block.y != 1 || block.z != 1 || grid.x == 0 || grid.y == 0 ||
      grid.y > 65535 || grid.z != 1) {
    last_error = cudaErrorInvalidConfiguration;
  } else if (shared_bytes > shared_limit) {
    last_error = cudaErrorInvalidValue;
  } else {
    run_grid(grid, block, shared_bytes, [&] { kernel(static_cast<Params>(args)...); });
  }
}

}  // namespace host_emulation
