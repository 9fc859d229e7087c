// Fused CPU kernels for the pair reductions of gpflow_kernels, exposed through pybind11 as
// gpflow_kernels._cpu_ext and used by backend="auto"/"cpu" on CPU tensors (gpflow_kernels/_cpu.py).
// Parts: cpu_math.h (exp, kernel profiles), cpu_rows.h (geometry, threads, the row path),
// cpu_tiles.h (the tiled path for D > 8); this file dispatches on dtype and kernel and holds the
// Python module.
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
// |x|² + |y|² − 2 x·y on the centred points with the close pairs recomputed from their
// differences (as the reference), the KDE logits −r²/(2σ²) from the same r².

#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <vector>

#include "cpu_tiles.h"

namespace py = pybind11;

// A named namespace, not an anonymous one: half of the instantiations live in a second object
// file (GPFLOW_CPU_PART below) and link against the first.
namespace gpflow_cpu {

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

// which 0: forward (x, yT, yn, yR, inv, mu, lse); 1: x gradient (x, yT, yn, yR, inv, lse, gmu, g, gx, mu);
// 2: y gradient (y, xT, xn, xR, inv, lse, gmu, gT, gR, gy). The squared norms (tiled path only) are
// the inner points' (a2) and the outer points' (on), both from the caller (see t_softmax_fwd).
template <typename T>
void softmax_dispatch(int which, Sizes z, P a0, P a1, P a2, P a3, P a4, P a5, P a6, P a7, P a8, P a9, P on) {
  const bool tiled = z.D > EXACT_MAX_D;
  if (which == 0) {
    if (tiled) t_softmax_fwd<T>(z, cp<T>(a0), cp<T>(on), cp<T>(a1), cp<T>(a2), cp<T>(a3), cp<T>(a4), mp<T>(a5), mp<T>(a6));
    else softmax_fwd<T>(z, cp<T>(a0), cp<T>(a1), cp<T>(a2), cp<T>(a4), mp<T>(a5), mp<T>(a6));
  } else if (which == 1) {
    if (tiled)
      t_softmax_bwd_x<T>(z, cp<T>(a0), cp<T>(on), cp<T>(a1), cp<T>(a2), cp<T>(a3), cp<T>(a4), cp<T>(a5), cp<T>(a6),
                         cp<T>(a7), cp<T>(a9), mp<T>(a8));
    else
      softmax_bwd_x<T>(z, cp<T>(a0), cp<T>(a1), cp<T>(a2), cp<T>(a4), cp<T>(a5), cp<T>(a6), cp<T>(a7), cp<T>(a9),
                       mp<T>(a8));
  } else {
    if (tiled)
      t_softmax_bwd_y<T>(z, cp<T>(a0), cp<T>(on), cp<T>(a1), cp<T>(a2), cp<T>(a3), cp<T>(a4), cp<T>(a5), cp<T>(a6),
                         cp<T>(a7), cp<T>(a8), mp<T>(a9));
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
                                                         uintptr_t, uintptr_t, uintptr_t);
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

// The uncentred points (Sizes::outer0, inner0), which the tiled path needs.
Sizes with_points(Sizes z, uintptr_t outer0, uintptr_t inner0) {
  if (z.D > EXACT_MAX_D && (!outer0 || !inner0))
    throw std::invalid_argument("the tiled path (D > 8) needs the uncentred outer and inner points");
  z.outer0 = outer0;
  z.inner0 = inner0;
  return z;
}

}  // namespace
}  // namespace gpflow_cpu

using namespace gpflow_cpu;

PYBIND11_MODULE(_cpu_ext, m) {
  m.doc() = "Fused CPU pair reductions of gpflow_kernels (see csrc/gpflow_cpu.cpp)";
  // Sizes and kernel arguments, in this order, end every binding's argument list.
#define SIZE_ARGS int64_t B, int64_t N, int64_t M, int D, int Pv, int K, int64_t inv_bs, int kind, double pc, \
                  double ph, double pe, int dtype, int nt, P outer0, P inner0
#define SIZES with_points(sizes(B, N, M, D, Pv, K, inv_bs, nt), outer0, inner0), Spec{pc, ph, pe, kind == 5}
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
  m.def("softmax", [](int which, P a0, P a1, P a2, P a3, P a4, P a5, P a6, P a7, P a8, P a9, P on, int64_t B,
                      int64_t N, int64_t M, int D, int64_t inv_bs, int dtype, int nt, P outer0, P inner0) {
    if (dtype != 0 && dtype != 1) throw std::invalid_argument("dtype code must be 0 (float32) or 1 (float64)");
    if (which < 0 || which > 2) throw std::invalid_argument("which must be 0, 1 or 2");
    const Sizes z = with_points(sizes(B, N, M, D, 1, 1, inv_bs, nt), outer0, inner0);
    py::gil_scoped_release nogil;
    if (D > EXACT_MAX_D && !on) throw std::invalid_argument("the tiled path (D > 8) needs the outer points' squared norms");
    if (dtype == 0) softmax_dispatch<float>(which, z, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, on);
    else softmax_dispatch<double>(which, z, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, on);
  });
  m.def("fexp", [](double x, int dtype) { return dtype == 0 ? double(fexp(float(x))) : fexp(x); },
        "our vectorisable exp on one number (for tests)");
}
#endif  // GPFLOW_CPU_PART != 1
