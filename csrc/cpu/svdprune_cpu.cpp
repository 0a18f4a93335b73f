// CPU kernels of the svdprune ops: one image per task of at::parallel_for, each built from
// ATen's BLAS/LAPACK calls (GEMM, symmetric eigensolver, Householder QR).
#include "../svdprune.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <utility>

namespace svdprune {
namespace {

// Randomized range finder settings. Real photographs need k of 1-10 at variance 0.9, so a
// first sketch of 16 columns usually suffices; it doubles while fewer than kOversample
// columns remain beyond the rank. Past a quarter of min(N, D) the sketch saves little over
// the exact Gram eigensolver, which then takes over (flat spectra, e.g. noise).
constexpr int64_t kInitialSketch = 16;
constexpr int64_t kOversample = 8;
constexpr int64_t kPowerIterations = 3;

struct Cut {
  int64_t rank;
  bool reached;  // whether the given eigenvalues capture `variance` of the total energy
};

// Smallest k whose leading eigenvalues (descending) of the Gram matrix, i.e. squared singular
// values, capture `variance` of `total` energy.
Cut rank_cut(const at::Tensor& eigenvalues_desc, double total, double variance, double slack) {
  if (!(total > 0.0)) return {0, true};
  const auto values = eigenvalues_desc.to(at::kDouble).contiguous();
  const double* v = values.data_ptr<double>();
  const int64_t count = values.numel();
  const double threshold = variance * total * (1.0 - slack);
  double cumulative = 0.0;
  for (int64_t i = 0; i < count; ++i) {
    cumulative += std::max(v[i], 0.0);
    if (cumulative >= threshold) return {i + 1, true};
  }
  return {count, false};
}

// Eigenpairs of a symmetric matrix, largest first.
std::pair<at::Tensor, at::Tensor> eigh_descending(const at::Tensor& gram) {
  auto [values, vectors] = at::linalg_eigh(gram);
  return {values.flip(0), vectors.flip(1)};
}

// Lower triangle of X Xᵀ, the part the eigensolver reads, one row block at a time: with
// kGramBlocks blocks this costs (kGramBlocks + 1) / (2 kGramBlocks) of a full GEMM.
constexpr int64_t kGramBlocks = 4;

at::Tensor gram_lower(const at::Tensor& x) {
  const int64_t n = x.size(0);
  const int64_t step = (n + kGramBlocks - 1) / kGramBlocks;
  auto gram = at::zeros({n, n}, x.options());
  for (int64_t begin = 0; begin < n; begin += step) {
    const int64_t rows = std::min(step, n - begin);
    auto block = gram.narrow(0, begin, rows).narrow(1, 0, begin + rows);
    at::mm_out(block, x.narrow(0, begin, rows), x.narrow(0, 0, begin + rows).t());
  }
  return gram;
}

// Exact leverage from the smaller Gram matrix: X Xᵀ (N×N) gives U directly; XᵀX (D×D) gives
// V, and U_k = X V_k / sigma_k.
std::pair<at::Tensor, int64_t> leverage_exact(const at::Tensor& x, double total, double variance, double slack) {
  const int64_t n = x.size(0), d = x.size(1);
  if (n <= d) {
    auto [values, vectors] = eigh_descending(gram_lower(x));
    const int64_t rank = rank_cut(values, total, variance, slack).rank;
    return {vectors.narrow(1, 0, rank).square().sum(1), rank};
  }
  auto [values, vectors] = eigh_descending(gram_lower(x.t()));
  const int64_t rank = rank_cut(values, total, variance, slack).rank;
  const auto top_values = values.narrow(0, 0, rank);
  // Directions with a numerically zero eigenvalue carry no energy; dropping them avoids 0/0.
  const double floor = values.numel() > 0 ? values[0].item<double>() * slack : 0.0;
  const auto inverse = at::where(top_values > floor, top_values.reciprocal(), at::zeros_like(top_values));
  const auto xv = at::mm(x, vectors.narrow(1, 0, rank));
  return {(xv.square() * inverse).sum(1), rank};
}

// Orthonormal basis of the range of X·omega, refined by power iterations (re-orthonormalised
// with Householder QR at every step for stability).
at::Tensor range_finder(const at::Tensor& x, const at::Tensor& omega) {
  auto q = std::get<0>(at::linalg_qr(at::mm(x, omega)));
  for (int64_t i = 0; i < kPowerIterations; ++i) {
    const auto z = std::get<0>(at::linalg_qr(at::mm(x.t(), q)));
    q = std::get<0>(at::linalg_qr(at::mm(x, z)));
  }
  return q;
}

// Randomized leverage: Gaussian sketch (deterministic for `seed`), power iterations,
// Rayleigh–Ritz on the small Gram matrix of Qᵀ X. The sketch doubles until its Ritz values
// capture `variance` of ‖X‖_F² with kOversample columns to spare; a rank too large for a
// sketch of min(N, D)/4 columns is computed exactly.
std::pair<at::Tensor, int64_t> leverage_randomized(const at::Tensor& x, double total, double variance, double slack,
                                                   int64_t seed) {
  const int64_t n = x.size(0), d = x.size(1), max_width = std::min(n, d) / 4;
  if (!(total > 0.0)) return {at::zeros({n}, x.options()), 0};
  auto generator = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(seed));
  auto omega = at::randn({d, std::min(kInitialSketch, max_width)}, generator, x.options());
  while (omega.size(1) >= 1) {
    const int64_t width = omega.size(1);
    const auto q = range_finder(x, omega);
    const auto b = at::mm(q.t(), x);
    auto [values, vectors] = eigh_descending(at::mm(b, b.t()));
    const Cut cut = rank_cut(values, total, variance, slack);
    if (cut.reached && cut.rank + kOversample <= width) {
      const auto u = at::mm(q, vectors.narrow(1, 0, cut.rank));
      return {u.square().sum(1), cut.rank};
    }
    if (2 * width > max_width) break;
    // The first columns are kept, so a wider sketch refines the narrower one.
    omega = at::cat({omega, at::randn({d, width}, generator, x.options())}, 1);
  }
  return leverage_exact(x, total, variance, slack);
}

// ‖X‖_F², which doubles as the NaN/Inf check: any non-finite entry makes it non-finite, so
// the full scan runs only to tell NaN/Inf apart from overflow.
double energy(const at::Tensor& image) {
  const auto flat = image.view(-1);
  const double total = at::dot(flat, flat).item<double>();
  if (std::isfinite(total)) return total;
  TORCH_CHECK(at::isfinite(flat).all().item<bool>(), "svdprune: features contains NaN or Inf");
  TORCH_CHECK(false, "svdprune: features too large for ", image.scalar_type(),
              " computation (||X||_F^2 overflows); pass float64 features");
}

// Scores [B, N] and rank [B] of a [B, N, D] batch.
std::pair<at::Tensor, at::Tensor> leverage_batch(const at::Tensor& features, double variance,
                                                 std::string_view method_name, bool center, int64_t seed) {
  const auto x = batched_features(features);
  check_variance(variance);
  const int64_t batch = x.size(0), n = x.size(1), d = x.size(2);
  const Method method = resolve_method(method_name, /*is_cuda=*/false, n, d);
  const auto compute = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const double slack = compute == at::kDouble ? kRankSlackDouble : kRankSlackFloat;
  auto scores = at::empty({batch, n}, x.options().dtype(compute));
  auto rank = at::empty({batch}, x.options().dtype(at::kLong));
  auto* rank_out = rank.data_ptr<int64_t>();
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      auto image = x[i].to(compute).contiguous();
      if (center) image = image - image.mean(0, /*keepdim=*/true);
      const double total = energy(image);
      auto [image_scores, image_rank] = method == Method::Exact
                                            ? leverage_exact(image, total, variance, slack)
                                            : leverage_randomized(image, total, variance, slack, seed);
      scores[i].copy_(image_scores);
      rank_out[i] = image_rank;
    }
  });
  return {scores, rank};
}

