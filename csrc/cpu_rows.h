// cpu_rows.h: geometry, threading and the row path (one outer point at a time; exact differences for D <= 8).
// One of the parts of csrc/gpflow_cpu.cpp, which includes it; see the header comment there.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu_math.h"

namespace gpflow_cpu {

// ---------------------------------------------------------------------------------------------
// explicit vectors: GCC vector extensions as wide as the machine's registers: 64 bytes with
// AVX-512, else 32. Wider ones than the registers are split by GCC, and the tiles' MR × 2 and
// MR × 4 accumulators then need twice the registers there are: on an AVX2 machine (znver3) the
// 64-byte build ran the D > 8 tiles 7-10x slower than torch's matrix products (RESULTS.md).
// PADQ and PADD below are multiples of either width. GPFLOW_VEC_BYTES (setup.py:
// GPFLOW_CPU_VEC_BYTES=16|32|64) overrides the choice.
#if defined(GPFLOW_VEC_BYTES)
constexpr int VEC_BYTES = GPFLOW_VEC_BYTES;
#elif defined(__AVX512F__)
constexpr int VEC_BYTES = 64;
#else
constexpr int VEC_BYTES = 32;
#endif

template <typename T>
struct VecT;
template <>
struct VecT<float> {
  typedef float type __attribute__((vector_size(VEC_BYTES)));
};
template <>
struct VecT<double> {
  typedef double type __attribute__((vector_size(VEC_BYTES)));
};
template <typename T>
using Vec = typename VecT<T>::type;
template <typename T>
constexpr int LANES = VEC_BYTES / sizeof(T);

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

// Horizontal sum and maximum of a vector as a tree (log2 W dependent steps, not a W-long chain).
template <typename T>
inline T hsum(Vec<T> v) {
  T a[LANES<T>];
  __builtin_memcpy(a, &v, sizeof v);
  for (int h = LANES<T> / 2; h >= 1; h /= 2)
    for (int k = 0; k < h; ++k) a[k] += a[k + h];
  return a[0];
}

template <typename T>
inline T hmax(Vec<T> v) {
  T a[LANES<T>];
  __builtin_memcpy(a, &v, sizeof v);
  for (int h = LANES<T> / 2; h >= 1; h /= 2)
    for (int k = 0; k < h; ++k) a[k] = a[k + h] > a[k] ? a[k + h] : a[k];
  return a[0];
}

// max(init, l[0..nb)) on vectors: GCC leaves `omp simd reduction(max)` over std::max scalar (a
// 3-cycle vmaxss chain per element, measured as a quarter of the D = 64 soft-assignment time).
// NaN entries are skipped, as std::max(m, NaN) skips them.
template <typename T>
inline T block_max(const T* l, int nb, T init) {
  constexpr int W = LANES<T>;
  Vec<T> m0 = Vec<T>{} + init, m1 = m0;
  int q = 0;
  for (; q + 2 * W <= nb; q += 2 * W) {
    const Vec<T> a = vload(l + q), b = vload(l + q + W);
    m0 = a > m0 ? a : m0;
    m1 = b > m1 ? b : m1;
  }
  m0 = m1 > m0 ? m1 : m0;
  T m = hmax<T>(m0);
  for (; q < nb; ++q) m = l[q] > m ? l[q] : m;
  return m;
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
inline void sqdist_block(const T* o, const Inner<T>& in, int D, int64_t q0, int nb, T* r2) {
  const T* c = in.pts + q0;
  switch (D) {  // the common small dimensions in one pass each
    case 1: return sqdist_fixed<T, 1>(o, c, in.L, nb, r2);
    case 2: return sqdist_fixed<T, 2>(o, c, in.L, nb, r2);
    case 3: return sqdist_fixed<T, 3>(o, c, in.L, nb, r2);
    default: break;
  }
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
}

template <typename T>
inline T sum_block(const T* w, int nb) {
  // Two vector accumulators and a tree at the end: `omp simd reduction(+)` ends in a W-long chain
  // of scalar adds, a tenth of the D = 64 soft assignment's time when measured.
  constexpr int W = LANES<T>;
  Vec<T> s0{}, s1{};
  int q = 0;
  for (; q + 2 * W <= nb; q += 2 * W) {
    s0 += vload(w + q);
    s1 += vload(w + q + W);
  }
  if (q + W <= nb) {
    s0 += vload(w + q);
    q += W;
  }
  T s = hsum<T>(s0 + s1);
  for (; q < nb; ++q) s += w[q];
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

// Σ_q w(q), and acc[d] += Σ_q w(q) inner_d[q], in one vectorised pass for a compile-time D <= 4;
// w is a weight array's element or a computed weight (expsum_fixed's exponentials).
template <typename T, int DC, typename W>
inline __attribute__((always_inline)) T weighted_sums(W w, const T* c, int64_t ld, int nb, T* acc) {
  T s = T(0), a0 = T(0), a1 = T(0), a2 = T(0), a3 = T(0);
  const T* c1 = c + (DC > 1 ? ld : 0);
  const T* c2 = c + (DC > 2 ? 2 * ld : 0);
  const T* c3 = c + (DC > 3 ? 3 * ld : 0);
#pragma omp simd reduction(+ : s, a0, a1, a2, a3)
  for (int q = 0; q < nb; ++q) {
    const T wq = w(q);
    s += wq;
    a0 += wq * c[q];
    if constexpr (DC > 1) a1 += wq * c1[q];
    if constexpr (DC > 2) a2 += wq * c2[q];
    if constexpr (DC > 3) a3 += wq * c3[q];
  }
  acc[0] += a0;
  if constexpr (DC > 1) acc[1] += a1;
  if constexpr (DC > 2) acc[2] += a2;
  if constexpr (DC > 3) acc[3] += a3;
  return s;
}

template <typename T, int DC>
inline T wsum_fixed(const T* w, const T* c, int64_t ld, int nb, T* acc) {
  return weighted_sums<T, DC>([w](int q) { return w[q]; }, c, ld, nb, acc);
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

// acc[d] += Σ_q w[q] (o_d − inner_d[q]): a field's weighted sum formed from the differences
// themselves. As x_i Σ_q w − Σ_q w y_q instead, a heavy close pair (a particle's own term, a near
// duplicate at a small bandwidth) rounds at |w| |x_i| and wipes out the other terms (issue
// "numerical trust", item 2; tests/test_accuracy_contract.py). One subtraction more per term.
template <typename T, int DC>
inline __attribute__((always_inline)) void wdiff_fixed(const T* w, const T* o, const T* c, int64_t ld, int nb, T* acc) {
  T a0 = T(0), a1 = T(0), a2 = T(0), a3 = T(0);
  const T o0 = o[0], o1 = DC > 1 ? o[1] : T(0), o2 = DC > 2 ? o[2] : T(0), o3 = DC > 3 ? o[3] : T(0);
  const T* c1 = c + (DC > 1 ? ld : 0);
  const T* c2 = c + (DC > 2 ? 2 * ld : 0);
  const T* c3 = c + (DC > 3 ? 3 * ld : 0);
#pragma omp simd reduction(+ : a0, a1, a2, a3)
  for (int q = 0; q < nb; ++q) {
    const T wq = w[q];
    a0 += wq * (o0 - c[q]);
    if constexpr (DC > 1) a1 += wq * (o1 - c1[q]);
    if constexpr (DC > 2) a2 += wq * (o2 - c2[q]);
    if constexpr (DC > 3) a3 += wq * (o3 - c3[q]);
  }
  acc[0] += a0;
  if constexpr (DC > 1) acc[1] += a1;
  if constexpr (DC > 2) acc[2] += a2;
  if constexpr (DC > 3) acc[3] += a3;
}

template <typename T>
inline void wdiff_all(const T* w, const T* o, const Inner<T>& in, int D, int64_t q0, int nb, T* acc) {
  const T* c = in.pts + q0;
  switch (D) {
    case 1: return wdiff_fixed<T, 1>(w, o, c, in.L, nb, acc);
    case 2: return wdiff_fixed<T, 2>(w, o, c, in.L, nb, acc);
    case 3: return wdiff_fixed<T, 3>(w, o, c, in.L, nb, acc);
    case 4: return wdiff_fixed<T, 4>(w, o, c, in.L, nb, acc);
    default:
      for (int d = 0; d < D; ++d) {
        const T* cd = c + d * in.L;
        const T od = o[d];
        T s = T(0);
#pragma omp simd reduction(+ : s)
        for (int q = 0; q < nb; ++q) s += w[q] * (od - cd[q]);
        acc[d] += s;
      }
  }
}

// out[q] = g·(o − inner_q) for one g (a row's), from the differences: as g·o − g·inner_q the two
// dot products of a close pair cancel.
template <typename T>
inline void gdiff_row(const T* o, const T* g, const Inner<T>& in, int D, int64_t q0, int nb, T* out) {
  const T* c = in.pts + q0;
#pragma omp simd
  for (int q = 0; q < nb; ++q) out[q] = g[0] * (o[0] - c[q]);
  for (int d = 1; d < D; ++d) {
    const T* cd = c + d * in.L;
    const T od = o[d], gd = g[d];
#pragma omp simd
    for (int q = 0; q < nb; ++q) out[q] += gd * (od - cd[q]);
  }
}

// out[q] = g_q·(inner_q − o) with g_q the inner points' own (transposed, as gin): a column pass's
// (x_i − y_j)·g_i for the outer point o = y_j.
template <typename T>
inline void gdiff_col(const T* o, const Inner<T>& gin, const Inner<T>& in, int D, int64_t q0, int nb, T* out) {
  const T* c = in.pts + q0;
  const T* g = gin.pts + q0;
#pragma omp simd
  for (int q = 0; q < nb; ++q) out[q] = g[q] * (c[q] - o[0]);
  for (int d = 1; d < D; ++d) {
    const T* cd = c + d * in.L;
    const T* gd = g + d * gin.L;
    const T od = o[d];
#pragma omp simd
    for (int q = 0; q < nb; ++q) out[q] += gd[q] * (cd[q] - od);
  }
}

// The soft assignment's inner loop for a compile-time D <= 4: −r²/(2σ²) and its block maximum in
// one pass (logits_fixed), then p = exp(ℓ − m) with Σp and Σ p·c_d in another (expsum_fixed).
template <typename T, int DC>
inline T logits_fixed(const T* o, const T* c, int64_t ld, int nb, T scale, T* l) {
  T od[DC];
  for (int d = 0; d < DC; ++d) od[d] = o[d];
#pragma omp simd
  for (int q = 0; q < nb; ++q) l[q] = r2_at(od, c, ld, q) * scale;
  return block_max(l, nb, -std::numeric_limits<T>::infinity());
}

template <typename T, int DC>
inline T expsum_fixed(const T* l, T m, const T* c, int64_t ld, int nb, T* acc) {
  return weighted_sums<T, DC>([l, m](int q) { return fexp(l[q] - m); }, c, ld, nb, acc);
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

// x·w − a with the product rounded before the subtraction (no FMA contraction). The outputs are
// x_i Σ_j W_ij − Σ_j W_ij y_j; when y_j is x_i itself (a particle's own term, with a huge weight
// next to tiny ones), x_i·W_ii and the W_ii y_j inside a are the same rounded number and cancel
// exactly, as in the reference. A fused multiply-add would leave a's rounding error instead
// (found by tests/test_fuzz_ops.py: points 100 apart at σ = 0.05 in float32).
template <typename T>
__attribute__((noinline, optimize("fp-contract=off"))) T mul_sub(T x, T w, T a) {
  return x * w - a;
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
inline void kernel_block(const T* o, const Inner<T>& in, int D, int64_t q0, int nb, const T* inv, int K,
                         const Spec& s, T* r2, T* k0, T* k1, T* k2) {
  if (K == 1 && D <= 3) {
    const T* c = in.pts + q0;
    if (D == 1) return kernel_fixed<T, KIND, ORDER, 1>(o, c, in.L, nb, inv[0], s, k0, k1, k2);
    if (D == 2) return kernel_fixed<T, KIND, ORDER, 2>(o, c, in.L, nb, inv[0], s, k0, k1, k2);
    return kernel_fixed<T, KIND, ORDER, 3>(o, c, in.L, nb, inv[0], s, k0, k1, k2);
  }
  sqdist_block(o, in, D, q0, nb, r2);
  radial_block<T, KIND, ORDER>(r2, nb, inv, K, s, k0, k1, k2);
}

// Logits −r²/(2σ²) of an outer point o against a block of inner points, from exact differences
// (the row path runs for D <= EXACT_MAX_D only; above it, cpu_tiles.h).
template <typename T>
inline void logits_block(const T* o, const Inner<T>& in, int D, int64_t q0, int nb, T ib, T* l) {
  sqdist_block(o, in, D, q0, nb, l);
  const T c = T(-0.5) * ib;
#pragma omp simd
  for (int q = 0; q < nb; ++q) l[q] *= c;
}

// d_ij · g_i = x_i·g_i − y_j·g_i in place of dg (which holds y_j·g_i), k' doubled in place, and
// Σ 2k' (d · g) (the weight gradient's share of this block) when `ga`.
template <typename T>
inline T dg_and_ga(const T* xg, T* dg, T* k1, int nb, bool ga) {
#pragma omp simd
  for (int q = 0; q < nb; ++q) {
    dg[q] = xg[q] - dg[q];
    k1[q] *= T(2);
  }
  T acc = T(0);
  if (ga) {
#pragma omp simd reduction(+ : acc)
    for (int q = 0; q < nb; ++q) acc += k1[q] * dg[q];
  }
  return acc;
}

// k1 ← 2 k1, and Σ_q k1[q] dg[q] where asked (the weights' gradient); dg already holds d·g.
template <typename T>
inline T scale_and_ga(const T* dg, T* k1, int nb, bool ga) {
#pragma omp simd
  for (int q = 0; q < nb; ++q) k1[q] *= T(2);
  T acc = T(0);
  if (ga) {
#pragma omp simd reduction(+ : acc)
    for (int q = 0; q < nb; ++q) acc += k1[q] * dg[q];
  }
  return acc;
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
  // The outer and inner points as given, before centring, row-major (·, D): the tiled path takes
  // its close pairs' differences from them (centring rounds each point, and the difference of two
  // rounded close points can be all rounding). Required by the tiled path (D > EXACT_MAX_D).
  uintptr_t outer0 = 0, inner0 = 0;
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
    T* o = out + (b * z.N + i) * z.P;
    for (int p = 0; p < z.P; ++p) o[p] = T(0);
    for (int64_t q0 = 0; q0 < z.M; q0 += JB) {
      const int nb = static_cast<int>(std::min<int64_t>(JB, z.M - q0));
      kernel_block<T, KIND, 0>(xi, in, z.D, q0, nb, inv + b * z.inv_bs, z.K, s, r2, k0, nullptr, nullptr);
      if (!vb) {
        o[0] += sum_block(k0, nb);
      } else if (z.P <= 4) {  // one pass (wsum_fixed's sums of k0 times the values' rows)
        const Inner<T> vin{vb, nullptr, z.Mp};
        wsum_all(k0, vin, z.P, q0, nb, o);
      } else {
        wsum_coords(k0, Inner<T>{vb, nullptr, z.Mp}, z.P, q0, nb, o);
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
    std::vector<T> acc(z.D, T(0));
    T* a = acc.data();
    for (int64_t q0 = 0; q0 < z.M; q0 += JB) {
      const int nb = static_cast<int>(std::min<int64_t>(JB, z.M - q0));
      kernel_block<T, KIND, 1>(xi, in, z.D, q0, nb, inv + b * z.inv_bs, z.K, s, r2, k0, k1, nullptr);
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
      wdiff_all(w, xi, in, z.D, q0, nb, a);
    }
    T* o = gx + (b * z.N + i) * z.D;
    for (int d = 0; d < z.D; ++d) o[d] = a[d];
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
    std::vector<T> a(z.D + z.P, T(0));
    T* ay = a.data();
    T* av = a.data() + z.D;
    for (int64_t q0 = 0; q0 < z.N; q0 += JB) {
      const int nb = static_cast<int>(std::min<int64_t>(JB, z.N - q0));
      kernel_block<T, KIND, ORDER>(yj, in, z.D, q0, nb, inv + b * z.inv_bs, z.K, s, r2, k0, k1, nullptr);
      if (gv) wsum_coords(k0, Inner<T>{gb, nullptr, z.Np}, z.P, q0, nb, av);
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
          wdiff_all(w, yj, in, z.D, q0, nb, ay);
        }
      }
    }
    if (gy) {
      T* o = gy + (b * z.M + j) * z.D;
      for (int d = 0; d < z.D; ++d) o[d] = ay[d];
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
    std::vector<T> acc(z.D, T(0));
    for (int64_t q0 = 0; q0 < z.M; q0 += JB) {
      const int nb = static_cast<int>(std::min<int64_t>(JB, z.M - q0));
      kernel_block<T, KIND, 1>(xi, in, z.D, q0, nb, inv + b * z.inv_bs, z.K, s, r2, k0, k1, nullptr);
      if (ab) {
        const T* aq = ab + q0;
#pragma omp simd
        for (int q = 0; q < nb; ++q) k1[q] *= T(2) * aq[q];
      } else {
#pragma omp simd
        for (int q = 0; q < nb; ++q) k1[q] *= T(2);
      }
      wdiff_all(k1, xi, in, z.D, q0, nb, acc.data());
    }
    T* o = out + (b * z.N + i) * z.D;
    for (int d = 0; d < z.D; ++d) o[d] = acc[d];
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
    std::vector<T> acc(z.D, T(0));
    T asum = T(0);
    for (int64_t q0 = 0; q0 < z.M; q0 += JB) {
      const int nb = static_cast<int>(std::min<int64_t>(JB, z.M - q0));
      kernel_block<T, KIND, 2>(xi, in, z.D, q0, nb, inv + b * z.inv_bs, z.K, s, r2, k0, k1, k2);
      gdiff_row(xi, gi, in, z.D, q0, nb, dg);  // (x_i − y_j) · g_i
      const T* aq = ab ? ab + q0 : nullptr;
#pragma omp simd
      for (int q = 0; q < nb; ++q) {
        const T aj = aq ? aq[q] : T(1);
        k1[q] = T(2) * k1[q] * aj;          // A
        k2[q] = T(4) * k2[q] * aj * dg[q];  // C
      }
      asum += sum_block(k1, nb);
      wdiff_all(k2, xi, in, z.D, q0, nb, acc.data());
    }
    T* o = gx + (b * z.N + i) * z.D;
    for (int d = 0; d < z.D; ++d) o[d] = gi[d] * asum + acc[d];
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
    const T aj = a ? a[b * z.M + j] : T(1);
    std::vector<T> acc(2 * z.D, T(0));
    T* cy = acc.data();       // Σ C_ij (y_j − x_i)
    T* ag = acc.data() + z.D;  // Σ 2k'_ij g_i
    T gasum = T(0);
    for (int64_t q0 = 0; q0 < z.N; q0 += JB) {
      const int nb = static_cast<int>(std::min<int64_t>(JB, z.N - q0));
      kernel_block<T, KIND, ORDER>(yj, in, z.D, q0, nb, inv + b * z.inv_bs, z.K, s, r2, k0, k1, k2);
      gdiff_col(yj, gin, in, z.D, q0, nb, dg);  // (x_i − y_j) · g_i
      gasum += scale_and_ga(dg, k1, nb, ga != nullptr);
      if constexpr (ORDER >= 2) {
        if (gy) {
#pragma omp simd
          for (int q = 0; q < nb; ++q) k2[q] = T(4) * k2[q] * aj * dg[q];
          wdiff_all(k2, yj, in, z.D, q0, nb, cy);
          wsum_coords(k1, gin, z.D, q0, nb, ag);
        }
      }
    }
    if (gy) {
      T* o = gy + (b * z.M + j) * z.D;
      for (int d = 0; d < z.D; ++d) o[d] = cy[d] - aj * ag[d];
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
      logits_block(xi, in, z.D, q0, nb, ib, l);
      const T bm = block_max(l, nb, -std::numeric_limits<T>::infinity());
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

// gx_i = Σ_j c_ij (y_j − μ_i) / σ², c_ij = p_ij (g_i · y_j − g_i · μ_i), p_ij = exp(ℓ_ij − lse_i).
// Σ_j c_ij = 0 exactly, so Σ_j c_ij y_j alone would carry every c_ij's rounding times |y_j|; the
// computed Σ_j c_ij times μ_i is subtracted, cancelling it (reference.softmax_mean_backward).
template <typename T>
void softmax_bwd_x(const Sizes& z, const T* x, const T* yT, const T* yn, const T* inv, const T* lse, const T* gmu,
                   const T* g, const T* mu, T* gx) {
  for_outer(z.B, z.N, z.M, z.nt, [&](int64_t b, int64_t i) {
    alignas(64) T l[JB], gy[JB];
    const T* xi = x + (b * z.N + i) * z.D;
    const T* gi = g + (b * z.N + i) * z.D;
    const Inner<T> in{yT + b * z.D * z.Mp, yn ? yn + b * z.M : nullptr, z.Mp};
    const T ib = inv[b * z.inv_bs];
    const T li = lse[b * z.N + i], gm = gmu[b * z.N + i];
    std::vector<T> acc(z.D, T(0));
    T csum = T(0);
    for (int64_t q0 = 0; q0 < z.M; q0 += JB) {
      const int nb = static_cast<int>(std::min<int64_t>(JB, z.M - q0));
      logits_block(xi, in, z.D, q0, nb, ib, l);
      dot_block(gi, in, z.D, q0, nb, gy);
#pragma omp simd
      for (int q = 0; q < nb; ++q) l[q] = fexp(l[q] - li) * (gy[q] - gm);
      csum += sum_block(l, nb);
      wdiff_all(l, xi, in, z.D, q0, nb, acc.data());  // Σ c_ij (x_i − y_j), from the differences
    }
    // Σ_j c_ij (y_j − x_i) + (x_i − μ_i) Σ_j c_ij, as reference.softmax_mean_backward: as
    // Σ c y − μ Σ c a heavy pair carried its c_ij's rounding times |y_j − μ_i| where a dense
    // formula has |y_j − x_i| (zero for a data point itself).
    T* o = gx + (b * z.N + i) * z.D;
    const T* mi = mu + (b * z.N + i) * z.D;
    for (int d = 0; d < z.D; ++d) o[d] = ((xi[d] - mi[d]) * csum - acc[d]) * ib;
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
    const T* lb = lse + b * z.N;
    const T* gmb = gmu + b * z.N;
    std::vector<T> acc(2 * z.D, T(0));
    T* pg = acc.data();        // Σ p g_i
    T* cx = acc.data() + z.D;  // Σ c_ij (y_j − x_i), from the differences
    for (int64_t q0 = 0; q0 < z.N; q0 += JB) {
      const int nb = static_cast<int>(std::min<int64_t>(JB, z.N - q0));
      logits_block(yj, in, z.D, q0, nb, ib, l);
      dot_block(yj, gin, z.D, q0, nb, c);  // g_i · y_j
      const T* lq = lb + q0;
      const T* gq = gmb + q0;
#pragma omp simd
      for (int q = 0; q < nb; ++q) {
        const T p = fexp(l[q] - lq[q]);
        l[q] = p;
        c[q] = p * (c[q] - gq[q]);
      }
      wsum_coords(l, gin, z.D, q0, nb, pg);
      wdiff_all(c, yj, in, z.D, q0, nb, cx);
    }
    T* o = gyo + (b * z.M + j) * z.D;
    for (int d = 0; d < z.D; ++d) o[d] = pg[d] - cx[d] * ib;
  });
}

}  // namespace gpflow_cpu
