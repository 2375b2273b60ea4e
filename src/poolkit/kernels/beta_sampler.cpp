// Stochastic Mix's mixing weights: Beta(alpha, beta) draws and their implicit-reparameterisation gradient.
//
// Part of the same extension as window_stats.cpp (one build, see poolkit/kernels/build.py); registered as
// poolkit_cpu::beta_rsample_forward / beta_rsample_backward, called by the custom operator
// poolkit::beta_rsample (Python, poolkit/kernels/ops.py), which carries the fake kernel and the autograd.
//
// Draw. lambda = G1 / (G1 + G2) with G1 ~ Gamma(alpha), G2 ~ Gamma(beta), both drawn in double from torch's
// default CPU generator (held under its mutex) with the acceptance-rejection method of Marsaglia & Tsang
// (2000), ACM TOMS 26(3), and their boost u^(1/a) for a < 1. The standard uniforms and normals are torch's
// own distribution helpers (at::uniform_real_distribution, at::normal_distribution with its cached
// second Box-Muller value), taken in the order that torch's _sample_dirichlet takes them, with the same
// constants, normalisation and float clamp: under torch.manual_seed the draws are the ones that
// torch.distributions.Beta(alpha, beta).rsample() makes, so the fused and the eager paths of a training
// run agree draw for draw. No product of the draw is contracted into an FMA (see `rounded`).
//
// Gradient (implicit reparameterisation, Figurnov et al. 2018): with u = I_x(a, b) held fixed,
// d lambda / d a = -(dI/da) / f(x), f the Beta density. From the positive hypergeometric series
// (DLMF 8.17.8)  int_0^x t^(a-1) (1-t)^(b-1) dt = x^a (1-x)^b sum_k T_k,  T_k = (a+b)_k / (a)_(k+1) x^k,
// differentiated term by term and divided by f:
//   d lambda / d a = -x (1-x) [ (ln x - psi(a+1) + psi(a+b)) S + sum_k T_k (H_k(a+b) - H'_k(a)) ]
//   d lambda / d b = -x (1-x) [ (ln(1-x) - psi(b) + psi(a+b)) S + sum_k T_k H_k(a+b) ]
// with S = sum_k T_k, H_k(s) = sum_{j<k} 1/(s+j), H'_k(a) = sum_{1<=j<=k} 1/(a+j) (the 1/a term is folded
// into psi(a+1) = psi(a) + 1/a, which keeps small a free of cancellation). Every T_k is positive, so the
// sum has no cancellation; it is used for x <= 1/2 (terms shrink like x^k), and for x > 1/2 on the mirror
// 1 - lambda ~ Beta(b, a). The coefficients depend on (a, b) only, which are few (one pair per layer or per
// channel) while the samples are many: each pair's coefficients are tabulated once, and the samples are
// evaluated by Horner's rule in blocks (vectorised across samples), plus two logs each.

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/core/DistributionsHelper.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <mutex>
#include <vector>

namespace {

using at::Tensor;

// A product rounded to double before it is added to anything: the compiler may not contract it into an FMA
// (whose single rounding would differ from torch's build, and with it which proposals are accepted).
// (A `#pragma GCC optimize("fp-contract=off")` over the file did the same but made the draw ~1.6x slower
// than torch's own gamma sampler here: GCC's optimize pragma does not keep the command line's flags.)
inline double rounded(double value) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  __asm__("" : "+x"(value));
  return value;
#else
  volatile double stored = value;
  return stored;
#endif
}

// ------------------------------------------------------------------------------------------------ draw

