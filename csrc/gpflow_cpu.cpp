// Fused CPU kernels for the pair reductions of gpflow_kernels, exposed through pybind11 as
// gpflow_kernels._cpu_ext and used by backend="auto"/"cpu" on CPU tensors (gpflow_kernels/_cpu.py).
//
// No torch headers, as for the CUDA extension: Python passes raw pointers to contiguous arrays,
// sizes, a dtype code and the thread count (torch.get_num_threads()). The contract and the test
// oracle are gpflow_kernels/reference.py; inputs arrive centred on the mean of y as there.
//
// Layout. One "outer" point at a time (a row x_i for the forward passes and the x gradients, a
// column y_j for the y/weight gradients), spread over torch's OpenMP threads (parallel_chunks);
// its "inner" points come transposed, (D, L), so that each pass over a block of JB inner points is
// a unit-stride loop the compiler vectorises (#pragma omp simd). A block's squared distances,
// kernel values and weights live in small stack buffers (L1), and the reductions keep their
// accumulators in registers: no N×M array is ever written. exp is our own vectorisable
// Cody–Waite + polynomial (fexp); sqrt is the hardware's; the polyharmonic kernels call
// std::pow/std::log (scalar, correct, slower).
//
// Distances: exact differences for D <= EXACT_MAX_D (8, as the reference), above that
// |x|² + |y|² − 2 x·y on the centred points with round-off-sized values snapped to 0 (as the
// reference), and the KDE logits in the reference's flash form (−|y|²/2 + x·y)/σ² there.

#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <vector>


namespace py = pybind11;

// A named namespace, not an anonymous one: half of the instantiations live in a second object
// file (GPFLOW_CPU_PART below) and link against the first.
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

// ---------------------------------------------------------------------------------------------
// geometry

// The inner set, transposed: pts[d * L + q], with squared norms nrm[q] (used when D > 8).
template <typename T>
struct Inner {
  const T* pts;
  const T* nrm;
  int64_t L;
};

// Σ_d o_d inner_d[q] for q in [q0, q0 + nb).
template <typename T>
inline void dot_block(const T* o, const Inner<T>& in, int D, int64_t q0, int nb, T* out) {
  const T* c = in.pts + q0;
  const T o0 = o[0];
#pragma omp simd
  for (int q = 0; q < nb; ++q) out[q] = o0 * c[q];
  for (int d = 1; d < D; ++d) {
    const T od = o[d];
    const T* cd = c + d * in.L;
#pragma omp simd
    for (int q = 0; q < nb; ++q) out[q] += od * cd[q];
  }
}

// r²[q] = |o − inner_q|².
// |o − c_q|² for a compile-time D, o in registers, c transposed with row stride ld.
template <typename T, int DC>
inline __attribute__((always_inline)) T r2_at(const T (&od)[DC], const T* c, int64_t ld, int q) {
  T acc = T(0);
  for (int d = 0; d < DC; ++d) {
    const T e = od[d] - c[d * ld + q];
    acc += e * e;
  }
  return acc;
}

// r²[q] for a compile-time D: one pass, the coordinates in registers.
template <typename T, int DC>
inline void sqdist_fixed(const T* o, const T* c, int64_t ld, int nb, T* r2) {
  T od[DC];
  for (int d = 0; d < DC; ++d) od[d] = o[d];
#pragma omp simd
  for (int q = 0; q < nb; ++q) r2[q] = r2_at(od, c, ld, q);
}

template <typename T>
inline void sqdist_block(const T* o, T oo, const Inner<T>& in, int D, int64_t q0, int nb, T* r2) {
  const T* c = in.pts + q0;
  switch (D) {  // the common small dimensions in one pass each
    case 1: return sqdist_fixed<T, 1>(o, c, in.L, nb, r2);
    case 2: return sqdist_fixed<T, 2>(o, c, in.L, nb, r2);
    case 3: return sqdist_fixed<T, 3>(o, c, in.L, nb, r2);
    default: break;
  }
  if (D <= EXACT_MAX_D) {
    const T o0 = o[0];
#pragma omp simd
    for (int q = 0; q < nb; ++q) {
      const T e = o0 - c[q];
      r2[q] = e * e;
    }
    for (int d = 1; d < D; ++d) {
      const T od = o[d];
      const T* cd = c + d * in.L;
#pragma omp simd
      for (int q = 0; q < nb; ++q) {
        const T e = od - cd[q];
        r2[q] += e * e;
      }
    }
    return;
  }
  dot_block(o, in, D, q0, nb, r2);
  const T* nn = in.nrm + q0;
  const T tol = T(8) * std::numeric_limits<T>::epsilon();
#pragma omp simd
  for (int q = 0; q < nb; ++q) {
    const T s = oo + nn[q];
    const T v = s - T(2) * r2[q];
    r2[q] = v <= tol * s ? T(0) : v;  // below this, r² is round-off of the expansion
  }
}

template <typename T>
inline T sum_block(const T* w, int nb) {
  T s = T(0);
#pragma omp simd reduction(+ : s)
  for (int q = 0; q < nb; ++q) s += w[q];
  return s;
}

// acc[d] += Σ_q w[q] inner_d[q].
template <typename T>
inline void wsum_coords(const T* w, const Inner<T>& in, int D, int64_t q0, int nb, T* acc) {
  for (int d = 0; d < D; ++d) {
    const T* cd = in.pts + d * in.L + q0;
    T s = T(0);
#pragma omp simd reduction(+ : s)
    for (int q = 0; q < nb; ++q) s += w[q] * cd[q];
    acc[d] += s;
  }
}

// Σ_q w[q], and acc[d] += Σ_q w[q] inner_d[q]: one pass for D <= 4, else D + 1 passes.
template <typename T, int DC>
inline T wsum_fixed(const T* w, const T* c, int64_t ld, int nb, T* acc) {
  T s = T(0), a0 = T(0), a1 = T(0), a2 = T(0), a3 = T(0);
  const T* c1 = c + (DC > 1 ? ld : 0);
  const T* c2 = c + (DC > 2 ? 2 * ld : 0);
  const T* c3 = c + (DC > 3 ? 3 * ld : 0);
#pragma omp simd reduction(+ : s, a0, a1, a2, a3)
  for (int q = 0; q < nb; ++q) {
    s += w[q];
    a0 += w[q] * c[q];
    if constexpr (DC > 1) a1 += w[q] * c1[q];
    if constexpr (DC > 2) a2 += w[q] * c2[q];
    if constexpr (DC > 3) a3 += w[q] * c3[q];
  }
  acc[0] += a0;
  if constexpr (DC > 1) acc[1] += a1;
  if constexpr (DC > 2) acc[2] += a2;
  if constexpr (DC > 3) acc[3] += a3;
  return s;
}

template <typename T>
inline T wsum_all(const T* w, const Inner<T>& in, int D, int64_t q0, int nb, T* acc) {
  const T* c = in.pts + q0;
  switch (D) {
    case 1: return wsum_fixed<T, 1>(w, c, in.L, nb, acc);
    case 2: return wsum_fixed<T, 2>(w, c, in.L, nb, acc);
    case 3: return wsum_fixed<T, 3>(w, c, in.L, nb, acc);
    case 4: return wsum_fixed<T, 4>(w, c, in.L, nb, acc);
    default: wsum_coords(w, in, D, q0, nb, acc); return sum_block(w, nb);
  }
}

// The soft assignment's inner loop for a compile-time D <= 4: −r²/(2σ²) and its block maximum in
// one pass (logits_fixed), then p = exp(ℓ − m) with Σp and Σ p·c_d in another (expsum_fixed).
template <typename T, int DC>
inline T logits_fixed(const T* o, const T* c, int64_t ld, int nb, T scale, T* l) {
  T od[DC];
  for (int d = 0; d < DC; ++d) od[d] = o[d];
  T bm = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : bm)
  for (int q = 0; q < nb; ++q) {
    l[q] = r2_at(od, c, ld, q) * scale;
    bm = std::max(bm, l[q]);
  }
  return bm;
}

template <typename T, int DC>
inline T expsum_fixed(const T* l, T m, const T* c, int64_t ld, int nb, T* acc) {
  T s = T(0), a0 = T(0), a1 = T(0), a2 = T(0), a3 = T(0);
  const T* c1 = c + (DC > 1 ? ld : 0);
  const T* c2 = c + (DC > 2 ? 2 * ld : 0);
  const T* c3 = c + (DC > 3 ? 3 * ld : 0);
#pragma omp simd reduction(+ : s, a0, a1, a2, a3)
  for (int q = 0; q < nb; ++q) {
    const T p = fexp(l[q] - m);
    s += p;
    a0 += p * c[q];
    if constexpr (DC > 1) a1 += p * c1[q];
    if constexpr (DC > 2) a2 += p * c2[q];
    if constexpr (DC > 3) a3 += p * c3[q];
  }
  acc[0] += a0;
  if constexpr (DC > 1) acc[1] += a1;
  if constexpr (DC > 2) acc[2] += a2;
  if constexpr (DC > 3) acc[3] += a3;
  return s;
}

template <typename T, int DC>
void softmax_row_fixed(const T* xi, const Inner<T>& in, int64_t M, T ib, T* acc, T& m, T& tot) {
  alignas(64) T l[JB];
  for (int64_t q0 = 0; q0 < M; q0 += JB) {
    const int nb = static_cast<int>(std::min<int64_t>(JB, M - q0));
    const T bm = logits_fixed<T, DC>(xi, in.pts + q0, in.L, nb, T(-0.5) * ib, l);
    const T mn = std::max(m, bm);
    const T scale = std::exp(m - mn);  // 0 on the first block
    for (int d = 0; d < DC; ++d) acc[d] *= scale;
    tot = tot * scale + expsum_fixed<T, DC>(l, mn, in.pts + q0, in.L, nb, acc);
    m = mn;
  }
}

