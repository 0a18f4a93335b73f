// CUDA kernels of the svdprune ops (TORCH_LIBRARY_IMPL CUDA): the argument checks shared
// with the CPU backend, input preparation and output allocation in ATen, the computation in
// leverage.cu / select.cu on torch's current stream with torch's cuBLAS/cuSOLVER handles.
#include "../svdprune.h"
#include "svdprune_cuda.h"

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <vector>

namespace svdprune {
namespace {

cuda::DType dtype_of(at::ScalarType type) {
  switch (type) {
    case at::kHalf: return cuda::DType::Half;
    case at::kBFloat16: return cuda::DType::BFloat16;
    case at::kFloat: return cuda::DType::Float;
    case at::kDouble: return cuda::DType::Double;
    default: TORCH_CHECK(false, "svdprune: unsupported dtype ", type);
  }
}

// One cuSOLVER handle per thread and device, created on first use. torch's own getter lives
// in libtorch_cuda_linalg, which torch loads lazily and which extensions do not link against.
// The handles are never destroyed: at process exit the CUDA context may already be gone.
cusolverDnHandle_t solver_handle() {
  thread_local std::unordered_map<c10::DeviceIndex, cusolverDnHandle_t> handles;
  cusolverDnHandle_t& handle = handles[c10::cuda::current_device()];
  if (handle == nullptr) {
    cusolverDnHandle_t created = nullptr;
    const cusolverStatus_t status = cusolverDnCreate(&created);
    TORCH_CHECK(status == CUSOLVER_STATUS_SUCCESS, "svdprune: cusolverDnCreate failed with status ",
                static_cast<int>(status));
    handle = created;
  }
  return handle;
}

// Temporary device memory of one op call: byte tensors from the caching allocator, alive
// until the call returns. The kernels using them are queued on the current stream, which is
// where the allocator reuses freed blocks, so no synchronisation is needed.
class Buffers {
 public:
  explicit Buffers(const at::Tensor& like) : options_(like.options().dtype(at::kByte)) {}

  cuda::Context context() {
    cuda::Context ctx;
    ctx.stream = at::cuda::getCurrentCUDAStream().stream();
    // torch binds its cuBLAS handle to the current stream and to its workspace for it; the
    // cuSOLVER handle is bound to the stream where it is used.
    ctx.blas = at::cuda::getCurrentCUDABlasHandle();
    ctx.solver = solver_handle();
    ctx.allocate = [this](size_t bytes) {
      tensors_.push_back(at::empty({static_cast<int64_t>(bytes)}, options_));
      return tensors_.back().data_ptr();
    };
    return ctx;
  }

