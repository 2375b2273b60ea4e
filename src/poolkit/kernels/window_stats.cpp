// Window statistics of 2-D pooling in one pass over the input: the CPU kernels of poolkit.kernels.
//
// One translation unit, built on first use by torch.utils.cpp_extension.load (see poolkit/kernels/build.py)
// and registered as the operators poolkit_cpu::*; the public custom operators poolkit::* (Python,
// poolkit/kernels/ops.py) call them and carry the fake kernels and the autograd formulas.
//
// Windows follow nn.MaxPool2d: output o of an axis reads input i = o * stride - pad + t * dilation for the
// taps t = 0..kernel-1 that fall inside the input. Padded cells never win the maximum and never count in the
// mean (count_include_pad=False). The output size (ceil_mode included) is computed once, in Python
// (PoolGeometry.output_size), and passed in.
//
// Forward kernels read every window once and write the outputs once. Backward kernels *gather*: each input
// cell sums the contributions of the windows that contain it (per-axis tables list them), so the input
// gradient is written exactly once, without a zero fill, without atomics, in parallel over any dimension.
//
// Layouts: NCHW (parallel over planes x output rows) and channels_last (parallel over N x positions, C
// innermost and contiguous, so that the inner loops vectorise). Arithmetic in at::opmath_type (float for
// float16/bfloat16/float32, double for float64).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

namespace {

using at::Tensor;

// One axis of the windows. Per output o: its real taps t (input o * stride - pad + t * dilation inside
// [0, size)); per tap t: the interval [lo, hi) of outputs for which it is real; per input i: the
// (output, tap) pairs that read it (CSR).
struct Axis {
  int64_t size = 0, out = 0, kernel = 0, stride = 0, pad = 0, dilation = 0;
  std::vector<int64_t> count;       // real cells per output
  std::vector<int64_t> first;       // first real tap per output (kernel when none)
  std::vector<int64_t> lo, hi;      // per tap: outputs [lo, hi) where it is real
  std::vector<int64_t> offsets;     // CSR over inputs: entries offsets[i] .. offsets[i+1]
  std::vector<int64_t> outs, taps;  // (output, tap) of each entry

  int64_t input(int64_t o, int64_t t) const { return o * stride - pad + t * dilation; }
  bool real(int64_t o, int64_t t) const {
    const int64_t i = input(o, t);
    return i >= 0 && i < size;
  }
};

Axis make_axis(int64_t size, int64_t out, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation) {
  Axis a;
  a.size = size, a.out = out, a.kernel = kernel, a.stride = stride, a.pad = pad, a.dilation = dilation;
  a.count.assign(out, 0);
  a.first.assign(out, kernel);
  a.lo.assign(kernel, 0);
  a.hi.assign(kernel, 0);
  std::vector<int64_t> per_input(size, 0);
  for (int64_t t = 0; t < kernel; ++t) {
    bool seen = false;
    for (int64_t o = 0; o < out; ++o) {
      if (!a.real(o, t)) continue;
      if (!seen) a.lo[t] = o;
      seen = true;
      a.hi[t] = o + 1;  // the real outputs of a tap form one interval
    }
    if (!seen) a.lo[t] = a.hi[t] = 0;
  }
  for (int64_t o = 0; o < out; ++o) {
    for (int64_t t = 0; t < kernel; ++t) {
      if (!a.real(o, t)) continue;
      if (a.count[o] == 0) a.first[o] = t;
      ++a.count[o];
      ++per_input[a.input(o, t)];
    }
  }
  a.offsets.assign(size + 1, 0);
  for (int64_t i = 0; i < size; ++i) a.offsets[i + 1] = a.offsets[i] + per_input[i];
  a.outs.resize(a.offsets[size]);
  a.taps.resize(a.offsets[size]);
  std::vector<int64_t> fill(a.offsets.begin(), a.offsets.end() - 1);
  for (int64_t o = 0; o < out; ++o) {
    for (int64_t t = 0; t < kernel; ++t) {
      if (!a.real(o, t)) continue;
      const int64_t i = a.input(o, t);
      a.outs[fill[i]] = o;
      a.taps[fill[i]] = t;
      ++fill[i];
    }
  }
  return a;
}

struct Geometry {
  Axis h, w;
  int64_t kw() const { return w.kernel; }
  int32_t first_cell(int64_t oh, int64_t ow) const { return static_cast<int32_t>(h.first[oh] * w.kernel + w.first[ow]); }
};

Geometry make_geometry(const Tensor& x, at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding,
                       at::IntArrayRef dilation, at::IntArrayRef out_size) {
  TORCH_CHECK(x.dim() == 4, "poolkit window kernels expect a 4-D (N, C, H, W) input, got ", x.dim(), "-D");
  TORCH_CHECK(kernel.size() == 2 && stride.size() == 2 && padding.size() == 2 && dilation.size() == 2 &&
                  out_size.size() == 2,
              "poolkit window kernels expect (h, w) pairs for kernel, stride, padding, dilation and output size");
  Geometry g;
  g.h = make_axis(x.size(2), out_size[0], kernel[0], stride[0], padding[0], dilation[0]);
  g.w = make_axis(x.size(3), out_size[1], kernel[1], stride[1], padding[1], dilation[1]);
  return g;
}

// The layout rule of poolkit.kernels.ops.memory_format: channels_last only when it is the input's layout.
at::MemoryFormat layout_of(const Tensor& x) {
  const bool cl = x.size(1) > 1 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
  return cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// The backward kernels take the forward input's layout as an argument: an output of one cell per channel
// (H_out = W_out = 1) is contiguous in both layouts and cannot tell.
at::MemoryFormat layout_flag(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// NCHW inputs whose output rows are very short (fewer than 4 outputs, e.g. the 2x2 maps of VGG's last stage)
// spend their time in per-row overhead, not in arithmetic: the kernels of GeM, the weighted means and LP run
// them in channels_last (C innermost: one long vectorised line per position) on a copy, and return their
// outputs in the input's layout. The copy is one pass over the input, the per-row overhead was about 10x.
bool short_rows(int64_t channels, int64_t out_w) { return out_w < 4 && channels >= 16; }

at::MemoryFormat compute_layout(const Tensor& x, int64_t out_w) {
  const at::MemoryFormat fmt = layout_of(x);
  return fmt == at::MemoryFormat::Contiguous && short_rows(x.size(1), out_w) ? at::MemoryFormat::ChannelsLast : fmt;
}

// The same rule in a backward pass, from the forward input's layout and the output width.
at::MemoryFormat backward_layout(bool channels_last, const Tensor& x, int64_t out_w) {
  return channels_last || short_rows(x.size(1), out_w) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

Tensor in_layout_of(const Tensor& t, const Tensor& input) { return t.contiguous(layout_of(input)); }

// Per output cell of a plane: 1 / (number of real cells of its window), in the arithmetic type.
template <typename acc_t>
std::vector<acc_t> inverse_counts(const Geometry& g) {
  std::vector<acc_t> inv(g.h.out * g.w.out);
  for (int64_t oh = 0; oh < g.h.out; ++oh)
    for (int64_t ow = 0; ow < g.w.out; ++ow) {
      const int64_t n = g.h.count[oh] * g.w.count[ow];
      inv[oh * g.w.out + ow] = n > 0 ? acc_t(1) / acc_t(n) : acc_t(0);
    }
  return inv;
}

int64_t grain(int64_t work_per_item) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, work_per_item));
}

// The loops below run over a "line" of L outputs that share a window row and differ along one dimension:
// NCHW: the W_out outputs of one output row (input read with stride sw); channels_last: the C channels of
// one output position (input read with stride 1). Each window tap is one pass over the line with no
// branch, which the compiler vectorises.
struct Line {
  bool cl;
  int64_t n = 0, plane = 0, oh = 0, ow = 0;  // cl: (n, oh, ow); NCHW: (plane, oh)
};

// Calls visit(cell, tap_input_pointer_offset, step, first output of the line, count) for every real tap
// of the line's windows, in row-major tap order.
template <typename Visit>
inline void for_each_tap(const Geometry& g, const Line& line, int64_t C, Visit&& visit) {
  const int64_t H = g.h.size, W = g.w.size, kw = g.kw();
  for (int64_t th = 0; th < g.h.kernel; ++th) {
    if (!g.h.real(line.oh, th)) continue;
    const int64_t ih = g.h.input(line.oh, th);
    for (int64_t tw = 0; tw < kw; ++tw) {
      const int32_t cell = static_cast<int32_t>(th * kw + tw);
      if (line.cl) {
        if (!g.w.real(line.ow, tw)) continue;
        visit(cell, ((line.n * H + ih) * W + g.w.input(line.ow, tw)) * C, int64_t(1), int64_t(0), C);
      } else {
        const int64_t lo = g.w.lo[tw], hi = g.w.hi[tw];
        if (hi <= lo) continue;
        visit(cell, (line.plane * H + ih) * W + g.w.input(lo, tw), g.w.stride, lo, hi - lo);
      }
    }
  }
}

Line line_of(bool cl, int64_t r, const Geometry& g) {
  Line line{cl};
  if (cl) {
    line.n = r / (g.h.out * g.w.out), line.oh = (r / g.w.out) % g.h.out, line.ow = r % g.w.out;
  } else {
    line.plane = r / g.h.out, line.oh = r % g.h.out;
  }
  return line;
}

// ------------------------------------------------------------------------------------------- max and mean

template <bool Unit, typename acc_t, typename scalar_t>
inline void max_mean_step(const scalar_t* src, int64_t step, int64_t n, int32_t cell, acc_t* __restrict best,
                          acc_t* __restrict sum, int32_t* __restrict where) {
  for (int64_t j = 0; j < n; ++j) {
    const acc_t v = static_cast<acc_t>(src[Unit ? j : j * step]);
    const bool take = v > best[j] || v != v;  // max_pool2d's rule: first strict maximum, a NaN always wins
    best[j] = take ? v : best[j];
    where[j] = take ? cell : where[j];
    sum[j] += v;
  }
}

// (M, A, index) of every window; emit(r, line, best, mean, where) writes line r's outputs (L values each).
template <typename scalar_t, typename Emit>
void max_mean_forward_impl(const Tensor& x, const Geometry& g, bool cl, Emit&& emit) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = x.size(0), C = x.size(1), OH = g.h.out, OW = g.w.out;
  const int64_t L = cl ? C : OW, lines = cl ? N * OH * OW : N * C * OH;
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const std::vector<acc_t> inv = inverse_counts<acc_t>(g);
  at::parallel_for(0, lines, grain(L * g.h.kernel * g.kw()), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> best(L), sum(L);
    std::vector<int32_t> where(L);
    for (int64_t r = begin; r < end; ++r) {
      const Line line = line_of(cl, r, g);
      for (int64_t j = 0; j < L; ++j) {
        best[j] = -std::numeric_limits<acc_t>::infinity();
        sum[j] = 0;
        where[j] = g.first_cell(line.oh, cl ? line.ow : j);
      }
      for_each_tap(g, line, C, [&](int32_t cell, int64_t offset, int64_t step, int64_t lo, int64_t n) {
        if (step == 1) {
          max_mean_step<true>(xp + offset, 1, n, cell, best.data() + lo, sum.data() + lo, where.data() + lo);
        } else {
          max_mean_step<false>(xp + offset, step, n, cell, best.data() + lo, sum.data() + lo, where.data() + lo);
        }
      });
      const acc_t* inv_row = inv.data() + line.oh * OW;
      if (cl) {
        const acc_t scale = inv_row[line.ow];
        for (int64_t j = 0; j < L; ++j) sum[j] *= scale;
      } else {
        for (int64_t j = 0; j < L; ++j) sum[j] *= inv_row[j];
      }
      emit(r, line, best.data(), sum.data(), where.data());
    }
  });
}