// One Gamma(a, 1) variate, a >= 0 (0 gives 0 and draws nothing).
double gamma_variate(double a, at::CPUGeneratorImpl* gen) {
  if (a == 0.0) return 0.0;
  double scale = 1.0;
  if (a < 1.0) {  // Gamma(a) = Gamma(a + 1) * U^(1/a)
    at::uniform_real_distribution<double> uniform(0.0, 1.0);
    scale = std::pow(1.0 - uniform(gen), 1.0 / a);
    a += 1.0;
  }
  // The constants 1/3 and 0.0331 as single-precision literals, the values torch's sampler uses.
  const double d = a - static_cast<double>(1.0f / 3.0f);
  const double c = 1.0 / std::sqrt(9.0 * d);
  const double squeeze = static_cast<double>(0.0331f);
  while (true) {
    double z, y;
    do {
      at::normal_distribution<double> normal(0.0, 1.0);
      z = normal(gen);
      y = 1.0 + rounded(c * z);
    } while (y <= 0.0);
    const double v = y * y * y;
    at::uniform_real_distribution<double> uniform(0.0, 1.0);
    const double u = 1.0 - uniform(gen);
    const double zz = z * z;
    if (u < 1.0 - rounded(squeeze * zz * zz)) return scale * d * v;
    if (std::log(u) < rounded(0.5 * zz) + rounded(d * (1.0 - v + std::log(v)))) return scale * d * v;
  }
}

template <typename scalar_t>
void draw(const Tensor& alpha, const Tensor& beta, Tensor& out) {
  const int64_t pairs = alpha.numel(), rows = pairs == 0 ? 0 : out.numel() / pairs;
  const scalar_t* a = alpha.data_ptr<scalar_t>();
  const scalar_t* b = beta.data_ptr<scalar_t>();
  scalar_t* o = out.data_ptr<scalar_t>();
  const scalar_t lowest = std::numeric_limits<scalar_t>::min();
  const scalar_t highest = std::nextafter(scalar_t(1), scalar_t(0));
  auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(std::nullopt, at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t p = 0; p < pairs; ++p) {
      const double g1 = std::max(std::numeric_limits<double>::min(), gamma_variate(static_cast<double>(a[p]), gen));
      const double g2 = std::max(std::numeric_limits<double>::min(), gamma_variate(static_cast<double>(b[p]), gen));
      const scalar_t value = static_cast<scalar_t>(g1 / (g1 + g2));
      o[r * pairs + p] = std::min(highest, std::max(lowest, value));
    }
  }
}

void check_parameters(const Tensor& alpha, const Tensor& beta) {
  TORCH_CHECK(alpha.sizes() == beta.sizes(), "poolkit beta_rsample: alpha and beta must have the same shape, got ",
              alpha.sizes(), " and ", beta.sizes());
  TORCH_CHECK(alpha.scalar_type() == beta.scalar_type(), "poolkit beta_rsample: alpha and beta must share a dtype");
  TORCH_CHECK(alpha.scalar_type() == at::kFloat || alpha.scalar_type() == at::kDouble,
              "poolkit beta_rsample: alpha and beta must be float32 or float64, got ", alpha.scalar_type());
}

Tensor beta_rsample_forward(const Tensor& alpha_in, const Tensor& beta_in, at::IntArrayRef sample_shape) {
  check_parameters(alpha_in, beta_in);
  const Tensor alpha = alpha_in.contiguous(), beta = beta_in.contiguous();
  std::vector<int64_t> shape(sample_shape.begin(), sample_shape.end());
  shape.insert(shape.end(), alpha.sizes().begin(), alpha.sizes().end());
  Tensor out = at::empty(shape, alpha.options());
  AT_DISPATCH_FLOATING_TYPES(alpha.scalar_type(), "beta_rsample_forward", [&] { draw<scalar_t>(alpha, beta, out); });
  return out;
}

// -------------------------------------------------------------------------------------------- gradient

double digamma(double x) {
  double shift = 0.0;
  while (x < 12.0) {  // psi(x) = psi(x + 1) - 1/x
    shift -= 1.0 / x;
    x += 1.0;
  }
  const double r = 1.0 / (x * x);
  // Asymptotic series: ln x - 1/(2x) - sum_k B_2k / (2k x^2k), to x^-12 (error < 1e-16 for x >= 12).
  const double tail =
      r * (1.0 / 12 - r * (1.0 / 120 - r * (1.0 / 252 - r * (1.0 / 240 - r * (1.0 / 132 - r * 691.0 / 32760)))));
  return shift + std::log(x) - 0.5 / x - tail;
}