template <typename T>
inline T sqnorm(const T* o, int D) {
  T s = T(0);
  for (int d = 0; d < D; ++d) s += o[d] * o[d];
  return s;
}

// f(t) for t in [0, total) on up to nt OpenMP threads, `chunk` indices at a time. The extension
// links libgomp.so.1, which resolves to the copy torch has already loaded (same soname; _cpu.py
// imports torch first), so the kernels run on torch's own OpenMP pool: no second set of threads
// competing with torch's spinning workers between ops (measured: std::threads started per call
// ran 1.5x slower right after a torch op). Like torch's ops, they then need one thread in a child
// forked after parallel work (DataLoader workers set that); with one thread no pool is touched.
// Calls with fewer than MIN_PAIRS_PER_THREAD pairs per thread use fewer threads.
constexpr int64_t MIN_PAIRS_PER_THREAD = int64_t(1) << 16;

template <typename F>
void parallel_chunks(int64_t total, int64_t chunk, int64_t pairs, int nt, F f) {
  const int64_t by_work = std::max<int64_t>(1, pairs / MIN_PAIRS_PER_THREAD);
  const int k = static_cast<int>(std::min<int64_t>({int64_t(nt), (total + chunk - 1) / chunk, by_work}));
  if (k <= 1) {
    for (int64_t t = 0; t < total; ++t) f(t);
    return;
  }
#pragma omp parallel for schedule(dynamic, chunk) num_threads(k)
  for (int64_t t = 0; t < total; ++t) f(t);
}

// Loop over the B × L outer points (each against `inner` points) on nt threads; f(b, i).
template <typename F>
void for_outer(int64_t B, int64_t L, int64_t inner, int nt, F f) {
  parallel_chunks(B * L, 8, B * L * inner, nt, [&](int64_t t) { f(t / L, t % L); });
}

// r² and the kernel terms of one block: sqdist_block then radial_block, in one pass when D <= 3
// and there is one bandwidth (the usual case).
template <typename T, int KIND, int ORDER, int DC>
inline void kernel_fixed(const T* o, const T* c, int64_t ld, int nb, T ib, const Spec& s, T* k0, T* k1, T* k2) {
  T od[DC];
  for (int d = 0; d < DC; ++d) od[d] = o[d];
  const T ib2 = ib * ib;
#pragma omp simd
  for (int q = 0; q < nb; ++q) {
    const T r2 = r2_at(od, c, ld, q);
    T p0, p1 = T(0), p2 = T(0);
    profile<T, KIND, ORDER>(r2 * ib, s, p0, p1, p2);
    k0[q] = p0;
    if constexpr (ORDER >= 1) k1[q] = p1 * ib;
    if constexpr (ORDER >= 2) k2[q] = p2 * ib2;
  }
}

template <typename T, int KIND, int ORDER>
inline void kernel_block(const T* o, T oo, const Inner<T>& in, int D, int64_t q0, int nb, const T* inv, int K,
                         const Spec& s, T* r2, T* k0, T* k1, T* k2) {
  if (K == 1 && D <= 3) {
    const T* c = in.pts + q0;
    if (D == 1) return kernel_fixed<T, KIND, ORDER, 1>(o, c, in.L, nb, inv[0], s, k0, k1, k2);
    if (D == 2) return kernel_fixed<T, KIND, ORDER, 2>(o, c, in.L, nb, inv[0], s, k0, k1, k2);
    return kernel_fixed<T, KIND, ORDER, 3>(o, c, in.L, nb, inv[0], s, k0, k1, k2);
  }
  sqdist_block(o, oo, in, D, q0, nb, r2);
  radial_block<T, KIND, ORDER>(r2, nb, inv, K, s, k0, k1, k2);
}

// ---------------------------------------------------------------------------------------------
// the primitives (shapes as in reference.py; "T" marks a transposed (D, L) or (P, L) array)

//: Transposed arrays (D, L) are padded to a multiple of PADQ columns (zeros), row-major ones
//: used by the tiled reductions to a multiple of PADD values per row (gpflow_kernels/_cpu.py pads
//: them the same way), so that whole vectors can always be loaded.
constexpr int PADQ = 32;
constexpr int PADD = 16;
inline int64_t padq(int64_t n) { return (n + PADQ - 1) / PADQ * PADQ; }
inline int64_t padd(int64_t n) { return (n + PADD - 1) / PADD * PADD; }

struct Sizes {
  int64_t B, N, M;  // batch, rows of x, rows of y
  int D, P, K;      // dimension, values per source point, bandwidths
  int64_t inv_bs;   // stride of inv over the batch (0 when shared)
  int nt;           // threads
  int64_t Np, Mp;   // padded N and M: the strides of the transposed arrays
  int64_t Dp, Pp;   // padded D and P: the row strides of the padded row-major arrays
};

// out_i[p] = Σ_j k(x_i, y_j) v_j[p]  (v null: P = 1 and v = 1)
template <typename T, int KIND>
void integral_fwd(const Sizes& z, const Spec& s, const T* x, const T* yT, const T* yn, const T* vT, const T* inv,
                  T* out) {
  for_outer(z.B, z.N, z.M, z.nt, [&](int64_t b, int64_t i) {
    alignas(64) T r2[JB], k0[JB];
    const T* xi = x + (b * z.N + i) * z.D;
    const Inner<T> in{yT + b * z.D * z.Mp, yn ? yn + b * z.M : nullptr, z.Mp};
    const T* vb = vT ? vT + b * z.P * z.Mp : nullptr;
    const T xx = sqnorm(xi, z.D);
    T* o = out + (b * z.N + i) * z.P;
    for (int p = 0; p < z.P; ++p) o[p] = T(0);
    for (int64_t q0 = 0; q0 < z.M; q0 += JB) {
      const int nb = static_cast<int>(std::min<int64_t>(JB, z.M - q0));
      kernel_block<T, KIND, 0>(xi, xx, in, z.D, q0, nb, inv + b * z.inv_bs, z.K, s, r2, k0, nullptr, nullptr);
      if (!vb) {
        o[0] += sum_block(k0, nb);
      } else if (z.P <= 4) {  // one pass (wsum_fixed's sums of k0 times the values' rows)
        const Inner<T> vin{vb, nullptr, z.Mp};
        wsum_all(k0, vin, z.P, q0, nb, o);
      } else {
        for (int p = 0; p < z.P; ++p) {
          const T* vp = vb + p * z.Mp + q0;
          T acc = T(0);
#pragma omp simd reduction(+ : acc)
          for (int q = 0; q < nb; ++q) acc += k0[q] * vp[q];
          o[p] += acc;
        }
      }
    }
  });
}

// gx_i = Σ_j W_ij (x_i − y_j), W_ij = 2 k'_ij (g_i · v_j)
template <typename T, int KIND>
void integral_bwd_x(const Sizes& z, const Spec& s, const T* x, const T* yT, const T* yn, const T* vT, const T* g,
                    const T* inv, T* gx) {
  for_outer(z.B, z.N, z.M, z.nt, [&](int64_t b, int64_t i) {
    alignas(64) T r2[JB], k0[JB], k1[JB], w[JB];
    const T* xi = x + (b * z.N + i) * z.D;
    const T* gi = g + (b * z.N + i) * z.P;
    const Inner<T> in{yT + b * z.D * z.Mp, yn ? yn + b * z.M : nullptr, z.Mp};
    const T* vb = vT ? vT + b * z.P * z.Mp : nullptr;
    const T xx = sqnorm(xi, z.D);
    std::vector<T> acc(z.D, T(0));
    T* a = acc.data();
    T wsum = T(0);
    for (int64_t q0 = 0; q0 < z.M; q0 += JB) {
      const int nb = static_cast<int>(std::min<int64_t>(JB, z.M - q0));
      kernel_block<T, KIND, 1>(xi, xx, in, z.D, q0, nb, inv + b * z.inv_bs, z.K, s, r2, k0, k1, nullptr);
      if (!vb) {
        const T c = T(2) * gi[0];
#pragma omp simd
        for (int q = 0; q < nb; ++q) w[q] = c * k1[q];
      } else {
        const T* v0 = vb + q0;
        const T g0 = gi[0];
#pragma omp simd
        for (int q = 0; q < nb; ++q) w[q] = g0 * v0[q];
        for (int p = 1; p < z.P; ++p) {
          const T* vp = vb + p * z.Mp + q0;
          const T gp = gi[p];
#pragma omp simd
          for (int q = 0; q < nb; ++q) w[q] += gp * vp[q];
        }
#pragma omp simd
        for (int q = 0; q < nb; ++q) w[q] *= T(2) * k1[q];
      }
      wsum += wsum_all(w, in, z.D, q0, nb, a);
    }
    T* o = gx + (b * z.N + i) * z.D;
    for (int d = 0; d < z.D; ++d) o[d] = xi[d] * wsum - a[d];
  });
}

