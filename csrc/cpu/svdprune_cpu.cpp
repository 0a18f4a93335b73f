// CPU kernels of the svdprune ops: one image per task of at::parallel_for, each built from
// ATen's BLAS/LAPACK calls (GEMM, symmetric eigensolver, Householder QR).
#include "../svdprune.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace svdprune {
namespace {

// f(scalar_t{}) for the compute dtypes, float32 and float64. Not AT_DISPATCH, whose error
// message would be formatted with iostreams (see throw_error).
template <typename F>
void dispatch_compute_type(at::ScalarType type, F&& f) {
  switch (type) {
    case at::kFloat: return f(float{});
    case at::kDouble: return f(double{});
    default: throw_error(std::string("svdprune: no CPU kernel for ") + c10::toString(type));
  }
}

// Randomized range finder settings. At variance 0.9 raw photo patches have rank 1-2 and
// feature-like views of photos mostly 3-20; the sketch doubles while fewer than kOversample
// columns remain beyond the rank. Its cost is set by the passes over X (7 per sketch) far more
// than by its width (a 32-column pass costs about 1.5 times a 16-column one), so the first
// sketch is wide enough for ranks up to 24 rather than 8: a second sketch costs more than the
// extra width.
constexpr int64_t kInitialSketch = 32;
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

// Work, in FLOPs, that decides between another sketch and the exact solver. The exact path
// forms the lower-triangular Gram of the smaller side and runs a symmetric eigensolver (about
// 9 m³). A sketch makes 2q + 1 products of X with `width` columns; such skinny products and the
// QRs between them run at about half the rate of the Gram GEMM and the eigensolver, hence the
// factor 2 (measured on N = 576, D = 1024 and 4096, see benchmarks/RESULTS.md).
double exact_flops(int64_t n, int64_t d) {
  const double m = static_cast<double>(std::min(n, d)), l = static_cast<double>(std::max(n, d));
  return 2.0 * m * m * l * (kGramBlocks + 1) / (2 * kGramBlocks) + 9.0 * m * m * m;
}

double sketch_flops(int64_t n, int64_t d, int64_t width) {
  return 2.0 * 2.0 * static_cast<double>(n) * static_cast<double>(d) * static_cast<double>(width) *
         (2 * kPowerIterations + 1);
}

at::Tensor gram_lower(const at::Tensor& x) {
  const int64_t n = x.size(0);
  const int64_t step = (n + kGramBlocks - 1) / kGramBlocks;
  auto gram = at::zeros_symint(shape({n, n}), x.options());
  for (int64_t begin = 0; begin < n; begin += step) {
    const int64_t rows = std::min(step, n - begin);
    auto block = gram.narrow(0, begin, rows).narrow(1, 0, begin + rows);
    at::mm_out(block, x.narrow(0, begin, rows), x.narrow(0, 0, begin + rows).t());
  }
  return gram;
}

// Leading left singular vectors of one image, largest first. `u` has the `rank` columns of the
// variance cut and, for pivoted selection, at least min(wanted, nonzero) columns, where
// `nonzero` counts the singular values that are not numerically zero.
struct Basis {
  at::Tensor u;  // [N, columns]
  int64_t rank;
  int64_t nonzero;
};

int64_t count_nonzero(const at::Tensor& values_desc, double slack) {
  if (values_desc.numel() == 0) return 0;
  return (values_desc > values_desc[0] * slack).sum().item<int64_t>();
}

// Left singular vectors from `product` = X V (or Y W, see basis_randomized) and the eigenvalues
// (descending) whose square roots are the norms of its columns: an orthonormal basis U with
// span(U[:, :m]) = span(product[:, :m]) for every m, which is all that leverage (the first `rank`
// columns) and pivoting (the first `wanted`) depend on. product / sigma alone carries the
// eigensolver's rounding of V towards directions of larger sigma_j amplified by sigma_j / sigma_i:
// at a deep cut (variance 0.999 over a long tail) its trailing columns are not orthonormal and the
// scores do not sum to the rank. Two passes of CholeskyQR (U ← U R⁻¹, RᵀR = UᵀU) repair it: the
// triangular factor keeps the spans nested, rows of zeros stay exactly zero (so ties among them
// still go to the lower index), and product / sigma is within about eps / slack of orthonormal,
// far inside what CholeskyQR handles. Columns past the `nonzero` ones carry no energy and are
// left zero.
at::Tensor left_basis(const at::Tensor& product, const at::Tensor& values, int64_t nonzero) {
  const int64_t columns = product.size(1), kept = std::min(columns, nonzero);
  auto u = product.narrow(1, 0, kept) * values.narrow(0, 0, kept).rsqrt();
  for (int pass = 0; pass < 2; ++pass) {
    const auto upper = at::linalg_cholesky(at::mm(u.t(), u), /*upper=*/true);
    u = at::linalg_solve_triangular(upper, u, /*upper=*/true, /*left=*/false);
  }
  if (kept == columns) return u;
  return at::cat({u, at::zeros_symint(shape({product.size(0), columns - kept}), u.options())}, 1);
}

// Exact basis from the smaller Gram matrix: X Xᵀ (N×N) gives U directly (orthonormal
// eigenvectors, nothing to repair); XᵀX (D×D) gives V, and U spans X V (see left_basis).
Basis basis_exact(const at::Tensor& x, double total, double variance, double slack, int64_t wanted) {
  const int64_t n = x.size(0), d = x.size(1);
  const bool tokens_side = n <= d;
  auto [values, vectors] = eigh_descending(gram_lower(tokens_side ? x : x.t()));
  const int64_t rank = rank_cut(values, total, variance, slack).rank;
  const int64_t nonzero = count_nonzero(values, slack);
  const int64_t columns = std::max(rank, std::min(wanted, nonzero));
  if (tokens_side) return {vectors.narrow(1, 0, columns), rank, nonzero};
  return {left_basis(at::mm(x, vectors.narrow(1, 0, columns)), values, nonzero), rank, nonzero};
}

// X·Z for an orthonormal Z (D×w) spanning, after power iterations, nearly the leading right
// singular subspace: X Z Zᵀ is the projection of X the Rayleigh–Ritz step decomposes.
// Householder QR re-orthonormalises every step for stability.
at::Tensor sketch_power_iterations(const at::Tensor& x, const at::Tensor& omega) {
  auto q = std::get<0>(at::linalg_qr(at::mm(x, omega)));
  at::Tensor y;
  for (int64_t i = 0; i < kPowerIterations; ++i) {
    y = at::mm(x, std::get<0>(at::linalg_qr(at::mm(x.t(), q))));
    if (i + 1 < kPowerIterations) q = std::get<0>(at::linalg_qr(y));
  }
  return y;
}

// Randomized basis: Gaussian sketch (deterministic for `seed`), power iterations, then
// Rayleigh–Ritz: with Y = X Z, the eigenpairs (λ, W) of YᵀY give singular values √λ of X Z Zᵀ
// and its left singular vectors, which span Y W (see left_basis). The sketch starts at
// kInitialSketch columns, or at twice the wanted basis (pivoting leans on the trailing wanted
// vectors, which a tighter sketch blurs), and doubles until its Ritz values capture `variance` of ‖X‖_F² with kOversample
// columns to spare. Once the sketches, the next one included, would cost more than the exact
// solver (high ranks, flat spectra such as noise, wide pivoting bases), the exact solver runs.
Basis basis_randomized(const at::Tensor& x, double total, double variance, double slack, int64_t seed,
                       int64_t wanted) {
  const int64_t n = x.size(0), d = x.size(1);
  const double exact_cost = exact_flops(n, d);
  auto generator = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(seed));
  at::Tensor omega = at::empty_symint(shape({d, 0}), x.options());
  double spent = 0.0;
  for (int64_t width = std::max(kInitialSketch, 2 * wanted);
       width <= std::min(n, d) && spent + sketch_flops(n, d, width) <= exact_cost; width *= 2) {
    // New columns are appended, so a wider sketch refines the narrower one.
    omega = at::cat({omega, at::randn_symint(shape({d, width - omega.size(1)}), generator, x.options())}, 1);
    const auto y = sketch_power_iterations(x, omega);
    auto [values, vectors] = eigh_descending(at::mm(y.t(), y));
    const Cut cut = rank_cut(values, total, variance, slack);
    if (cut.reached && cut.rank + kOversample <= width) {
      const int64_t nonzero = count_nonzero(values, slack);
      const int64_t columns = std::max(cut.rank, std::min(wanted, nonzero));
      return {left_basis(at::mm(y, vectors.narrow(1, 0, columns)), values, nonzero), cut.rank, nonzero};
    }
    spent += sketch_flops(n, d, width);
  }
  return basis_exact(x, total, variance, slack, wanted);
}

