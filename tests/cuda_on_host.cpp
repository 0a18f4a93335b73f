// The CUDA backend (csrc/cuda/ops_impl.h over leverage.cu and select.cu) on host memory: the
// kernels run in the emulation of tests/cuda_host/emulation.h, the cuBLAS and cuSOLVER calls in
// the stand-ins of tests/cuda_host. tests/cuda_on_host.py builds this extension and wraps it;
// the stand-ins are exposed as well, for their own tests.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include "ops_impl.h"

#include <torch/extension.h>

#include <cstring>
#include <string>
#include <utility>

namespace {

using svdprune::cuda::Buffers;
using svdprune::cuda::Context;

// Lowered by tests to run small batches through several eigensolver calls.
int64_t max_solver_batch = svdprune::cuda::kMaxSolverBatch;

// The stream a thread's calls name (the default stream unless a test sets another). The
// emulation runs every launch at once, in order, whatever the stream; the name reaches the
// library handles, whose binding the stand-ins record.
thread_local cudaStream_t current_stream = nullptr;

Context host_context(Buffers& buffers) {
  static cublasContext blas;
  Context ctx{current_stream, &blas, [&buffers](size_t bytes) { return buffers.allocate(bytes); }};
  ctx.max_solver_batch = max_solver_batch;
  return ctx;
}

at::Tensor on_host(const at::Tensor& features) {
  const auto x = svdprune::batched_features(features);
  TORCH_CHECK(x.device().is_cpu(), "svdprune: features must be a CPU tensor for the CUDA backend on the host");
  return x;
}

void* address(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

cudaDataType data_type(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf: return CUDA_R_16F;
    case at::kBFloat16: return CUDA_R_16BF;
    case at::kFloat: return CUDA_R_32F;
    default: return CUDA_R_64F;
  }
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("leverage", [](const at::Tensor& features, double variance, const std::string& method, bool center,
                       int64_t seed) {
    return svdprune::cuda::leverage_op(features, on_host(features), variance, method, center, seed, host_context);
  });
  m.def("select", [](const at::Tensor& features, int64_t budget, double variance, const std::string& method,
                     bool center, int64_t seed, const std::string& strategy) {
    return svdprune::cuda::select_op(features, on_host(features), budget, variance, method, center, seed, strategy,
                                     host_context);
  });
  m.def("select_adaptive", [](const at::Tensor& features, double variance, int64_t min_tokens, int64_t max_tokens,
                              const std::string& method, bool center, int64_t seed) {
    return svdprune::cuda::select_adaptive_op(features, on_host(features), variance, min_tokens, max_tokens, method,
                                              center, seed, host_context);
  });

  // The stand-ins, called on flat host tensors, for their own tests.
  m.def("gemm_strided_batched", [](bool transa, bool transb, int m_, int n, int k, double alpha, const at::Tensor& a,
                                   int lda, int64_t stride_a, const at::Tensor& b, int ldb, int64_t stride_b,
                                   double beta, const at::Tensor& c, int ldc, int64_t stride_c, int batch,
                                   int compute) {
    cublasContext handle;
    const float alpha_float = static_cast<float>(alpha), beta_float = static_cast<float>(beta);
    const bool double_compute = compute == CUBLAS_COMPUTE_64F;
    return static_cast<int>(cublasGemmStridedBatchedEx(
        &handle, transa ? CUBLAS_OP_T : CUBLAS_OP_N, transb ? CUBLAS_OP_T : CUBLAS_OP_N, m_, n, k,
        double_compute ? static_cast<const void*>(&alpha) : &alpha_float, address(a), data_type(a), lda, stride_a,
        address(b), data_type(b), ldb, stride_b, double_compute ? static_cast<const void*>(&beta) : &beta_float,
        address(c), data_type(c), ldc, stride_c, batch, static_cast<cublasComputeType_t>(compute),
        CUBLAS_GEMM_DEFAULT));
  });
  m.def("syev_batched", [](const at::Tensor& a, int64_t n, int64_t lda, const at::Tensor& w, const at::Tensor& info,
                           bool lower, int64_t batch) {
    cusolverDnHandle_t handle;
    cusolverDnParams_t params;
    cusolverDnCreate(&handle);
    cusolverDnCreateParams(&params);
    const auto uplo = lower ? CUBLAS_FILL_MODE_LOWER : CUBLAS_FILL_MODE_UPPER;
    size_t device_bytes = 0, host_bytes = 0;
    auto status = cusolverDnXsyevBatched_bufferSize(handle, params, CUSOLVER_EIG_MODE_VECTOR, uplo, n, data_type(a),
                                                    address(a), lda, data_type(w), address(w), data_type(a),
                                                    &device_bytes, &host_bytes, batch);
    if (status == CUSOLVER_STATUS_SUCCESS) {
      std::vector<char> device(device_bytes + 1), host(host_bytes + 1);
      status = cusolverDnXsyevBatched(handle, params, CUSOLVER_EIG_MODE_VECTOR, uplo, n, data_type(a), address(a),
                                      lda, data_type(w), address(w), data_type(a), device.data(), device_bytes,
                                      host.data(), host_bytes, info.data_ptr<int>(), batch);
    }
    cusolverDnDestroyParams(params);
    cusolverDnDestroy(handle);
    return static_cast<int>(status);
  });
  m.def("half_to_float", [](int bits) { return __half2float(__half{static_cast<uint16_t>(bits)}); });
  m.def("bfloat16_to_float", [](int bits) { return __bfloat162float(__nv_bfloat16{static_cast<uint16_t>(bits)}); });
  m.def("float_to_bfloat16", [](int64_t bits) {
    const auto word = static_cast<uint32_t>(bits);
    float value;
    std::memcpy(&value, &word, sizeof value);
    return __float2bfloat16_rn(value).bits;
  });
  m.attr("max_captured_eigen_size") = svdprune::cuda::kMaxCapturedEigenSize;
  // Settings of the backend and of the stand-ins, for tests.
  m.def("set_max_solver_batch", [](int64_t limit) { max_solver_batch = limit; });
  m.def("set_shared_memory_per_block",  // returns the previous limit
        [](int bytes) { return std::exchange(host_emulation::shared_memory_per_block_optin, bytes); });
  m.def("set_max_syev_batch", [](int64_t limit) { host_emulation::max_syev_batch = limit; });
  m.def("set_syev_host_workspace_bytes", [](size_t bytes) { host_emulation::syev_host_workspace_bytes = bytes; });
  m.def("set_stream",  // names the calling thread's stream: 0 is the default stream
        [](int64_t stream) { current_stream = reinterpret_cast<cudaStream_t>(static_cast<intptr_t>(stream)); });
  m.def("set_capturing", [](bool capturing) { host_emulation::capturing[current_stream] = capturing; });
  m.def("solver_handle_streams", [] {  // the streams each handle was bound to, as their numbers
    std::vector<std::vector<int64_t>> streams;
    for (const auto& [handle, bound] : host_emulation::solver_handle_streams) {
      auto& numbers = streams.emplace_back();
      for (const cudaStream_t stream : bound) numbers.push_back(reinterpret_cast<intptr_t>(stream));
    }
    return streams;
  });
  m.def("set_tensor_core_shortfall",  // returns the previous shortfall
        [](double shortfall) { return std::exchange(host_emulation::tensor_core_shortfall, shortfall); });
  m.def("live_solver_handles", [] { return host_emulation::live_solver_handles; });
  m.def("syev_calls", [] { return std::exchange(host_emulation::syev_calls, {}); });
  m.def("syev_largest_entries", [] { return std::exchange(host_emulation::syev_largest_entries, {}); });
}