// Column pass of the integral's backward, for each y_j over the rows x_i:
// gy_j = Σ_i W_ij (y_j − x_i), W_ij = 2 k'_ij (g_i · v_j);  gv_j[p] = Σ_i k_ij g_i[p].
template <typename T, int KIND, int ORDER>
void integral_bwd_y(const Sizes& z, const Spec& s, const T* y, const T* xT, const T* xn, const T* v, const T* gT,
                    const T* inv, T* gy, T* gv) {
  for_outer(z.B, z.M, z.N, z.nt, [&](int64_t b, int64_t j) {
    alignas(64) T r2[JB], k0[JB], k1[JB], w[JB];
    const T* yj = y + (b * z.M + j) * z.D;
    const T* vj = v ? v + (b * z.M + j) * z.P : nullptr;
    const Inner<T> in{xT + b * z.D * z.Np, xn ? xn + b * z.N : nullptr, z.Np};
    const T* gb = gT + b * z.P * z.Np;
    const T yy = sqnorm(yj, z.D);
    std::vector<T> a(z.D + z.P, T(0));
    T* ay = a.data();
    T* av = a.data() + z.D;
    T wsum = T(0);
    for (int64_t q0 = 0; q0 < z.N; q0 += JB) {
      const int nb = static_cast<int>(std::min<int64_t>(JB, z.N - q0));
      kernel_block<T, KIND, ORDER>(yj, yy, in, z.D, q0, nb, inv + b * z.inv_bs, z.K, s, r2, k0, k1, nullptr);
      if (gv) {
        for (int p = 0; p < z.P; ++p) {
          const T* gp = gb + p * z.Np + q0;
          T acc = T(0);
#pragma omp simd reduction(+ : acc)
          for (int q = 0; q < nb; ++q) acc += k0[q] * gp[q];
          av[p] += acc;
        }
      }
      if constexpr (ORDER >= 1) {
        if (gy) {
          const T v0 = vj ? vj[0] : T(1);
          const T* g0 = gb + q0;
#pragma omp simd
          for (int q = 0; q < nb; ++q) w[q] = v0 * g0[q];
          for (int p = 1; p < z.P; ++p) {
            const T vp = vj[p];
            const T* gp = gb + p * z.Np + q0;
#pragma omp simd
            for (int q = 0; q < nb; ++q) w[q] += vp * gp[q];
          }
#pragma omp simd
          for (int q = 0; q < nb; ++q) w[q] *= T(2) * k1[q];
          wsum += wsum_all(w, in, z.D, q0, nb, ay);
        }
      }
    }
    if (gy) {
      T* o = gy + (b * z.M + j) * z.D;
      for (int d = 0; d < z.D; ++d) o[d] = yj[d] * wsum - ay[d];
    }
    if (gv) {
      T* o = gv + (b * z.M + j) * z.P;
      for (int p = 0; p < z.P; ++p) o[p] = av[p];
    }
  });
}

// out_i = Σ_j a_j ∇_x k(x_i, y_j) = Σ_j 2 k'_ij a_j (x_i − y_j)
template <typename T, int KIND>
void grad_sum_fwd(const Sizes& z, const Spec& s, const T* x, const T* yT, const T* yn, const T* a, const T* inv,
                  T* out) {
  for_outer(z.B, z.N, z.M, z.nt, [&](int64_t b, int64_t i) {
    alignas(64) T r2[JB], k0[JB], k1[JB];
    const T* xi = x + (b * z.N + i) * z.D;
    const Inner<T> in{yT + b * z.D * z.Mp, yn ? yn + b * z.M : nullptr, z.Mp};
    const T* ab = a ? a + b * z.M : nullptr;
    const T xx = sqnorm(xi, z.D);
    std::vector<T> acc(z.D, T(0));
    T wsum = T(0);
    for (int64_t q0 = 0; q0 < z.M; q0 += JB) {
      const int nb = static_cast<int>(std::min<int64_t>(JB, z.M - q0));
      kernel_block<T, KIND, 1>(xi, xx, in, z.D, q0, nb, inv + b * z.inv_bs, z.K, s, r2, k0, k1, nullptr);
      if (ab) {
        const T* aq = ab + q0;
#pragma omp simd
        for (int q = 0; q < nb; ++q) k1[q] *= T(2) * aq[q];
      } else {
#pragma omp simd
        for (int q = 0; q < nb; ++q) k1[q] *= T(2);
      }
      wsum += wsum_all(k1, in, z.D, q0, nb, acc.data());
    }
    T* o = out + (b * z.N + i) * z.D;
    for (int d = 0; d < z.D; ++d) o[d] = xi[d] * wsum - acc[d];
  });
}

// Row pass of the gradient sum's backward: with d_ij = x_i − y_j, A_ij = 2 k'_ij a_j and
// C_ij = 4 k''_ij a_j (d_ij · g_i): gx_i = g_i Σ_j A_ij + Σ_j C_ij d_ij.
template <typename T, int KIND>
void grad_sum_bwd_x(const Sizes& z, const Spec& s, const T* x, const T* yT, const T* yn, const T* a, const T* g,
                    const T* inv, T* gx) {
  for_outer(z.B, z.N, z.M, z.nt, [&](int64_t b, int64_t i) {
    alignas(64) T r2[JB], k0[JB], k1[JB], k2[JB], dg[JB];
    const T* xi = x + (b * z.N + i) * z.D;
    const T* gi = g + (b * z.N + i) * z.D;
    const Inner<T> in{yT + b * z.D * z.Mp, yn ? yn + b * z.M : nullptr, z.Mp};
    const T* ab = a ? a + b * z.M : nullptr;
    const T xx = sqnorm(xi, z.D);
    T xg = T(0);
    for (int d = 0; d < z.D; ++d) xg += xi[d] * gi[d];
    std::vector<T> acc(z.D, T(0));
    T asum = T(0), csum = T(0);
    for (int64_t q0 = 0; q0 < z.M; q0 += JB) {
      const int nb = static_cast<int>(std::min<int64_t>(JB, z.M - q0));
      kernel_block<T, KIND, 2>(xi, xx, in, z.D, q0, nb, inv + b * z.inv_bs, z.K, s, r2, k0, k1, k2);
      dot_block(gi, in, z.D, q0, nb, dg);  // g_i · y_j
      const T* aq = ab ? ab + q0 : nullptr;
#pragma omp simd
      for (int q = 0; q < nb; ++q) {
        const T aj = aq ? aq[q] : T(1);
        k1[q] = T(2) * k1[q] * aj;                // A
        k2[q] = T(4) * k2[q] * aj * (xg - dg[q]);  // C
      }
      asum += sum_block(k1, nb);
      csum += wsum_all(k2, in, z.D, q0, nb, acc.data());
    }
    T* o = gx + (b * z.N + i) * z.D;
    for (int d = 0; d < z.D; ++d) o[d] = gi[d] * asum + xi[d] * csum - acc[d];
  });
}

// Column pass: gy_j = Σ_i C_ij (y_j − x_i) − Σ_i A_ij g_i;  ga_j = Σ_i 2 k'_ij (d_ij · g_i).
template <typename T, int KIND, int ORDER>
void grad_sum_bwd_y(const Sizes& z, const Spec& s, const T* y, const T* xT, const T* xn, const T* a, const T* gT,
                    const T* xgv, const T* inv, T* gy, T* ga) {
  for_outer(z.B, z.M, z.N, z.nt, [&](int64_t b, int64_t j) {
    alignas(64) T r2[JB], k0[JB], k1[JB], k2[JB], dg[JB];
    const T* yj = y + (b * z.M + j) * z.D;
    const Inner<T> in{xT + b * z.D * z.Np, xn ? xn + b * z.N : nullptr, z.Np};
    const Inner<T> gin{gT + b * z.D * z.Np, nullptr, z.Np};
    const T* xg = xgv + b * z.N;  // x_i · g_i
    const T aj = a ? a[b * z.M + j] : T(1);
    const T yy = sqnorm(yj, z.D);
    std::vector<T> acc(2 * z.D, T(0));
    T* cx = acc.data();       // Σ C_ij x_i
    T* ag = acc.data() + z.D;  // Σ 2k'_ij g_i
    T csum = T(0), gasum = T(0);
    for (int64_t q0 = 0; q0 < z.N; q0 += JB) {
      const int nb = static_cast<int>(std::min<int64_t>(JB, z.N - q0));
      kernel_block<T, KIND, ORDER>(yj, yy, in, z.D, q0, nb, inv + b * z.inv_bs, z.K, s, r2, k0, k1, k2);
      dot_block(yj, gin, z.D, q0, nb, dg);  // y_j · g_i
      const T* xgq = xg + q0;
#pragma omp simd
      for (int q = 0; q < nb; ++q) {
        dg[q] = xgq[q] - dg[q];  // d_ij · g_i
        k1[q] *= T(2);
      }
      if (ga) {
        T acc1 = T(0);
#pragma omp simd reduction(+ : acc1)
        for (int q = 0; q < nb; ++q) acc1 += k1[q] * dg[q];
        gasum += acc1;
      }
      if constexpr (ORDER >= 2) {
        if (gy) {
#pragma omp simd
          for (int q = 0; q < nb; ++q) k2[q] = T(4) * k2[q] * aj * dg[q];
          csum += wsum_all(k2, in, z.D, q0, nb, cx);
          wsum_coords(k1, gin, z.D, q0, nb, ag);
        }
      }
    }
    if (gy) {
      T* o = gy + (b * z.M + j) * z.D;
      for (int d = 0; d < z.D; ++d) o[d] = yj[d] * csum - cx[d] - aj * ag[d];
    }
    if (ga) ga[b * z.M + j] = gasum;
  });
}