// Greedy column pivoting on U_mᵀ (the pivot order of a rank-revealing QR): `rows` holds the
// m-dimensional row of U_m of every token; each step picks the token farthest from the span of
// those already picked (ties to the lower index) and projects that direction out of all rows.
template <typename scalar_t>
void pivot_tokens(scalar_t* rows, int64_t n, int64_t m, int64_t* picked) {
  std::vector<char> taken(n, 0);
  std::vector<scalar_t> direction(m);
  for (int64_t step = 0; step < m; ++step) {
    int64_t best = 0;
    scalar_t best_norm = -1;
    for (int64_t j = 0; j < n; ++j) {
      if (taken[j]) continue;
      scalar_t norm = 0;
      for (int64_t i = 0; i < m; ++i) norm += rows[j * m + i] * rows[j * m + i];
      if (norm > best_norm) best = j, best_norm = norm;
    }
    taken[best] = 1;
    picked[step] = best;
    const scalar_t scale = best_norm > 0 ? 1 / std::sqrt(best_norm) : 0;
    for (int64_t i = 0; i < m; ++i) direction[i] = rows[best * m + i] * scale;
    for (int64_t j = 0; j < n; ++j) {
      if (taken[j]) continue;
      scalar_t dot = 0;
      for (int64_t i = 0; i < m; ++i) dot += rows[j * m + i] * direction[i];
      for (int64_t i = 0; i < m; ++i) rows[j * m + i] -= dot * direction[i];
    }
  }
}