std::tuple<Tensor, Tensor, Tensor> max_mean_forward(const Tensor& input, at::IntArrayRef kernel,
                                                    at::IntArrayRef stride, at::IntArrayRef padding,
                                                    at::IntArrayRef dilation, at::IntArrayRef out_size) {
  const Geometry g = make_geometry(input, kernel, stride, padding, dilation, out_size);
  const at::MemoryFormat fmt = layout_of(input);
  const Tensor x = input.contiguous(fmt);
  const auto shape = std::vector<int64_t>{x.size(0), x.size(1), g.h.out, g.w.out};
  Tensor m = at::empty(shape, x.options().memory_format(fmt));
  Tensor a = at::empty(shape, x.options().memory_format(fmt));
  Tensor idx = at::empty(shape, x.options().dtype(at::kInt).memory_format(fmt));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "poolkit_max_mean_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t L = fmt == at::MemoryFormat::ChannelsLast ? x.size(1) : g.w.out;
    scalar_t* mp = m.mutable_data_ptr<scalar_t>();
    scalar_t* ap = a.mutable_data_ptr<scalar_t>();
    int32_t* ip = idx.mutable_data_ptr<int32_t>();
    max_mean_forward_impl<scalar_t>(
        x, g, fmt == at::MemoryFormat::ChannelsLast,
        [&](int64_t r, const Line&, const acc_t* best, const acc_t* mean, const int32_t* where) {
          const int64_t out = r * L;  // NCHW: (plane * OH + oh) * OW; channels_last: ((n * OH + oh) * OW + ow) * C
          for (int64_t j = 0; j < L; ++j) {
            mp[out + j] = static_cast<scalar_t>(best[j]);
            ap[out + j] = static_cast<scalar_t>(mean[j]);
            ip[out + j] = where[j];
          }
        });
  });
  return {m, a, idx};
}

// The output gradients (gM, gS) that the backward kernels scatter, per output o: read as they are (the
// statistics' own operators), or, for the blends, gy times the coefficients saved by the forward:
// gM = gy (lam - [soft] cP), gS = gy (1 - lam) (see BlendGate), so that the backward makes no extra pass.
enum GradKind : int { kPlain = 0, kBlend = 1, kSoftBlend = 2 };

template <typename scalar_t, int Kind>
struct OutputGrads {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* a;  // gM, or gy for a blend
  const scalar_t* b;  // gS (unused for a blend)
  const acc_t* lam = nullptr;
  const acc_t* cp = nullptr;

  inline acc_t m(int64_t o) const {
    if constexpr (Kind == kSoftBlend) {
      return static_cast<acc_t>(a[o]) * (lam[o] - cp[o]);
    } else if constexpr (Kind == kBlend) {
      return static_cast<acc_t>(a[o]) * lam[o];
    } else {
      return static_cast<acc_t>(a[o]);
    }
  }
  inline acc_t s(int64_t o) const {
    if constexpr (Kind == kPlain) {
      return static_cast<acc_t>(b[o]);
    } else {
      return static_cast<acc_t>(a[o]) * (acc_t(1) - lam[o]);
    }
  }
};

// The gradient that one window passes to one of its cells: gM if the cell is the window's first maximum,
// plus gA / n. Branch-free (every operand loaded, a select instead of a jump): which cell holds the maximum
// is data, and a mispredicted branch per cell costs more than the arithmetic.
template <typename grad_t, typename acc_t>
inline acc_t grad_of_cell(int32_t index, int32_t cell, grad_t grad_m, grad_t grad_a, acc_t inv_count) {
  const acc_t gm = static_cast<acc_t>(grad_m);
  return (index == cell ? gm : acc_t(0)) + static_cast<acc_t>(grad_a) * inv_count;
}

// The gradient that one window passes to one of its cells of value v for (M, T_K): gM if the cell is the
// first maximum; gT / K if v is above the K-th largest value, gT * tie if equal to it. Branch-free.
template <typename grad_t, typename scalar_t, typename acc_t>
inline acc_t topk_grad_of_cell(int32_t index, int32_t cell, grad_t grad_m, grad_t grad_t_, scalar_t value,
                               scalar_t kth, acc_t tie, acc_t inv_k) {
  const acc_t gm = static_cast<acc_t>(grad_m), v = static_cast<acc_t>(value), t = static_cast<acc_t>(kth);
  const acc_t share = v > t ? inv_k : acc_t(0);
  const acc_t tied = v == t ? tie : acc_t(0);
  return (index == cell ? gm : acc_t(0)) + static_cast<acc_t>(grad_t_) * (share + tied);
}

// Input gradient of (M, A): cell (ih, iw) of a window gets gM where it is the window's first maximum, plus
// gA / n of every window that contains it. NCHW: each thread owns whole input rows and adds every window
// tap that reads the row into a row buffer; channels_last: each input position gathers its windows.
template <typename scalar_t, int Kind>
void max_mean_backward_impl(const OutputGrads<scalar_t, Kind>& src, const Tensor& idx, const Geometry& g, bool cl,
                            Tensor& gx) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = gx.size(0), C = gx.size(1), H = g.h.size, W = g.w.size, OH = g.h.out, OW = g.w.out;
  const int64_t kw = g.kw();
  const int32_t* ip = idx.const_data_ptr<int32_t>();
  scalar_t* out = gx.mutable_data_ptr<scalar_t>();
  const std::vector<acc_t> inv = inverse_counts<acc_t>(g);
  const int64_t L = cl ? C : W;
  at::parallel_for(0, cl ? N * H * W : N * C * H, grain(L * 4), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> total(L);
    for (int64_t r = begin; r < end; ++r) {
      acc_t* __restrict t = total.data();
      for (int64_t j = 0; j < L; ++j) t[j] = 0;
      if (!cl) {
        const int64_t plane = r / H, ih = r % H;
        for (int64_t e = g.h.offsets[ih]; e < g.h.offsets[ih + 1]; ++e) {
          const int64_t oh = g.h.outs[e], th = g.h.taps[e];
          const int64_t row = (plane * OH + oh) * OW;
          for (int64_t tw = 0; tw < kw; ++tw) {
            const int64_t lo = g.w.lo[tw], hi = g.w.hi[tw], sw = g.w.stride;
            const int32_t cell = static_cast<int32_t>(th * kw + tw);
            acc_t* dst = t + g.w.input(lo, tw);
            for (int64_t o = lo; o < hi; ++o) {
              dst[(o - lo) * sw] += grad_of_cell(ip[row + o], cell, src.m(row + o), src.s(row + o), inv[oh * OW + o]);
            }
          }
        }
      } else {
        const int64_t n = r / (H * W), ih = (r / W) % H, iw = r % W;
        for (int64_t e = g.h.offsets[ih]; e < g.h.offsets[ih + 1]; ++e) {
          const int64_t oh = g.h.outs[e], th = g.h.taps[e];
          for (int64_t f = g.w.offsets[iw]; f < g.w.offsets[iw + 1]; ++f) {
            const int64_t o = oh * OW + g.w.outs[f];
            const int32_t cell = static_cast<int32_t>(th * kw + g.w.taps[f]);
            const acc_t scale = inv[o];
            const int64_t at_o = (n * OH * OW + o) * C;
            const int32_t* __restrict io = ip + at_o;
            for (int64_t c = 0; c < C; ++c) t[c] += grad_of_cell(io[c], cell, src.m(at_o + c), src.s(at_o + c), scale);
          }
        }
      }
      scalar_t* dst = out + r * L;
      for (int64_t j = 0; j < L; ++j) dst[j] = static_cast<scalar_t>(t[j]);
    }
  });
}

Tensor max_mean_backward(const Tensor& grad_m, const Tensor& grad_a, const Tensor& idx, at::IntArrayRef in_size,
                         at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding,
                         at::IntArrayRef dilation, bool channels_last) {
  TORCH_CHECK(in_size.size() == 2, "poolkit max_mean_backward: in_size must be (H, W)");
  const at::MemoryFormat fmt = layout_flag(channels_last);
  const Tensor ix = idx.contiguous(fmt);
  const Tensor gm = grad_m.contiguous(fmt), ga = grad_a.contiguous(fmt);
  Tensor gx = at::empty({idx.size(0), idx.size(1), in_size[0], in_size[1]}, grad_m.options().memory_format(fmt));
  const Geometry g = make_geometry(gx, kernel, stride, padding, dilation, {idx.size(2), idx.size(3)});
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gm.scalar_type(), "poolkit_max_mean_backward", [&] {
    const OutputGrads<scalar_t, kPlain> src{gm.const_data_ptr<scalar_t>(), ga.const_data_ptr<scalar_t>()};
    max_mean_backward_impl<scalar_t>(src, ix, g, fmt == at::MemoryFormat::ChannelsLast, gx);
  });
  return gx;
}

// ----------------------------------------------------------------------------------------- max and top-K

// One tap of the windows of a line: the values v enter the sorted lists top[0] >= ... >= top[k-1] (level l
// of output j at top[l * L + j]) as top[l] <- max(top[l], min(top[l-1], v)), lowest level first so that each
// level reads the old value above it; level 0 is the running maximum with max_pool2d's rule and index.
template <typename acc_t>
inline void topk_step(const acc_t* __restrict v, int64_t n, int64_t k, int64_t L, int32_t cell,
                      acc_t* __restrict top, int32_t* __restrict where) {
  for (int64_t l = k - 1; l > 0; --l) {
    acc_t* __restrict level = top + l * L;
    const acc_t* __restrict above = top + (l - 1) * L;
    for (int64_t j = 0; j < n; ++j) {
      const acc_t entering = above[j] < v[j] ? above[j] : v[j];
      level[j] = level[j] > entering ? level[j] : entering;
    }
  }
  for (int64_t j = 0; j < n; ++j) {
    const bool take = v[j] > top[j] || v[j] != v[j];
    top[j] = take ? v[j] : top[j];
    where[j] = take ? cell : where[j];
  }
}

// (M, T_K, index, kth, tie) of every window; emit(r, line, best, top_mean, where, kth, tie) writes line r's
// outputs (L values each).
template <typename scalar_t, typename Emit>
void max_topk_forward_impl(const Tensor& x, const Geometry& g, int64_t k, bool cl, Emit&& emit) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = x.size(0), C = x.size(1), OH = g.h.out, OW = g.w.out;
  const int64_t L = cl ? C : OW, lines = cl ? N * OH * OW : N * C * OH;
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const acc_t inv_k = acc_t(1) / acc_t(k);
  at::parallel_for(0, lines, grain(L * g.h.kernel * g.kw() * k), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> top(k * L), values(L), above(L), equal(L);
    std::vector<int32_t> where(L);
    for (int64_t r = begin; r < end; ++r) {
      const Line line = line_of(cl, r, g);
      std::fill(top.begin(), top.end(), -std::numeric_limits<acc_t>::infinity());
      for (int64_t j = 0; j < L; ++j) where[j] = g.first_cell(line.oh, cl ? line.ow : j);
      for_each_tap(g, line, C, [&](int32_t cell, int64_t offset, int64_t step, int64_t lo, int64_t n) {
        const scalar_t* src = xp + offset;
        if (step == 1) {
          for (int64_t j = 0; j < n; ++j) values[j] = static_cast<acc_t>(src[j]);
        } else {
          for (int64_t j = 0; j < n; ++j) values[j] = static_cast<acc_t>(src[j * step]);
        }
        topk_step(values.data(), n, k, L, cell, top.data() + lo, where.data() + lo);
      });
      // Count the cells above and equal to the K-th largest value: the cells equal to it share the
      // K - (cells above) remaining places.
      const acc_t* kth_line = top.data() + (k - 1) * L;
      std::fill(above.begin(), above.end(), acc_t(0));
      std::fill(equal.begin(), equal.end(), acc_t(0));
      for_each_tap(g, line, C, [&](int32_t, int64_t offset, int64_t step, int64_t lo, int64_t n) {
        const scalar_t* src = xp + offset;
        acc_t* __restrict up = above.data() + lo;
        acc_t* __restrict eq = equal.data() + lo;
        const acc_t* __restrict kl = kth_line + lo;
        for (int64_t j = 0; j < n; ++j) {
          const acc_t v = static_cast<acc_t>(src[j * step]);
          up[j] += v > kl[j] ? acc_t(1) : acc_t(0);
          eq[j] += v == kl[j] ? acc_t(1) : acc_t(0);
        }
      });
      // values <- T_K, above <- tie share
      for (int64_t j = 0; j < L; ++j) {
        acc_t sum = 0;
        for (int64_t l = 0; l < k; ++l) sum += top[l * L + j];
        values[j] = sum * inv_k;
        above[j] = equal[j] > 0 ? (acc_t(k) - above[j]) / (acc_t(k) * equal[j]) : acc_t(0);
      }
      emit(r, line, top.data(), values.data(), where.data(), kth_line, above.data());
    }
  });
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> max_topk_forward(const Tensor& input, int64_t k,
                                                                    at::IntArrayRef kernel, at::IntArrayRef stride,
                                                                    at::IntArrayRef padding,
                                                                    at::IntArrayRef dilation,
                                                                    at::IntArrayRef out_size) {
  TORCH_CHECK(k >= 1, "poolkit max_topk_forward: k must be positive, got ", k);
  const Geometry g = make_geometry(input, kernel, stride, padding, dilation, out_size);
  const at::MemoryFormat fmt = layout_of(input);
  const Tensor x = input.contiguous(fmt);
  const auto shape = std::vector<int64_t>{x.size(0), x.size(1), g.h.out, g.w.out};
  const auto opts = x.options().memory_format(fmt);
  const at::ScalarType acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  Tensor m = at::empty(shape, opts), t = at::empty(shape, opts), kth = at::empty(shape, opts);
  Tensor idx = at::empty(shape, opts.dtype(at::kInt));
  Tensor tie = at::empty(shape, opts.dtype(acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "poolkit_max_topk_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t L = fmt == at::MemoryFormat::ChannelsLast ? x.size(1) : g.w.out;
    scalar_t* mp = m.mutable_data_ptr<scalar_t>();
    scalar_t* tp = t.mutable_data_ptr<scalar_t>();
    int32_t* ip = idx.mutable_data_ptr<int32_t>();
    scalar_t* kp = kth.mutable_data_ptr<scalar_t>();
    acc_t* sp = tie.mutable_data_ptr<acc_t>();
    max_topk_forward_impl<scalar_t>(
        x, g, k, fmt == at::MemoryFormat::ChannelsLast,
        [&](int64_t r, const Line&, const acc_t* best, const acc_t* top_mean, const int32_t* where,
            const acc_t* kth_line, const acc_t* share) {
          const int64_t out = r * L;
          for (int64_t j = 0; j < L; ++j) {
            mp[out + j] = static_cast<scalar_t>(best[j]);
            tp[out + j] = static_cast<scalar_t>(top_mean[j]);
            ip[out + j] = where[j];
            kp[out + j] = static_cast<scalar_t>(kth_line[j]);
            sp[out + j] = share[j];
          }
        });
  });
  return {m, t, idx, kth, tie};
}

