// Schemas of the svdprune ops (the one place they are defined) and the argument checks that
// every backend shares.
#include "svdprune.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <Python.h>
#include <torch/library.h>

#include <cstdio>
#include <string>
#include <vector>

#ifdef SVDPRUNE_WITH_CUDA
namespace svdprune {
int cusolver_version();  // csrc/cuda/build_info.cpp
int64_t max_captured_eigen_size();
}
#endif

// The build facts are compiled in (build_description.py defines them for setup.py and CMake
// alike), so what `python -m svdprune.info` reports is true of the library it loaded.
#define SVDPRUNE_STRING(...) #__VA_ARGS__
#define SVDPRUNE_EXPAND_STRING(...) SVDPRUNE_STRING(__VA_ARGS__)

static int set_item(PyObject* dict, const char* key, PyObject* value) {
  const int status = value == nullptr ? -1 : PyDict_SetItemString(dict, key, value);
  Py_XDECREF(value);
  return status;
}

// `import svdprune_cuda._C` loads this library, whose static initialisers register the ops
// below with the dispatcher. The module itself only reports how the library was built.
static PyObject* build_info(PyObject*, PyObject*) {
  PyObject* info = PyDict_New();
  if (info == nullptr) return nullptr;
#ifdef SVDPRUNE_WITH_CUDA
  const bool cuda = true;
  PyObject* arch_list = PyUnicode_FromString(SVDPRUNE_EXPAND_STRING(SVDPRUNE_CUDA_ARCH_LIST));
  PyObject* cusolver = PyLong_FromLong(svdprune::cusolver_version());
  PyObject* captured = PyLong_FromLongLong(svdprune::max_captured_eigen_size());
#else
  const bool cuda = false;
  PyObject* arch_list = PyUnicode_FromString("");
  PyObject* cusolver = Py_NewRef(Py_None);
  PyObject* captured = Py_NewRef(Py_None);
#endif
  if (set_item(info, "torch_version", PyUnicode_FromString(SVDPRUNE_EXPAND_STRING(SVDPRUNE_TORCH_VERSION))) < 0 ||
      set_item(info, "with_cuda", PyBool_FromLong(cuda)) < 0 || set_item(info, "cuda_arch_list", arch_list) < 0 ||
      set_item(info, "cusolver_version", cusolver) < 0 || set_item(info, "max_captured_eigen_size", captured) < 0) {
    Py_DECREF(info);
    return nullptr;
  }
  return info;
}

static PyMethodDef module_methods[] = {
    {"build_info", build_info, METH_NOARGS,
     "How this library was built: torch_version, with_cuda, cuda_arch_list, cusolver_version and "
     "max_captured_eigen_size (None without CUDA)."},
    {nullptr, nullptr, 0, nullptr}};

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, module_methods};
  return PyModule_Create(&module_def);
}
}

namespace svdprune {

void throw_error(const std::string& message) { TORCH_CHECK(false, message.c_str()); }

std::string to_text(double value) {
  char text[32];
  std::snprintf(text, sizeof(text), "%g", value);
  return text;
}

std::string to_text(at::IntArrayRef shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i == 0 ? "" : ", ") + std::to_string(shape[i]);
  return text + "]";
}

at::Tensor batched_features(const at::Tensor& features) {
  if (features.dim() != 2 && features.dim() != 3) {
    throw_error("svdprune: features must be [N, D] or [B, N, D], got shape " + to_text(features.sizes()));
  }
  const auto type = features.scalar_type();
  if (type != at::kHalf && type != at::kBFloat16 && type != at::kFloat && type != at::kDouble) {
    throw_error(std::string("svdprune: features must be float16, bfloat16, float32 or float64, got ") +
                c10::toString(type));
  }
  const auto x = features.dim() == 3 ? features : features.unsqueeze(0);
  if (x.size(1) == 0) {
    throw_error("svdprune: features must have at least one token (N > 0), got shape " + to_text(features.sizes()));
  }
  if (x.size(2) == 0) {
    throw_error("svdprune: features must have at least one feature (D > 0), got shape " +
                to_text(features.sizes()));
  }
  return x;
}

void check_variance(double variance) {
  if (!(variance > 0.0 && variance <= 1.0)) {
    throw_error("svdprune: variance must be in (0, 1], got " + to_text(variance));
  }
}

void check_budget(int64_t budget, int64_t num_tokens) {
  if (budget < 1 || budget > num_tokens) {
    throw_error("svdprune: budget must be in [1, N=" + std::to_string(num_tokens) + "], got " +
                std::to_string(budget));
  }
}

