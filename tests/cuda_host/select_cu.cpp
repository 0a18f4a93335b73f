// csrc/cuda/select.cu compiled for the host against the stand-ins of this directory.
#include "select.cu"