// μ_i = Σ_j p_ij y_j with p_ij = softmax_j(ℓ_ij), and lse_i = log Σ_j exp ℓ_ij, by an online
// log-sum-exp over blocks.
template <typename T>
void softmax_fwd(const Sizes& z, const T* x, const T* yT, const T* yn, const T* inv, T* mu, T* lse) {
  for_outer(z.B, z.N, z.M, z.nt, [&](int64_t b, int64_t i) {
    alignas(64) T l[JB];
    const T* xi = x + (b * z.N + i) * z.D;
    const Inner<T> in{yT + b * z.D * z.Mp, yn ? yn + b * z.M : nullptr, z.Mp};
    const T ib = inv[b * z.inv_bs];
    const T xx = sqnorm(xi, z.D);
    std::vector<T> acc(z.D, T(0));
    T m = -std::numeric_limits<T>::infinity(), tot = T(0);
    switch (z.D) {  // two passes per block for the common small dimensions
      case 1: softmax_row_fixed<T, 1>(xi, in, z.M, ib, acc.data(), m, tot); break;
      case 2: softmax_row_fixed<T, 2>(xi, in, z.M, ib, acc.data(), m, tot); break;
      case 3: softmax_row_fixed<T, 3>(xi, in, z.M, ib, acc.data(), m, tot); break;
      case 4: softmax_row_fixed<T, 4>(xi, in, z.M, ib, acc.data(), m, tot); break;
      default: break;
    }
    for (int64_t q0 = 0; z.D > 4 && q0 < z.M; q0 += JB) {
      const int nb = static_cast<int>(std::min<int64_t>(JB, z.M - q0));
      T bm = -std::numeric_limits<T>::infinity();
      if (z.D <= EXACT_MAX_D) {
        sqdist_block(xi, xx, in, z.D, q0, nb, l);
        const T c = T(-0.5) * ib;
#pragma omp simd reduction(max : bm)
        for (int q = 0; q < nb; ++q) {
          l[q] *= c;
          bm = std::max(bm, l[q]);
        }
      } else {
        dot_block(xi, in, z.D, q0, nb, l);
        const T* nn = in.nrm + q0;
#pragma omp simd reduction(max : bm)
        for (int q = 0; q < nb; ++q) {
          l[q] = (l[q] - T(0.5) * nn[q]) * ib;
          bm = std::max(bm, l[q]);
        }
      }
      const T mn = std::max(m, bm);
      const T scale = std::exp(m - mn);  // 0 on the first block
#pragma omp simd
      for (int q = 0; q < nb; ++q) l[q] = fexp(l[q] - mn);
      for (int d = 0; d < z.D; ++d) acc[d] *= scale;
      tot = tot * scale + wsum_all(l, in, z.D, q0, nb, acc.data());
      m = mn;
    }
    T* o = mu + (b * z.N + i) * z.D;
    for (int d = 0; d < z.D; ++d) o[d] = acc[d] / tot;
    lse[b * z.N + i] = m + std::log(tot);
  });
}

// gx_i = Σ_j c_ij y_j / σ², c_ij = p_ij (g_i · y_j − g_i · μ_i), p_ij = exp(ℓ_ij − lse_i).
template <typename T>
void softmax_bwd_x(const Sizes& z, const T* x, const T* yT, const T* yn, const T* inv, const T* lse, const T* gmu,
                   const T* g, T* gx) {
  for_outer(z.B, z.N, z.M, z.nt, [&](int64_t b, int64_t i) {
    alignas(64) T l[JB], gy[JB];
    const T* xi = x + (b * z.N + i) * z.D;
    const T* gi = g + (b * z.N + i) * z.D;
    const Inner<T> in{yT + b * z.D * z.Mp, yn ? yn + b * z.M : nullptr, z.Mp};
    const T ib = inv[b * z.inv_bs];
    const T xx = sqnorm(xi, z.D);
    const T li = lse[b * z.N + i], gm = gmu[b * z.N + i];
    std::vector<T> acc(z.D, T(0));
    for (int64_t q0 = 0; q0 < z.M; q0 += JB) {
      const int nb = static_cast<int>(std::min<int64_t>(JB, z.M - q0));
      if (z.D <= EXACT_MAX_D) {
        sqdist_block(xi, xx, in, z.D, q0, nb, l);
        const T c = T(-0.5) * ib;
#pragma omp simd
        for (int q = 0; q < nb; ++q) l[q] *= c;
      } else {
        dot_block(xi, in, z.D, q0, nb, l);
        const T* nn = in.nrm + q0;
#pragma omp simd
        for (int q = 0; q < nb; ++q) l[q] = (l[q] - T(0.5) * nn[q]) * ib;
      }
      dot_block(gi, in, z.D, q0, nb, gy);
#pragma omp simd
      for (int q = 0; q < nb; ++q) l[q] = fexp(l[q] - li) * (gy[q] - gm);
      wsum_coords(l, in, z.D, q0, nb, acc.data());
    }
    T* o = gx + (b * z.N + i) * z.D;
    for (int d = 0; d < z.D; ++d) o[d] = acc[d] * ib;
  });
}

// gy_j = Σ_i p_ij g_i − Σ_i c_ij (y_j − x_i) / σ² (column pass over the rows x_i).
template <typename T>
void softmax_bwd_y(const Sizes& z, const T* y, const T* xT, const T* yn, const T* inv, const T* lse, const T* gmu,
                   const T* gT, T* gyo) {
  for_outer(z.B, z.M, z.N, z.nt, [&](int64_t b, int64_t j) {
    alignas(64) T l[JB], c[JB];
    const T* yj = y + (b * z.M + j) * z.D;
    const Inner<T> in{xT + b * z.D * z.Np, nullptr, z.Np};
    const Inner<T> gin{gT + b * z.D * z.Np, nullptr, z.Np};
    const T ib = inv[b * z.inv_bs];
    const T yy = sqnorm(yj, z.D);
    const T ynj = yn ? yn[b * z.M + j] : T(0);
    const T* lb = lse + b * z.N;
    const T* gmb = gmu + b * z.N;
    std::vector<T> acc(2 * z.D, T(0));
    T* pg = acc.data();        // Σ p g_i
    T* cx = acc.data() + z.D;  // Σ c x_i
    T csum = T(0);
    for (int64_t q0 = 0; q0 < z.N; q0 += JB) {
      const int nb = static_cast<int>(std::min<int64_t>(JB, z.N - q0));
      if (z.D <= EXACT_MAX_D) {
        sqdist_block(yj, yy, in, z.D, q0, nb, l);
        const T cc = T(-0.5) * ib;
#pragma omp simd
        for (int q = 0; q < nb; ++q) l[q] *= cc;
      } else {
        dot_block(yj, in, z.D, q0, nb, l);
#pragma omp simd
        for (int q = 0; q < nb; ++q) l[q] = (l[q] - T(0.5) * ynj) * ib;
      }
      dot_block(yj, gin, z.D, q0, nb, c);  // g_i · y_j
      const T* lq = lb + q0;
      const T* gq = gmb + q0;
#pragma omp simd
      for (int q = 0; q < nb; ++q) {
        const T p = fexp(l[q] - lq[q]);
        l[q] = p;
        c[q] = p * (c[q] - gq[q]);
      }
      csum += sum_block(c, nb);
      wsum_coords(l, gin, z.D, q0, nb, pg);
      wsum_coords(c, in, z.D, q0, nb, cx);
    }
    T* o = gyo + (b * z.M + j) * z.D;
    for (int d = 0; d < z.D; ++d) o[d] = pg[d] - (yj[d] * csum - cx[d]) * ib;
  });
}

// ---------------------------------------------------------------------------------------------
// The tiled path, for D > EXACT_MAX_D: MR outer points at a time, so that the two D-long
// products of each pair run as small register-blocked matrix products ("GEMM with the kernel in
// the epilogue"): tile_dots gives the MR × JBT dot products from the transposed inner points, the
// kernel and weights are computed on that tile in L1, and tile_reduce adds Σ_q w[r][q] C[q][:]
// from the row-major inner points with MR × 4 vector accumulators. GCC vector extensions (64-byte
// vectors; GCC splits them where the machine has narrower ones) make the blocking explicit.

template <typename T>
struct VecT;
template <>
struct VecT<float> {
  typedef float type __attribute__((vector_size(64)));
};
template <>
struct VecT<double> {
  typedef double type __attribute__((vector_size(64)));
};
template <typename T>
using Vec = typename VecT<T>::type;
template <typename T>
constexpr int LANES = 64 / sizeof(T);

template <typename T>
inline Vec<T> vload(const T* p) {
  Vec<T> v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
template <typename T>
inline void vstore(T* p, Vec<T> v) {
  __builtin_memcpy(p, &v, sizeof v);
}

constexpr int MR = 6;     // outer points per tile
constexpr int JBT = 128;  // inner points per tile block (a multiple of PADQ)

// out[r * JBT + q] = Σ_d a[r][d] CT[d * ld + q0 + q] for q < nb rounded up to 2 vectors (CT is padded).
template <typename T>
inline void tile_dots(const T* const* a, int D, const T* CT, int64_t ld, int64_t q0, int nb, T* out) {
  constexpr int W = LANES<T>;
  for (int q = 0; q < nb; q += 2 * W) {
    Vec<T> acc[MR][2];
    for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = Vec<T>{};
    const T* c = CT + q0 + q;
    for (int d = 0; d < D; ++d, c += ld) {
      const Vec<T> c0 = vload(c), c1 = vload(c + W);
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        const T s = a[r][d];
        acc[r][0] += s * c0;
        acc[r][1] += s * c1;
      }
    }
    for (int r = 0; r < MR; ++r) {
      vstore(out + r * JBT + q, acc[r][0]);
      vstore(out + r * JBT + q + W, acc[r][1]);
    }
  }
}

// acc[r * lda + dc + k·W + ·] += Σ_{q < nb} w[r * JBT + q] C[(q0 + q) * ldc + dc + k·W + ·], k < NV.
template <typename T, int NV>
inline void tile_reduce_chunk(const T* w, int nb, const T* C, int64_t ldc, int64_t q0, int dc, T* acc, int64_t lda) {
  constexpr int W = LANES<T>;
  Vec<T> a[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int k = 0; k < NV; ++k) a[r][k] = vload(acc + r * lda + dc + k * W);
  const T* c = C + q0 * ldc + dc;
  for (int q = 0; q < nb; ++q, c += ldc) {
    Vec<T> cv[NV];
    for (int k = 0; k < NV; ++k) cv[k] = vload(c + k * W);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const T s = w[r * JBT + q];
      for (int k = 0; k < NV; ++k) a[r][k] += s * cv[k];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int k = 0; k < NV; ++k) vstore(acc + r * lda + dc + k * W, a[r][k]);
}

