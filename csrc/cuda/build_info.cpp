// Facts of the CUDA build for svdprune_cuda.info: the cuSOLVER version this extension was linked
// against, and the largest eigenproblem it runs under CUDA graph capture.
#include "svdprune_cuda.h"

#include <cusolverDn.h>

namespace svdprune {

int cusolver_version() {
  int version = 0;
  return cusolverGetVersion(&version) == CUSOLVER_STATUS_SUCCESS ? version : -1;
}

int64_t max_captured_eigen_size() { return cuda::kMaxCapturedEigenSize; }

}  // namespace svdprune
