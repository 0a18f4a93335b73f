// cuSOLVER version of the library this extension was linked against (for svdprune_cuda.info).
#include <cusolverDn.h>

namespace svdprune {

int cusolver_version() {
  int version = 0;
  return cusolverGetVersion(&version) == CUSOLVER_STATUS_SUCCESS ? version : -1;
}

}  // namespace svdprune