// acc[r][:] += Σ_q w[r][q] C[q0 + q][:] over the padded width Dp (a multiple of W).
template <typename T>
inline void tile_reduce(const T* w, int nb, const T* C, int64_t ldc, int64_t q0, int64_t Dp, T* acc) {
  constexpr int W = LANES<T>;
  int dc = 0;
  for (; dc + 4 * W <= Dp; dc += 4 * W) tile_reduce_chunk<T, 4>(w, nb, C, ldc, q0, dc, acc, Dp);
  switch ((Dp - dc) / W) {
    case 3: tile_reduce_chunk<T, 3>(w, nb, C, ldc, q0, dc, acc, Dp); break;
    case 2: tile_reduce_chunk<T, 2>(w, nb, C, ldc, q0, dc, acc, Dp); break;
    case 1: tile_reduce_chunk<T, 1>(w, nb, C, ldc, q0, dc, acc, Dp); break;
    default: break;
  }
}

// r²[q] = |o|² + |c_q|² − 2 o·c_q from the dots, snapped to 0 below its round-off (as sqdist_block).
template <typename T>
inline void tile_r2(T* dr, T oo, const T* nn, int nb) {
  const T tol = T(8) * std::numeric_limits<T>::epsilon();
#pragma omp simd
  for (int q = 0; q < nb; ++q) {
    const T s = oo + nn[q];
    const T v = s - T(2) * dr[q];
    dr[q] = v <= tol * s ? T(0) : v;
  }
}

// Loop over the outer points MR at a time; f(b, i0, mr) with mr the tile's real rows.
template <typename F>
void for_tiles(int64_t B, int64_t L, int64_t inner, int nt, F f) {
  const int64_t tiles = (L + MR - 1) / MR;
  parallel_chunks(B * tiles, 2, B * L * inner, nt, [&](int64_t t) {
    const int64_t b = t / tiles, i0 = (t % tiles) * MR;
    f(b, i0, static_cast<int>(std::min<int64_t>(MR, L - i0)));
  });
}

// MR row pointers into a (L, stride) array from row i0, the last real row repeated.
template <typename T>
inline void row_ptrs(const T* base, int64_t stride, int64_t i0, int mr, const T** out) {
  for (int r = 0; r < MR; ++r) out[r] = base + (i0 + std::min(r, mr - 1)) * stride;
}

// Buffers of one tile.
template <typename T>
struct TileBuf {
  alignas(64) T d[MR * JBT], k0[MR * JBT], k1[MR * JBT], k2[MR * JBT], e[MR * JBT];
};

// The common front of every tiled pass: dots of the MR outer points with an inner block, turned
// into r² and the kernel terms of order ORDER, row by row.
template <typename T, int KIND, int ORDER>
inline void tile_kernel(TileBuf<T>& t, const T* const* o, const T* oo, const Inner<T>& in, int D, int64_t q0, int nb,
                        const T* inv, int K, const Spec& s) {
  tile_dots(o, D, in.pts, in.L, q0, nb, t.d);
  for (int r = 0; r < MR; ++r) {
    tile_r2(t.d + r * JBT, oo[r], in.nrm + q0, nb);
    radial_block<T, KIND, ORDER>(t.d + r * JBT, nb, inv, K, s, t.k0 + r * JBT, t.k1 + r * JBT, t.k2 + r * JBT);
  }
}

template <typename T>
inline void norms(const T* const* o, int D, T* oo) {
  for (int r = 0; r < MR; ++r) oo[r] = sqnorm(o[r], D);
}

template <typename T, int KIND>
void t_integral_fwd(const Sizes& z, const Spec& s, const T* x, const T* yT, const T* yn, const T* vR, const T* inv,
                    T* out) {
  for_tiles(z.B, z.N, z.M, z.nt, [&](int64_t b, int64_t i0, int mr) {
    TileBuf<T> t;
    const T* xr[MR];
    T oo[MR];
    row_ptrs(x + b * z.N * z.D, z.D, i0, mr, xr);
    norms(xr, z.D, oo);
    const Inner<T> in{yT + b * z.D * z.Mp, yn + b * z.M, z.Mp};
    std::vector<T> acc(MR * z.Pp, T(0));
    for (int64_t q0 = 0; q0 < z.M; q0 += JBT) {
      const int nb = static_cast<int>(std::min<int64_t>(JBT, z.M - q0));
      tile_kernel<T, KIND, 0>(t, xr, oo, in, z.D, q0, nb, inv + b * z.inv_bs, z.K, s);
      if (vR) tile_reduce(t.k0, nb, vR + b * z.M * z.Pp, z.Pp, q0, z.Pp, acc.data());
      else
        for (int r = 0; r < MR; ++r) acc[r * z.Pp] += sum_block(t.k0 + r * JBT, nb);
    }
    for (int r = 0; r < mr; ++r)
      for (int p = 0; p < z.P; ++p) out[(b * z.N + i0 + r) * z.P + p] = acc[r * z.Pp + p];
  });
}

template <typename T, int KIND>
void t_integral_bwd_x(const Sizes& z, const Spec& s, const T* x, const T* yT, const T* yn, const T* yR, const T* vT,
                      const T* g, const T* inv, T* gx) {
  for_tiles(z.B, z.N, z.M, z.nt, [&](int64_t b, int64_t i0, int mr) {
    TileBuf<T> t;
    const T *xr[MR], *gr[MR];
    T oo[MR], wsum[MR] = {};
    row_ptrs(x + b * z.N * z.D, z.D, i0, mr, xr);
    row_ptrs(g + b * z.N * z.P, z.P, i0, mr, gr);
    norms(xr, z.D, oo);
    const Inner<T> in{yT + b * z.D * z.Mp, yn + b * z.M, z.Mp};
    std::vector<T> acc(MR * z.Dp, T(0));
    for (int64_t q0 = 0; q0 < z.M; q0 += JBT) {
      const int nb = static_cast<int>(std::min<int64_t>(JBT, z.M - q0));
      tile_kernel<T, KIND, 1>(t, xr, oo, in, z.D, q0, nb, inv + b * z.inv_bs, z.K, s);
      if (vT) tile_dots(gr, z.P, vT + b * z.P * z.Mp, z.Mp, q0, nb, t.e);  // g_i · v_j
      for (int r = 0; r < MR; ++r) {
        T* w = t.k1 + r * JBT;
        const T* sv = t.e + r * JBT;
        const T g0 = gr[r][0];
#pragma omp simd
        for (int q = 0; q < nb; ++q) w[q] *= T(2) * (vT ? sv[q] : g0);
        wsum[r] += sum_block(w, nb);
      }
      tile_reduce(t.k1, nb, yR + b * z.M * z.Dp, z.Dp, q0, z.Dp, acc.data());
    }
    for (int r = 0; r < mr; ++r)
      for (int d = 0; d < z.D; ++d) gx[(b * z.N + i0 + r) * z.D + d] = xr[r][d] * wsum[r] - acc[r * z.Dp + d];
  });
}

template <typename T, int KIND, int ORDER>
void t_integral_bwd_y(const Sizes& z, const Spec& s, const T* y, const T* xT, const T* xn, const T* xR, const T* v,
                      const T* gT, const T* gR, const T* inv, T* gy, T* gv) {
  for_tiles(z.B, z.M, z.N, z.nt, [&](int64_t b, int64_t j0, int mr) {
    TileBuf<T> t;
    const T* yr[MR];
    const T* vr[MR];
    T oo[MR], wsum[MR] = {};
    row_ptrs(y + b * z.M * z.D, z.D, j0, mr, yr);
    if (v) row_ptrs(v + b * z.M * z.P, z.P, j0, mr, vr);
    norms(yr, z.D, oo);
    const Inner<T> in{xT + b * z.D * z.Np, xn + b * z.N, z.Np};
    std::vector<T> ay(gy ? MR * z.Dp : 0, T(0)), av(gv ? MR * z.Pp : 0, T(0));
    for (int64_t q0 = 0; q0 < z.N; q0 += JBT) {
      const int nb = static_cast<int>(std::min<int64_t>(JBT, z.N - q0));
      tile_kernel<T, KIND, ORDER>(t, yr, oo, in, z.D, q0, nb, inv + b * z.inv_bs, z.K, s);
      if (gv) tile_reduce(t.k0, nb, gR + b * z.N * z.Pp, z.Pp, q0, z.Pp, av.data());
      if constexpr (ORDER >= 1) {
        if (gy) {
          if (v) tile_dots(vr, z.P, gT + b * z.P * z.Np, z.Np, q0, nb, t.e);  // v_j · g_i
          const T* g0 = gT + b * z.P * z.Np + q0;
          for (int r = 0; r < MR; ++r) {
            T* w = t.k1 + r * JBT;
            const T* sv = v ? t.e + r * JBT : g0;
#pragma omp simd
            for (int q = 0; q < nb; ++q) w[q] *= T(2) * sv[q];
            wsum[r] += sum_block(w, nb);
          }
          tile_reduce(t.k1, nb, xR + b * z.N * z.Dp, z.Dp, q0, z.Dp, ay.data());
        }
      }
    }
    for (int r = 0; r < mr; ++r) {
      const int64_t j = b * z.M + j0 + r;
      if (gy)
        for (int d = 0; d < z.D; ++d) gy[j * z.D + d] = yr[r][d] * wsum[r] - ay[r * z.Dp + d];
      if (gv)
        for (int p = 0; p < z.P; ++p) gv[j * z.P + p] = av[r * z.Pp + p];
    }
  });
}