// Input gradient of (M, T_K): gM to the window's first maximum; gT / K to each cell above the K-th largest
// value t, gT * tie to each cell equal to it. Same loop structure as max_mean_backward_impl.
template <typename scalar_t, int Kind>
void max_topk_backward_impl(const OutputGrads<scalar_t, Kind>& src, const Tensor& x, const Tensor& idx,
                            const Tensor& kth, const Tensor& tie, int64_t k, const Geometry& g, bool cl,
                            Tensor& gx) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = gx.size(0), C = gx.size(1), H = g.h.size, W = g.w.size, OH = g.h.out, OW = g.w.out;
  const int64_t kw = g.kw();
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const int32_t* ip = idx.const_data_ptr<int32_t>();
  const scalar_t* kp = kth.const_data_ptr<scalar_t>();
  const acc_t* sp = tie.const_data_ptr<acc_t>();
  scalar_t* out = gx.mutable_data_ptr<scalar_t>();
  const acc_t inv_k = acc_t(1) / acc_t(k);
  const int64_t L = cl ? C : W;
  at::parallel_for(0, cl ? N * H * W : N * C * H, grain(L * 8), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> total(L);
    for (int64_t r = begin; r < end; ++r) {
      acc_t* __restrict t = total.data();
      for (int64_t j = 0; j < L; ++j) t[j] = 0;
      const scalar_t* xr = xp + r * L;  // this input row (NCHW) or position (channels_last)
      if (!cl) {
        const int64_t plane = r / H, ih = r % H;
        for (int64_t e = g.h.offsets[ih]; e < g.h.offsets[ih + 1]; ++e) {
          const int64_t oh = g.h.outs[e], th = g.h.taps[e];
          const int64_t row = (plane * OH + oh) * OW;
          for (int64_t tw = 0; tw < kw; ++tw) {
            const int64_t lo = g.w.lo[tw], hi = g.w.hi[tw], sw = g.w.stride;
            const int32_t cell = static_cast<int32_t>(th * kw + tw);
            const int64_t first = g.w.input(lo, tw);
            for (int64_t o = lo; o < hi; ++o) {
              const int64_t iw = first + (o - lo) * sw;
              t[iw] += topk_grad_of_cell(ip[row + o], cell, src.m(row + o), src.s(row + o), xr[iw], kp[row + o],
                                         sp[row + o], inv_k);
            }
          }
        }
      } else {
        const int64_t n = r / (H * W), ih = (r / W) % H, iw = r % W;
        for (int64_t e = g.h.offsets[ih]; e < g.h.offsets[ih + 1]; ++e) {
          const int64_t oh = g.h.outs[e], th = g.h.taps[e];
          for (int64_t f = g.w.offsets[iw]; f < g.w.offsets[iw + 1]; ++f) {
            const int64_t o = (n * OH * OW + oh * OW + g.w.outs[f]) * C;
            const int32_t cell = static_cast<int32_t>(th * kw + g.w.taps[f]);
            for (int64_t c = 0; c < C; ++c) {
              t[c] += topk_grad_of_cell(ip[o + c], cell, src.m(o + c), src.s(o + c), xr[c], kp[o + c], sp[o + c], inv_k);
            }
          }
        }
      }
      scalar_t* dst = out + r * L;
      for (int64_t j = 0; j < L; ++j) dst[j] = static_cast<scalar_t>(t[j]);
    }
  });
}

Tensor max_topk_backward(const Tensor& grad_m, const Tensor& grad_t, const Tensor& input, const Tensor& idx,
                         const Tensor& kth, const Tensor& tie, int64_t k, at::IntArrayRef kernel,
                         at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                         bool channels_last) {
  const at::MemoryFormat fmt = layout_flag(channels_last);
  const Tensor x = input.contiguous(fmt), ix = idx.contiguous(fmt), kt = kth.contiguous(fmt);
  const Tensor ti = tie.contiguous(fmt), gm = grad_m.contiguous(fmt), gt = grad_t.contiguous(fmt);
  Tensor gx = at::empty(x.sizes(), grad_m.options().memory_format(fmt));
  const Geometry g = make_geometry(x, kernel, stride, padding, dilation, {idx.size(2), idx.size(3)});
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "poolkit_max_topk_backward", [&] {
    const OutputGrads<scalar_t, kPlain> src{gm.const_data_ptr<scalar_t>(), gt.const_data_ptr<scalar_t>()};
    max_topk_backward_impl<scalar_t>(src, x, ix, kt, ti, k, g, fmt == at::MemoryFormat::ChannelsLast, gx);
  });
  return gx;
}

// ------------------------------------------------------------------------ vectorisable exp and log

// exp in float arithmetic, written so that the compiler vectorises the loops that call it (std::exp is one
// library call per element, and glibc's vector versions need -ffast-math): exp(x) = 2^k e^r with
// k = round(x / ln 2) and r = x - k ln 2 (Cody-Waite split), e^r by Cephes' degree-7 polynomial on
// |r| <= ln2 / 2; relative error about 1e-7 (1-2 ulp). Below -87.3 (under float's normal range) it returns
// 0, above 88.7 infinity; a NaN stays NaN. Double arithmetic (float64 inputs, gradcheck) keeps std::exp.
inline float fast_exp(float x) {
  const float lo = -87.33654f, hi = 88.0f;
  const float xc = x < lo ? lo : (x > hi ? hi : x);  // a NaN passes through both comparisons
  const float magic = 12582912.0f;                    // 1.5 * 2^23: adding it rounds to an integer
  const float k = (xc * 1.44269504088896341f + magic) - magic;
  float r = xc - k * 0.693359375f;
  r = r - k * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  const float result = p * scale;
  return x < lo ? 0.0f : (x > 88.72283f ? std::numeric_limits<float>::infinity() : result);
}

inline double fast_exp(double x) { return std::exp(x); }

// log in float arithmetic, vectorisable like fast_exp: x = m 2^e with m in [sqrt(1/2), sqrt(2)),
// log x = log m + e ln 2 with Cephes' polynomial for log(1 + f), f = m - 1; relative error about 1e-7.
// Subnormal x is scaled by 2^23 first; log 0 = -inf, log of a negative number NaN, log inf = inf.
inline float fast_log(float x) {
  const bool tiny = x < 1.17549435e-38f;
  const float xs = tiny ? x * 8388608.0f : x;
  int32_t bits;
  std::memcpy(&bits, &xs, sizeof(bits));
  int32_t e = ((bits >> 23) & 0xff) - 127 - (tiny ? 23 : 0);
  const int32_t mantissa = (bits & 0x007fffff) | 0x3f800000;  // m in [1, 2)
  float m;
  std::memcpy(&m, &mantissa, sizeof(m));
  const bool big = m > 1.41421356f;
  m = big ? m * 0.5f : m;
  e = big ? e + 1 : e;
  const float f = m - 1.0f, z = f * f, fe = static_cast<float>(e);
  float y = 7.0376836292e-2f;
  y = y * f - 1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f - 1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f - 1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f - 2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * z;
  y += -2.12194440e-4f * fe;
  y += -0.5f * z;
  const float result = (f + y) + 0.693359375f * fe;
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  // The special values as added terms, each 0 for a positive finite x: a select between two results
  // (or && of two comparisons) kept gcc from vectorising the loops that call this.
  return result + (x == 0.0f ? -inf : 0.0f) + (x >= 0.0f ? 0.0f : nan) + (x == inf ? inf : 0.0f);
}

inline double fast_log(double x) { return std::log(x); }

// z^p for z > 0 given lz = log z: exp(p lz) in float (vectorised), std::pow in double (gradcheck's rounding).
inline float power_of(float, float lz, float p) { return fast_exp(p * lz); }
inline double power_of(double z, double, double p) { return std::pow(z, p); }


// ---------------------------------------------------------------------------------------------- blends

// y = lam M + (1 - lam) S of every window, S the window mean A or the top-K mean T_K, lam from the gate
// (BlendGate) and a parameter q per (sample, channel), in one pass. Saved per output for the backward: lam
// and cP = dy/dq, from which dy/dM = lam - [soft] cP and dy/dS = 1 - lam, so that the backward kernels
// make no elementwise pass of their own.
enum BlendGate : int64_t {
  kLerp = 0,  // lam = q:                          cP = M - S
  kHard = 1,  // lam = [M >= q]:                   cP = 0
  kSoft = 2,  // lam = sigmoid((M - q) / tau):     cP = -(M - S) lam (1 - lam) / tau
};


// torch.lerp's formula (the reference path blends with torch.lerp): exact at both ends.
template <typename acc_t>
inline acc_t lerp_of(acc_t start, acc_t end, acc_t weight) {
  const acc_t diff = end - start;
  return weight < acc_t(0.5) ? start + weight * diff : end - diff * (acc_t(1) - weight);
}

// Per-(sample, channel) parameter: q(n, c) = p[n * pn + c * pc] (pn, pc are 0 where p is broadcast).
template <typename acc_t>
struct BlendParam {
  const acc_t* p;
  int64_t pn, pc;
};

template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
struct BlendOutputs {
  scalar_t* y;
  int32_t* idx;
  acc_t *lam, *cp;
  int64_t gate;
  acc_t tau;

  // Outputs out .. out + L - 1 of values M (max) and S (mean or top-K mean), parameters q[j * q_step].
  template <int64_t Gate>
  inline void put_range(int64_t out, int64_t L, const acc_t* __restrict m, const acc_t* __restrict s,
                        const acc_t* __restrict q, int64_t q_step) const {
    scalar_t* __restrict yo = y + out;
    acc_t* __restrict lo = lam + out;
    acc_t* __restrict cpo = cp + out;
    const acc_t inv_tau = acc_t(1) / tau;
    for (int64_t j = 0; j < L; ++j) {
      const acc_t mj = m[j], sj = s[j], qj = q[j * q_step];
      if constexpr (Gate == kLerp) {
        yo[j] = static_cast<scalar_t>(lerp_of(sj, mj, qj));
        lo[j] = qj;
        cpo[j] = mj - sj;
      } else if constexpr (Gate == kHard) {
        const bool take = mj >= qj;  // torch.where(M >= T, M, S)
        yo[j] = static_cast<scalar_t>(take ? mj : sj);
        lo[j] = take ? acc_t(1) : acc_t(0);
        cpo[j] = 0;
      } else {
        // A weight below 2^-64 is 0: it changes y by less than 2^-64 |M - S|, and it keeps subnormal numbers,
        // whose arithmetic is ~100x slower on x86, out of this loop and of the backward.
        const acc_t sig = acc_t(1) / (acc_t(1) + fast_exp((qj - mj) * inv_tau));
        const acc_t l = sig < acc_t(5.421010862427522e-20) ? acc_t(0) : sig;
        const acc_t slope = -(mj - sj) * l * (acc_t(1) - l) * inv_tau;
        yo[j] = static_cast<scalar_t>(lerp_of(sj, mj, l));
        lo[j] = l;
        cpo[j] = std::abs(slope) < std::numeric_limits<acc_t>::min() ? acc_t(0) : slope;
      }
    }
  }

