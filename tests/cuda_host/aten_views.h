// Column-major matrices in host memory as ATen views, for the cuBLAS and cuSOLVER stand-ins.
#pragma once

#include <cuda_runtime.h>

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>

namespace host_emulation {

inline std::optional<at::ScalarType> scalar_type(cudaDataType type) {
  switch (type) {
    case CUDA_R_16F: return at::kHalf;
    case CUDA_R_16BF: return at::kBFloat16;
    case CUDA_R_32F: return at::kFloat;
    case CUDA_R_64F: return at::kDouble;
  }
  return std::nullopt;
}

// The batch of `batch` rows×columns matrices at `data`, element (i, j) of matrix b at
// data[b * stride + i * row_step + j * column_step], as a [batch, rows, columns] view.
inline at::Tensor strided_matrices(const void* data, at::ScalarType type, int64_t batch, int64_t rows,
                                   int64_t columns, int64_t row_step, int64_t column_step, int64_t stride) {
  const int64_t extent = rows == 0 || columns == 0 || batch == 0
                             ? 0
                             : (batch - 1) * stride + (rows - 1) * row_step + (columns - 1) * column_step + 1;
  const auto storage = at::from_blob(const_cast<void*>(data), {extent}, at::TensorOptions().dtype(type));
  return storage.as_strided({batch, rows, columns}, {stride, row_step, column_step});
}

}  // namespace host_emulation