template <typename T, int KIND>
void t_grad_sum_fwd(const Sizes& z, const Spec& s, const T* x, const T* yT, const T* yn, const T* yR, const T* a,
                    const T* inv, T* out) {
  for_tiles(z.B, z.N, z.M, z.nt, [&](int64_t b, int64_t i0, int mr) {
    TileBuf<T> t;
    const T* xr[MR];
    T oo[MR], wsum[MR] = {};
    row_ptrs(x + b * z.N * z.D, z.D, i0, mr, xr);
    norms(xr, z.D, oo);
    const Inner<T> in{yT + b * z.D * z.Mp, yn + b * z.M, z.Mp};
    const T* ab = a ? a + b * z.M : nullptr;
    std::vector<T> acc(MR * z.Dp, T(0));
    for (int64_t q0 = 0; q0 < z.M; q0 += JBT) {
      const int nb = static_cast<int>(std::min<int64_t>(JBT, z.M - q0));
      tile_kernel<T, KIND, 1>(t, xr, oo, in, z.D, q0, nb, inv + b * z.inv_bs, z.K, s);
      for (int r = 0; r < MR; ++r) {
        T* w = t.k1 + r * JBT;
        if (ab) {
          const T* aq = ab + q0;
#pragma omp simd
          for (int q = 0; q < nb; ++q) w[q] *= T(2) * aq[q];
        } else {
#pragma omp simd
          for (int q = 0; q < nb; ++q) w[q] *= T(2);
        }
        wsum[r] += sum_block(w, nb);
      }
      tile_reduce(t.k1, nb, yR + b * z.M * z.Dp, z.Dp, q0, z.Dp, acc.data());
    }
    for (int r = 0; r < mr; ++r)
      for (int d = 0; d < z.D; ++d) out[(b * z.N + i0 + r) * z.D + d] = xr[r][d] * wsum[r] - acc[r * z.Dp + d];
  });
}

template <typename T, int KIND>
void t_grad_sum_bwd_x(const Sizes& z, const Spec& s, const T* x, const T* yT, const T* yn, const T* yR, const T* a,
                      const T* g, const T* inv, T* gx) {
  for_tiles(z.B, z.N, z.M, z.nt, [&](int64_t b, int64_t i0, int mr) {
    TileBuf<T> t;
    const T *xr[MR], *gr[MR];
    T oo[MR], xg[MR], asum[MR] = {}, csum[MR] = {};
    row_ptrs(x + b * z.N * z.D, z.D, i0, mr, xr);
    row_ptrs(g + b * z.N * z.D, z.D, i0, mr, gr);
    norms(xr, z.D, oo);
    for (int r = 0; r < MR; ++r) {
      xg[r] = T(0);
      for (int d = 0; d < z.D; ++d) xg[r] += xr[r][d] * gr[r][d];
    }
    const Inner<T> in{yT + b * z.D * z.Mp, yn + b * z.M, z.Mp};
    const T* ab = a ? a + b * z.M : nullptr;
    std::vector<T> acc(MR * z.Dp, T(0));
    for (int64_t q0 = 0; q0 < z.M; q0 += JBT) {
      const int nb = static_cast<int>(std::min<int64_t>(JBT, z.M - q0));
      tile_kernel<T, KIND, 2>(t, xr, oo, in, z.D, q0, nb, inv + b * z.inv_bs, z.K, s);
      tile_dots(gr, z.D, in.pts, in.L, q0, nb, t.e);  // g_i · y_j
      for (int r = 0; r < MR; ++r) {
        T* A = t.k1 + r * JBT;
        T* C = t.k2 + r * JBT;
        const T* dg = t.e + r * JBT;
        const T* aq = ab ? ab + q0 : nullptr;
        const T xgr = xg[r];
#pragma omp simd
        for (int q = 0; q < nb; ++q) {
          const T aj = aq ? aq[q] : T(1);
          A[q] = T(2) * A[q] * aj;
          C[q] = T(4) * C[q] * aj * (xgr - dg[q]);
        }
        asum[r] += sum_block(A, nb);
        csum[r] += sum_block(C, nb);
      }
      tile_reduce(t.k2, nb, yR + b * z.M * z.Dp, z.Dp, q0, z.Dp, acc.data());
    }
    for (int r = 0; r < mr; ++r)
      for (int d = 0; d < z.D; ++d)
        gx[(b * z.N + i0 + r) * z.D + d] = gr[r][d] * asum[r] + xr[r][d] * csum[r] - acc[r * z.Dp + d];
  });
}

template <typename T, int KIND, int ORDER>
void t_grad_sum_bwd_y(const Sizes& z, const Spec& s, const T* y, const T* xT, const T* xn, const T* xR, const T* a,
                      const T* gT, const T* gR, const T* xgv, const T* inv, T* gy, T* ga) {
  for_tiles(z.B, z.M, z.N, z.nt, [&](int64_t b, int64_t j0, int mr) {
    TileBuf<T> t;
    const T* yr[MR];
    T oo[MR], aj[MR], csum[MR] = {}, gasum[MR] = {};
    row_ptrs(y + b * z.M * z.D, z.D, j0, mr, yr);
    norms(yr, z.D, oo);
    for (int r = 0; r < MR; ++r) aj[r] = a ? a[b * z.M + j0 + std::min(r, mr - 1)] : T(1);
    const Inner<T> in{xT + b * z.D * z.Np, xn + b * z.N, z.Np};
    const T* xg = xgv + b * z.N;
    std::vector<T> cx(gy ? MR * z.Dp : 0, T(0)), ag(gy ? MR * z.Dp : 0, T(0));
    for (int64_t q0 = 0; q0 < z.N; q0 += JBT) {
      const int nb = static_cast<int>(std::min<int64_t>(JBT, z.N - q0));
      tile_kernel<T, KIND, ORDER>(t, yr, oo, in, z.D, q0, nb, inv + b * z.inv_bs, z.K, s);
      tile_dots(yr, z.D, gT + b * z.D * z.Np, z.Np, q0, nb, t.e);  // y_j · g_i
      const T* xgq = xg + q0;
      for (int r = 0; r < MR; ++r) {
        T* k1 = t.k1 + r * JBT;
        T* k2 = t.k2 + r * JBT;
        T* dg = t.e + r * JBT;
#pragma omp simd
        for (int q = 0; q < nb; ++q) {
          dg[q] = xgq[q] - dg[q];  // d_ij · g_i
          k1[q] *= T(2);
        }
        if (ga) {
          T acc1 = T(0);
#pragma omp simd reduction(+ : acc1)
          for (int q = 0; q < nb; ++q) acc1 += k1[q] * dg[q];
          gasum[r] += acc1;
        }
        if constexpr (ORDER >= 2) {
          if (gy) {
            const T ar = aj[r];
#pragma omp simd
            for (int q = 0; q < nb; ++q) k2[q] = T(4) * k2[q] * ar * dg[q];
            csum[r] += sum_block(k2, nb);
          }
        }
      }
      if constexpr (ORDER >= 2) {
        if (gy) {
          tile_reduce(t.k2, nb, xR + b * z.N * z.Dp, z.Dp, q0, z.Dp, cx.data());
          tile_reduce(t.k1, nb, gR + b * z.N * z.Dp, z.Dp, q0, z.Dp, ag.data());
        }
      }
    }
    for (int r = 0; r < mr; ++r) {
      const int64_t j = b * z.M + j0 + r;
      if (gy)
        for (int d = 0; d < z.D; ++d)
          gy[j * z.D + d] = yr[r][d] * csum[r] - cx[r * z.Dp + d] - aj[r] * ag[r * z.Dp + d];
      if (ga) ga[j] = gasum[r];
    }
  });
}

// Flash-form logits (o·c − |c|²/2)/σ² of a tile (the row's own |o|²/2 is dropped, as the reference).
template <typename T>
inline void tile_flash(T* l, const T* nn, T ib, int nb) {
#pragma omp simd
  for (int q = 0; q < nb; ++q) l[q] = (l[q] - T(0.5) * nn[q]) * ib;
}

template <typename T>
void t_softmax_fwd(const Sizes& z, const T* x, const T* yT, const T* yn, const T* yR, const T* inv, T* mu, T* lse) {
  for_tiles(z.B, z.N, z.M, z.nt, [&](int64_t b, int64_t i0, int mr) {
    TileBuf<T> t;
    const T* xr[MR];
    row_ptrs(x + b * z.N * z.D, z.D, i0, mr, xr);
    const T ib = inv[b * z.inv_bs];
    const T* nn = yn + b * z.M;
    T m[MR], tot[MR] = {};
    for (int r = 0; r < MR; ++r) m[r] = -std::numeric_limits<T>::infinity();
    std::vector<T> acc(MR * z.Dp, T(0));
    for (int64_t q0 = 0; q0 < z.M; q0 += JBT) {
      const int nb = static_cast<int>(std::min<int64_t>(JBT, z.M - q0));
      tile_dots(xr, z.D, yT + b * z.D * z.Mp, z.Mp, q0, nb, t.d);
      for (int r = 0; r < MR; ++r) {
        T* l = t.d + r * JBT;
        tile_flash(l, nn + q0, ib, nb);
        T bm = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : bm)
        for (int q = 0; q < nb; ++q) bm = std::max(bm, l[q]);
        const T mn = std::max(m[r], bm);
        const T scale = std::exp(m[r] - mn);
#pragma omp simd
        for (int q = 0; q < nb; ++q) l[q] = fexp(l[q] - mn);
        tot[r] = tot[r] * scale + sum_block(l, nb);
        for (int64_t d = 0; d < z.Dp; ++d) acc[r * z.Dp + d] *= scale;
        m[r] = mn;
      }
      tile_reduce(t.d, nb, yR + b * z.M * z.Dp, z.Dp, q0, z.Dp, acc.data());
    }
    for (int r = 0; r < mr; ++r) {
      const int64_t i = b * z.N + i0 + r;
      for (int d = 0; d < z.D; ++d) mu[i * z.D + d] = acc[r * z.Dp + d] / tot[r];
      lse[i] = m[r] + std::log(tot[r]);
    }
  });
}