  // Line r's L outputs; (n, c) of output j: channels_last (line.n, j), NCHW (plane / C, plane % C).
  inline void put_line(int64_t r, int64_t L, int64_t C, bool cl, const Line& line, const BlendParam<acc_t>& p,
                       const acc_t* m, const acc_t* s, const int32_t* where) const {
    const int64_t out = r * L;
    const acc_t* q = cl ? p.p + line.n * p.pn : p.p + (line.plane / C) * p.pn + (line.plane % C) * p.pc;
    const int64_t q_step = cl ? p.pc : 0;
    if (gate == kLerp) {
      put_range<kLerp>(out, L, m, s, q, q_step);
    } else if (gate == kHard) {
      put_range<kHard>(out, L, m, s, q, q_step);
    } else {
      put_range<kSoft>(out, L, m, s, q, q_step);
    }
    int32_t* __restrict io = idx + out;
    for (int64_t j = 0; j < L; ++j) io[j] = where[j];
  }
};

// The layout a blend runs in: an NCHW line is one output row, and rows of fewer than kNarrowRow outputs (the
// 4x4 and 2x2 maps of VGG's last blocks) cost more in per-line overhead than in data, so such inputs run in
// channels_last (lines of C) and pay a transposed copy of the input (and of the input gradient) instead; the
// outputs are returned in the input's layout.
constexpr int64_t kNarrowRow = 8;

at::MemoryFormat run_format(at::MemoryFormat fmt, int64_t channels, int64_t out_w) {
  const bool narrow = fmt == at::MemoryFormat::Contiguous && channels > 1 && out_w < kNarrowRow;
  return narrow ? at::MemoryFormat::ChannelsLast : fmt;
}

// p: (PN, PC) with PN in {1, N} and PC in {1, C}, in the arithmetic type.
template <typename acc_t>
BlendParam<acc_t> blend_param(const Tensor& p, int64_t N, int64_t C) {
  return {p.const_data_ptr<acc_t>(), p.size(0) == N && N > 1 ? p.size(1) : 0, p.size(1) == C && C > 1 ? 1 : 0};
}

at::ScalarType arithmetic_type(const Tensor& x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

Tensor blend_param_tensor(const Tensor& p, const Tensor& x) {
  TORCH_CHECK(p.dim() == 2 && (p.size(0) == 1 || p.size(0) == x.size(0)) && (p.size(1) == 1 || p.size(1) == x.size(1)),
              "poolkit blend kernels: the parameter must be (1 or N, 1 or C), got ", p.sizes());
  return p.to(arithmetic_type(x)).contiguous();
}

void check_gate(int64_t gate, double tau) {
  TORCH_CHECK(gate == kLerp || gate == kHard || gate == kSoft, "poolkit blend kernels: gate must be 0, 1 or 2");
  TORCH_CHECK(gate != kSoft || tau > 0, "poolkit blend kernels: tau must be positive, got ", tau);
}

// y, index, lam, cP
std::vector<Tensor> blend_outputs(const Tensor& x, const Geometry& g, at::MemoryFormat fmt) {
  const auto shape = std::vector<int64_t>{x.size(0), x.size(1), g.h.out, g.w.out};
  const auto opts = x.options().memory_format(fmt);
  const auto acc = opts.dtype(arithmetic_type(x));
  return {at::empty(shape, opts), at::empty(shape, opts.dtype(at::kInt)), at::empty(shape, acc), at::empty(shape, acc)};
}

template <typename scalar_t>
BlendOutputs<scalar_t> blend_pointers(std::vector<Tensor>& out, int64_t gate, double tau) {
  using acc_t = at::opmath_type<scalar_t>;
  return {out[0].mutable_data_ptr<scalar_t>(), out[1].mutable_data_ptr<int32_t>(), out[2].mutable_data_ptr<acc_t>(),
          out[3].mutable_data_ptr<acc_t>(), gate, static_cast<acc_t>(tau)};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> max_mean_blend_forward(const Tensor& input, const Tensor& p, int64_t gate,
                                                                  double tau, at::IntArrayRef kernel,
                                                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                                                  at::IntArrayRef dilation, at::IntArrayRef out_size) {
  check_gate(gate, tau);
  const Geometry g = make_geometry(input, kernel, stride, padding, dilation, out_size);
  const at::MemoryFormat fmt = layout_of(input), run = run_format(fmt, input.size(1), g.w.out);
  const Tensor x = input.contiguous(run);
  const Tensor q = blend_param_tensor(p, x);
  std::vector<Tensor> out = blend_outputs(x, g, run);
  const bool cl = run == at::MemoryFormat::ChannelsLast;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "poolkit_max_mean_blend_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t C = x.size(1), L = cl ? C : g.w.out;
    const BlendOutputs<scalar_t> o = blend_pointers<scalar_t>(out, gate, tau);
    const BlendParam<acc_t> bp = blend_param<acc_t>(q, x.size(0), C);
    max_mean_forward_impl<scalar_t>(
        x, g, cl, [&](int64_t r, const Line& line, const acc_t* best, const acc_t* mean, const int32_t* where) {
          o.put_line(r, L, C, cl, line, bp, best, mean, where);
        });
  });
  return {out[0].contiguous(fmt), out[1].contiguous(fmt), out[2].contiguous(fmt), out[3].contiguous(fmt)};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> max_topk_blend_forward(
    const Tensor& input, const Tensor& p, int64_t k, int64_t gate, double tau, at::IntArrayRef kernel,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, at::IntArrayRef out_size) {
  TORCH_CHECK(k >= 1, "poolkit max_topk_blend_forward: k must be positive, got ", k);
  check_gate(gate, tau);
  const Geometry g = make_geometry(input, kernel, stride, padding, dilation, out_size);
  const at::MemoryFormat fmt = layout_of(input), run = run_format(fmt, input.size(1), g.w.out);
  const Tensor x = input.contiguous(run);
  const Tensor q = blend_param_tensor(p, x);
  std::vector<Tensor> out = blend_outputs(x, g, run);
  Tensor kth = at::empty_like(out[0]), tie = at::empty_like(out[2]);
  const bool cl = run == at::MemoryFormat::ChannelsLast;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "poolkit_max_topk_blend_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t C = x.size(1), L = cl ? C : g.w.out;
    const BlendOutputs<scalar_t> o = blend_pointers<scalar_t>(out, gate, tau);
    const BlendParam<acc_t> bp = blend_param<acc_t>(q, x.size(0), C);
    scalar_t* kp = kth.mutable_data_ptr<scalar_t>();
    acc_t* sp = tie.mutable_data_ptr<acc_t>();
    max_topk_forward_impl<scalar_t>(
        x, g, k, cl,
        [&](int64_t r, const Line& line, const acc_t* best, const acc_t* top_mean, const int32_t* where,
            const acc_t* kth_line, const acc_t* share) {
          o.put_line(r, L, C, cl, line, bp, best, top_mean, where);
          for (int64_t j = 0; j < L; ++j) {
            kp[r * L + j] = static_cast<scalar_t>(kth_line[j]);
            sp[r * L + j] = share[j];
          }
        });
  });
  return {out[0].contiguous(fmt), out[1].contiguous(fmt), kth.contiguous(fmt), tie.contiguous(fmt),
          out[2].contiguous(fmt),  out[3].contiguous(fmt)};
}

// gp = sum of gy cP over the outputs of each parameter entry: (PN, PC) like the parameter, in the arithmetic
// type (one pass over the outputs, in parallel over the samples).
template <typename scalar_t>
void blend_param_grad(const Tensor& gy, const Tensor& cp, bool cl, int64_t PN, int64_t PC, Tensor& gp) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = gy.size(0), C = gy.size(1), P = gy.size(2) * gy.size(3);
  const scalar_t* gyp = gy.const_data_ptr<scalar_t>();
  const acc_t* cpp = cp.const_data_ptr<acc_t>();
  std::vector<acc_t> per_sample(N * C, acc_t(0));  // sum of gy cP per (n, c)
  at::parallel_for(0, N, grain(C * P), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      acc_t* __restrict part = per_sample.data() + n * C;
      const int64_t base = n * C * P;
      if (cl) {  // (n, position, c)
        for (int64_t o = 0; o < P; ++o) {
          const scalar_t* __restrict gyo = gyp + base + o * C;
          const acc_t* __restrict cpo = cpp + base + o * C;
          for (int64_t c = 0; c < C; ++c) part[c] += static_cast<acc_t>(gyo[c]) * cpo[c];
        }
      } else {  // (n, c, position)
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t* __restrict gyc = gyp + base + c * P;
          const acc_t* __restrict cpc = cpp + base + c * P;
          acc_t total = 0;
          for (int64_t o = 0; o < P; ++o) total += static_cast<acc_t>(gyc[o]) * cpc[o];
          part[c] = total;
        }
      }
    }
  });
  acc_t* gpp = gp.mutable_data_ptr<acc_t>();  // zeros
  for (int64_t n = 0; n < N; ++n) {
    acc_t* __restrict dst = gpp + (PN == 1 ? 0 : n * PC);
    const acc_t* __restrict src = per_sample.data() + n * C;
    if (PC == C) {
      for (int64_t c = 0; c < C; ++c) dst[c] += src[c];
    } else {
      acc_t total = 0;
      for (int64_t c = 0; c < C; ++c) total += src[c];
      dst[0] += total;
    }
  }
}

// What the two blend backwards share: the layout, gy in it and in x's dtype, the saved lam and cP in it,
// the parameter's gradient (zeros unless asked for) and the output gradients' source.
struct BlendBackward {
  at::MemoryFormat fmt;
  Tensor gy, lam, cp, gp;
};

BlendBackward blend_backward(const Tensor& grad_y, const Tensor& lam, const Tensor& cp, at::ScalarType dtype,
                             at::IntArrayRef p_size, bool p_grad, bool channels_last) {
  TORCH_CHECK(p_size.size() == 2, "poolkit blend backward: p_size must be (PN, PC)");
  BlendBackward b;
  b.fmt = layout_flag(channels_last);
  b.gy = grad_y.to(dtype).contiguous(b.fmt);
  b.lam = lam.contiguous(b.fmt);
  b.cp = cp.contiguous(b.fmt);
  b.gp = at::zeros({p_size[0], p_size[1]}, lam.options());
  if (p_grad) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "poolkit_blend_param_grad", [&] {
      blend_param_grad<scalar_t>(b.gy, b.cp, b.fmt == at::MemoryFormat::ChannelsLast, p_size[0], p_size[1], b.gp);
    });
  }
  return b;
}

template <typename scalar_t, int Kind>
OutputGrads<scalar_t, Kind> blend_sources(const BlendBackward& b) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* gy = b.gy.const_data_ptr<scalar_t>();
  return {gy, gy, b.lam.const_data_ptr<acc_t>(), b.cp.const_data_ptr<acc_t>()};
}