 private:
  at::TensorOptions options_;
  std::vector<at::Tensor> tensors_;
};

void check_on_cuda(const at::Tensor& features) {
  TORCH_CHECK(features.is_cuda(), "svdprune: features must be a CUDA tensor for the CUDA kernels, got ",
              features.device());
}

void check_select_size(int64_t num_tokens, at::ScalarType score_type) {
  const int64_t limit = cuda::max_select_tokens(dtype_of(score_type));
  TORCH_CHECK(num_tokens <= limit, "svdprune: N must be at most ", limit,
              " for the CUDA selection kernels on this device, got N=", num_tokens);
}

at::ScalarType compute_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

struct Analysis {
  at::Tensor scores;        // [B, N]
  at::Tensor rank;          // [B]
  at::Tensor pivot_scores;  // [B, N], when a pivoted selection was asked for (see cuda::leverage)
};

// Leverage scores and rank of a [B, N, D] batch and, with pivot_budget > 0, the pivot scores
// of a pivoted selection of that many tokens; the caller holds a guard for the batch's device.
Analysis analyze_batch(const at::Tensor& x, double variance, std::string_view method_name, bool center, int64_t seed,
                       int64_t pivot_budget) {
  check_variance(variance);
  const int64_t batch = x.size(0), n = x.size(1), d = x.size(2);
  const Method method = resolve_method(method_name, /*is_cuda=*/true, n, d);
  TORCH_CHECK(std::min(n, d) <= cuda::kMaxGramSize, "svdprune: min(N, D) must be at most ", cuda::kMaxGramSize,
              " on CUDA, got N=", n, ", D=", d);
  const auto compute = compute_type(x);
  const double slack = compute == at::kDouble ? kRankSlackDouble : kRankSlackFloat;
  Analysis out{at::empty({batch, n}, x.options().dtype(compute)), at::empty({batch}, x.options().dtype(at::kLong)),
               pivot_budget > 0 ? at::empty({batch, n}, x.options().dtype(compute)) : at::Tensor()};
  if (batch == 0) return out;

  // The Gram product reads 16-bit features as they are. Centring, and the product U = X V
  // that recovers left singular vectors when D < N, need them in the compute dtype.
  at::Tensor work;
  if (center) {
    const auto wide = x.to(compute);
    work = (wide - wide.mean(1, /*keepdim=*/true)).contiguous();
  } else if (d < n) {
    work = x.to(compute).contiguous();
  } else {
    work = x.contiguous();
  }
  int64_t width = method == Method::Randomized ? cuda::sketch_width(std::min(n, d)) : 0;
  // Pivoting leans on the trailing vectors of its basis, which a sketch blurs unless it is twice
  // as wide as the basis (as on the CPU); a narrower sketch gives way to the exact path.
  if (width < 2 * pivot_budget) width = 0;

  Buffers buffers(x);
  cuda::leverage(buffers.context(), {work.const_data_ptr(), dtype_of(work.scalar_type()), batch, n, d}, variance,
                 slack, width, static_cast<uint64_t>(seed), out.scores.mutable_data_ptr(),
                 out.rank.mutable_data_ptr<int64_t>(), pivot_budget,
                 pivot_budget > 0 ? out.pivot_scores.mutable_data_ptr() : nullptr);
  return out;
}

std::tuple<at::Tensor, at::Tensor> leverage_cuda(const at::Tensor& features, double variance,
                                                 c10::string_view method, bool center, int64_t seed) {
  const auto x = batched_features(features);
  check_on_cuda(x);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto a = analyze_batch(x, variance, method, center, seed, 0);
  return {unbatch(a.scores, features), unbatch(a.rank, features)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> select_cuda(const at::Tensor& features, int64_t budget, double variance,
                                                           c10::string_view method, bool center, int64_t seed,
                                                           c10::string_view strategy_name) {
  const auto x = batched_features(features);
  check_budget(budget, x.size(1));
  const Strategy strategy = resolve_strategy(strategy_name);
  check_on_cuda(x);
  const c10::cuda::CUDAGuard guard(x.device());
  check_select_size(x.size(1), compute_type(x));
  const bool pivoted = strategy == Strategy::Pivoted;
  const auto a = analyze_batch(x, variance, method, center, seed, pivoted ? budget : 0);
  // The top `budget` of the pivot scores are the pivoted tokens, filled up by leverage.
  const auto& ranking = pivoted ? a.pivot_scores : a.scores;
  auto indices = at::empty({x.size(0), budget}, x.options().dtype(at::kLong));
  Buffers buffers(x);
  cuda::select_top(buffers.context(), ranking.const_data_ptr(), dtype_of(ranking.scalar_type()), x.size(0),
                   x.size(1), budget, indices.mutable_data_ptr<int64_t>());
  return {unbatch(indices, features), unbatch(a.scores, features), unbatch(a.rank, features)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> select_adaptive_cuda(
    const at::Tensor& features, double variance, int64_t min_tokens, int64_t max_tokens, c10::string_view method,
    bool center, int64_t seed) {
  const auto x = batched_features(features);
  max_tokens = resolve_max_tokens(min_tokens, max_tokens, x.size(1));
  check_on_cuda(x);
  const c10::cuda::CUDAGuard guard(x.device());
  check_select_size(x.size(1), compute_type(x));
  const auto a = analyze_batch(x, variance, method, center, seed, 0);
  const auto& scores = a.scores;
  const auto& rank = a.rank;
  auto mask = at::empty({x.size(0), x.size(1)}, x.options().dtype(at::kBool));
  auto count = at::empty({x.size(0)}, x.options().dtype(at::kLong));
  Buffers buffers(x);
  cuda::select_adaptive(buffers.context(), scores.const_data_ptr(), dtype_of(scores.scalar_type()),
                        rank.const_data_ptr<int64_t>(), x.size(0), x.size(1), variance, min_tokens, max_tokens,
                        mask.mutable_data_ptr<bool>(), count.mutable_data_ptr<int64_t>());
  return {unbatch(mask, features), unbatch(count, features), unbatch(scores, features), unbatch(rank, features)};
}

}  // namespace
}  // namespace svdprune

TORCH_LIBRARY_IMPL(svdprune, CUDA, m) {
  m.impl("leverage", &svdprune::leverage_cuda);
  m.impl("select", &svdprune::select_cuda);
  m.impl("select_adaptive", &svdprune::select_adaptive_cuda);
}