template <typename T>
void t_softmax_bwd_x(const Sizes& z, const T* x, const T* yT, const T* yn, const T* yR, const T* inv, const T* lse,
                     const T* gmu, const T* g, T* gx) {
  for_tiles(z.B, z.N, z.M, z.nt, [&](int64_t b, int64_t i0, int mr) {
    TileBuf<T> t;
    const T *xr[MR], *gr[MR];
    row_ptrs(x + b * z.N * z.D, z.D, i0, mr, xr);
    row_ptrs(g + b * z.N * z.D, z.D, i0, mr, gr);
    const T ib = inv[b * z.inv_bs];
    const T* nn = yn + b * z.M;
    std::vector<T> acc(MR * z.Dp, T(0));
    for (int64_t q0 = 0; q0 < z.M; q0 += JBT) {
      const int nb = static_cast<int>(std::min<int64_t>(JBT, z.M - q0));
      tile_dots(xr, z.D, yT + b * z.D * z.Mp, z.Mp, q0, nb, t.d);
      tile_dots(gr, z.D, yT + b * z.D * z.Mp, z.Mp, q0, nb, t.e);  // g_i · y_j
      for (int r = 0; r < MR; ++r) {
        T* l = t.d + r * JBT;
        const T* gyq = t.e + r * JBT;
        const int64_t i = b * z.N + i0 + std::min(r, mr - 1);
        const T li = lse[i], gm = gmu[i];
        tile_flash(l, nn + q0, ib, nb);
#pragma omp simd
        for (int q = 0; q < nb; ++q) l[q] = fexp(l[q] - li) * (gyq[q] - gm);
      }
      tile_reduce(t.d, nb, yR + b * z.M * z.Dp, z.Dp, q0, z.Dp, acc.data());
    }
    for (int r = 0; r < mr; ++r)
      for (int d = 0; d < z.D; ++d) gx[(b * z.N + i0 + r) * z.D + d] = acc[r * z.Dp + d] * ib;
  });
}

template <typename T>
void t_softmax_bwd_y(const Sizes& z, const T* y, const T* xT, const T* yn, const T* xR, const T* inv, const T* lse,
                     const T* gmu, const T* gT, const T* gR, T* gyo) {
  for_tiles(z.B, z.M, z.N, z.nt, [&](int64_t b, int64_t j0, int mr) {
    TileBuf<T> t;
    const T* yr[MR];
    row_ptrs(y + b * z.M * z.D, z.D, j0, mr, yr);
    const T ib = inv[b * z.inv_bs];
    const T* lb = lse + b * z.N;
    const T* gmb = gmu + b * z.N;
    T csum[MR] = {};
    std::vector<T> pg(MR * z.Dp, T(0)), cx(MR * z.Dp, T(0));
    for (int64_t q0 = 0; q0 < z.N; q0 += JBT) {
      const int nb = static_cast<int>(std::min<int64_t>(JBT, z.N - q0));
      tile_dots(yr, z.D, xT + b * z.D * z.Np, z.Np, q0, nb, t.d);
      tile_dots(yr, z.D, gT + b * z.D * z.Np, z.Np, q0, nb, t.e);  // y_j · g_i
      for (int r = 0; r < MR; ++r) {
        T* l = t.d + r * JBT;
        T* c = t.e + r * JBT;
        const T ynj = yn[b * z.M + j0 + std::min(r, mr - 1)];
        const T* lq = lb + q0;
        const T* gq = gmb + q0;
#pragma omp simd
        for (int q = 0; q < nb; ++q) {
          const T p = fexp((l[q] - T(0.5) * ynj) * ib - lq[q]);
          l[q] = p;
          c[q] = p * (c[q] - gq[q]);
        }
        csum[r] += sum_block(c, nb);
      }
      tile_reduce(t.d, nb, gR + b * z.N * z.Dp, z.Dp, q0, z.Dp, pg.data());
      tile_reduce(t.e, nb, xR + b * z.N * z.Dp, z.Dp, q0, z.Dp, cx.data());
    }
    for (int r = 0; r < mr; ++r)
      for (int d = 0; d < z.D; ++d)
        gyo[(b * z.M + j0 + r) * z.D + d] = pg[r * z.Dp + d] - (yr[r][d] * csum[r] - cx[r * z.Dp + d]) * ib;
  });
}

// ---------------------------------------------------------------------------------------------
// dispatch on dtype (0 float32, 1 float64) and kernel kind (kernels.fused_code)

template <typename T>
const T* cp(uintptr_t p) {
  return reinterpret_cast<const T*>(p);
}
template <typename T>
T* mp(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

using P = uintptr_t;

// Each op picks the row path (D <= EXACT_MAX_D, exact differences) or the tiled path. The "R"
// arrays are row-major copies padded to PADD values per row, used by the tiled path only.
template <typename T, int KIND>
struct IntegralOp {
  static void run(Sizes z, Spec s, P x, P yT, P yn, P vT, P vR, P inv, P out);
};
template <typename T, int KIND>
void IntegralOp<T, KIND>::run(Sizes z, Spec s, P x, P yT, P yn, P vT, P vR, P inv, P out) {
  if (z.D > EXACT_MAX_D)
    t_integral_fwd<T, KIND>(z, s, cp<T>(x), cp<T>(yT), cp<T>(yn), cp<T>(vR), cp<T>(inv), mp<T>(out));
  else
    integral_fwd<T, KIND>(z, s, cp<T>(x), cp<T>(yT), cp<T>(yn), cp<T>(vT), cp<T>(inv), mp<T>(out));
}

template <typename T, int KIND>
struct IntegralBwdXOp {
  static void run(Sizes z, Spec s, P x, P yT, P yn, P yR, P vT, P g, P inv, P gx);
};
template <typename T, int KIND>
void IntegralBwdXOp<T, KIND>::run(Sizes z, Spec s, P x, P yT, P yn, P yR, P vT, P g, P inv, P gx) {
  if (z.D > EXACT_MAX_D)
    t_integral_bwd_x<T, KIND>(z, s, cp<T>(x), cp<T>(yT), cp<T>(yn), cp<T>(yR), cp<T>(vT), cp<T>(g), cp<T>(inv),
                              mp<T>(gx));
  else
    integral_bwd_x<T, KIND>(z, s, cp<T>(x), cp<T>(yT), cp<T>(yn), cp<T>(vT), cp<T>(g), cp<T>(inv), mp<T>(gx));
}

template <typename T, int KIND>
struct IntegralBwdYOp {
  static void run(Sizes z, Spec s, P y, P xT, P xn, P xR, P v, P gT, P gR, P inv, P gy, P gv);
};
template <typename T, int KIND>
void IntegralBwdYOp<T, KIND>::run(Sizes z, Spec s, P y, P xT, P xn, P xR, P v, P gT, P gR, P inv, P gy, P gv) {
  if (z.D > EXACT_MAX_D) {
    if (gy)
      t_integral_bwd_y<T, KIND, 1>(z, s, cp<T>(y), cp<T>(xT), cp<T>(xn), cp<T>(xR), cp<T>(v), cp<T>(gT), cp<T>(gR),
                                   cp<T>(inv), mp<T>(gy), mp<T>(gv));
    else
      t_integral_bwd_y<T, KIND, 0>(z, s, cp<T>(y), cp<T>(xT), cp<T>(xn), cp<T>(xR), cp<T>(v), cp<T>(gT), cp<T>(gR),
                                   cp<T>(inv), nullptr, mp<T>(gv));
  } else if (gy) {
    integral_bwd_y<T, KIND, 1>(z, s, cp<T>(y), cp<T>(xT), cp<T>(xn), cp<T>(v), cp<T>(gT), cp<T>(inv), mp<T>(gy),
                               mp<T>(gv));
  } else {
    integral_bwd_y<T, KIND, 0>(z, s, cp<T>(y), cp<T>(xT), cp<T>(xn), cp<T>(v), cp<T>(gT), cp<T>(inv), nullptr,
                               mp<T>(gv));
  }
}

template <typename T, int KIND>
struct GradSumOp {
  static void run(Sizes z, Spec s, P x, P yT, P yn, P yR, P a, P inv, P out);
};
template <typename T, int KIND>
void GradSumOp<T, KIND>::run(Sizes z, Spec s, P x, P yT, P yn, P yR, P a, P inv, P out) {
  if (z.D > EXACT_MAX_D)
    t_grad_sum_fwd<T, KIND>(z, s, cp<T>(x), cp<T>(yT), cp<T>(yn), cp<T>(yR), cp<T>(a), cp<T>(inv), mp<T>(out));
  else
    grad_sum_fwd<T, KIND>(z, s, cp<T>(x), cp<T>(yT), cp<T>(yn), cp<T>(a), cp<T>(inv), mp<T>(out));
}

template <typename T, int KIND>
struct GradSumBwdXOp {
  static void run(Sizes z, Spec s, P x, P yT, P yn, P yR, P a, P g, P inv, P gx);
};
template <typename T, int KIND>
void GradSumBwdXOp<T, KIND>::run(Sizes z, Spec s, P x, P yT, P yn, P yR, P a, P g, P inv, P gx) {
  if (z.D > EXACT_MAX_D)
    t_grad_sum_bwd_x<T, KIND>(z, s, cp<T>(x), cp<T>(yT), cp<T>(yn), cp<T>(yR), cp<T>(a), cp<T>(g), cp<T>(inv),
                              mp<T>(gx));
  else
    grad_sum_bwd_x<T, KIND>(z, s, cp<T>(x), cp<T>(yT), cp<T>(yn), cp<T>(a), cp<T>(g), cp<T>(inv), mp<T>(gx));
}

template <typename T, int KIND>
struct GradSumBwdYOp {
  static void run(Sizes z, Spec s, P y, P xT, P xn, P xR, P a, P gT, P gR, P xg, P inv, P gy, P ga);
};
template <typename T, int KIND>
void GradSumBwdYOp<T, KIND>::run(Sizes z, Spec s, P y, P xT, P xn, P xR, P a, P gT, P gR, P xg, P inv, P gy, P ga) {
  if (z.D > EXACT_MAX_D) {
    if (gy)
      t_grad_sum_bwd_y<T, KIND, 2>(z, s, cp<T>(y), cp<T>(xT), cp<T>(xn), cp<T>(xR), cp<T>(a), cp<T>(gT), cp<T>(gR),
                                   cp<T>(xg), cp<T>(inv), mp<T>(gy), mp<T>(ga));
    else
      t_grad_sum_bwd_y<T, KIND, 1>(z, s, cp<T>(y), cp<T>(xT), cp<T>(xn), cp<T>(xR), cp<T>(a), cp<T>(gT), cp<T>(gR),
                                   cp<T>(xg), cp<T>(inv), nullptr, mp<T>(ga));
  } else if (gy) {
    grad_sum_bwd_y<T, KIND, 2>(z, s, cp<T>(y), cp<T>(xT), cp<T>(xn), cp<T>(a), cp<T>(gT), cp<T>(xg), cp<T>(inv),
                               mp<T>(gy), mp<T>(ga));
  } else {
    grad_sum_bwd_y<T, KIND, 1>(z, s, cp<T>(y), cp<T>(xT), cp<T>(xn), cp<T>(a), cp<T>(gT), cp<T>(xg), cp<T>(inv),
                               nullptr, mp<T>(ga));
  }
}

// which 0: forward (x, yT, yn, yR, inv, mu, lse); 1: x gradient (x, yT, yn, yR, inv, lse, gmu, g, gx);
// 2: y gradient (y, xT, yn, xR, inv, lse, gmu, gT, gR, gy).
template <typename T>
void softmax_dispatch(int which, Sizes z, P a0, P a1, P a2, P a3, P a4, P a5, P a6, P a7, P a8, P a9) {
  const bool tiled = z.D > EXACT_MAX_D;
  if (which == 0) {
    if (tiled) t_softmax_fwd<T>(z, cp<T>(a0), cp<T>(a1), cp<T>(a2), cp<T>(a3), cp<T>(a4), mp<T>(a5), mp<T>(a6));
    else softmax_fwd<T>(z, cp<T>(a0), cp<T>(a1), cp<T>(a2), cp<T>(a4), mp<T>(a5), mp<T>(a6));
  } else if (which == 1) {
    if (tiled)
      t_softmax_bwd_x<T>(z, cp<T>(a0), cp<T>(a1), cp<T>(a2), cp<T>(a3), cp<T>(a4), cp<T>(a5), cp<T>(a6), cp<T>(a7),
                         mp<T>(a8));
    else
      softmax_bwd_x<T>(z, cp<T>(a0), cp<T>(a1), cp<T>(a2), cp<T>(a4), cp<T>(a5), cp<T>(a6), cp<T>(a7), mp<T>(a8));
  } else {
    if (tiled)
      t_softmax_bwd_y<T>(z, cp<T>(a0), cp<T>(a1), cp<T>(a2), cp<T>(a3), cp<T>(a4), cp<T>(a5), cp<T>(a6), cp<T>(a7),
                         cp<T>(a8), mp<T>(a9));
    else
      softmax_bwd_y<T>(z, cp<T>(a0), cp<T>(a1), cp<T>(a2), cp<T>(a4), cp<T>(a5), cp<T>(a6), cp<T>(a7), mp<T>(a9));
  }
}

}  // namespace gpflow_cpu

