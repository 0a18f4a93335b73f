// The CUDA backend's ops on top of leverage.cu / select.cu, free of device specifics: argument
// checks, method and sketch-width choice, input preparation, output allocation and the calls.
// svdprune_cuda.cpp runs them on a GPU (device guard, torch's stream, handles and caching
// allocator); tests/cuda_on_host.cpp runs the same code on host memory.
#pragma once

#include "../svdprune.h"
#include "checks.h"
#include "svdprune_cuda.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <functional>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

namespace svdprune::cuda {

inline DType dtype_of(at::ScalarType type) {
  switch (type) {
    case at::kHalf: return DType::Half;
    case at::kBFloat16: return DType::BFloat16;
    case at::kFloat: return DType::Float;
    case at::kDouble: return DType::Double;
    default: throw_error(std::string("svdprune: unsupported dtype ") + c10::toString(type));
  }
}

// Temporary memory of one op call: byte tensors on the features' device, alive until the call
// returns. On a GPU they come from the caching allocator, whose stream-ordered reuse needs no
// synchronisation with the kernels queued on the current stream.
class Buffers {
 public:
  explicit Buffers(const at::Tensor& like) : options_(like.options().dtype(at::kByte)) {}
  void* allocate(size_t bytes) {
    tensors_.push_back(at::empty_symint(shape({static_cast<int64_t>(bytes)}), options_));
    return tensors_.back().data_ptr();
  }