std::tuple<Tensor, Tensor> max_mean_blend_backward(const Tensor& grad_y, const Tensor& idx, const Tensor& lam,
                                                   const Tensor& cp, int64_t gate, at::IntArrayRef p_size,
                                                   bool p_grad, at::IntArrayRef in_size, at::IntArrayRef kernel,
                                                   at::IntArrayRef stride, at::IntArrayRef padding,
                                                   at::IntArrayRef dilation, bool channels_last) {
  TORCH_CHECK(in_size.size() == 2, "poolkit max_mean_blend_backward: in_size must be (H, W)");
  const at::MemoryFormat fmt = layout_flag(channels_last), run = run_format(fmt, idx.size(1), idx.size(3));
  const BlendBackward b = blend_backward(grad_y, lam, cp, grad_y.scalar_type(), p_size, p_grad,
                                         run == at::MemoryFormat::ChannelsLast);
  const Tensor ix = idx.contiguous(b.fmt);
  Tensor gx = at::empty({idx.size(0), idx.size(1), in_size[0], in_size[1]}, b.gy.options().memory_format(b.fmt));
  const Geometry g = make_geometry(gx, kernel, stride, padding, dilation, {idx.size(2), idx.size(3)});
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gx.scalar_type(), "poolkit_max_mean_blend_backward", [&] {
    const bool cl = b.fmt == at::MemoryFormat::ChannelsLast;
    if (gate == kSoft) {
      max_mean_backward_impl<scalar_t>(blend_sources<scalar_t, kSoftBlend>(b), ix, g, cl, gx);
    } else {
      max_mean_backward_impl<scalar_t>(blend_sources<scalar_t, kBlend>(b), ix, g, cl, gx);
    }
  });
  return {gx.contiguous(fmt), b.gp};
}

std::tuple<Tensor, Tensor> max_topk_blend_backward(const Tensor& grad_y, const Tensor& input, const Tensor& idx,
                                                   const Tensor& kth, const Tensor& tie, const Tensor& lam,
                                                   const Tensor& cp, int64_t gate, at::IntArrayRef p_size,
                                                   bool p_grad, int64_t k, at::IntArrayRef kernel,
                                                   at::IntArrayRef stride, at::IntArrayRef padding,
                                                   at::IntArrayRef dilation, bool channels_last) {
  const at::MemoryFormat fmt = layout_flag(channels_last), run = run_format(fmt, idx.size(1), idx.size(3));
  const BlendBackward b = blend_backward(grad_y, lam, cp, input.scalar_type(), p_size, p_grad,
                                         run == at::MemoryFormat::ChannelsLast);
  const Tensor x = input.contiguous(b.fmt), ix = idx.contiguous(b.fmt), kt = kth.contiguous(b.fmt);
  const Tensor ti = tie.contiguous(b.fmt);
  Tensor gx = at::empty(x.sizes(), x.options().memory_format(b.fmt));
  const Geometry g = make_geometry(x, kernel, stride, padding, dilation, {idx.size(2), idx.size(3)});
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "poolkit_max_topk_blend_backward", [&] {
    const bool cl = b.fmt == at::MemoryFormat::ChannelsLast;
    if (gate == kSoft) {
      max_topk_backward_impl<scalar_t>(blend_sources<scalar_t, kSoftBlend>(b), x, ix, kt, ti, k, g, cl, gx);
    } else {
      max_topk_backward_impl<scalar_t>(blend_sources<scalar_t, kBlend>(b), x, ix, kt, ti, k, g, cl, gx);
    }
  });
  return {gx.contiguous(fmt), b.gp};
}

// ------------------------------------------------------------------------------------------ power mean

// For every row r of input cells (W cells of one (n, c, h) in NCHW, the C channels of one pixel in
// channels_last), the sums over the windows containing each cell of the output-sized per-window values ap,
// gathered (each cell's total written once, no atomics), handed to use(r, totals) with L = W or C totals.
// The backward passes of the power means (GeM, LP) use it.
template <typename acc_t, typename Use>
void for_each_row_of_window_sums(const acc_t* ap, const Geometry& g, int64_t N, int64_t C, int64_t H, int64_t W,
                                 bool cl, int64_t work_per_cell, Use&& use) {
  const int64_t OH = g.h.out, OW = g.w.out;
  const int64_t L = cl ? C : W;
  at::parallel_for(0, cl ? N * H * W : N * C * H, grain(L * work_per_cell), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> total(L);
    for (int64_t r = begin; r < end; ++r) {
      acc_t* __restrict t = total.data();
      for (int64_t j = 0; j < L; ++j) t[j] = 0;
      if (!cl) {
        const int64_t plane = r / H, ih = r % H;
        for (int64_t e = g.h.offsets[ih]; e < g.h.offsets[ih + 1]; ++e) {
          const int64_t row = (plane * OH + g.h.outs[e]) * OW;
          for (int64_t tw = 0; tw < g.kw(); ++tw) {
            const int64_t lo = g.w.lo[tw], hi = g.w.hi[tw], sw = g.w.stride;
            acc_t* dst = t + g.w.input(lo, tw);
            for (int64_t o = lo; o < hi; ++o) dst[(o - lo) * sw] += ap[row + o];
          }
        }
      } else {
        const int64_t n = r / (H * W), ih = (r / W) % H, iw = r % W;
        for (int64_t e = g.h.offsets[ih]; e < g.h.offsets[ih + 1]; ++e) {
          for (int64_t f = g.w.offsets[iw]; f < g.w.offsets[iw + 1]; ++f) {
            const acc_t* a = ap + (n * OH * OW + g.h.outs[e] * OW + g.w.outs[f]) * C;
            for (int64_t c = 0; c < C; ++c) t[c] += a[c];
          }
        }
      }
      use(r, static_cast<const acc_t*>(t));
    }
  });
}


// GeM: S = mean_R z^p with z = max(x, eps), y = S^(1/p). The forward also returns S and S' = mean_R z^p ln z,
// from which the gradient of p is computed on output-sized tensors: dy/dp = y (S' / (p S) - ln S / p^2).
template <bool Unit, typename acc_t, typename scalar_t>
inline void power_step(const scalar_t* src, int64_t step, int64_t n, acc_t p, acc_t eps, acc_t* __restrict s,
                       acc_t* __restrict ds) {
  for (int64_t j = 0; j < n; ++j) {
    const acc_t v = static_cast<acc_t>(src[Unit ? j : j * step]);
    const acc_t z = v < eps ? eps : v;  // clamp(x, min=eps); a NaN stays NaN
    const acc_t lz = fast_log(z);       // one log per cell, shared by z^p and S'
    const acc_t zp = power_of(z, lz, p);
    s[j] += zp;
    ds[j] += zp * lz;
  }
}

template <typename scalar_t>
void power_mean_forward_impl(const Tensor& x, const Geometry& g, bool cl, double p_value, double eps_value,
                             Tensor& y, Tensor& s_out, Tensor& ds_out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = x.size(0), C = x.size(1), OH = g.h.out, OW = g.w.out;
  const int64_t L = cl ? C : OW, lines = cl ? N * OH * OW : N * C * OH;
  const acc_t p = static_cast<acc_t>(p_value), eps = static_cast<acc_t>(eps_value);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* yp = y.mutable_data_ptr<scalar_t>();
  acc_t* sp = s_out.mutable_data_ptr<acc_t>();
  acc_t* dp = ds_out.mutable_data_ptr<acc_t>();
  const std::vector<acc_t> inv = inverse_counts<acc_t>(g);
  at::parallel_for(0, lines, grain(L * g.h.kernel * g.kw() * 8), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> s(L), ds(L);
    for (int64_t r = begin; r < end; ++r) {
      const Line line = line_of(cl, r, g);
      std::fill(s.begin(), s.end(), acc_t(0));
      std::fill(ds.begin(), ds.end(), acc_t(0));
      for_each_tap(g, line, C, [&](int32_t, int64_t offset, int64_t step, int64_t lo, int64_t n) {
        if (step == 1) {
          power_step<true>(xp + offset, 1, n, p, eps, s.data() + lo, ds.data() + lo);
        } else {
          power_step<false>(xp + offset, step, n, p, eps, s.data() + lo, ds.data() + lo);
        }
      });
      const int64_t out = r * L;
      // inv per output: one value for a channels_last line, a step of 1 along an NCHW row (no select in
      // the loop, which then vectorises).
      const acc_t* scale = inv.data() + line.oh * OW + (cl ? line.ow : 0);
      const int64_t scale_step = cl ? 0 : 1;
      for (int64_t j = 0; j < L; ++j) {
        s[j] *= scale[j * scale_step];
        sp[out + j] = s[j];
        dp[out + j] = ds[j] * scale[j * scale_step];
      }
      for (int64_t j = 0; j < L; ++j) {  // a loop of its own: the roots vectorise
        yp[out + j] = static_cast<scalar_t>(power_of(s[j], fast_log(s[j]), acc_t(1) / p));
      }
    }
  });
}

std::tuple<Tensor, Tensor, Tensor> power_mean_forward(const Tensor& input, const Tensor& p, double eps,
                                                      at::IntArrayRef kernel, at::IntArrayRef stride,
                                                      at::IntArrayRef padding, at::IntArrayRef dilation,
                                                      at::IntArrayRef out_size) {
  TORCH_CHECK(p.numel() == 1, "poolkit power_mean_forward: p must hold one value, got ", p.numel());
  const Geometry g = make_geometry(input, kernel, stride, padding, dilation, out_size);
  const at::MemoryFormat fmt = compute_layout(input, out_size[1]);
  const Tensor x = input.contiguous(fmt);
  const auto shape = std::vector<int64_t>{x.size(0), x.size(1), g.h.out, g.w.out};
  const at::ScalarType acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  Tensor y = at::empty(shape, x.options().memory_format(fmt));
  Tensor s = at::empty(shape, x.options().dtype(acc).memory_format(fmt));
  Tensor ds = at::empty(shape, x.options().dtype(acc).memory_format(fmt));
  const double p_value = p.item<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "poolkit_power_mean_forward", [&] {
    power_mean_forward_impl<scalar_t>(x, g, fmt == at::MemoryFormat::ChannelsLast, p_value, eps, y, s, ds);
  });
  return {in_layout_of(y, input), in_layout_of(s, input), in_layout_of(ds, input)};
}

// dx_i = z_i^(p-1) [x_i >= eps] * sum over windows w containing i of gy_w S_w^(1/p - 1) / n_w
// (dy/dS = S^(1/p - 1) / p and dS/dz_i = p z_i^(p-1) / n; y is recomputed from S in float, not read back
// from the rounded output).
template <typename scalar_t>
void power_mean_backward_impl(const Tensor& gy, const Tensor& s, const Tensor& x,
                              const Geometry& g, bool cl, double p_value, double eps_value, Tensor& gx,
                              Tensor& share) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = gx.size(0), C = gx.size(1), H = g.h.size, W = g.w.size, OH = g.h.out, OW = g.w.out;
  const acc_t p = static_cast<acc_t>(p_value), eps = static_cast<acc_t>(eps_value);
  const scalar_t* gyp = gy.const_data_ptr<scalar_t>();
  const acc_t* sp = s.const_data_ptr<acc_t>();
  const acc_t q = acc_t(1) / p - acc_t(1);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* out = gx.mutable_data_ptr<scalar_t>();
  const std::vector<acc_t> inv = inverse_counts<acc_t>(g);
  // Per window, once (not once per cell): a_w = gy_w S_w^(1/p - 1) / n_w.
  acc_t* ap = share.mutable_data_ptr<acc_t>();
  const int64_t O = OH * OW;
  auto shares = [&](int64_t at, int64_t n, int64_t inv_at, int64_t inv_step) {
    for (int64_t j = 0; j < n; ++j) {
      const acc_t mean = sp[at + j];
      ap[at + j] = static_cast<acc_t>(gyp[at + j]) * inv[inv_at + j * inv_step] * power_of(mean, fast_log(mean), q);
    }
  };
  at::parallel_for(0, cl ? N * O : N * C, grain(cl ? C * 4 : O * 4), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      if (cl) {
        shares(r * C, C, r % O, 0);  // one window, C channels
      } else {
        shares(r * O, O, 0, 1);  // one plane's windows
      }
    }
  });
  for_each_row_of_window_sums<acc_t>(ap, g, N, C, H, W, cl, 16, [&](int64_t r, const acc_t* __restrict t) {
    const int64_t L = cl ? C : W;
    const scalar_t* xr = xp + r * L;
    scalar_t* dst = out + r * L;
    for (int64_t j = 0; j < L; ++j) {
      const acc_t v = static_cast<acc_t>(xr[j]);
      const acc_t z = v < eps ? eps : v;
      const acc_t power = power_of(z, fast_log(z), p - acc_t(1));  // computed for every cell, then selected:
      const acc_t factor = v >= eps ? power : acc_t(0);                // a conditional call would not vectorise
      dst[j] = static_cast<scalar_t>(t[j] * factor);
    }
  });
}

