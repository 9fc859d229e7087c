// CUDA kernels for the core pair reductions of gpflow_kernels, exposed through pybind11.
//
// No torch headers: Python passes raw device pointers, sizes, a dtype code and the CUDA stream,
// so this one source builds against any nvcc and any torch. Inputs are contiguous (B, N, D)
// arrays (gpflow_kernels/_cuda.py): uncentred for the pair sums, whose r² and fields come from
// per-pair differences; centred on y's mean for the soft assignment. Bandwidths come as 1/σ²,
// (B or 1, K). The contract and the oracle are gpflow_kernels/reference.py.
//
// Layout: one thread per query row x_i (its coordinates and accumulators live in registers),
// a block of THREADS rows, sources y_j staged through shared memory TILE at a time.

#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace py = pybind11;

namespace {

constexpr int THREADS = 128;
constexpr int TILE = 128;
constexpr int MAXD = 8;   // exact differences up to D = 8 (reference.EXACT_MAX_D)
constexpr int MAXP = 16;  // values per source point for the kernel integral

struct KernelSpec {
  int kind;     // 0 gaussian, 1 imq, 2 laplace, 3 energy, 4 polyharmonic s^k, 5 polyharmonic s^k log s
  double pc;    // polyharmonic sign
  double ph;    // polyharmonic exponent: k/2 (kind 4) or j = k/2 (kind 5)
  double peps2; // polyharmonic softening eps²
};

// φ(u) and φ'(u) for u = r²/σ² (see gpflow_kernels/kernels.py); derivatives that are singular
// at u = 0 are 0 there (coincident points feel no force).
template <typename T>
__device__ __forceinline__ void profile(T u, const KernelSpec& k, T& phi, T& d1) {
  switch (k.kind) {
    case 0: {
      phi = exp(T(-0.5) * u);
      d1 = T(-0.5) * phi;
      break;
    }
    case 1: {
      T w = T(1) / sqrt(T(1) + u);
      phi = w;
      d1 = T(-0.5) * w * w * w;
      break;
    }
    case 2: {
      T s = sqrt(u);
      phi = exp(-s);
      d1 = u > T(0) ? -phi / (T(2) * s) : T(0);
      break;
    }
    case 3: {
      T s = sqrt(u);
      phi = -s;
      d1 = u > T(0) ? T(-0.5) / s : T(0);
      break;
    }
    case 4: {
      T w = u + T(k.peps2);
      if (w > T(0)) {
        T lw = log(w);
        phi = T(k.pc) * exp(T(k.ph) * lw);
        d1 = T(k.pc) * T(k.ph) * exp((T(k.ph) - T(1)) * lw);
      } else {
        phi = T(0);
        d1 = T(0);
      }
      break;
    }
    default: {
      T w = u + T(k.peps2);
      if (w > T(0)) {
        T lw = log(w);
        T j = T(k.ph);
        phi = T(0.5) * T(k.pc) * exp(j * lw) * lw;
        d1 = T(0.5) * T(k.pc) * exp((j - T(1)) * lw) * (j * lw + T(1));
      } else {
        phi = T(0);
        d1 = T(0);
      }
    }
  }
}

// Σ over the K bandwidths of (k, dk/dr²).
template <typename T>
__device__ __forceinline__ void radial(T r2, const T* inv, int K, const KernelSpec& ks, T& k0, T& k1) {
  k0 = T(0);
  k1 = T(0);
  for (int b = 0; b < K; ++b) {
    T phi, d1;
    profile(r2 * inv[b], ks, phi, d1);
    k0 += phi;
    k1 += d1 * inv[b];
  }
}

// |x_i − y_j|² by exact differences, from the register row xi and a shared-memory row yj.
template <typename T>
__device__ __forceinline__ T sqdist(const T (&xi)[MAXD], const T* yj, int D) {
  T r2 = T(0);
#pragma unroll
  for (int d = 0; d < MAXD; ++d) {
    if (d < D) {
      const T diff = xi[d] - yj[d];
      r2 += diff * diff;
    }
  }
  return r2;
}

// Compile-time D where it pays (D = 1, 2, 3), a runtime bound otherwise.
template <int DC>
__device__ __forceinline__ int dim(int D) { return DC > 0 ? DC : D; }

// out_i = Σ_j a_j ∇_x k(x_i, y_j) = Σ_j 2 k'_ij a_j (x_i − y_j)
template <typename T, int DC>
__global__ void grad_sum_kernel(const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ a,
                                const T* __restrict__ inv_s2, T* __restrict__ out, int N, int M, int Dr, int K,
                                int inv_bs, KernelSpec ks) {
  const int D = dim<DC>(Dr);
  const int b = blockIdx.y;
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  x += (size_t)b * N * D;
  y += (size_t)b * M * D;
  out += (size_t)b * N * D;
  if (a) a += (size_t)b * M;
  inv_s2 += (size_t)b * inv_bs;
  __shared__ T ys[TILE * MAXD];
  __shared__ T as[TILE];
  T xi[MAXD], acc[MAXD];
#pragma unroll
  for (int d = 0; d < MAXD; ++d) {
    xi[d] = (i < N && d < D) ? x[(size_t)i * D + d] : T(0);
    acc[d] = T(0);
  }
  for (int j0 = 0; j0 < M; j0 += TILE) {
    const int n = min(TILE, M - j0);
    for (int t = threadIdx.x; t < n * D; t += blockDim.x) ys[t] = y[(size_t)j0 * D + t];
    for (int t = threadIdx.x; t < n; t += blockDim.x) as[t] = a ? a[j0 + t] : T(1);
    __syncthreads();
    for (int jj = 0; jj < n; ++jj) {
      const T r2 = sqdist(xi, ys + jj * D, D);
      T k0, k1;
      radial(r2, inv_s2, K, ks, k0, k1);
      const T w = T(2) * k1 * as[jj];
      // Σ_j w_ij (x_i − y_j) from each pair's own difference: x_i Σ_j w_ij − Σ_j w_ij y_j would
      // cancel whenever one weight is large (the self pair of x_ref = x, near pairs at small σ)
      // and wipe out the rest of the field (issue #27).
#pragma unroll
      for (int d = 0; d < MAXD; ++d)
        if (d < D) acc[d] += w * (xi[d] - ys[jj * D + d]);
    }
    __syncthreads();
  }
  if (i < N) {
#pragma unroll
    for (int d = 0; d < MAXD; ++d)
      if (d < D) out[(size_t)i * D + d] = acc[d];
  }
}

// out_i = Σ_j k(x_i, y_j) v_j, v: (M, P) or ones (P = 1) when v is null
template <typename T, int DC>
__global__ void integral_kernel(const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ v,
                                const T* __restrict__ inv_s2, T* __restrict__ out, int N, int M, int Dr, int P,
                                int K, int inv_bs, KernelSpec ks) {
  const int D = dim<DC>(Dr);
  const int b = blockIdx.y;
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  x += (size_t)b * N * D;
  y += (size_t)b * M * D;
  out += (size_t)b * N * P;
  if (v) v += (size_t)b * M * P;
  inv_s2 += (size_t)b * inv_bs;
  __shared__ T ys[TILE * MAXD];
  __shared__ T vs[TILE * MAXP];
  T xi[MAXD], acc[MAXP];
#pragma unroll
  for (int d = 0; d < MAXD; ++d) xi[d] = (i < N && d < D) ? x[(size_t)i * D + d] : T(0);
#pragma unroll
  for (int p = 0; p < MAXP; ++p) acc[p] = T(0);
  for (int j0 = 0; j0 < M; j0 += TILE) {
    const int n = min(TILE, M - j0);
    for (int t = threadIdx.x; t < n * D; t += blockDim.x) ys[t] = y[(size_t)j0 * D + t];
    for (int t = threadIdx.x; t < n * P; t += blockDim.x) vs[t] = v ? v[(size_t)j0 * P + t] : T(1);
    __syncthreads();
    for (int jj = 0; jj < n; ++jj) {
      const T r2 = sqdist(xi, ys + jj * D, D);
      T k0, k1;
      radial(r2, inv_s2, K, ks, k0, k1);
#pragma unroll
      for (int p = 0; p < MAXP; ++p)
        if (p < P) acc[p] += k0 * vs[jj * P + p];
    }
    __syncthreads();
  }
  if (i < N) {
#pragma unroll
    for (int p = 0; p < MAXP; ++p)
      if (p < P) out[(size_t)i * P + p] = acc[p];
  }
}

// μ_i = Σ_j softmax_j(−|x_i − y_j|²/(2σ²)) y_j with an online log-sum-exp; lse_i in natural
// units of the logits −r²/(2σ²) (the reference's convention for D ≤ 8, which its backward reads).
template <typename T, int DC>
__global__ void softmax_mean_kernel(const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ inv_s2,
                                    T* __restrict__ mu, T* __restrict__ lse, int N, int M, int Dr, int inv_bs) {
  const int D = dim<DC>(Dr);
  const int b = blockIdx.y;
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  x += (size_t)b * N * D;
  y += (size_t)b * M * D;
  mu += (size_t)b * N * D;
  lse += (size_t)b * N;
  const T half_inv = T(0.5) * inv_s2[(size_t)b * inv_bs];
  __shared__ T ys[TILE * MAXD];
  T xi[MAXD], acc[MAXD];
#pragma unroll
  for (int d = 0; d < MAXD; ++d) {
    xi[d] = (i < N && d < D) ? x[(size_t)i * D + d] : T(0);
    acc[d] = T(0);
  }
  T m = -INFINITY, l = T(0);
  for (int j0 = 0; j0 < M; j0 += TILE) {
    const int n = min(TILE, M - j0);
    for (int t = threadIdx.x; t < n * D; t += blockDim.x) ys[t] = y[(size_t)j0 * D + t];
    __syncthreads();
    for (int jj = 0; jj < n; ++jj) {
      const T r2 = sqdist(xi, ys + jj * D, D);
      const T ell = -r2 * half_inv;
      if (ell > m) {  // rescale what was accumulated to the new maximum
        const T alpha = exp(m - ell);
        l *= alpha;
#pragma unroll
        for (int d = 0; d < MAXD; ++d) acc[d] *= alpha;
        m = ell;
      }
      const T p = exp(ell - m);
      l += p;
#pragma unroll
      for (int d = 0; d < MAXD; ++d)
        if (d < D) acc[d] += p * ys[jj * D + d];
    }
    __syncthreads();
  }
  if (i < N) {
#pragma unroll
    for (int d = 0; d < MAXD; ++d)
      if (d < D) mu[(size_t)i * D + d] = acc[d] / l;
    lse[i] = m + log(l);
  }
}

void check_launch(const char* what) {
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

void check_args(int B, int N, int M, int D, int P) {
  if (B < 1 || N < 1 || M < 1) throw std::invalid_argument("B, N and M must be >= 1");
  if (D < 1 || D > MAXD) throw std::invalid_argument("the CUDA kernels take 1 <= D <= " + std::to_string(MAXD));
  if (P < 1 || P > MAXP) throw std::invalid_argument("the CUDA kernel integral takes 1 <= P <= " + std::to_string(MAXP));
}

// Dispatch on dtype (0 float32, 1 float64) and on D (1, 2, 3 at compile time, else runtime).
template <template <typename, int> class Launch, typename... Args>
void dispatch(int dtype, int D, Args... args) {
  if (dtype == 0) {
    switch (D) {
      case 1: Launch<float, 1>::run(args...); break;
      case 2: Launch<float, 2>::run(args...); break;
      case 3: Launch<float, 3>::run(args...); break;
      default: Launch<float, 0>::run(args...);
    }
  } else if (dtype == 1) {
    switch (D) {
      case 1: Launch<double, 1>::run(args...); break;
      case 2: Launch<double, 2>::run(args...); break;
      case 3: Launch<double, 3>::run(args...); break;
      default: Launch<double, 0>::run(args...);
    }
  } else {
    throw std::invalid_argument("dtype code must be 0 (float32) or 1 (float64)");
  }
}

dim3 grid_for(int N, int B) { return dim3((N + THREADS - 1) / THREADS, B); }

template <typename T, int DC>
struct GradSum {
  static void run(uintptr_t x, uintptr_t y, uintptr_t a, uintptr_t inv, uintptr_t out, int B, int N, int M, int D,
                  int K, int inv_bs, KernelSpec ks, uintptr_t stream) {
    grad_sum_kernel<T, DC><<<grid_for(N, B), THREADS, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
        reinterpret_cast<const T*>(x), reinterpret_cast<const T*>(y), reinterpret_cast<const T*>(a),
        reinterpret_cast<const T*>(inv), reinterpret_cast<T*>(out), N, M, D, K, inv_bs, ks);
  }
};

template <typename T, int DC>
struct Integral {
  static void run(uintptr_t x, uintptr_t y, uintptr_t v, uintptr_t inv, uintptr_t out, int B, int N, int M, int D,
                  int P, int K, int inv_bs, KernelSpec ks, uintptr_t stream) {
    integral_kernel<T, DC><<<grid_for(N, B), THREADS, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
        reinterpret_cast<const T*>(x), reinterpret_cast<const T*>(y), reinterpret_cast<const T*>(v),
        reinterpret_cast<const T*>(inv), reinterpret_cast<T*>(out), N, M, D, P, K, inv_bs, ks);
  }
};

