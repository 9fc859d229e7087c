// cpu_tiles.h: the tiled path for D > 8 (register-blocked products with the kernel computed in between).
// One of the parts of csrc/gpflow_cpu.cpp, which includes it; see the header comment there.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu_rows.h"

namespace gpflow_cpu {

// ---------------------------------------------------------------------------------------------
// The tiled path, for D > EXACT_MAX_D: MR outer points at a time, so that the two D-long
// products of each pair run as small register-blocked matrix products ("GEMM with the kernel in
// the epilogue"): tile_dots gives the MR × JBT dot products from the transposed inner points, the
// kernel and weights are computed on that tile in L1, and tile_reduce adds Σ_q w[r][q] C[q][:]
// from the row-major inner points with MR × 4 vector accumulators. GCC vector extensions (as wide
// as the machine's registers, from cpu_rows.h: 64 bytes with AVX-512, else 32) make the blocking
// explicit.

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

// Pairs with r² < NEAR (|o|² + |c|²) by the expansion are close: their r² is recomputed from the
// differences, and their field terms are taken out of the matrix products (near_terms), as
// reference.NEAR (issue "numerical trust", items 2 and 3).
template <typename T>
constexpr T NEAR = T(1) / T(16);

// r²[q] = |o|² + |c_q|² − 2 o·c_q from the dots; the close pairs' r² from the differences of the
// uncentred points (o0: the outer point, c0: the inner ones row-major (·, D)), their indices
// listed in idx[0 .. cnt).
template <typename T>
inline void tile_r2(T* dr, T oo, const T* nn, int nb, const T* o0, const T* c0, int D, int64_t q0,
                    uint16_t* idx, int& cnt) {
  int close = 0;
#pragma omp simd reduction(+ : close)
  for (int q = 0; q < nb; ++q) {
    const T s = oo + nn[q];
    const T v = s - T(2) * dr[q];
    dr[q] = v;
    close += v < NEAR<T> * s;
  }
  cnt = 0;
  if (!close) return;
  for (int q = 0; q < nb; ++q)
    if (dr[q] < NEAR<T> * (oo + nn[q])) idx[cnt++] = static_cast<uint16_t>(q);
  for (int k = 0; k < cnt; ++k) {
    const T* cq = c0 + (q0 + idx[k]) * D;
    T r2 = T(0);
    for (int d = 0; d < D; ++d) {
      const T diff = o0[d] - cq[d];
      r2 += diff * diff;
    }
    dr[idx[k]] = r2;
  }
}

// The close pairs of one row (idx, cnt from tile_r2): ex[d] += w[q] (o_d − c_q[d]) from the
// differences of the uncentred points (o, and c row-major (·, D)), and w[q] = 0, so that Σ_q w and
// the matrix product of the rest leave them out.
template <typename T>
inline void near_terms(T* w, const uint16_t* idx, int cnt, const T* o, const T* c, int64_t q0, int D, T* ex) {
  for (int k = 0; k < cnt; ++k) {
    const int q = idx[k];
    const T wq = w[q];
    w[q] = T(0);
    const T* cq = c + (q0 + q) * D;
    for (int d = 0; d < D; ++d) ex[d] += wq * (o[d] - cq[d]);
  }
}

// g·(o − c_q) for one close pair, from the differences of the uncentred points (c row-major (·, D)).
template <typename T>
inline T near_gdiff(const T* g, const T* o, const T* c, int64_t q, int D) {
  const T* cq = c + q * D;
  T acc = T(0);
  for (int d = 0; d < D; ++d) acc += g[d] * (o[d] - cq[d]);
  return acc;
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
  uint16_t near[MR * JBT];  // per row: the close pairs' indices in the block (tile_r2)
  int nnear[MR];
};

// The uncentred points of one tile (Sizes::outer0, inner0): the MR outer rows and the inner base.
template <typename T>
struct Uncentred {
  const T* o[MR];
  const T* c;
  const T* inner = nullptr;  // the inner points transposed (D, ld), for the passes that keep them here
  int64_t ld = 0;
};
template <typename T>
inline Uncentred<T> uncentred(const Sizes& z, int64_t b, int64_t L, int64_t Lin, int64_t i0, int mr) {
  Uncentred<T> u;
  row_ptrs(reinterpret_cast<const T*>(z.outer0) + b * L * z.D, z.D, i0, mr, u.o);
  u.c = reinterpret_cast<const T*>(z.inner0) + b * Lin * z.D;
  return u;
}

// The common front of every tiled pass: dots of the MR outer points with an inner block, turned
// into r² and the kernel terms of order ORDER, row by row.
template <typename T, int KIND, int ORDER>
inline void tile_kernel(TileBuf<T>& t, const T* const* o, const T* oo, const Inner<T>& in, const Uncentred<T>& u, int D,
                        int64_t q0, int nb, const T* inv, int K, const Spec& s) {
  tile_dots(o, D, in.pts, in.L, q0, nb, t.d);
  for (int r = 0; r < MR; ++r) {
    tile_r2(t.d + r * JBT, oo[r], in.nrm + q0, nb, u.o[r], u.c, D, q0, t.near + r * JBT, t.nnear[r]);
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
    const Uncentred<T> u = uncentred<T>(z, b, z.N, z.M, i0, mr);
    norms(xr, z.D, oo);
    const Inner<T> in{yT + b * z.D * z.Mp, yn + b * z.M, z.Mp};
    std::vector<T> acc(MR * z.Pp, T(0));
    for (int64_t q0 = 0; q0 < z.M; q0 += JBT) {
      const int nb = static_cast<int>(std::min<int64_t>(JBT, z.M - q0));
      tile_kernel<T, KIND, 0>(t, xr, oo, in, u, z.D, q0, nb, inv + b * z.inv_bs, z.K, s);
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
    const Uncentred<T> u = uncentred<T>(z, b, z.N, z.M, i0, mr);
    row_ptrs(g + b * z.N * z.P, z.P, i0, mr, gr);
    norms(xr, z.D, oo);
    const Inner<T> in{yT + b * z.D * z.Mp, yn + b * z.M, z.Mp};
    std::vector<T> acc(MR * z.Dp, T(0)), ex(MR * z.D, T(0));
    for (int64_t q0 = 0; q0 < z.M; q0 += JBT) {
      const int nb = static_cast<int>(std::min<int64_t>(JBT, z.M - q0));
      tile_kernel<T, KIND, 1>(t, xr, oo, in, u, z.D, q0, nb, inv + b * z.inv_bs, z.K, s);
      if (vT) tile_dots(gr, z.P, vT + b * z.P * z.Mp, z.Mp, q0, nb, t.e);  // g_i · v_j
      for (int r = 0; r < MR; ++r) {
        T* w = t.k1 + r * JBT;
        const T* sv = t.e + r * JBT;
        const T g0 = gr[r][0];
#pragma omp simd
        for (int q = 0; q < nb; ++q) w[q] *= T(2) * (vT ? sv[q] : g0);
        near_terms(w, t.near + r * JBT, t.nnear[r], u.o[r], u.c, q0, z.D, ex.data() + r * z.D);
        wsum[r] += sum_block(w, nb);
      }
      tile_reduce(t.k1, nb, yR + b * z.M * z.Dp, z.Dp, q0, z.Dp, acc.data());
    }
    for (int r = 0; r < mr; ++r)
      for (int d = 0; d < z.D; ++d)
        gx[(b * z.N + i0 + r) * z.D + d] = mul_sub(xr[r][d], wsum[r], acc[r * z.Dp + d]) + ex[r * z.D + d];
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
    const Uncentred<T> u = uncentred<T>(z, b, z.M, z.N, j0, mr);
    if (v) row_ptrs(v + b * z.M * z.P, z.P, j0, mr, vr);
    norms(yr, z.D, oo);
    const Inner<T> in{xT + b * z.D * z.Np, xn + b * z.N, z.Np};
    std::vector<T> ay(gy ? MR * z.Dp : 0, T(0)), av(gv ? MR * z.Pp : 0, T(0)), ex(gy ? MR * z.D : 0, T(0));
    for (int64_t q0 = 0; q0 < z.N; q0 += JBT) {
      const int nb = static_cast<int>(std::min<int64_t>(JBT, z.N - q0));
      tile_kernel<T, KIND, ORDER>(t, yr, oo, in, u, z.D, q0, nb, inv + b * z.inv_bs, z.K, s);
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
            near_terms(w, t.near + r * JBT, t.nnear[r], u.o[r], u.c, q0, z.D, ex.data() + r * z.D);
            wsum[r] += sum_block(w, nb);
          }
          tile_reduce(t.k1, nb, xR + b * z.N * z.Dp, z.Dp, q0, z.Dp, ay.data());
        }
      }
    }
    for (int r = 0; r < mr; ++r) {
      const int64_t j = b * z.M + j0 + r;
      if (gy)
        for (int d = 0; d < z.D; ++d) gy[j * z.D + d] = mul_sub(yr[r][d], wsum[r], ay[r * z.Dp + d]) + ex[r * z.D + d];
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
    const Uncentred<T> u = uncentred<T>(z, b, z.N, z.M, i0, mr);
    norms(xr, z.D, oo);
    const Inner<T> in{yT + b * z.D * z.Mp, yn + b * z.M, z.Mp};
    const T* ab = a ? a + b * z.M : nullptr;
    std::vector<T> acc(MR * z.Dp, T(0)), ex(MR * z.D, T(0));
    for (int64_t q0 = 0; q0 < z.M; q0 += JBT) {
      const int nb = static_cast<int>(std::min<int64_t>(JBT, z.M - q0));
      tile_kernel<T, KIND, 1>(t, xr, oo, in, u, z.D, q0, nb, inv + b * z.inv_bs, z.K, s);
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
        near_terms(w, t.near + r * JBT, t.nnear[r], u.o[r], u.c, q0, z.D, ex.data() + r * z.D);
        wsum[r] += sum_block(w, nb);
      }
      tile_reduce(t.k1, nb, yR + b * z.M * z.Dp, z.Dp, q0, z.Dp, acc.data());
    }
    for (int r = 0; r < mr; ++r)
      for (int d = 0; d < z.D; ++d)
        out[(b * z.N + i0 + r) * z.D + d] = mul_sub(xr[r][d], wsum[r], acc[r * z.Dp + d]) + ex[r * z.D + d];
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
    const Uncentred<T> u = uncentred<T>(z, b, z.N, z.M, i0, mr);
    row_ptrs(g + b * z.N * z.D, z.D, i0, mr, gr);
    norms(xr, z.D, oo);
    for (int r = 0; r < MR; ++r) {
      xg[r] = T(0);
      for (int d = 0; d < z.D; ++d) xg[r] += xr[r][d] * gr[r][d];
    }
    const Inner<T> in{yT + b * z.D * z.Mp, yn + b * z.M, z.Mp};
    const T* ab = a ? a + b * z.M : nullptr;
    std::vector<T> acc(MR * z.Dp, T(0)), ex(MR * z.D, T(0));
    for (int64_t q0 = 0; q0 < z.M; q0 += JBT) {
      const int nb = static_cast<int>(std::min<int64_t>(JBT, z.M - q0));
      tile_kernel<T, KIND, 2>(t, xr, oo, in, u, z.D, q0, nb, inv + b * z.inv_bs, z.K, s);
      tile_dots(gr, z.D, in.pts, in.L, q0, nb, t.e);  // g_i · y_j
      for (int r = 0; r < MR; ++r) {
        T* A = t.k1 + r * JBT;
        T* C = t.k2 + r * JBT;
        T* dg = t.e + r * JBT;
        const T* aq = ab ? ab + q0 : nullptr;
        const T xgr = xg[r];
        const uint16_t* idx = t.near + r * JBT;
        // close pairs: (x_i − y_j)·g_i from the differences, kept in t.d (their r², already
        // used) and put in place of xgr − dg after the loop (dg = xgr − exact would round again)
        for (int k = 0; k < t.nnear[r]; ++k) t.d[r * JBT + idx[k]] = near_gdiff(gr[r], u.o[r], u.c, q0 + idx[k], z.D);
#pragma omp simd
        for (int q = 0; q < nb; ++q) {
          const T aj = aq ? aq[q] : T(1);
          A[q] = T(2) * A[q] * aj;
          C[q] = T(4) * C[q] * aj;
          dg[q] = xgr - dg[q];
        }
        for (int k = 0; k < t.nnear[r]; ++k) dg[idx[k]] = t.d[r * JBT + idx[k]];
#pragma omp simd
        for (int q = 0; q < nb; ++q) C[q] *= dg[q];
        near_terms(C, idx, t.nnear[r], u.o[r], u.c, q0, z.D, ex.data() + r * z.D);
        asum[r] += sum_block(A, nb);
        csum[r] += sum_block(C, nb);
      }
      tile_reduce(t.k2, nb, yR + b * z.M * z.Dp, z.Dp, q0, z.Dp, acc.data());
    }
    for (int r = 0; r < mr; ++r)
      for (int d = 0; d < z.D; ++d)
        gx[(b * z.N + i0 + r) * z.D + d] = gr[r][d] * asum[r] + mul_sub(xr[r][d], csum[r], acc[r * z.Dp + d]) + ex[r * z.D + d];
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
    const Uncentred<T> u = uncentred<T>(z, b, z.M, z.N, j0, mr);
    norms(yr, z.D, oo);
    for (int r = 0; r < MR; ++r) aj[r] = a ? a[b * z.M + j0 + std::min(r, mr - 1)] : T(1);
    const Inner<T> in{xT + b * z.D * z.Np, xn + b * z.N, z.Np};
    const T* xg = xgv + b * z.N;
    std::vector<T> cx(gy ? MR * z.Dp : 0, T(0)), ag(gy ? MR * z.Dp : 0, T(0)), ex(gy ? MR * z.D : 0, T(0));
    const T* gRb = gR + b * z.N * z.Dp;
    for (int64_t q0 = 0; q0 < z.N; q0 += JBT) {
      const int nb = static_cast<int>(std::min<int64_t>(JBT, z.N - q0));
      tile_kernel<T, KIND, ORDER>(t, yr, oo, in, u, z.D, q0, nb, inv + b * z.inv_bs, z.K, s);
      tile_dots(yr, z.D, gT + b * z.D * z.Np, z.Np, q0, nb, t.e);  // y_j · g_i
      const T* xgq = xg + q0;
      for (int r = 0; r < MR; ++r) {
        T* k1 = t.k1 + r * JBT;
        T* k2 = t.k2 + r * JBT;
        T* dg = t.e + r * JBT;
        const uint16_t* idx = t.near + r * JBT;
        gasum[r] += dg_and_ga(xgq, dg, k1, nb, ga != nullptr);
        for (int k = 0; k < t.nnear[r]; ++k) {  // close pairs: (x_i − y_j)·g_i from the differences
          const int q = idx[k];
          const T exact = -near_gdiff(gRb + (q0 + q) * z.Dp, u.o[r], u.c, q0 + q, z.D);  // g_i·(x_i − y_j)
          if (ga) gasum[r] += k1[q] * (exact - dg[q]);
          dg[q] = exact;
        }
        if constexpr (ORDER >= 2) {
          if (gy) {
            const T ar = aj[r];
#pragma omp simd
            for (int q = 0; q < nb; ++q) k2[q] = T(4) * k2[q] * ar * dg[q];
            near_terms(k2, idx, t.nnear[r], u.o[r], u.c, q0, z.D, ex.data() + r * z.D);
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
          gy[j * z.D + d] = mul_sub(yr[r][d], csum[r], cx[r * z.Dp + d]) + ex[r * z.D + d] - aj[r] * ag[r * z.Dp + d];
      if (ga) ga[j] = gasum[r];
    }
  });
}

// The soft assignment's logits −r²/(2σ²) of the MR outer rows against one inner block, r² from
// the dots with the close pairs recomputed (tile_r2), as the reference: the flash form
// (o·c − |c|²/2)/σ² rounds each logit at eps |o| |c| / σ² instead of eps r² / σ².
// The backward passes divide by the forward's normaliser, so every pass must round each logit
// alike, whichever set is outer: the squared norms of both sets come from the caller (oo from
// outer_norms), the dots and tile_r2 are symmetric in their two points. (A logit of −5e8, r² = 10
// at σ = 1e-4, rounded differently by one ulp moved p_ij by e^±60.)
template <typename T>
inline void outer_norms(const T* on, int64_t i0, int mr, T* oo) {
  for (int r = 0; r < MR; ++r) oo[r] = on[i0 + std::min(r, mr - 1)];
}
template <typename T>
inline void soft_logits(TileBuf<T>& t, const T* const* o, const T* oo, const T* nn, const Uncentred<T>& u, int D,
                        int64_t q0, int nb, T ib) {
  tile_dots(o, D, u.inner, u.ld, q0, nb, t.d);
  for (int r = 0; r < MR; ++r) {
    T* l = t.d + r * JBT;
    tile_r2(l, oo[r], nn + q0, nb, u.o[r], u.c, D, q0, t.near + r * JBT, t.nnear[r]);
#pragma omp simd
    for (int q = 0; q < nb; ++q) l[q] *= T(-0.5) * ib;
  }
}

// x: the outer points (centred), yT/yn: the inner ones transposed and their squared norms, yR:
// row-major; Sizes::outer0/inner0 the same points row-major for the close pairs' differences.
template <typename T>
void t_softmax_fwd(const Sizes& z, const T* x, const T* xn, const T* yT, const T* yn, const T* yR, const T* inv, T* mu,
                   T* lse) {
  for_tiles(z.B, z.N, z.M, z.nt, [&](int64_t b, int64_t i0, int mr) {
    TileBuf<T> t;
    const T* xr[MR];
    T oo[MR];
    row_ptrs(x + b * z.N * z.D, z.D, i0, mr, xr);
    outer_norms(xn + b * z.N, i0, mr, oo);
    Uncentred<T> u = uncentred<T>(z, b, z.N, z.M, i0, mr);
    u.inner = yT + b * z.D * z.Mp;
    u.ld = z.Mp;
    const T ib = inv[b * z.inv_bs];
    const T* nn = yn + b * z.M;
    T m[MR], tot[MR] = {};
    for (int r = 0; r < MR; ++r) m[r] = -std::numeric_limits<T>::infinity();
    std::vector<T> acc(MR * z.Dp, T(0));
    for (int64_t q0 = 0; q0 < z.M; q0 += JBT) {
      const int nb = static_cast<int>(std::min<int64_t>(JBT, z.M - q0));
      soft_logits(t, xr, oo, nn, u, z.D, q0, nb, ib);
      for (int r = 0; r < MR; ++r) {
        // Weights against the running maximum m in the same pass; only when the block holds
        // logits far above m (Σp past 2^20, or the first block, m = −∞) is its own maximum taken
        // and the pass redone. Any reference ≥ the block's values gives the same softmax;
        // p ≤ 2^20 keeps Σ p·y far from overflow.
        const T* l = t.d + r * JBT;
        T* p = t.e + r * JBT;
        const T mo = m[r];
#pragma omp simd
        for (int q = 0; q < nb; ++q) p[q] = fexp(l[q] - mo);
        T s = sum_block(p, nb);
        if (!(s <= T(1 << 20))) {
          const T mn = std::max(mo, block_max(l, nb, -std::numeric_limits<T>::infinity()));
          const T scale = std::exp(mo - mn);  // 0 on the first block
#pragma omp simd
          for (int q = 0; q < nb; ++q) p[q] = fexp(l[q] - mn);
          s = sum_block(p, nb);
          tot[r] *= scale;
          for (int64_t d = 0; d < z.Dp; ++d) acc[r * z.Dp + d] *= scale;
          m[r] = mn;
        }
        tot[r] += s;
      }
      tile_reduce(t.e, nb, yR + b * z.M * z.Dp, z.Dp, q0, z.Dp, acc.data());
    }
    for (int r = 0; r < mr; ++r) {
      const int64_t i = b * z.N + i0 + r;
      for (int d = 0; d < z.D; ++d) mu[i * z.D + d] = acc[r * z.Dp + d] / tot[r];
      lse[i] = m[r] + std::log(tot[r]);
    }
  });
}

// gx_i = [Σ_j c_ij (y_j − x_i) + (x_i − μ_i) Σ_j c_ij] / σ² with c_ij = p_ij (g_i·y_j − g_i·μ_i):
// the far pairs' part as Σ c y − x Σ c, the close pairs' from their differences (near_terms), as
// reference.softmax_mean_backward.
template <typename T>
void t_softmax_bwd_x(const Sizes& z, const T* x, const T* xn, const T* yT, const T* yn, const T* yR, const T* inv,
                     const T* lse, const T* gmu, const T* g, const T* mu, T* gx) {
  for_tiles(z.B, z.N, z.M, z.nt, [&](int64_t b, int64_t i0, int mr) {
    TileBuf<T> t;
    const T *xr[MR], *gr[MR];
    T oo[MR];
    row_ptrs(x + b * z.N * z.D, z.D, i0, mr, xr);
    row_ptrs(g + b * z.N * z.D, z.D, i0, mr, gr);
    outer_norms(xn + b * z.N, i0, mr, oo);
    Uncentred<T> u = uncentred<T>(z, b, z.N, z.M, i0, mr);
    u.inner = yT + b * z.D * z.Mp;
    u.ld = z.Mp;
    const T ib = inv[b * z.inv_bs];
    const T* nn = yn + b * z.M;
    std::vector<T> acc(MR * z.Dp, T(0)), ex(MR * z.D, T(0));
    T call[MR] = {}, cfar[MR] = {};
    for (int64_t q0 = 0; q0 < z.M; q0 += JBT) {
      const int nb = static_cast<int>(std::min<int64_t>(JBT, z.M - q0));
      soft_logits(t, xr, oo, nn, u, z.D, q0, nb, ib);
      tile_dots(gr, z.D, yT + b * z.D * z.Mp, z.Mp, q0, nb, t.e);  // g_i · y_j
      for (int r = 0; r < MR; ++r) {
        T* l = t.d + r * JBT;
        const T* gyq = t.e + r * JBT;
        const int64_t i = b * z.N + i0 + std::min(r, mr - 1);
        const T li = lse[i], gm = gmu[i];
#pragma omp simd
        for (int q = 0; q < nb; ++q) l[q] = fexp(l[q] - li) * (gyq[q] - gm);
        const T s = sum_block(l, nb);
        call[r] += s;
        if (t.nnear[r]) {
          near_terms(l, t.near + r * JBT, t.nnear[r], u.o[r], u.c, q0, z.D, ex.data() + r * z.D);
          cfar[r] += sum_block(l, nb);
        } else {
          cfar[r] += s;
        }
      }
      tile_reduce(t.d, nb, yR + b * z.M * z.Dp, z.Dp, q0, z.Dp, acc.data());
    }
    for (int r = 0; r < mr; ++r) {
      const T* mi = mu + (b * z.N + i0 + r) * z.D;
      for (int d = 0; d < z.D; ++d) {
        const T far = -mul_sub(xr[r][d], cfar[r], acc[r * z.Dp + d]);  // Σ_far c (y − x)
        gx[(b * z.N + i0 + r) * z.D + d] = (far - ex[r * z.D + d] + (xr[r][d] - mi[d]) * call[r]) * ib;
      }
    }
  });
}

// gy_j = Σ_i p_ij g_i + Σ_i c_ij (x_i − y_j) / σ²: y the outer points, x the inner ones (xT, xn: their
// squared norms, xR), the close pairs' part from their differences.
template <typename T>
void t_softmax_bwd_y(const Sizes& z, const T* y, const T* yn, const T* xT, const T* xn, const T* xR, const T* inv,
                     const T* lse, const T* gmu, const T* gT, const T* gR, T* gyo) {
  for_tiles(z.B, z.M, z.N, z.nt, [&](int64_t b, int64_t j0, int mr) {
    TileBuf<T> t;
    const T* yr[MR];
    T oo[MR];
    row_ptrs(y + b * z.M * z.D, z.D, j0, mr, yr);
    outer_norms(yn + b * z.M, j0, mr, oo);
    Uncentred<T> u = uncentred<T>(z, b, z.M, z.N, j0, mr);
    u.inner = xT + b * z.D * z.Np;
    u.ld = z.Np;
    const T ib = inv[b * z.inv_bs];
    const T* lb = lse + b * z.N;
    const T* gmb = gmu + b * z.N;
    const T* nn = xn + b * z.N;
    T cfar[MR] = {};
    std::vector<T> pg(MR * z.Dp, T(0)), cx(MR * z.Dp, T(0)), ex(MR * z.D, T(0));
    for (int64_t q0 = 0; q0 < z.N; q0 += JBT) {
      const int nb = static_cast<int>(std::min<int64_t>(JBT, z.N - q0));
      soft_logits(t, yr, oo, nn, u, z.D, q0, nb, ib);
      tile_dots(yr, z.D, gT + b * z.D * z.Np, z.Np, q0, nb, t.e);  // y_j · g_i
      for (int r = 0; r < MR; ++r) {
        T* l = t.d + r * JBT;
        T* c = t.e + r * JBT;
        const T* lq = lb + q0;
        const T* gq = gmb + q0;
#pragma omp simd
        for (int q = 0; q < nb; ++q) {
          const T p = fexp(l[q] - lq[q]);
          l[q] = p;
          c[q] = p * (c[q] - gq[q]);
        }
        // ex += c (y_j − x_i) for the close pairs, which leave c
        near_terms(c, t.near + r * JBT, t.nnear[r], u.o[r], u.c, q0, z.D, ex.data() + r * z.D);
        cfar[r] += sum_block(c, nb);
      }
      tile_reduce(t.d, nb, gR + b * z.N * z.Dp, z.Dp, q0, z.Dp, pg.data());
      tile_reduce(t.e, nb, xR + b * z.N * z.Dp, z.Dp, q0, z.Dp, cx.data());
    }
    for (int r = 0; r < mr; ++r)
      for (int d = 0; d < z.D; ++d)
        gyo[(b * z.M + j0 + r) * z.D + d] =
            pg[r * z.Dp + d] - (mul_sub(yr[r][d], cfar[r], cx[r * z.Dp + d]) + ex[r * z.D + d]) * ib;
  });
}

}  // namespace gpflow_cpu