Tensor power_mean_backward(const Tensor& grad_y, const Tensor& s, const Tensor& input, const Tensor& p,
                           double eps, at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding,
                           at::IntArrayRef dilation, bool channels_last) {
  const at::MemoryFormat fmt = backward_layout(channels_last, input, s.size(3));
  const Tensor x = input.contiguous(fmt), ss = s.contiguous(fmt);
  const Tensor gy = grad_y.to(x.scalar_type()).contiguous(fmt);
  Tensor gx = at::empty(x.sizes(), x.options().memory_format(fmt));
  Tensor share = at::empty_like(ss);
  const Geometry g = make_geometry(x, kernel, stride, padding, dilation, {s.size(2), s.size(3)});
  const double p_value = p.item<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "poolkit_power_mean_backward", [&] {
    const bool cl = fmt == at::MemoryFormat::ChannelsLast;
    power_mean_backward_impl<scalar_t>(gy, ss, x, g, cl, p_value, eps, gx, share);
  });
  return gx.contiguous(layout_flag(channels_last));
}

// GeM's dL/dp = sum over outputs of gy y (S' / (p S) - ln S / p^2), y = S^(1/p): one pass over the
// output-sized gy, S and S' (float arithmetic vectorised, summed in double per chunk).
Tensor power_mean_grad_p(const Tensor& grad_y, const Tensor& s, const Tensor& ds, const Tensor& p) {
  const at::MemoryFormat fmt = s.suggest_memory_format();
  const Tensor ss = s.contiguous(fmt), dd = ds.contiguous(fmt);
  const Tensor gy = grad_y.to(s.scalar_type()).contiguous(fmt);
  const double p_value = p.item<double>();
  double total = 0;
  AT_DISPATCH_FLOATING_TYPES(ss.scalar_type(), "poolkit_power_mean_grad_p", [&] {
    using acc_t = scalar_t;
    const acc_t* sp = ss.const_data_ptr<acc_t>();
    const acc_t* dp = dd.const_data_ptr<acc_t>();
    const acc_t* gp = gy.const_data_ptr<acc_t>();
    const acc_t q = static_cast<acc_t>(p_value), inv_p = acc_t(1) / q, inv_p2 = inv_p * inv_p;
    total = at::parallel_reduce(
        0, ss.numel(), grain(16), 0.0,
        [&](int64_t begin, int64_t end, double sum) {
          constexpr int64_t block = 256;
          acc_t terms[block];
          for (int64_t at = begin; at < end; at += block) {
            const int64_t n = std::min(block, end - at);
            for (int64_t j = 0; j < n; ++j) {
              const acc_t mean = sp[at + j], lm = fast_log(mean);
              const acc_t y = power_of(mean, lm, inv_p);
              terms[j] = gp[at + j] * y * (dp[at + j] * inv_p / mean - lm * inv_p2);
            }
            double part[4] = {0, 0, 0, 0};  // four chains of double adds instead of one serial chain
            int64_t j = 0;
            for (; j + 4 <= n; j += 4) {
              for (int64_t k = 0; k < 4; ++k) part[k] += static_cast<double>(terms[j + k]);
            }
            for (; j < n; ++j) part[0] += static_cast<double>(terms[j]);
            sum += (part[0] + part[1]) + (part[2] + part[3]);
          }
          return sum;
        },
        std::plus<double>());
  });
  return at::scalar_tensor(total, s.options().memory_format(at::MemoryFormat::Contiguous));
}

// ------------------------------------------------------------------------------------- weighted mean

// y = sum_R w x / D, D = sum_R w + eps (SoftPool-like attention, LIP). The weight has the input's shape or
// one channel (N, 1, H, W) shared by all channels; wc is 1 or 0, the weight's step from one channel to the
// next.
template <bool Unit, typename acc_t, typename scalar_t>
inline void weighted_step(const scalar_t* src, const scalar_t* wsrc, int64_t step, int64_t wstep, int64_t n,
                          acc_t* __restrict num, acc_t* __restrict den) {
  for (int64_t j = 0; j < n; ++j) {
    const acc_t v = static_cast<acc_t>(src[Unit ? j : j * step]);
    const acc_t w = static_cast<acc_t>(wsrc[j * wstep]);
    num[j] += w * v;
    den[j] += w;
  }
}

template <typename scalar_t>
void weighted_mean_forward_impl(const Tensor& x, const Tensor& w, const Geometry& g, bool cl, double eps_value,
                                Tensor& y, Tensor& d) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = x.size(0), C = x.size(1), H = g.h.size, W = g.w.size, OH = g.h.out, OW = g.w.out;
  const int64_t Cw = w.size(1), wc = Cw == C ? 1 : 0;
  const int64_t L = cl ? C : OW, lines = cl ? N * OH * OW : N * C * OH;
  const acc_t eps = static_cast<acc_t>(eps_value);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* wp = w.const_data_ptr<scalar_t>();
  scalar_t* yp = y.mutable_data_ptr<scalar_t>();
  acc_t* dp = d.mutable_data_ptr<acc_t>();
  at::parallel_for(0, lines, grain(L * g.h.kernel * g.kw() * 2), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> num(L), den(L);
    for (int64_t r = begin; r < end; ++r) {
      const Line line = line_of(cl, r, g);
      std::fill(num.begin(), num.end(), acc_t(0));
      std::fill(den.begin(), den.end(), acc_t(0));
      // NCHW: the weight plane of this line's (n, c), as an offset from the input plane.
      const int64_t plane_w = (line.plane / C) * Cw + (line.plane % C) * wc;
      const int64_t delta = (plane_w - line.plane) * H * W;
      for_each_tap(g, line, C, [&](int32_t, int64_t offset, int64_t step, int64_t lo, int64_t n) {
        if (cl) {
          const scalar_t* wsrc = wp + (offset / C) * Cw;
          weighted_step<true>(xp + offset, wsrc, 1, wc, n, num.data(), den.data());
        } else if (step == 1) {
          weighted_step<true>(xp + offset, wp + offset + delta, 1, 1, n, num.data() + lo, den.data() + lo);
        } else {
          weighted_step<false>(xp + offset, wp + offset + delta, step, step, n, num.data() + lo, den.data() + lo);
        }
      });
      const int64_t out = r * L;
      for (int64_t j = 0; j < L; ++j) {
        const acc_t total = den[j] + eps;
        dp[out + j] = total;
        yp[out + j] = static_cast<scalar_t>(num[j] / total);
      }
    }
  });
}

std::tuple<Tensor, Tensor> weighted_mean_forward(const Tensor& input, const Tensor& weight, double eps,
                                                 at::IntArrayRef kernel, at::IntArrayRef stride,
                                                 at::IntArrayRef padding, at::IntArrayRef dilation,
                                                 at::IntArrayRef out_size) {
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) == input.size(0) && weight.size(2) == input.size(2) &&
                  weight.size(3) == input.size(3) && (weight.size(1) == input.size(1) || weight.size(1) == 1),
              "poolkit weighted_mean_forward: the weight must be (N, C, H, W) or (N, 1, H, W) like the input");
  const Geometry g = make_geometry(input, kernel, stride, padding, dilation, out_size);
  const at::MemoryFormat fmt = compute_layout(input, out_size[1]);
  const Tensor x = input.contiguous(fmt), w = weight.to(input.scalar_type()).contiguous(fmt);
  const auto shape = std::vector<int64_t>{x.size(0), x.size(1), g.h.out, g.w.out};
  const at::ScalarType acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  Tensor y = at::empty(shape, x.options().memory_format(fmt));
  Tensor d = at::empty(shape, x.options().dtype(acc).memory_format(fmt));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "poolkit_weighted_mean_forward", [&] {
    weighted_mean_forward_impl<scalar_t>(x, w, g, fmt == at::MemoryFormat::ChannelsLast, eps, y, d);
  });
  return {in_layout_of(y, input), in_layout_of(d, input)};
}

// With a_w = gy_w / D_w: dx_i = w_i sum_w a_w and dw_i = x_i sum_w a_w - sum_w a_w y_w. A weight of x's shape
// gets dw at x's shape; a shared weight (N, 1, H, W) gets dw summed over the channels here, in the same pass
// (no input-sized dw written and summed afterwards).
template <typename scalar_t>
void weighted_mean_backward_impl(const Tensor& gy, const Tensor& y, const Tensor& d, const Tensor& x,
                                 const Tensor& w, const Geometry& g, bool cl, Tensor& gx, Tensor& gw) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = x.size(0), C = x.size(1), H = g.h.size, W = g.w.size, OH = g.h.out, OW = g.w.out;
  const bool shared = w.size(1) != C;
  const scalar_t* gyp = gy.const_data_ptr<scalar_t>();
  const scalar_t* yp = y.const_data_ptr<scalar_t>();
  const acc_t* dp = d.const_data_ptr<acc_t>();
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* wp = w.const_data_ptr<scalar_t>();
  scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
  scalar_t* gwp = gw.mutable_data_ptr<scalar_t>();
  // The sums a and b over the windows that contain each cell of one NCHW input row (plane, ih).
  auto row_sums = [&](int64_t plane, int64_t ih, acc_t* __restrict a, acc_t* __restrict b) {
    for (int64_t j = 0; j < W; ++j) a[j] = b[j] = 0;
    for (int64_t e = g.h.offsets[ih]; e < g.h.offsets[ih + 1]; ++e) {
      const int64_t row = (plane * OH + g.h.outs[e]) * OW;
      for (int64_t tw = 0; tw < g.kw(); ++tw) {
        const int64_t lo = g.w.lo[tw], hi = g.w.hi[tw], sw = g.w.stride, first = g.w.input(lo, tw);
        for (int64_t o = lo; o < hi; ++o) {
          const acc_t share = static_cast<acc_t>(gyp[row + o]) / dp[row + o];
          a[first + (o - lo) * sw] += share;
          b[first + (o - lo) * sw] += share * static_cast<acc_t>(yp[row + o]);
        }
      }
    }
  };
  if (!cl && shared) {
    // One (n, ih) row of every channel per step, so that the channel sum of dw stays in this thread.
    at::parallel_for(0, N * H, grain(C * W * 8), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> sum_a(W), sum_b(W), dw(W);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t n = r / H, ih = r % H;
        const scalar_t* wr = wp + r * W;  // (n, 0, ih, :)
        std::fill(dw.begin(), dw.end(), acc_t(0));
        for (int64_t c = 0; c < C; ++c) {
          const int64_t plane = n * C + c, at = (plane * H + ih) * W;
          row_sums(plane, ih, sum_a.data(), sum_b.data());
          for (int64_t j = 0; j < W; ++j) {
            gxp[at + j] = static_cast<scalar_t>(sum_a[j] * static_cast<acc_t>(wr[j]));
            dw[j] += sum_a[j] * static_cast<acc_t>(xp[at + j]) - sum_b[j];
          }
        }
        for (int64_t j = 0; j < W; ++j) gwp[r * W + j] = static_cast<scalar_t>(dw[j]);
      }
    });
    return;
  }
  const int64_t L = cl ? C : W;
  at::parallel_for(0, cl ? N * H * W : N * C * H, grain(L * 8), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> sum_a(L), sum_b(L);
    for (int64_t r = begin; r < end; ++r) {
      acc_t* __restrict a = sum_a.data();
      acc_t* __restrict b = sum_b.data();
      const scalar_t* xr = xp + r * L;
      if (!cl) {  // a weight of x's shape
        row_sums(r / H, r % H, a, b);
        const scalar_t* wr = wp + r * W;
        for (int64_t j = 0; j < L; ++j) {
          gxp[r * L + j] = static_cast<scalar_t>(a[j] * static_cast<acc_t>(wr[j]));
          gwp[r * L + j] = static_cast<scalar_t>(a[j] * static_cast<acc_t>(xr[j]) - b[j]);
        }
        continue;
      }
      for (int64_t j = 0; j < L; ++j) a[j] = b[j] = 0;
      const int64_t n = r / (H * W), ih = (r / W) % H, iw = r % W;
      for (int64_t e = g.h.offsets[ih]; e < g.h.offsets[ih + 1]; ++e) {
        for (int64_t f = g.w.offsets[iw]; f < g.w.offsets[iw + 1]; ++f) {
          const int64_t at_o = (n * OH * OW + g.h.outs[e] * OW + g.w.outs[f]) * C;
          for (int64_t c = 0; c < C; ++c) {
            const acc_t share = static_cast<acc_t>(gyp[at_o + c]) / dp[at_o + c];
            a[c] += share;
            b[c] += share * static_cast<acc_t>(yp[at_o + c]);
          }
        }
      }
      if (shared) {  // one weight per position: dw summed over the channels
        const acc_t wv = static_cast<acc_t>(wp[r]);
        acc_t dw = 0;
#pragma omp simd reduction(+ : dw)
        for (int64_t c = 0; c < C; ++c) {
          gxp[r * C + c] = static_cast<scalar_t>(a[c] * wv);
          dw += a[c] * static_cast<acc_t>(xr[c]) - b[c];
        }
        gwp[r] = static_cast<scalar_t>(dw);
      } else {
        const scalar_t* wr = wp + r * C;
        for (int64_t c = 0; c < C; ++c) {
          gxp[r * C + c] = static_cast<scalar_t>(a[c] * static_cast<acc_t>(wr[c]));
          gwp[r * C + c] = static_cast<scalar_t>(a[c] * static_cast<acc_t>(xr[c]) - b[c]);
        }
      }
    }
  });
}