template <typename T, int DC>
struct SoftmaxMean {
  static void run(uintptr_t x, uintptr_t y, uintptr_t inv, uintptr_t mu, uintptr_t lse, int B, int N, int M, int D,
                  int inv_bs, uintptr_t stream) {
    softmax_mean_kernel<T, DC><<<grid_for(N, B), THREADS, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
        reinterpret_cast<const T*>(x), reinterpret_cast<const T*>(y), reinterpret_cast<const T*>(inv),
        reinterpret_cast<T*>(mu), reinterpret_cast<T*>(lse), N, M, D, inv_bs);
  }
};

}  // namespace

PYBIND11_MODULE(_cuda_ext, m) {
  m.doc() = "gpflow_kernels CUDA kernels (raw pointers; see gpflow_kernels/_cuda.py)";
  m.attr("MAX_D") = MAXD;
  m.attr("MAX_P") = MAXP;
  m.def(
      "grad_sum",
      [](uintptr_t x, uintptr_t y, uintptr_t a, uintptr_t inv, uintptr_t out, int B, int N, int M, int D, int K,
         int inv_bs, int kind, double pc, double ph, double peps2, int dtype, uintptr_t stream) {
        check_args(B, N, M, D, 1);
        dispatch<GradSum>(dtype, D, x, y, a, inv, out, B, N, M, D, K, inv_bs, KernelSpec{kind, pc, ph, peps2}, stream);
        check_launch("grad_sum");
      },
      "out_i = Σ_j a_j ∇_x k(x_i, y_j) (a = 0 pointer: all ones)");
  m.def(
      "integral",
      [](uintptr_t x, uintptr_t y, uintptr_t v, uintptr_t inv, uintptr_t out, int B, int N, int M, int D, int P, int K,
         int inv_bs, int kind, double pc, double ph, double peps2, int dtype, uintptr_t stream) {
        check_args(B, N, M, D, P);
        dispatch<Integral>(dtype, D, x, y, v, inv, out, B, N, M, D, P, K, inv_bs, KernelSpec{kind, pc, ph, peps2}, stream);
        check_launch("integral");
      },
      "out_i = Σ_j k(x_i, y_j) v_j (v = 0 pointer: ones, P = 1)");
  m.def(
      "softmax_mean",
      [](uintptr_t x, uintptr_t y, uintptr_t inv, uintptr_t mu, uintptr_t lse, int B, int N, int M, int D, int inv_bs,
         int dtype, uintptr_t stream) {
        check_args(B, N, M, D, 1);
        dispatch<SoftmaxMean>(dtype, D, x, y, inv, mu, lse, B, N, M, D, inv_bs, stream);
        check_launch("softmax_mean");
      },
      "μ_i and lse_i of the Gaussian soft assignment of x_i to the y_j");
}
