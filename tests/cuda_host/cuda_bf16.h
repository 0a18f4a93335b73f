// Host stand-in for <cuda_bf16.h>, for tests only: the bfloat16 type and the conversions
// csrc/cuda uses: widening (the upper 16 bits of a float32, exactly) and __float2bfloat16_rn
// (round to nearest, ties to even; ±0 and ±Inf as they are, NaN to NaN).
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

inline __nv_bfloat16 __float2bfloat16_rn(float a) {
  uint32_t bits;
  std::memcpy(&bits, &a, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return {static_cast<uint16_t>((bits >> 16) | 0x0040u)};  // NaN, quiet
  // Adding just under half a unit of the last kept bit, plus that bit, rounds to nearest with
  // ties to even; a carry out of the mantissa goes into the exponent (up to Inf) as it should.
  return {static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16)};
}
