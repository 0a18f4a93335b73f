// launch(kernel, grid, block, shared_bytes, stream, args...) is kernel<<<grid, block,
// shared_bytes, stream>>>(args...) under nvcc. Compiled by a host compiler (tests only, with the
// stand-in CUDA headers of tests/cuda_host first on the include path), the same call runs the
// kernel in the host emulation of tests/cuda_host/emulation.h.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

namespace svdprune::cuda {

template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream,
            Args... args) {
#ifdef __CUDACC__
  kernel<<<grid, block, shared_bytes, stream>>>(args...);
#else
  (void)stream;  // the emulation runs each launch to completion, in order
  host_emulation::launch_kernel(kernel, grid, block, shared_bytes, args...);
#endif
}

}  // namespace svdprune::cuda