// Built in two halves compiled in parallel (setup.py):
// GPFLOW_CPU_PART=0 holds the module and the float32 code but the polyharmonic kernels',
// GPFLOW_CPU_PART=1 the float64 code and those (about equal compile times); undefined, one file
// holds everything.
#ifndef GPFLOW_CPU_PART
#define GPFLOW_CPU_PART -1
#endif
#define GPFLOW_OPS(PRE, T, K)                            \
  PRE template struct gpflow_cpu::IntegralOp<T, K>;      \
  PRE template struct gpflow_cpu::IntegralBwdXOp<T, K>;  \
  PRE template struct gpflow_cpu::IntegralBwdYOp<T, K>;  \
  PRE template struct gpflow_cpu::GradSumOp<T, K>;       \
  PRE template struct gpflow_cpu::GradSumBwdXOp<T, K>;   \
  PRE template struct gpflow_cpu::GradSumBwdYOp<T, K>;
#define GPFLOW_SECOND_HALF(PRE)                                                                               \
  GPFLOW_OPS(PRE, double, 0)                                                                                  \
  GPFLOW_OPS(PRE, double, 1)                                                                                  \
  GPFLOW_OPS(PRE, double, 2)                                                                                  \
  GPFLOW_OPS(PRE, double, 3)                                                                                  \
  GPFLOW_OPS(PRE, double, 4)                                                                                  \
  GPFLOW_OPS(PRE, float, 4)                                                                                   \
  PRE template void gpflow_cpu::softmax_dispatch<double>(int, gpflow_cpu::Sizes, uintptr_t, uintptr_t, uintptr_t, \
                                                         uintptr_t, uintptr_t, uintptr_t, uintptr_t, uintptr_t,    \
                                                         uintptr_t, uintptr_t);
#if GPFLOW_CPU_PART == 0
GPFLOW_SECOND_HALF(extern)
#elif GPFLOW_CPU_PART == 1
GPFLOW_SECOND_HALF()
#endif

#if GPFLOW_CPU_PART != 1
namespace gpflow_cpu {
namespace {

template <template <typename, int> class Op, typename... A>
void by_kind(int dtype, int kind, A... a) {
  if (dtype != 0 && dtype != 1) throw std::invalid_argument("dtype code must be 0 (float32) or 1 (float64)");
  if (kind < 0 || kind > 5) throw std::invalid_argument("kernel kind must be 0..5");
  py::gil_scoped_release nogil;
  switch (std::min(kind, 4) * 2 + dtype) {  // kind 5 runs KIND = 4 with Spec::logform
    case 0: Op<float, 0>::run(a...); break;
    case 1: Op<double, 0>::run(a...); break;
    case 2: Op<float, 1>::run(a...); break;
    case 3: Op<double, 1>::run(a...); break;
    case 4: Op<float, 2>::run(a...); break;
    case 5: Op<double, 2>::run(a...); break;
    case 6: Op<float, 3>::run(a...); break;
    case 7: Op<double, 3>::run(a...); break;
    case 8: Op<float, 4>::run(a...); break;
    default: Op<double, 4>::run(a...); break;
  }
}

Sizes sizes(int64_t B, int64_t N, int64_t M, int D, int P_, int K, int64_t inv_bs, int nt) {
  if (B < 0 || N < 0 || M < 0 || D < 1 || P_ < 1 || K < 1 || nt < 1)
    throw std::invalid_argument("sizes must be B, N, M >= 0 and D, P, K, threads >= 1");
  return Sizes{B, N, M, D, P_, K, inv_bs, nt, padq(N), padq(M), padd(D), padd(P_)};
}

}  // namespace
}  // namespace gpflow_cpu

using namespace gpflow_cpu;

PYBIND11_MODULE(_cpu_ext, m) {
  m.doc() = "Fused CPU pair reductions of gpflow_kernels (see csrc/gpflow_cpu.cpp)";
  // Sizes and kernel arguments, in this order, end every binding's argument list.
#define SIZE_ARGS int64_t B, int64_t N, int64_t M, int D, int Pv, int K, int64_t inv_bs, int kind, double pc, \
                  double ph, double pe, int dtype, int nt
#define SIZES sizes(B, N, M, D, Pv, K, inv_bs, nt), Spec{pc, ph, pe, kind == 5}
  m.def("integral", [](P x, P yT, P yn, P vT, P vR, P inv, P out, SIZE_ARGS) {
    by_kind<IntegralOp>(dtype, kind, SIZES, x, yT, yn, vT, vR, inv, out);
  });
  m.def("integral_bwd_x", [](P x, P yT, P yn, P yR, P vT, P g, P inv, P gx, SIZE_ARGS) {
    by_kind<IntegralBwdXOp>(dtype, kind, SIZES, x, yT, yn, yR, vT, g, inv, gx);
  });
  m.def("integral_bwd_y", [](P y, P xT, P xn, P xR, P v, P gT, P gR, P inv, P gy, P gv, SIZE_ARGS) {
    by_kind<IntegralBwdYOp>(dtype, kind, SIZES, y, xT, xn, xR, v, gT, gR, inv, gy, gv);
  });
  m.def("grad_sum", [](P x, P yT, P yn, P yR, P a, P inv, P out, SIZE_ARGS) {
    by_kind<GradSumOp>(dtype, kind, SIZES, x, yT, yn, yR, a, inv, out);
  });
  m.def("grad_sum_bwd_x", [](P x, P yT, P yn, P yR, P a, P g, P inv, P gx, SIZE_ARGS) {
    by_kind<GradSumBwdXOp>(dtype, kind, SIZES, x, yT, yn, yR, a, g, inv, gx);
  });
  m.def("grad_sum_bwd_y", [](P y, P xT, P xn, P xR, P a, P gT, P gR, P xg, P inv, P gy, P ga, SIZE_ARGS) {
    by_kind<GradSumBwdYOp>(dtype, kind, SIZES, y, xT, xn, xR, a, gT, gR, xg, inv, gy, ga);
  });
#undef SIZE_ARGS
#undef SIZES
  // which: see softmax_dispatch.
  m.def("softmax", [](int which, P a0, P a1, P a2, P a3, P a4, P a5, P a6, P a7, P a8, P a9, int64_t B, int64_t N,
                      int64_t M, int D, int64_t inv_bs, int dtype, int nt) {
    if (dtype != 0 && dtype != 1) throw std::invalid_argument("dtype code must be 0 (float32) or 1 (float64)");
    if (which < 0 || which > 2) throw std::invalid_argument("which must be 0, 1 or 2");
    const Sizes z = sizes(B, N, M, D, 1, 1, inv_bs, nt);
    py::gil_scoped_release nogil;
    if (dtype == 0) softmax_dispatch<float>(which, z, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9);
    else softmax_dispatch<double>(which, z, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9);
  });
  m.def("fexp", [](double x, int dtype) { return dtype == 0 ? double(fexp(float(x))) : fexp(x); },
        "our vectorisable exp on one number (for tests)");
}
#endif  // GPFLOW_CPU_PART != 1
