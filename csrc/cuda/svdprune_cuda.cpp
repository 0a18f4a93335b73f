// CUDA kernels of the svdprune ops (TORCH_LIBRARY_IMPL CUDA): ops_impl.h on the features'
// GPU, on torch's current stream with torch's cuBLAS handle and caching allocator.
#include "ops_impl.h"

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

namespace svdprune {
namespace {

// Torch's current stream and cuBLAS handle, which torch binds to that stream and to its
// workspace for it (leverage.cu takes its cuSOLVER handles from a pool of its own).
cuda::Context gpu_context(cuda::Buffers& buffers) {
  return {at::cuda::getCurrentCUDAStream().stream(), at::cuda::getCurrentCUDABlasHandle(),
          [&buffers](size_t bytes) { return buffers.allocate(bytes); }};
}

at::Tensor on_cuda(const at::Tensor& features) {
  const auto x = batched_features(features);
  if (!x.is_cuda()) {
    throw_error("svdprune: features must be a CUDA tensor for the CUDA kernels, got " + x.device().str());
  }
  return x;
}

std::tuple<at::Tensor, at::Tensor> leverage_cuda(const at::Tensor& features, double variance,
                                                 c10::string_view method, bool center, int64_t seed) {
  const auto x = on_cuda(features);
  const c10::cuda::CUDAGuard guard(x.device());
  return cuda::leverage_op(features, x, variance, method, center, seed, gpu_context);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> select_cuda(const at::Tensor& features, int64_t budget, double variance,
                                                           c10::string_view method, bool center, int64_t seed,
                                                           c10::string_view strategy) {
  const auto x = on_cuda(features);
  const c10::cuda::CUDAGuard guard(x.device());
  return cuda::select_op(features, x, budget, variance, method, center, seed, strategy, gpu_context);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> select_adaptive_cuda(
    const at::Tensor& features, double variance, int64_t min_tokens, int64_t max_tokens, c10::string_view method,
    bool center, int64_t seed) {
  const auto x = on_cuda(features);
  const c10::cuda::CUDAGuard guard(x.device());
  return cuda::select_adaptive_op(features, x, variance, min_tokens, max_tokens, method, center, seed, gpu_context);
}

}  // namespace
}  // namespace svdprune

TORCH_LIBRARY_IMPL(svdprune, CUDA, m) {
  m.impl("leverage", &svdprune::leverage_cuda);
  m.impl("select", &svdprune::select_cuda);
  m.impl("select_adaptive", &svdprune::select_adaptive_cuda);
}