// Pivoted selection of one image: min(budget, nonzero) tokens by pivoting on the leading
// singular vectors, the rest (when X has fewer non-zero singular values than `budget`) by
// leverage; ascending.
at::Tensor select_pivoted(const Basis& basis, const at::Tensor& scores, int64_t budget) {
  const int64_t n = basis.u.size(0), m = std::min(budget, basis.nonzero);
  auto rows = basis.u.narrow(1, 0, m).contiguous();
  std::vector<int64_t> picked(m);
  dispatch_compute_type(rows.scalar_type(), [&](auto zero) {
    pivot_tokens(rows.data_ptr<decltype(zero)>(), n, m, picked.data());
  });
  std::vector<char> taken(n, 0);
  for (const int64_t j : picked) taken[j] = 1;
  const auto order = std::get<1>(at::sort(scores, /*stable=*/true, /*dim=*/0, /*descending=*/true));
  const int64_t* ranked = order.data_ptr<int64_t>();
  for (int64_t i = 0; static_cast<int64_t>(picked.size()) < budget; ++i) {
    if (!taken[ranked[i]]) picked.push_back(ranked[i]);
  }
  std::sort(picked.begin(), picked.end());
  return at::tensor(picked, order.options());
}

// Sum of squares accumulated in double, as on CUDA: a float32 BLAS dot accumulates in float32,
// which at 576 × 4096 is off by up to ~1e-4 relative (more than the rank cut's slack, so
// the rank at τ = 0.999 could change) and by a different amount for each thread count.
// Independent partial sums let the additions overlap. The same pass finds the largest magnitude.
struct Magnitude {
  double energy;   // ‖X‖_F², not finite when X holds NaN/Inf (or, in float64, when it overflows)
  double largest;  // max |x|
};

template <typename scalar_t>
Magnitude magnitude(const scalar_t* values, int64_t count) {
  constexpr int64_t kLanes = 8;
  double lanes[kLanes] = {}, largest[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= count; i += kLanes) {
    for (int64_t lane = 0; lane < kLanes; ++lane) {
      const double v = values[i + lane];
      lanes[lane] += v * v;
      largest[lane] = std::max(largest[lane], std::abs(v));
    }
  }
  Magnitude out{0.0, 0.0};
  for (; i < count; ++i) {
    const double v = values[i];
    out.energy += v * v;
    out.largest = std::max(out.largest, std::abs(v));
  }
  for (int64_t lane = 0; lane < kLanes; ++lane) {
    out.energy += lanes[lane];
    out.largest = std::max(out.largest, largest[lane]);
  }
  return out;
}

Magnitude magnitude(const at::Tensor& image) {
  Magnitude out{};
  dispatch_compute_type(image.scalar_type(),
                        [&](auto zero) { out = magnitude(image.data_ptr<decltype(zero)>(), image.numel()); });
  return out;
}