// Token order by descending leverage; the stable sort sends ties to the lower index.
at::Tensor descending_order(const at::Tensor& scores) {
  return std::get<1>(at::sort(scores, /*stable=*/true, /*dim=*/-1, /*descending=*/true));
}

std::tuple<at::Tensor, at::Tensor> leverage_cpu(const at::Tensor& features, double variance,
                                                c10::string_view method, bool center, int64_t seed) {
  auto [scores, rank] = leverage_batch(features, variance, method, center, seed);
  return {unbatch(scores, features), unbatch(rank, features)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> select_cpu(const at::Tensor& features, int64_t budget,
                                                          double variance, c10::string_view method, bool center,
                                                          int64_t seed) {
  check_budget(budget, batched_features(features).size(1));
  auto [scores, rank] = leverage_batch(features, variance, method, center, seed);
  const auto top = descending_order(scores).narrow(-1, 0, budget);
  const auto indices = std::get<0>(at::sort(top, -1));
  return {unbatch(indices, features), unbatch(scores, features), unbatch(rank, features)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> select_adaptive_cpu(
    const at::Tensor& features, double variance, int64_t min_tokens, int64_t max_tokens, c10::string_view method,
    bool center, int64_t seed) {
  const int64_t n = batched_features(features).size(1);
  max_tokens = resolve_max_tokens(min_tokens, max_tokens, n);
  auto [scores, rank] = leverage_batch(features, variance, method, center, seed);
  const auto order = descending_order(scores);
  const auto cumulative = at::gather(scores, -1, order).cumsum(-1);
  const auto target = (rank.to(scores.scalar_type()) * variance).unsqueeze(-1);
  auto count = (cumulative < target).sum(-1) + 1;
  count = at::where(target.squeeze(-1) > 0, count.clamp_max(n), at::zeros_like(count));
  count = count.clamp(min_tokens, max_tokens);
  // position[j] = place of token j in the descending order; the first `count` are kept.
  const auto places = at::arange(n, order.options()).expand_as(order);
  const auto position = at::empty_like(order).scatter_(-1, order, places);
  const auto mask = position < count.unsqueeze(-1);
  return {unbatch(mask, features), unbatch(count, features), unbatch(scores, features), unbatch(rank, features)};
}

}  // namespace
}  // namespace svdprune

TORCH_LIBRARY_IMPL(svdprune, CPU, m) {
  m.impl("leverage", &svdprune::leverage_cpu);
  m.impl("select", &svdprune::select_cpu);
  m.impl("select_adaptive", &svdprune::select_adaptive_cpu);
}
