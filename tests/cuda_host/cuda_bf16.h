// Host stand-in for <cuda_bf16.h>, for tests only: the bfloat16 type and the conversion
// csrc/cuda uses (the upper 16 bits of a float32, widened exactly).
#pragma once

#include <cstdint>
#include <cstring>

struct __nv_bfloat16 {
  uint16_t bits;
};

inline float __bfloat162float(__nv_bfloat16 b) {
  const uint32_t bits = static_cast<uint32_t>(b.bits) << 16;
  float value;
  std::memcpy(&value, &bits, sizeof bits);
  return value;
}