// The image (contiguous, in the compute dtype) ready to decompose, and its ‖X‖_F². An image whose
// largest entry is far from 1 is multiplied by the power of two that brings it near 1: exact in
// floating point, and leverage and rank do not depend on the scale. That comes before centering,
// so that centering cannot overflow, and again after it, which can leave entries far smaller than
// the image's. The energy pass doubles as the NaN/Inf check: the full scan runs only to tell
// NaN/Inf apart from a float64 overflow.
std::pair<at::Tensor, double> prepare(at::Tensor image, bool center) {
  Magnitude m = magnitude(image);
  if (!std::isfinite(m.energy)) {
    if (!at::isfinite(image).all().item<bool>()) throw_error("svdprune: features contains NaN or Inf");
  }
  const auto rescale = [&] {
    const int exponent = m.largest > 0.0 ? std::ilogb(m.largest) : 0;
    if (std::abs(exponent) <= kSafeExponent) return;
    // In two factors, each a normal float32 number even when the largest entry is subnormal
    // (down to 2^-149), whose 2^-exponent is not.
    image = image * std::ldexp(1.0, -exponent / 2) * std::ldexp(1.0, exponent / 2 - exponent);
    m = magnitude(image);
  };
  rescale();
  if (center) {
    // The mean accumulated in double: the tokens of a constant image centre to exactly zero.
    image = image - image.mean(at::IntArrayRef{0}, /*keepdim=*/true, at::kDouble).to(image.scalar_type());
    m = magnitude(image);
    rescale();
  }
  return {image, m.energy};
}

struct Analysis {
  at::Tensor scores;   // [B, N]
  at::Tensor rank;     // [B]
  at::Tensor pivoted;  // [B, pivot_budget] ascending, when a pivoted selection was asked for
};

// Leverage scores and rank of a [B, N, D] batch and, with pivot_budget > 0, the pivoted
// selection of that many tokens.
Analysis analyze_batch(const at::Tensor& features, double variance, std::string_view method_name, bool center,
                       int64_t seed, int64_t pivot_budget) {
  const auto x = batched_features(features);
  check_variance(variance);
  const int64_t batch = x.size(0), n = x.size(1), d = x.size(2);
  const Method method = resolve_method(method_name, /*is_cuda=*/false, n, d);
  const auto compute = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const double slack = compute == at::kDouble ? kRankSlackDouble : kRankSlackFloat;
  Analysis out{at::empty_symint(shape({batch, n}), x.options().dtype(compute)),
               at::empty_symint(shape({batch}), x.options().dtype(at::kLong)),
               at::empty_symint(shape({batch, pivot_budget}), x.options().dtype(at::kLong))};
  auto* rank_out = out.rank.data_ptr<int64_t>();
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const auto [image, total] = prepare(x[i].to(compute).contiguous(), center);
      const Basis basis = !(total > 0.0)              ? Basis{at::zeros_symint(shape({n, 0}), image.options()), 0, 0}
                          : method == Method::Exact ? basis_exact(image, total, variance, slack, pivot_budget)
                                                    : basis_randomized(image, total, variance, slack, seed, pivot_budget);
      const auto scores = basis.u.narrow(1, 0, basis.rank).square().sum(1);
      out.scores[i].copy_(scores);
      rank_out[i] = basis.rank;
      if (pivot_budget > 0) out.pivoted[i].copy_(select_pivoted(basis, scores, pivot_budget));
    }
  });
  return out;
}

// Token order by descending leverage; the stable sort sends ties to the lower index.
at::Tensor descending_order(const at::Tensor& scores) {
  return std::get<1>(at::sort(scores, /*stable=*/true, /*dim=*/-1, /*descending=*/true));
}

std::tuple<at::Tensor, at::Tensor> leverage_cpu(const at::Tensor& features, double variance,
                                                c10::string_view method, bool center, int64_t seed) {
  const auto a = analyze_batch(features, variance, method, center, seed, 0);
  return {unbatch(a.scores, features), unbatch(a.rank, features)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> select_cpu(const at::Tensor& features, int64_t budget,
                                                          double variance, c10::string_view method, bool center,
                                                          int64_t seed, c10::string_view strategy_name) {
  check_budget(budget, batched_features(features).size(1));
  const Strategy strategy = resolve_strategy(strategy_name);
  const auto a = analyze_batch(features, variance, method, center, seed, strategy == Strategy::Pivoted ? budget : 0);
  const auto indices = strategy == Strategy::Pivoted
                           ? a.pivoted
                           : std::get<0>(at::sort(descending_order(a.scores).narrow(-1, 0, budget), -1));
  return {unbatch(indices, features), unbatch(a.scores, features), unbatch(a.rank, features)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> select_adaptive_cpu(
    const at::Tensor& features, double variance, int64_t min_tokens, int64_t max_tokens, c10::string_view method,
    bool center, int64_t seed) {
  const int64_t n = batched_features(features).size(1);
  max_tokens = resolve_max_tokens(min_tokens, max_tokens, n);
  const auto a = analyze_batch(features, variance, method, center, seed, 0);
  const auto& scores = a.scores;
  const auto& rank = a.rank;
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