// The series of one orientation (first parameter a, second b), for variables v <= 1/2:
// S(v) = sum_k c_k v^k, Ua(v) = sum_k c_k wa_k v^k, Ub(v) = sum_k c_k wb_k v^k with c_k = (a+b)_k / (a)_(k+1),
// wa_k = H_k(a+b) - H'_k(a), wb_k = H_k(a+b). Every coefficient is positive; the number of terms is the one
// that reaches 2^-56 of the sum at v = 1/2, so it serves every smaller v. Evaluated by Horner's rule over a
// block of samples at once (the compiler vectorises across the block).
struct Series {
  static constexpr int64_t kBlock = 64;
  double k_first = 0, k_second = 0;  // psi(a+b) - psi(a+1), psi(a+b) - psi(b)
  std::vector<double> cs, ca, cb;

  Series(double a, double b) {
    k_first = digamma(a + b) - digamma(a + 1.0);
    k_second = digamma(a + b) - digamma(b);
    // Stored as c_k 2^-k, the coefficients of the variable u = 2 v <= 1 (c_k alone overflows for large a + b).
    double term = 1.0 / a, hab = 0.0, ha = 0.0, sum = 0.0;
    for (int64_t k = 0;; ++k) {
      cs.push_back(term), ca.push_back(term * (hab - ha)), cb.push_back(term * hab);
      sum += term;
      const double ratio = (a + b + k) / (a + 1.0 + k);
      if (ratio * 0.5 < 1.0 && term <= 0x1p-56 * sum) break;
      hab += 1.0 / (a + b + k);
      ha += 1.0 / (a + 1.0 + k);
      term *= ratio * 0.5;
    }
  }

  // d v / d first and d v / d second for v[0..n) (each <= 1/2), weighted by g and summed.
  void accumulate(const double* v, const double* g, int64_t n, double& sum_first, double& sum_second) const {
    double u[kBlock], s[kBlock], ua[kBlock], ub[kBlock];
    const int64_t terms = static_cast<int64_t>(cs.size());
    for (int64_t i = 0; i < n; ++i) {
      u[i] = 2.0 * v[i];
      s[i] = cs[terms - 1], ua[i] = ca[terms - 1], ub[i] = cb[terms - 1];
    }
    for (int64_t k = terms - 2; k >= 0; --k) {
      const double c0 = cs[k], c1 = ca[k], c2 = cb[k];
      for (int64_t i = 0; i < n; ++i) {
        s[i] = s[i] * u[i] + c0;
        ua[i] = ua[i] * u[i] + c1;
        ub[i] = ub[i] * u[i] + c2;
      }
    }
    for (int64_t i = 0; i < n; ++i) {
      const double w = g[i] * v[i] * (1.0 - v[i]);
      sum_first -= w * ((std::log(v[i]) + k_first) * s[i] + ua[i]);
      sum_second -= w * ((std::log1p(-v[i]) + k_second) * s[i] + ub[i]);
    }
  }
};

// Sums g * d lambda / d alpha and g * d lambda / d beta over the samples of one (alpha, beta) pair.
class PairGradient {
 public:
  static constexpr int64_t kBlock = Series::kBlock;

  PairGradient(double a, double b)
      : degenerate_(!(a > 0.0 && b > 0.0 && std::isfinite(a) && std::isfinite(b))),
        left_(degenerate_ ? 1.0 : a, degenerate_ ? 1.0 : b),
        right_(degenerate_ ? 1.0 : b, degenerate_ ? 1.0 : a) {}

  // The n samples x[r * stride] with their gradients g[r * stride].
  template <typename scalar_t>
  void add(const scalar_t* x, const scalar_t* g, int64_t n, int64_t stride, double& sum_a, double& sum_b) const {
    if (degenerate_) return;  // a point mass: lambda does not move with the parameters
    double lv[kBlock], lg[kBlock], rv[kBlock], rg[kBlock];
    int64_t nl = 0, nr = 0;
    for (int64_t r = 0; r < n; ++r) {
      const double value = static_cast<double>(x[r * stride]), grad = static_cast<double>(g[r * stride]);
      if (value <= 0.5) {
        lv[nl] = value, lg[nl] = grad;
        if (++nl == kBlock) left_.accumulate(lv, lg, nl, sum_a, sum_b), nl = 0;
      } else {  // 1 - lambda ~ Beta(b, a): its derivatives are minus lambda's, with the roles swapped
        rv[nr] = 1.0 - value, rg[nr] = -grad;
        if (++nr == kBlock) right_.accumulate(rv, rg, nr, sum_b, sum_a), nr = 0;
      }
    }
    left_.accumulate(lv, lg, nl, sum_a, sum_b);
    right_.accumulate(rv, rg, nr, sum_b, sum_a);
  }

