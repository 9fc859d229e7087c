// cpu_math.h: our vectorisable exp, the kernel profiles and their sums over bandwidths.
// One of the parts of csrc/gpflow_cpu.cpp, which includes it; see the header comment there.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace gpflow_cpu {

constexpr int JB = 256;          // inner points per block
constexpr int EXACT_MAX_D = 8;   // reference.EXACT_MAX_D

// ---------------------------------------------------------------------------------------------
// exp: x = n ln2 + r with |r| <= ln2/2 (Cody–Waite split of ln2), e^r by its Taylor polynomial
// (degree 7 in float32: truncation 5e-9 relative; degree 13 in float64: 2e-17), 2^n built in the
// exponent bits. Arguments are clamped to [−80, 80] (float32) / [−700, 700] (float64), the same
// floor as reference.exp_ (EXP_FLOOR), which keeps results normal numbers.

inline __attribute__((always_inline)) float fexp(float x) {
  x = x < -80.0f ? -80.0f : (x > 80.0f ? 80.0f : x);
  // n = round(x / ln2) by the 1.5·2^23 shifter (no floor call, which GCC vectorises only without
  // trapping math); its low bits are n in two's complement.
  const float t = x * 1.44269504088896341f + 12582912.0f;
  const float n = t - 12582912.0f;
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t e = (__builtin_bit_cast(int32_t, t) - 0x4B400000 + 127) << 23;
  return p * __builtin_bit_cast(float, e);
}

inline __attribute__((always_inline)) double fexp(double x) {
  x = x < -700.0 ? -700.0 : (x > 700.0 ? 700.0 : x);
  const double t = x * 1.4426950408889634074 + 6755399441055744.0;  // 1.5·2^52 shifter
  const double n = t - 6755399441055744.0;
  const double r = (x - n * 6.93145751953125e-1) - n * 1.42860682030941723212e-6;
  double p = 1.0 / 6227020800.0;
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  const int64_t e = (__builtin_bit_cast(int64_t, t) - 0x4338000000000000LL + 1023) << 52;
  return p * __builtin_bit_cast(double, e);
}

// ---------------------------------------------------------------------------------------------
// kernel profiles φ(u), φ'(u), φ''(u) with u = r²/σ² (gpflow_kernels/kernels.py; kinds as
// kernels.fused_code). Derivatives singular at u = 0 are 0 there.

struct Spec {
  double pc, ph, peps2;  // polyharmonic sign, exponent (k/2, or j = k/2 for kind 5), eps²
  bool logform;          // kind 5: (c/2) w^j log w (kinds 4 and 5 share one instantiation, KIND = 4)
};

template <typename T, int KIND, int ORDER>
inline __attribute__((always_inline)) void profile(T u, const Spec& s, T& p0, T& p1, T& p2) {
  if constexpr (KIND == 0) {  // gaussian
    const T e = fexp(T(-0.5) * u);
    p0 = e;
    p1 = T(-0.5) * e;
    p2 = T(0.25) * e;
  } else if constexpr (KIND == 1) {  // imq
    const T w = T(1) / std::sqrt(T(1) + u);
    const T w3 = w * w * w;
    p0 = w;
    p1 = T(-0.5) * w3;
    p2 = T(0.75) * w3 * w * w;
  } else if constexpr (KIND == 2 || KIND == 3) {  // laplace, energy
    const bool pos = u > T(0);
    const T us = pos ? u : T(1);
    const T ss = std::sqrt(us);
    const T s0 = pos ? ss : T(0);
    if constexpr (KIND == 2) {
      const T e = fexp(-ss);
      p0 = pos ? e : T(1);
      p1 = pos ? -e / (T(2) * ss) : T(0);
      p2 = pos ? e * (T(0.25) / us + T(0.25) / (us * ss)) : T(0);
    } else {
      p0 = -s0;
      p1 = pos ? T(-0.5) / ss : T(0);
      p2 = pos ? T(0.25) / (us * ss) : T(0);
    }
  } else {  // polyharmonic: c w^h, or (c/2) w^j log w (logform), w = u + eps²; scalar std::pow/log
    const T w = u + T(s.peps2);
    const bool pos = w > T(0);
    const T ws = pos ? w : T(1);
    const T c = T(s.pc), h = T(s.ph);
    if (!s.logform) {
      p0 = pos ? c * std::pow(ws, h) : T(0);
      if constexpr (ORDER >= 1) p1 = pos ? c * h * std::pow(ws, h - T(1)) : T(0);
      if constexpr (ORDER >= 2) p2 = pos ? c * h * (h - T(1)) * std::pow(ws, h - T(2)) : T(0);
    } else {
      const T lw = std::log(ws);
      p0 = pos ? T(0.5) * c * std::pow(ws, h) * lw : T(0);
      if constexpr (ORDER >= 1) p1 = pos ? T(0.5) * c * std::pow(ws, h - T(1)) * (h * lw + T(1)) : T(0);
      if constexpr (ORDER >= 2)
        p2 = pos ? T(0.5) * c * std::pow(ws, h - T(2)) * (h * (h - T(1)) * lw + T(2) * h - T(1)) : T(0);
    }
  }
}

// Σ over the K bandwidths of (k, dk/dr², d²k/d(r²)²) for a block: k0/k1/k2[q] from r2[q].
template <typename T, int KIND, int ORDER>
inline void radial_block(const T* r2, int nb, const T* inv, int K, const Spec& s, T* k0, T* k1, T* k2) {
  if (K == 1) {
    const T ib = inv[0], ib2 = ib * ib;
#pragma omp simd
    for (int q = 0; q < nb; ++q) {
      T p0, p1 = T(0), p2 = T(0);
      profile<T, KIND, ORDER>(r2[q] * ib, s, p0, p1, p2);
      k0[q] = p0;
      if constexpr (ORDER >= 1) k1[q] = p1 * ib;
      if constexpr (ORDER >= 2) k2[q] = p2 * ib2;
    }
    return;
  }
  for (int q = 0; q < nb; ++q) {
    k0[q] = T(0);
    if constexpr (ORDER >= 1) k1[q] = T(0);
    if constexpr (ORDER >= 2) k2[q] = T(0);
  }
  for (int b = 0; b < K; ++b) {
    const T ib = inv[b], ib2 = ib * ib;
#pragma omp simd
    for (int q = 0; q < nb; ++q) {
      T p0, p1 = T(0), p2 = T(0);
      profile<T, KIND, ORDER>(r2[q] * ib, s, p0, p1, p2);
      k0[q] += p0;
      if constexpr (ORDER >= 1) k1[q] += p1 * ib;
      if constexpr (ORDER >= 2) k2[q] += p2 * ib2;
    }
  }
}

}  // namespace gpflow_cpu