std::tuple<Tensor, Tensor> weighted_mean_backward(const Tensor& grad_y, const Tensor& y, const Tensor& d,
                                                  const Tensor& input, const Tensor& weight,
                                                  at::IntArrayRef kernel, at::IntArrayRef stride,
                                                  at::IntArrayRef padding, at::IntArrayRef dilation,
                                                  bool channels_last) {
  const at::MemoryFormat fmt = backward_layout(channels_last, input, y.size(3));
  const Tensor x = input.contiguous(fmt), w = weight.to(input.scalar_type()).contiguous(fmt);
  const Tensor gy = grad_y.to(x.scalar_type()).contiguous(fmt), yy = y.contiguous(fmt), dd = d.contiguous(fmt);
  Tensor gx = at::empty(x.sizes(), x.options().memory_format(fmt));
  // dw: x's shape and layout, or (N, 1, H, W) for a shared weight (one channel: one memory order).
  Tensor gw = w.size(1) == x.size(1) ? at::empty(x.sizes(), x.options().memory_format(fmt))
                                     : at::empty({x.size(0), 1, x.size(2), x.size(3)}, x.options());
  const Geometry g = make_geometry(x, kernel, stride, padding, dilation, {y.size(2), y.size(3)});
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "poolkit_weighted_mean_backward", [&] {
    weighted_mean_backward_impl<scalar_t>(gy, yy, dd, x, w, g, fmt == at::MemoryFormat::ChannelsLast, gx, gw);
  });
  return {gx.contiguous(layout_flag(channels_last)), gw.contiguous(layout_flag(channels_last))};
}

// ---------------------------------------------------------------------------------- self-weighted mean

// The weighted mean y = sum_R w x / D, D = sum_R w, with weights computed from x itself:
// kSoftmax (SoftPool): w_i = exp(x_i - M), M the window maximum, so that no exp overflows (M cancels in y);
// kRelu (stochastic pooling in evaluation): w_i = relu(x_i), and y = the plain mean of the real cells where
// D = 0. Outputs y, D (arithmetic type) and M (both modes; a NaN wins it).
// Backward, with a_w = gy_w / D_w: kSoftmax: dx_i = sum_w a_w exp(x_i - M_w) (1 + x_i - y_w);
// kRelu: dx_i = sum_w (D_w > 0 ? a_w [x_i > 0] (2 x_i - y_w) : gy_w / n_w).
constexpr int64_t kSoftmax = 0, kRelu = 1;

template <bool Unit, typename acc_t, typename scalar_t>
inline void window_max_step(const scalar_t* src, int64_t step, int64_t n, acc_t* __restrict best) {
  for (int64_t j = 0; j < n; ++j) {
    const acc_t v = static_cast<acc_t>(src[Unit ? j : j * step]);
    best[j] = (v > best[j] || v != v) ? v : best[j];
  }
}

template <int64_t Mode, bool Unit, typename acc_t, typename scalar_t>
inline void self_weighted_step(const scalar_t* src, int64_t step, int64_t n, const acc_t* __restrict best,
                               acc_t* __restrict num, acc_t* __restrict den, acc_t* __restrict sum) {
  for (int64_t j = 0; j < n; ++j) {
    const acc_t v = static_cast<acc_t>(src[Unit ? j : j * step]);
    if constexpr (Mode == kSoftmax) {
      const acc_t e = fast_exp(v - best[j]);
      num[j] += e * v;
      den[j] += e;
    } else {
      const acc_t r = v > acc_t(0) ? v : acc_t(0);
      num[j] += r * v;
      den[j] += r;
      sum[j] += v;
    }
  }
}

template <int64_t Mode, typename scalar_t>
void self_weighted_forward_impl(const Tensor& x, const Geometry& g, bool cl, Tensor& y, Tensor& d, Tensor& m) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = x.size(0), C = x.size(1), OH = g.h.out, OW = g.w.out;
  const int64_t L = cl ? C : OW, lines = cl ? N * OH * OW : N * C * OH;
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* yp = y.mutable_data_ptr<scalar_t>();
  scalar_t* mp = m.mutable_data_ptr<scalar_t>();
  acc_t* dp = d.mutable_data_ptr<acc_t>();
  const std::vector<acc_t> inv = inverse_counts<acc_t>(g);
  at::parallel_for(0, lines, grain(L * g.h.kernel * g.kw() * 4), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> best(L), num(L), den(L), sum(L);
    for (int64_t r = begin; r < end; ++r) {
      const Line line = line_of(cl, r, g);
      std::fill(best.begin(), best.end(), -std::numeric_limits<acc_t>::infinity());
      std::fill(num.begin(), num.end(), acc_t(0));
      std::fill(den.begin(), den.end(), acc_t(0));
      std::fill(sum.begin(), sum.end(), acc_t(0));
      for_each_tap(g, line, C, [&](int32_t, int64_t offset, int64_t step, int64_t lo, int64_t n) {
        if (step == 1) {
          window_max_step<true>(xp + offset, 1, n, best.data() + lo);
        } else {
          window_max_step<false>(xp + offset, step, n, best.data() + lo);
        }
      });
      for_each_tap(g, line, C, [&](int32_t, int64_t offset, int64_t step, int64_t lo, int64_t n) {
        acc_t *b = best.data() + lo, *nu = num.data() + lo, *de = den.data() + lo, *su = sum.data() + lo;
        if (step == 1) {
          self_weighted_step<Mode, true>(xp + offset, 1, n, b, nu, de, su);
        } else {
          self_weighted_step<Mode, false>(xp + offset, step, n, b, nu, de, su);
        }
      });
      const int64_t out = r * L;
      for (int64_t j = 0; j < L; ++j) {
        dp[out + j] = den[j];
        mp[out + j] = static_cast<scalar_t>(best[j]);
        if constexpr (Mode == kSoftmax) {
          yp[out + j] = static_cast<scalar_t>(num[j] / den[j]);
        } else {
          const acc_t mean = sum[j] * inv[line.oh * OW + (cl ? line.ow : j)];
          yp[out + j] = static_cast<scalar_t>(den[j] > acc_t(0) ? num[j] / den[j] : mean);
        }
      }
    }
  });
}

std::tuple<Tensor, Tensor, Tensor> self_weighted_forward(const Tensor& input, int64_t mode, at::IntArrayRef kernel,
                                                         at::IntArrayRef stride, at::IntArrayRef padding,
                                                         at::IntArrayRef dilation, at::IntArrayRef out_size) {
  TORCH_CHECK(mode == kSoftmax || mode == kRelu, "poolkit self_weighted_forward: unknown weight mode ", mode);
  const Geometry g = make_geometry(input, kernel, stride, padding, dilation, out_size);
  const at::MemoryFormat fmt = compute_layout(input, out_size[1]);
  const Tensor x = input.contiguous(fmt);
  const auto shape = std::vector<int64_t>{x.size(0), x.size(1), g.h.out, g.w.out};
  const at::ScalarType acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  Tensor y = at::empty(shape, x.options().memory_format(fmt));
  Tensor d = at::empty(shape, x.options().dtype(acc).memory_format(fmt));
  Tensor m = at::empty(shape, x.options().memory_format(fmt));
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "poolkit_self_weighted_forward", [&] {
    if (mode == kSoftmax) {
      self_weighted_forward_impl<kSoftmax, scalar_t>(x, g, cl, y, d, m);
    } else {
      self_weighted_forward_impl<kRelu, scalar_t>(x, g, cl, y, d, m);
    }
  });
  return {in_layout_of(y, input), in_layout_of(d, input), in_layout_of(m, input)};
}

// One window's contribution to dx_i (see above); inv = 1 / n_w.
template <int64_t Mode, typename acc_t>
inline acc_t self_weighted_grad(acc_t xv, acc_t gy, acc_t den, acc_t yw, acc_t mw, acc_t inv) {
  if constexpr (Mode == kSoftmax) {
    return gy / den * fast_exp(xv - mw) * (acc_t(1) + xv - yw);
  } else {
    const acc_t with_mass = xv > acc_t(0) ? gy / den * (xv + xv - yw) : acc_t(0);
    return den > acc_t(0) ? with_mass : gy * inv;
  }
}

template <int64_t Mode, typename scalar_t>
void self_weighted_backward_impl(const Tensor& gy, const Tensor& y, const Tensor& d, const Tensor& m,
                                 const Tensor& x, const Geometry& g, bool cl, Tensor& gx) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = x.size(0), C = x.size(1), H = g.h.size, W = g.w.size, OH = g.h.out, OW = g.w.out;
  const scalar_t* gyp = gy.const_data_ptr<scalar_t>();
  const scalar_t* yp = y.const_data_ptr<scalar_t>();
  const scalar_t* mp = m.const_data_ptr<scalar_t>();
  const acc_t* dp = d.const_data_ptr<acc_t>();
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
  const std::vector<acc_t> inv = inverse_counts<acc_t>(g);
  const int64_t L = cl ? C : W;
  at::parallel_for(0, cl ? N * H * W : N * C * H, grain(L * 8), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> total(L), values(L);
    for (int64_t r = begin; r < end; ++r) {
      acc_t* __restrict t = total.data();
      acc_t* __restrict xv = values.data();
      const scalar_t* xr = xp + r * L;
      for (int64_t j = 0; j < L; ++j) t[j] = 0, xv[j] = static_cast<acc_t>(xr[j]);
      if (!cl) {
        const int64_t plane = r / H, ih = r % H;
        for (int64_t e = g.h.offsets[ih]; e < g.h.offsets[ih + 1]; ++e) {
          const int64_t oh = g.h.outs[e];
          const int64_t row = (plane * OH + oh) * OW;
          for (int64_t tw = 0; tw < g.kw(); ++tw) {
            const int64_t lo = g.w.lo[tw], hi = g.w.hi[tw], sw = g.w.stride, first = g.w.input(lo, tw);
            for (int64_t o = lo; o < hi; ++o) {
              const int64_t i = first + (o - lo) * sw, at_o = row + o;
              t[i] += self_weighted_grad<Mode>(xv[i], static_cast<acc_t>(gyp[at_o]), dp[at_o],
                                               static_cast<acc_t>(yp[at_o]), static_cast<acc_t>(mp[at_o]),
                                               inv[oh * OW + o]);
            }
          }
        }
      } else {
        const int64_t n = r / (H * W), ih = (r / W) % H, iw = r % W;
        for (int64_t e = g.h.offsets[ih]; e < g.h.offsets[ih + 1]; ++e) {
          for (int64_t f = g.w.offsets[iw]; f < g.w.offsets[iw + 1]; ++f) {
            const int64_t o = g.h.outs[e] * OW + g.w.outs[f];
            const int64_t at_o = (n * OH * OW + o) * C;
            const acc_t scale = inv[o];
            for (int64_t c = 0; c < C; ++c) {
              t[c] += self_weighted_grad<Mode>(xv[c], static_cast<acc_t>(gyp[at_o + c]), dp[at_o + c],
                                               static_cast<acc_t>(yp[at_o + c]), static_cast<acc_t>(mp[at_o + c]),
                                               scale);
            }
          }
        }
      }
      scalar_t* dst = gxp + r * L;
      for (int64_t j = 0; j < L; ++j) dst[j] = static_cast<scalar_t>(t[j]);
    }
  });
}

