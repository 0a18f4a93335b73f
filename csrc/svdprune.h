// Shared declarations of the svdprune ops: argument checks and the rank rule that every
// backend applies identically. Backends (csrc/cpu, csrc/cuda) register their kernels for the
// schemas defined once in ops.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <string_view>

namespace svdprune {

// Error messages are built as std::string and raised through one `const char*`, the only form
// of TORCH_CHECK that builds no std::ostringstream: this library formats nothing with iostreams,
// whose locale code crashed (SIGSEGV) where two C++ runtimes met in one process (README, "Errors").
[[noreturn]] void throw_error(const std::string& message);
// What operator<< would print, without it: %g for a double, "[2, 3]" for a shape.
std::string to_text(double value);
std::string to_text(at::IntArrayRef shape);
// Sizes for ATen's *_symint factories: at::empty({n, d}, ...) and the other IntArrayRef overloads
// check that each size fits a SymInt with a message formatted by iostreams (c10::fromIntArrayRefSlow,
// c10/core/SymIntArrayRef.h), and the sizes this library computes are tensor sizes, which fit.
inline c10::SymIntArrayRef shape(at::IntArrayRef sizes) { return c10::fromIntArrayRefKnownNonNegative(sizes); }

enum class Method { Exact, Randomized };
// How `select` picks its tokens: top-K leverage (the paper's rule), or greedy column pivoting
// on the leading `budget` left singular vectors (non-redundant tokens).
enum class Strategy { Leverage, Pivoted };

// Relative slack on the rank cut-off, so that variance=1 yields the numerical rank instead
// of min(N, D) when rounding leaves the cumulative energy a hair below the total.
constexpr double kRankSlackFloat = 1e-5;
constexpr double kRankSlackDouble = 1e-10;

// An image whose largest |entry| is beyond 2^±kSafeExponent is first multiplied by the power of
// two that brings that entry near 1: exact in floating point, and leverage and rank do not depend
// on the scale. The Gram and sketch products hold squares of the entries, which would overflow
// float32 near its largest values and underflow (to subnormals, then zero) below about 1e-19.
constexpr int kSafeExponent = 32;

// Validates `features` ([N, D] or [B, N, D], floating point, N, D > 0) and returns a
// [B, N, D] view of it.
at::Tensor batched_features(const at::Tensor& features);
void check_variance(double variance);
void check_budget(int64_t budget, int64_t num_tokens);
// Validates min/max_tokens and returns max_tokens with -1 resolved to num_tokens.
int64_t resolve_max_tokens(int64_t min_tokens, int64_t max_tokens, int64_t num_tokens);
// Parses "exact" / "randomized" / "auto"; "auto" picks by device and shape (see README).
Method resolve_method(std::string_view method, bool is_cuda, int64_t num_tokens, int64_t dim);
Strategy resolve_strategy(std::string_view strategy);
// Drops the leading batch dimension of `t` when the op's input had none.
at::Tensor unbatch(const at::Tensor& t, const at::Tensor& features);

}  // namespace svdprune
