// Host stand-in for <cuda_fp16.h>, for tests only: the 16-bit float type and the conversion
// csrc/cuda uses (IEEE binary16, exact widening to float).
#pragma once

#include <cstdint>
#include <cstring>

struct __half {
  uint16_t bits;
};

inline float __half2float(__half h) {
  const uint32_t sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
  const uint32_t exponent = (h.bits >> 10) & 0x1fu, mantissa = h.bits & 0x3ffu;
  float magnitude;
  if (exponent == 0x1f) {
    const uint32_t bits = 0x7f800000u | (mantissa << 13);  // Inf, or NaN keeping its payload
    std::memcpy(&magnitude, &bits, sizeof bits);
  } else {
    // (1 + m / 2^10) 2^(e - 15) for normal numbers, m / 2^10 2^-14 for subnormals: exact in float.
    const float significand = exponent == 0 ? mantissa / 1024.0f : 1.0f + mantissa / 1024.0f;
    const int power = (exponent == 0 ? 1 : static_cast<int>(exponent)) - 15;
    magnitude = power >= 0 ? significand * static_cast<float>(1u << power)
                           : significand / static_cast<float>(1u << -power);
  }
  uint32_t bits;
  std::memcpy(&bits, &magnitude, sizeof bits);
  bits |= sign;
  float value;
  std::memcpy(&value, &bits, sizeof bits);
  return value;
}