Tensor self_weighted_backward(const Tensor& grad_y, const Tensor& y, const Tensor& d, const Tensor& m,
                              const Tensor& input, int64_t mode, at::IntArrayRef kernel, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation, bool channels_last) {
  TORCH_CHECK(mode == kSoftmax || mode == kRelu, "poolkit self_weighted_backward: unknown weight mode ", mode);
  const at::MemoryFormat fmt = backward_layout(channels_last, input, y.size(3));
  const Tensor x = input.contiguous(fmt);
  const Tensor gy = grad_y.to(x.scalar_type()).contiguous(fmt), yy = y.contiguous(fmt), dd = d.contiguous(fmt);
  const Tensor mm = m.contiguous(fmt);
  Tensor gx = at::empty(x.sizes(), x.options().memory_format(fmt));
  const Geometry g = make_geometry(x, kernel, stride, padding, dilation, {y.size(2), y.size(3)});
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "poolkit_self_weighted_backward", [&] {
    if (mode == kSoftmax) {
      self_weighted_backward_impl<kSoftmax, scalar_t>(gy, yy, dd, mm, x, g, cl, gx);
    } else {
      self_weighted_backward_impl<kRelu, scalar_t>(gy, yy, dd, mm, x, g, cl, gx);
    }
  });
  return gx.contiguous(layout_flag(channels_last));
}

// ------------------------------------------------------------------------------------------ power sum

// LP pooling as nn.LPPool2d: S = sum_R x^p (torch.pow's real powers: a negative x with an integer p keeps
// its sign, a non-integer p gives NaN), y = S^(1/p), and y = 0 with gradient 0 where S = 0.
// Backward: dx_i = x_i^(p-1) sum_w [S_w != 0] gy_w S_w^(1/p - 1). p = 2 (the default) takes x * x and sqrt.
template <bool Square, bool Unit, typename acc_t, typename scalar_t>
inline void power_sum_step(const scalar_t* src, int64_t step, int64_t n, acc_t p, acc_t* __restrict s) {
  for (int64_t j = 0; j < n; ++j) {
    const acc_t v = static_cast<acc_t>(src[Unit ? j : j * step]);
    s[j] += Square ? v * v : std::pow(v, p);
  }
}

template <bool Square, typename scalar_t>
void power_sum_forward_impl(const Tensor& x, const Geometry& g, bool cl, double p_value, Tensor& y, Tensor& s_out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = x.size(0), C = x.size(1), OH = g.h.out, OW = g.w.out;
  const int64_t L = cl ? C : OW, lines = cl ? N * OH * OW : N * C * OH;
  const acc_t p = static_cast<acc_t>(p_value), root = acc_t(1) / p;
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* yp = y.mutable_data_ptr<scalar_t>();
  acc_t* sp = s_out.mutable_data_ptr<acc_t>();
  at::parallel_for(0, lines, grain(L * g.h.kernel * g.kw() * (Square ? 1 : 8)), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> s(L);
    for (int64_t r = begin; r < end; ++r) {
      const Line line = line_of(cl, r, g);
      std::fill(s.begin(), s.end(), acc_t(0));
      for_each_tap(g, line, C, [&](int32_t, int64_t offset, int64_t step, int64_t lo, int64_t n) {
        if (step == 1) {
          power_sum_step<Square, true>(xp + offset, 1, n, p, s.data() + lo);
        } else {
          power_sum_step<Square, false>(xp + offset, step, n, p, s.data() + lo);
        }
      });
      const int64_t out = r * L;
      for (int64_t j = 0; j < L; ++j) {
        const acc_t total = s[j];
        sp[out + j] = total;
        const acc_t root_of = Square ? std::sqrt(total) : std::pow(total, root);
        yp[out + j] = static_cast<scalar_t>(total == acc_t(0) ? acc_t(0) : root_of);
      }
    }
  });
}

std::tuple<Tensor, Tensor> power_sum_forward(const Tensor& input, double p, at::IntArrayRef kernel,
                                             at::IntArrayRef stride, at::IntArrayRef padding,
                                             at::IntArrayRef dilation, at::IntArrayRef out_size) {
  TORCH_CHECK(p > 0, "poolkit power_sum_forward: p must be positive, got ", p);
  const Geometry g = make_geometry(input, kernel, stride, padding, dilation, out_size);
  const at::MemoryFormat fmt = compute_layout(input, out_size[1]);
  const Tensor x = input.contiguous(fmt);
  const auto shape = std::vector<int64_t>{x.size(0), x.size(1), g.h.out, g.w.out};
  const at::ScalarType acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  Tensor y = at::empty(shape, x.options().memory_format(fmt));
  Tensor s = at::empty(shape, x.options().dtype(acc).memory_format(fmt));
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "poolkit_power_sum_forward", [&] {
    if (p == 2.0) {
      power_sum_forward_impl<true, scalar_t>(x, g, cl, p, y, s);
    } else {
      power_sum_forward_impl<false, scalar_t>(x, g, cl, p, y, s);
    }
  });
  return {in_layout_of(y, input), in_layout_of(s, input)};
}

template <bool Square, typename scalar_t>
void power_sum_backward_impl(const Tensor& gy, const Tensor& s, const Tensor& x, const Geometry& g, bool cl,
                             double p_value, Tensor& gx, Tensor& share) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = x.size(0), C = x.size(1), H = g.h.size, W = g.w.size, OH = g.h.out, OW = g.w.out;
  const acc_t p = static_cast<acc_t>(p_value), q = acc_t(1) / p - acc_t(1);
  const scalar_t* gyp = gy.const_data_ptr<scalar_t>();
  const acc_t* sp = s.const_data_ptr<acc_t>();
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* out = gx.mutable_data_ptr<scalar_t>();
  // Per window, once: [S != 0] gy S^(1/p - 1).
  acc_t* ap = share.mutable_data_ptr<acc_t>();
  at::parallel_for(0, s.numel(), grain(Square ? 4 : 16), [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      const acc_t total = sp[o];
      const acc_t scale = Square ? acc_t(1) / std::sqrt(total) : std::pow(total, q);
      ap[o] = total == acc_t(0) ? acc_t(0) : static_cast<acc_t>(gyp[o]) * scale;
    }
  });
  for_each_row_of_window_sums<acc_t>(ap, g, N, C, H, W, cl, 8, [&](int64_t r, const acc_t* __restrict t) {
    const int64_t L = cl ? C : W;
    const scalar_t* xr = xp + r * L;
    scalar_t* dst = out + r * L;
    for (int64_t j = 0; j < L; ++j) {
      const acc_t v = static_cast<acc_t>(xr[j]);
      dst[j] = static_cast<scalar_t>(t[j] * (Square ? v : std::pow(v, p - acc_t(1))));
    }
  });
}

Tensor power_sum_backward(const Tensor& grad_y, const Tensor& s, const Tensor& input, double p,
                          at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding,
                          at::IntArrayRef dilation, bool channels_last) {
  const at::MemoryFormat fmt = backward_layout(channels_last, input, s.size(3));
  const Tensor x = input.contiguous(fmt), ss = s.contiguous(fmt);
  const Tensor gy = grad_y.to(x.scalar_type()).contiguous(fmt);
  Tensor gx = at::empty(x.sizes(), x.options().memory_format(fmt));
  Tensor share = at::empty_like(ss);
  const Geometry g = make_geometry(x, kernel, stride, padding, dilation, {s.size(2), s.size(3)});
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "poolkit_power_sum_backward", [&] {
    if (p == 2.0) {
      power_sum_backward_impl<true, scalar_t>(gy, ss, x, g, cl, p, gx, share);
    } else {
      power_sum_backward_impl<false, scalar_t>(gy, ss, x, g, cl, p, gx, share);
    }
  });
  return gx.contiguous(layout_flag(channels_last));
}

}  // namespace

TORCH_LIBRARY(poolkit_cpu, m) {
  m.def("max_mean_forward(Tensor x, int[] kernel, int[] stride, int[] padding, int[] dilation, int[] out_size)"
        " -> (Tensor, Tensor, Tensor)");
  m.def("max_mean_backward(Tensor grad_m, Tensor grad_a, Tensor idx, int[] in_size, int[] kernel, int[] stride,"
        " int[] padding, int[] dilation, bool channels_last) -> Tensor");
  m.def("max_topk_forward(Tensor x, int k, int[] kernel, int[] stride, int[] padding, int[] dilation,"
        " int[] out_size) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("power_mean_forward(Tensor x, Tensor p, float eps, int[] kernel, int[] stride, int[] padding,"
        " int[] dilation, int[] out_size) -> (Tensor, Tensor, Tensor)");
  m.def("power_mean_backward(Tensor grad_y, Tensor s, Tensor x, Tensor p, float eps, int[] kernel,"
        " int[] stride, int[] padding, int[] dilation, bool channels_last) -> Tensor");
  m.def("power_mean_grad_p(Tensor grad_y, Tensor s, Tensor ds, Tensor p) -> Tensor");
  m.def("weighted_mean_forward(Tensor x, Tensor w, float eps, int[] kernel, int[] stride, int[] padding,"
        " int[] dilation, int[] out_size) -> (Tensor, Tensor)");
  m.def("weighted_mean_backward(Tensor grad_y, Tensor y, Tensor d, Tensor x, Tensor w, int[] kernel,"
        " int[] stride, int[] padding, int[] dilation, bool channels_last) -> (Tensor, Tensor)");
  m.def("max_mean_blend_forward(Tensor x, Tensor p, int gate, float tau, int[] kernel, int[] stride,"
        " int[] padding, int[] dilation, int[] out_size) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("max_mean_blend_backward(Tensor grad_y, Tensor idx, Tensor lam, Tensor cp, int gate, int[] p_size,"
        " bool p_grad, int[] in_size, int[] kernel, int[] stride, int[] padding, int[] dilation,"
        " bool channels_last) -> (Tensor, Tensor)");
  m.def("max_topk_blend_forward(Tensor x, Tensor p, int k, int gate, float tau, int[] kernel, int[] stride,"
        " int[] padding, int[] dilation, int[] out_size) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("max_topk_blend_backward(Tensor grad_y, Tensor x, Tensor idx, Tensor kth, Tensor tie, Tensor lam, Tensor cp,"
        " int gate, int[] p_size, bool p_grad, int k, int[] kernel, int[] stride, int[] padding, int[] dilation,"
        " bool channels_last) -> (Tensor, Tensor)");
  m.def("self_weighted_forward(Tensor x, int mode, int[] kernel, int[] stride, int[] padding, int[] dilation,"
        " int[] out_size) -> (Tensor, Tensor, Tensor)");
  m.def("self_weighted_backward(Tensor grad_y, Tensor y, Tensor d, Tensor m, Tensor x, int mode, int[] kernel,"
        " int[] stride, int[] padding, int[] dilation, bool channels_last) -> Tensor");
  m.def("power_sum_forward(Tensor x, float p, int[] kernel, int[] stride, int[] padding, int[] dilation,"
        " int[] out_size) -> (Tensor, Tensor)");
  m.def("power_sum_backward(Tensor grad_y, Tensor s, Tensor x, float p, int[] kernel, int[] stride,"
        " int[] padding, int[] dilation, bool channels_last) -> Tensor");
  m.def("max_topk_backward(Tensor grad_m, Tensor grad_t, Tensor x, Tensor idx, Tensor kth, Tensor tie, int k,"
        " int[] kernel, int[] stride, int[] padding, int[] dilation, bool channels_last) -> Tensor");
}

TORCH_LIBRARY_IMPL(poolkit_cpu, CPU, m) {
  m.impl("max_mean_forward", &max_mean_forward);
  m.impl("max_mean_backward", &max_mean_backward);
  m.impl("max_topk_forward", &max_topk_forward);
  m.impl("max_topk_backward", &max_topk_backward);
  m.impl("max_mean_blend_forward", &max_mean_blend_forward);
  m.impl("max_mean_blend_backward", &max_mean_blend_backward);
  m.impl("max_topk_blend_forward", &max_topk_blend_forward);
  m.impl("max_topk_blend_backward", &max_topk_blend_backward);
  m.impl("power_mean_forward", &power_mean_forward);
  m.impl("power_mean_backward", &power_mean_backward);
  m.impl("power_mean_grad_p", &power_mean_grad_p);
  m.impl("weighted_mean_forward", &weighted_mean_forward);
  m.impl("weighted_mean_backward", &weighted_mean_backward);
  m.impl("self_weighted_forward", &self_weighted_forward);
  m.impl("self_weighted_backward", &self_weighted_backward);
  m.impl("power_sum_forward", &power_sum_forward);
  m.impl("power_sum_backward", &power_sum_backward);
}
