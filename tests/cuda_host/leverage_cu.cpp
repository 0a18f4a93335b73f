// csrc/cuda/leverage.cu compiled for the host against the stand-ins of this directory.
#include "leverage.cu"