 private:
  bool degenerate_;
  Series left_, right_;  // lambda ~ Beta(a, b) for lambda <= 1/2, 1 - lambda ~ Beta(b, a) above
};

// grad_alpha[p] = sum_r g[r, p] d lambda[r, p] / d alpha[p], grad_beta likewise; r runs over the samples.
template <typename scalar_t>
void gradient(const Tensor& grad, const Tensor& sample, const Tensor& alpha, const Tensor& beta, Tensor& ga,
              Tensor& gb) {
  const int64_t pairs = alpha.numel(), rows = pairs == 0 ? 0 : sample.numel() / pairs;
  const scalar_t* g = grad.data_ptr<scalar_t>();
  const scalar_t* x = sample.data_ptr<scalar_t>();
  const scalar_t* a = alpha.data_ptr<scalar_t>();
  const scalar_t* b = beta.data_ptr<scalar_t>();
  scalar_t* out_a = ga.data_ptr<scalar_t>();
  scalar_t* out_b = gb.data_ptr<scalar_t>();
  if (pairs == 1) {
    // One pair for every sample: fixed chunks summed in order, so the result does not depend on threads.
    const PairGradient pair(static_cast<double>(a[0]), static_cast<double>(b[0]));
    constexpr int64_t chunk = 4096;
    const int64_t chunks = (rows + chunk - 1) / chunk;
    std::vector<double> part_a(chunks, 0.0), part_b(chunks, 0.0);
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        const int64_t first = k * chunk, n = std::min(rows, first + chunk) - first;
        pair.add(x + first, g + first, n, 1, part_a[k], part_b[k]);
      }
    });
    double sa = 0.0, sb = 0.0;
    for (int64_t k = 0; k < chunks; ++k) sa += part_a[k], sb += part_b[k];
    out_a[0] = static_cast<scalar_t>(sa), out_b[0] = static_cast<scalar_t>(sb);
    return;
  }
  // One pair per channel: each channel's tables and sums belong to one thread.
  at::parallel_for(0, pairs, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const PairGradient pair(static_cast<double>(a[p]), static_cast<double>(b[p]));
      double sa = 0.0, sb = 0.0;
      pair.add(x + p, g + p, rows, pairs, sa, sb);
      out_a[p] = static_cast<scalar_t>(sa), out_b[p] = static_cast<scalar_t>(sb);
    }
  });
}

std::tuple<Tensor, Tensor> beta_rsample_backward(const Tensor& grad_in, const Tensor& sample_in,
                                                 const Tensor& alpha_in, const Tensor& beta_in) {
  check_parameters(alpha_in, beta_in);
  TORCH_CHECK(grad_in.sizes() == sample_in.sizes(), "poolkit beta_rsample_backward: grad and sample shapes differ");
  const Tensor alpha = alpha_in.contiguous(), beta = beta_in.contiguous();
  const Tensor sample = sample_in.to(alpha.scalar_type()).contiguous();
  const Tensor grad = grad_in.to(alpha.scalar_type()).contiguous();
  Tensor ga = at::empty_like(alpha), gb = at::empty_like(beta);
  AT_DISPATCH_FLOATING_TYPES(alpha.scalar_type(), "beta_rsample_backward",
                             [&] { gradient<scalar_t>(grad, sample, alpha, beta, ga, gb); });
  return {ga, gb};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(poolkit_cpu, m) {
  m.def("beta_rsample_forward(Tensor alpha, Tensor beta, int[] sample_shape) -> Tensor");
  m.def("beta_rsample_backward(Tensor grad, Tensor sample, Tensor alpha, Tensor beta) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(poolkit_cpu, CPU, m) {
  m.impl("beta_rsample_forward", &beta_rsample_forward);
  m.impl("beta_rsample_backward", &beta_rsample_backward);
}