int64_t resolve_max_tokens(int64_t min_tokens, int64_t max_tokens, int64_t num_tokens) {
  if (min_tokens < 0 || min_tokens > num_tokens) {
    throw_error("svdprune: min_tokens must be in [0, N=" + std::to_string(num_tokens) + "], got " +
                std::to_string(min_tokens));
  }
  const int64_t resolved = max_tokens == -1 ? num_tokens : max_tokens;
  if (resolved < 1 || resolved > num_tokens) {
    throw_error("svdprune: max_tokens must be -1 or in [1, N=" + std::to_string(num_tokens) + "], got " +
                std::to_string(max_tokens));
  }
  if (min_tokens > resolved) {
    throw_error("svdprune: min_tokens (" + std::to_string(min_tokens) + ") must not exceed max_tokens (" +
                std::to_string(max_tokens) + ")");
  }
  return resolved;
}

Method resolve_method(std::string_view method, bool is_cuda, int64_t num_tokens, int64_t dim) {
  if (method == "exact") return Method::Exact;
  if (method == "randomized") return Method::Randomized;
  if (method != "auto") {
    throw_error("svdprune: method must be 'exact', 'randomized' or 'auto', got '" + std::string(method) + "'");
  }
  // On CUDA the Gram matrix is formed either way and a sketch cannot fall back to the exact
  // solver without a host synchronisation, so it could report an unresolved rank (see
  // leverage.cu): `auto` is exact there. On the CPU, backed by benchmarks/RESULTS.md, the
  // randomized sketch wins once the Gram matrix it avoids (min(N, D) squared) is large, and it
  // falls back to the exact solver by itself; small problems are cheaper exactly.
  if (is_cuda) return Method::Exact;
  return std::min(num_tokens, dim) >= 256 ? Method::Randomized : Method::Exact;
}

Strategy resolve_strategy(std::string_view strategy) {
  if (strategy == "leverage") return Strategy::Leverage;
  if (strategy != "pivoted") {
    throw_error("svdprune: strategy must be 'leverage' or 'pivoted', got '" + std::string(strategy) + "'");
  }
  return Strategy::Pivoted;
}

at::Tensor unbatch(const at::Tensor& t, const at::Tensor& features) {
  return features.dim() == 3 ? t : t.squeeze(0);
}

namespace {

// The selection is not differentiable (indices, masks, counts and ranks are integers; scores
// are returned without a gradient), so the Autograd kernel of every op runs the backend kernel
// below autograd: the ATen calls inside it do not record a graph for features that require
// grad, and no output requires grad.
void below_autograd(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
  at::AutoDispatchBelowADInplaceOrView guard;
  op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
}

}  // namespace
}  // namespace svdprune

// cudagraph_unsafe: torch.compile(mode="reduce-overhead") runs the ops between its CUDA graphs, not
// inside them, since the exact path's eigensolver is not known to run under capture beyond
// small sizes (kMaxCapturedEigenSize, csrc/cuda/svdprune_cuda.h). A graph captured by hand
// (torch.cuda.graph) can still hold the randomized path and small exact ones.
TORCH_LIBRARY(svdprune, m) {
  const std::vector<at::Tag> tags = {at::Tag::cudagraph_unsafe};
  m.def("leverage(Tensor features, float variance=0.9, str method=\"exact\", bool center=False, int seed=0)"
        " -> (Tensor scores, Tensor rank)",
        tags);
  m.def("select(Tensor features, int budget, float variance=0.9, str method=\"exact\", bool center=False,"
        " int seed=0, str strategy=\"leverage\") -> (Tensor indices, Tensor scores, Tensor rank)",
        tags);
  m.def("select_adaptive(Tensor features, float variance=0.9, int min_tokens=1, int max_tokens=-1,"
        " str method=\"exact\", bool center=False, int seed=0) -> (Tensor mask, Tensor count, Tensor scores,"
        " Tensor rank)",
        tags);
}

TORCH_LIBRARY_IMPL(svdprune, Autograd, m) {
  m.impl("leverage", torch::CppFunction::makeFromBoxedFunction<&svdprune::below_autograd>());
  m.impl("select", torch::CppFunction::makeFromBoxedFunction<&svdprune::below_autograd>());
  m.impl("select_adaptive", torch::CppFunction::makeFromBoxedFunction<&svdprune::below_autograd>());
}