 private:
  at::TensorOptions options_;
  std::vector<at::Tensor> tensors_;
};

// The Context of a call (stream, library handles) whose memory comes from `buffers`.
using MakeContext = std::function<Context(Buffers& buffers)>;

inline void check_select_size(int64_t num_tokens, at::ScalarType score_type) {
  const int64_t limit = max_select_tokens(dtype_of(score_type));
  // One block sorts an image's N scores in shared memory, so the limit is the device's: 16,384
  // on sm_90 and sm_80 (8,192 for float64 scores on sm_80), 8,192 on sm_86/89.
  if (num_tokens > limit) {
    throw_error("svdprune: N must be at most " + std::to_string(limit) +
                " for the CUDA selection kernels on this device (one block sorts an image's scores in shared "
                "memory), got N=" + std::to_string(num_tokens));
  }
}

inline at::ScalarType compute_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

struct Analysis {
  at::Tensor scores;        // [B, N]
  at::Tensor rank;          // [B]
  at::Tensor pivot_scores;  // [B, N], when a pivoted selection was asked for (see cuda::leverage)
};

// Leverage scores and rank of a [B, N, D] batch and, with pivot_budget > 0, the pivot scores
// of a pivoted selection of that many tokens.
inline Analysis analyze_batch(const at::Tensor& x, double variance, std::string_view method_name, bool center,
                              int64_t seed, int64_t pivot_budget, const MakeContext& make_context) {
  check_variance(variance);
  const int64_t batch = x.size(0), n = x.size(1), d = x.size(2);
  const Method method = resolve_method(method_name, /*is_cuda=*/true, n, d);
  if (std::min(n, d) > kMaxGramSize) {
    throw_error("svdprune: min(N, D) must be at most " + std::to_string(kMaxGramSize) + " on CUDA, got N=" +
                std::to_string(n) + ", D=" + std::to_string(d));
  }
  const auto compute = compute_type(x);
  const double slack = compute == at::kDouble ? kRankSlackDouble : kRankSlackFloat;
  Analysis out{at::empty_symint(shape({batch, n}), x.options().dtype(compute)),
               at::empty_symint(shape({batch}), x.options().dtype(at::kLong)),
               pivot_budget > 0 ? at::empty_symint(shape({batch, n}), x.options().dtype(compute)) : at::Tensor()};
  if (batch == 0) return out;

  int64_t width = method == Method::Randomized ? sketch_width(std::min(n, d)) : 0;
  // Pivoting leans on the trailing vectors of its basis, which a sketch blurs unless it is twice
  // as wide as the basis (as on the CPU); a narrower sketch gives way to the exact path.
  const bool pivoting_needs_exact = width > 0 && width < 2 * pivot_budget;
  if (pivoting_needs_exact) width = 0;
  Buffers buffers(x);
  // Raised before any work is queued (see kMaxCapturedEigenSize).
  const int64_t eigen_size = width > 0 ? width : std::min(n, d);
  if (eigen_size > kMaxCapturedEigenSize && capturing(make_context(buffers).stream)) {
    const std::string size = std::to_string(eigen_size), largest = std::to_string(kMaxCapturedEigenSize);
    const std::string instead =
        pivoting_needs_exact ? "strategy='pivoted' with budget=" + std::to_string(pivot_budget) +
                                   " takes the exact path (its sketch must be twice as wide as the budget): run the op "
                                   "outside the graph"
                             : "use method='randomized', or run the op outside the graph";
    throw_error("svdprune: method='" + std::string(method_name) + "' at N=" + std::to_string(n) + ", D=" +
                std::to_string(d) + " solves a " + size + "x" + size +
                " eigenproblem, which cuSOLVER is not known to run under CUDA graph capture (up to " + largest + "x" +
                largest + " is): " + instead);
  }
  // Every image is first multiplied by the power of two that brings its largest |entry| into
  // [1, 2) (see rescale): exact, and the result does not depend on the scale. The CPU does so
  // only beyond 2^±kSafeExponent, where its Gram product would overflow or underflow, since
  // LAPACK's eigensolver scales the matrix it is given; cuSOLVER documents no such scaling, and
  // Gram entries from 2^-64 to D·2^66 could overflow or underflow inside it (info != 0: rank 0
  // and NaN scores). The copy is made anyway. Before centring, so that centring cannot overflow,
  // and again after it, which can leave entries far smaller than the image's. float16 needs
  // none: its Gram entries lie within about 2^-48 and D·2^32, whatever its values.
  const auto rescaled = [&](const at::Tensor& t) {
    const auto in = t.contiguous();
    auto out = at::empty_like(in);
    rescale(make_context(buffers), {in.const_data_ptr(), dtype_of(in.scalar_type()), in.size(0), in.size(1), in.size(2)},
            /*safe_exponent=*/0, out.mutable_data_ptr());
    return out;
  };
  // The Gram product reads 16-bit features as they are. Centring, and the product X V that
  // recovers left singular vectors when D < N, need them in the compute dtype.
  at::Tensor work = x.scalar_type() == at::kHalf ? x.contiguous() : rescaled(x);
  if (center) {
    // The mean accumulated in double, as on the CPU: the tokens of a constant image centre to
    // exactly zero.
    const auto wide = work.to(compute);
    work = rescaled(wide - wide.mean(at::IntArrayRef{1}, /*keepdim=*/true, at::kDouble).to(compute));
  } else if (d < n) {
    work = work.to(compute);
  }
  leverage(make_context(buffers), {work.const_data_ptr(), dtype_of(work.scalar_type()), batch, n, d}, variance, slack,
           width, static_cast<uint64_t>(seed), out.scores.mutable_data_ptr(), out.rank.mutable_data_ptr<int64_t>(),
           pivot_budget, pivot_budget > 0 ? out.pivot_scores.mutable_data_ptr() : nullptr);
  return out;
}

// The ops on a [B, N, D] view `x` of `features` (see batched_features), on x's device.
inline std::tuple<at::Tensor, at::Tensor> leverage_op(const at::Tensor& features, const at::Tensor& x, double variance,
                                                      std::string_view method, bool center, int64_t seed,
                                                      const MakeContext& make_context) {
  const auto a = analyze_batch(x, variance, method, center, seed, 0, make_context);
  return {unbatch(a.scores, features), unbatch(a.rank, features)};
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> select_op(const at::Tensor& features, const at::Tensor& x,
                                                                int64_t budget, double variance,
                                                                std::string_view method, bool center, int64_t seed,
                                                                std::string_view strategy_name,
                                                                const MakeContext& make_context) {
  check_budget(budget, x.size(1));
  const Strategy strategy = resolve_strategy(strategy_name);
  check_select_size(x.size(1), compute_type(x));
  const bool pivoted = strategy == Strategy::Pivoted;
  const auto a = analyze_batch(x, variance, method, center, seed, pivoted ? budget : 0, make_context);
  // The top `budget` of the pivot scores are the pivoted tokens, filled up by leverage.
  const auto& ranking = pivoted ? a.pivot_scores : a.scores;
  auto indices = at::empty_symint(shape({x.size(0), budget}), x.options().dtype(at::kLong));
  Buffers buffers(x);
  select_top(make_context(buffers), ranking.const_data_ptr(), dtype_of(ranking.scalar_type()), x.size(0), x.size(1),
             budget, indices.mutable_data_ptr<int64_t>());
  return {unbatch(indices, features), unbatch(a.scores, features), unbatch(a.rank, features)};
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> select_adaptive_op(
    const at::Tensor& features, const at::Tensor& x, double variance, int64_t min_tokens, int64_t max_tokens,
    std::string_view method, bool center, int64_t seed, const MakeContext& make_context) {
  max_tokens = resolve_max_tokens(min_tokens, max_tokens, x.size(1));
  check_select_size(x.size(1), compute_type(x));
  const auto a = analyze_batch(x, variance, method, center, seed, 0, make_context);
  auto mask = at::empty_symint(shape({x.size(0), x.size(1)}), x.options().dtype(at::kBool));
  auto count = at::empty_symint(shape({x.size(0)}), x.options().dtype(at::kLong));
  Buffers buffers(x);
  select_adaptive(make_context(buffers), a.scores.const_data_ptr(), dtype_of(a.scores.scalar_type()),
                  a.rank.const_data_ptr<int64_t>(), x.size(0), x.size(1), variance, min_tokens, max_tokens,
                  mask.mutable_data_ptr<bool>(), count.mutable_data_ptr<int64_t>());
  return {unbatch(mask, features), unbatch(count, features), unbatch(a.scores, features), unbatch(a.rank, features)};
}

}  // namespace svdprune::cuda
