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

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace {

using at::Tensor;

// One axis of the windows: for each output, its real taps; for each input, the (output, tap) pairs that read it.
struct Axis {
  int64_t size = 0, out = 0, kernel = 0, stride = 0, pad = 0, dilation = 0;
  std::vector<int64_t> count;         // real cells per output
  std::vector<int64_t> first;         // first real tap per output (kernel when none)
  std::vector<int64_t> offsets;       // CSR over inputs: entries offsets[i] .. offsets[i+1]
  std::vector<int64_t> outs, taps;    // (output, tap) of each entry
};

Axis make_axis(int64_t size, int64_t out, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation) {
  Axis a;
  a.size = size, a.out = out, a.kernel = kernel, a.stride = stride, a.pad = pad, a.dilation = dilation;
  a.count.assign(out, 0);
  a.first.assign(out, kernel);
  std::vector<int64_t> per_input(size, 0);
  for (int64_t o = 0; o < out; ++o) {
    for (int64_t t = 0; t < kernel; ++t) {
      const int64_t i = o * stride - pad + t * dilation;
      if (i >= 0 && i < size) {
        if (a.count[o] == 0) a.first[o] = t;
        ++a.count[o];
        ++per_input[i];
      }
    }
  }
  a.offsets.assign(size + 1, 0);
  for (int64_t i = 0; i < size; ++i) a.offsets[i + 1] = a.offsets[i] + per_input[i];
  a.outs.resize(a.offsets[size]);
  a.taps.resize(a.offsets[size]);
  std::vector<int64_t> fill(a.offsets.begin(), a.offsets.end() - 1);
  for (int64_t o = 0; o < out; ++o) {
    for (int64_t t = 0; t < kernel; ++t) {
      const int64_t i = o * stride - pad + t * dilation;
      if (i >= 0 && i < size) {
        a.outs[fill[i]] = o;
        a.taps[fill[i]] = t;
        ++fill[i];
      }
    }
  }
  return a;
}

struct Geometry {
  Axis h, w;
  int64_t kw() const { return w.kernel; }
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

// The layout rule of poolkit.layers.fused._memory_format: channels_last only when it is the input's layout.
bool use_channels_last(const Tensor& x) {
  return x.size(1) > 1 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

at::MemoryFormat layout_of(const Tensor& x) {
  return use_channels_last(x) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

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

template <typename acc_t>
inline bool takes_max(acc_t v, acc_t best) {
  return v > best || std::isnan(v);  // max_pool2d's rule: first strict maximum, a NaN always wins
}

int64_t grain(int64_t work_per_item) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, work_per_item));
}

// ------------------------------------------------------------------------------------------- max and mean

template <typename scalar_t>
void max_mean_forward_impl(const Tensor& x, const Geometry& g, bool cl, Tensor& m, Tensor& a, Tensor& idx) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = x.size(0), C = x.size(1), H = g.h.size, W = g.w.size, OH = g.h.out, OW = g.w.out;
  const int64_t kw = g.kw();
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* mp = m.mutable_data_ptr<scalar_t>();
  scalar_t* ap = a.mutable_data_ptr<scalar_t>();
  int32_t* ip = idx.mutable_data_ptr<int32_t>();
  const std::vector<acc_t> inv = inverse_counts<acc_t>(g);
  const acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();
  if (!cl) {
    at::parallel_for(0, N * C * OH, grain(OW * g.h.kernel * kw), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t plane = r / OH, oh = r % OH;
        const scalar_t* src = xp + plane * H * W;
        const int64_t out_base = plane * OH * OW + oh * OW;
        for (int64_t ow = 0; ow < OW; ++ow) {
          acc_t best = neg_inf, sum = 0;
          int32_t where = static_cast<int32_t>(g.h.first[oh] * kw + g.w.first[ow]);
          for (int64_t th = g.h.first[oh]; th < g.h.kernel; ++th) {
            const int64_t ih = oh * g.h.stride - g.h.pad + th * g.h.dilation;
            if (ih < 0 || ih >= H) continue;
            for (int64_t tw = g.w.first[ow]; tw < kw; ++tw) {
              const int64_t iw = ow * g.w.stride - g.w.pad + tw * g.w.dilation;
              if (iw < 0 || iw >= W) continue;
              const acc_t v = static_cast<acc_t>(src[ih * W + iw]);
              if (takes_max(v, best)) {
                best = v;
                where = static_cast<int32_t>(th * kw + tw);
              }
              sum += v;
            }
          }
          mp[out_base + ow] = static_cast<scalar_t>(best);
          ap[out_base + ow] = static_cast<scalar_t>(sum * inv[oh * OW + ow]);
          ip[out_base + ow] = where;
        }
      }
    });
    return;
  }
  at::parallel_for(0, N * OH * OW, grain(C * g.h.kernel * kw), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> best(C), sum(C);
    std::vector<int32_t> where(C);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / (OH * OW), oh = (r / OW) % OH, ow = r % OW;
      const int32_t first = static_cast<int32_t>(g.h.first[oh] * kw + g.w.first[ow]);
      for (int64_t c = 0; c < C; ++c) {
        best[c] = neg_inf;
        sum[c] = 0;
        where[c] = first;
      }
      for (int64_t th = g.h.first[oh]; th < g.h.kernel; ++th) {
        const int64_t ih = oh * g.h.stride - g.h.pad + th * g.h.dilation;
        if (ih < 0 || ih >= H) continue;
        for (int64_t tw = g.w.first[ow]; tw < kw; ++tw) {
          const int64_t iw = ow * g.w.stride - g.w.pad + tw * g.w.dilation;
          if (iw < 0 || iw >= W) continue;
          const scalar_t* src = xp + ((n * H + ih) * W + iw) * C;
          const int32_t cell = static_cast<int32_t>(th * kw + tw);
          acc_t* b = best.data();
          acc_t* s = sum.data();
          int32_t* wh = where.data();
          for (int64_t c = 0; c < C; ++c) {
            const acc_t v = static_cast<acc_t>(src[c]);
            const bool take = v > b[c] || v != v;
            b[c] = take ? v : b[c];
            wh[c] = take ? cell : wh[c];
            s[c] += v;
          }
        }
      }
      const acc_t scale = inv[oh * OW + ow];
      scalar_t* mo = mp + r * C;
      scalar_t* ao = ap + r * C;
      int32_t* io = ip + r * C;
      for (int64_t c = 0; c < C; ++c) {
        mo[c] = static_cast<scalar_t>(best[c]);
        ao[c] = static_cast<scalar_t>(sum[c] * scale);
        io[c] = where[c];
      }
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
    max_mean_forward_impl<scalar_t>(x, g, fmt == at::MemoryFormat::ChannelsLast, m, a, idx);
  });
  return {m, a, idx};
}

// Input gradient of (M, A): cell (ih, iw) of a window gets gM where it is the window's first maximum, plus
// gA / n of every window that contains it.
template <typename scalar_t>
void max_mean_backward_impl(const Tensor& gm, const Tensor& ga, const Tensor& idx, const Geometry& g, bool cl,
                            Tensor& gx) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = gx.size(0), C = gx.size(1), H = g.h.size, W = g.w.size, OH = g.h.out, OW = g.w.out;
  const int64_t kw = g.kw();
  const scalar_t* gmp = gm.const_data_ptr<scalar_t>();
  const scalar_t* gap = ga.const_data_ptr<scalar_t>();
  const int32_t* ip = idx.const_data_ptr<int32_t>();
  scalar_t* out = gx.mutable_data_ptr<scalar_t>();
  const std::vector<acc_t> inv = inverse_counts<acc_t>(g);
  if (!cl) {
    at::parallel_for(0, N * C * H, grain(W * 4), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t plane = r / H, ih = r % H;
        const int64_t base = plane * OH * OW;
        for (int64_t iw = 0; iw < W; ++iw) {
          acc_t total = 0;
          for (int64_t e = g.h.offsets[ih]; e < g.h.offsets[ih + 1]; ++e) {
            const int64_t oh = g.h.outs[e], th = g.h.taps[e];
            for (int64_t f = g.w.offsets[iw]; f < g.w.offsets[iw + 1]; ++f) {
              const int64_t o = oh * OW + g.w.outs[f];
              const int32_t cell = static_cast<int32_t>(th * kw + g.w.taps[f]);
              if (ip[base + o] == cell) total += static_cast<acc_t>(gmp[base + o]);
              total += static_cast<acc_t>(gap[base + o]) * inv[o];
            }
          }
          out[r * W + iw] = static_cast<scalar_t>(total);
        }
      }
    });
    return;
  }
  at::parallel_for(0, N * H * W, grain(C * 4), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> total(C);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / (H * W), ih = (r / W) % H, iw = r % W;
      acc_t* t = total.data();
      for (int64_t c = 0; c < C; ++c) t[c] = 0;
      for (int64_t e = g.h.offsets[ih]; e < g.h.offsets[ih + 1]; ++e) {
        const int64_t oh = g.h.outs[e], th = g.h.taps[e];
        for (int64_t f = g.w.offsets[iw]; f < g.w.offsets[iw + 1]; ++f) {
          const int64_t o = oh * OW + g.w.outs[f];
          const int32_t cell = static_cast<int32_t>(th * kw + g.w.taps[f]);
          const acc_t scale = inv[o];
          const int64_t at_o = (n * OH * OW + o) * C;
          const scalar_t* gmo = gmp + at_o;
          const scalar_t* gao = gap + at_o;
          const int32_t* io = ip + at_o;
          for (int64_t c = 0; c < C; ++c) {
            const acc_t hit = io[c] == cell ? static_cast<acc_t>(gmo[c]) : acc_t(0);
            t[c] += hit + static_cast<acc_t>(gao[c]) * scale;
          }
        }
      }
      scalar_t* dst = out + r * C;
      for (int64_t c = 0; c < C; ++c) dst[c] = static_cast<scalar_t>(t[c]);
    }
  });
}

// The backward kernels take the forward input's layout as an argument: an output of one cell per channel
// (H_out = W_out = 1) is contiguous in both layouts and cannot tell.
at::MemoryFormat layout_flag(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
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
    max_mean_backward_impl<scalar_t>(gm, ga, ix, g, fmt == at::MemoryFormat::ChannelsLast, gx);
  });
  return gx;
}

// ----------------------------------------------------------------------------------------- max and top-K

// Sorted insertion of v into top[0] >= ... >= top[k-1] for every level at once (top[l] takes
// max(top[l], min(top[l-1], v)), lowest level first so that each level reads the old value above it).
template <typename acc_t>
inline void insert_sorted(acc_t* top, int64_t k, int64_t step, acc_t v) {
  for (int64_t l = k - 1; l > 0; --l) {
    const acc_t above = top[(l - 1) * step];
    const acc_t entering = above < v ? above : v;
    top[l * step] = top[l * step] > entering ? top[l * step] : entering;
  }
  top[0] = top[0] > v ? top[0] : v;
}

template <typename scalar_t>
void max_topk_forward_impl(const Tensor& x, const Geometry& g, int64_t k, bool cl, Tensor& m, Tensor& t,
                           Tensor& idx, Tensor& kth, Tensor& tie) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = x.size(0), C = x.size(1), H = g.h.size, W = g.w.size, OH = g.h.out, OW = g.w.out;
  const int64_t kw = g.kw();
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* mp = m.mutable_data_ptr<scalar_t>();
  scalar_t* tp = t.mutable_data_ptr<scalar_t>();
  int32_t* ip = idx.mutable_data_ptr<int32_t>();
  scalar_t* kp = kth.mutable_data_ptr<scalar_t>();
  acc_t* sp = tie.mutable_data_ptr<acc_t>();
  const acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();
  const acc_t inv_k = acc_t(1) / acc_t(k);
  // Channel block of the channels_last loops: C when NCHW (one channel at a time, stride 1).
  const int64_t block = cl ? C : 1;
  const int64_t rows = cl ? N * OH * OW : N * C * OH * OW;
  at::parallel_for(0, rows, grain(block * g.h.kernel * kw * k), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> top(k * block), above(block), equal(block);
    std::vector<int32_t> where(block);
    for (int64_t r = begin; r < end; ++r) {
      int64_t n, plane, oh, ow;
      if (cl) {
        n = r / (OH * OW), oh = (r / OW) % OH, ow = r % OW, plane = 0;
      } else {
        plane = r / (OH * OW), oh = (r / OW) % OH, ow = r % OW, n = 0;
      }
      // Element (cell at (ih, iw), channel c) of this window: src(ih, iw)[c].
      auto src = [&](int64_t ih, int64_t iw) -> const scalar_t* {
        return cl ? xp + ((n * H + ih) * W + iw) * C : xp + plane * H * W + ih * W + iw;
      };
      const int32_t first = static_cast<int32_t>(g.h.first[oh] * kw + g.w.first[ow]);
      std::fill(top.begin(), top.end(), neg_inf);
      std::fill(where.begin(), where.end(), first);
      for (int64_t th = g.h.first[oh]; th < g.h.kernel; ++th) {
        const int64_t ih = oh * g.h.stride - g.h.pad + th * g.h.dilation;
        if (ih < 0 || ih >= H) continue;
        for (int64_t tw = g.w.first[ow]; tw < kw; ++tw) {
          const int64_t iw = ow * g.w.stride - g.w.pad + tw * g.w.dilation;
          if (iw < 0 || iw >= W) continue;
          const scalar_t* s = src(ih, iw);
          const int32_t cell = static_cast<int32_t>(th * kw + tw);
          for (int64_t c = 0; c < block; ++c) {
            const acc_t v = static_cast<acc_t>(s[c]);
            const bool take = v > top[c] || v != v;  // top[c] is level 0: the running maximum
            where[c] = take ? cell : where[c];
            if (v != v) {
              top[c] = v;  // a NaN is the maximum, as in max_pool2d
            } else {
              insert_sorted(top.data() + c, k, block, v);
            }
          }
        }
      }
      // Count the cells above and equal to the K-th largest value t: the cells equal to t share the
      // K - (cells above) remaining places.
      std::fill(above.begin(), above.end(), acc_t(0));
      std::fill(equal.begin(), equal.end(), acc_t(0));
      for (int64_t th = g.h.first[oh]; th < g.h.kernel; ++th) {
        const int64_t ih = oh * g.h.stride - g.h.pad + th * g.h.dilation;
        if (ih < 0 || ih >= H) continue;
        for (int64_t tw = g.w.first[ow]; tw < kw; ++tw) {
          const int64_t iw = ow * g.w.stride - g.w.pad + tw * g.w.dilation;
          if (iw < 0 || iw >= W) continue;
          const scalar_t* s = src(ih, iw);
          for (int64_t c = 0; c < block; ++c) {
            const acc_t v = static_cast<acc_t>(s[c]);
            const acc_t threshold = top[(k - 1) * block + c];
            above[c] += v > threshold ? acc_t(1) : acc_t(0);
            equal[c] += v == threshold ? acc_t(1) : acc_t(0);
          }
        }
      }
      const int64_t at_r = r * block;
      for (int64_t c = 0; c < block; ++c) {
        acc_t sum = 0;
        for (int64_t l = 0; l < k; ++l) sum += top[l * block + c];
        mp[at_r + c] = static_cast<scalar_t>(top[c]);
        tp[at_r + c] = static_cast<scalar_t>(sum * inv_k);
        ip[at_r + c] = where[c];
        kp[at_r + c] = static_cast<scalar_t>(top[(k - 1) * block + c]);
        sp[at_r + c] = equal[c] > 0 ? (acc_t(k) - above[c]) / (acc_t(k) * equal[c]) : acc_t(0);
      }
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
    max_topk_forward_impl<scalar_t>(x, g, k, fmt == at::MemoryFormat::ChannelsLast, m, t, idx, kth, tie);
  });
  return {m, t, idx, kth, tie};
}

// Input gradient of (M, T_K): gM to the window's first maximum; gT / K to each cell above the K-th largest
// value t, gT * tie to each cell equal to it.
template <typename scalar_t>
void max_topk_backward_impl(const Tensor& gm, const Tensor& gt, const Tensor& x, const Tensor& idx,
                            const Tensor& kth, const Tensor& tie, int64_t k, const Geometry& g, bool cl,
                            Tensor& gx) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = gx.size(0), C = gx.size(1), H = g.h.size, W = g.w.size, OH = g.h.out, OW = g.w.out;
  const int64_t kw = g.kw();
  const scalar_t* gmp = gm.const_data_ptr<scalar_t>();
  const scalar_t* gtp = gt.const_data_ptr<scalar_t>();
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const int32_t* ip = idx.const_data_ptr<int32_t>();
  const scalar_t* kp = kth.const_data_ptr<scalar_t>();
  const acc_t* sp = tie.const_data_ptr<acc_t>();
  scalar_t* out = gx.mutable_data_ptr<scalar_t>();
  const acc_t inv_k = acc_t(1) / acc_t(k);
  const int64_t block = cl ? C : 1;
  const int64_t rows = cl ? N * H * W : N * C * H * W;
  at::parallel_for(0, rows, grain(block * 8), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> total(block);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t ih = (r / W) % H, iw = r % W;
      // Outputs of this input cell's batch item (cl) or plane (NCHW) start at out_base; channel stride block.
      const int64_t out_base = cl ? (r / (H * W)) * OH * OW * C : (r / (H * W)) * OH * OW;
      const scalar_t* v_ptr = xp + r * block;
      std::fill(total.begin(), total.end(), acc_t(0));
      for (int64_t e = g.h.offsets[ih]; e < g.h.offsets[ih + 1]; ++e) {
        const int64_t oh = g.h.outs[e], th = g.h.taps[e];
        for (int64_t f = g.w.offsets[iw]; f < g.w.offsets[iw + 1]; ++f) {
          const int64_t o = out_base + (oh * OW + g.w.outs[f]) * block;
          const int32_t cell = static_cast<int32_t>(th * kw + g.w.taps[f]);
          for (int64_t c = 0; c < block; ++c) {
            const acc_t v = static_cast<acc_t>(v_ptr[c]);
            const acc_t threshold = static_cast<acc_t>(kp[o + c]);
            const acc_t share = v > threshold ? inv_k : (v == threshold ? sp[o + c] : acc_t(0));
            const acc_t hit = ip[o + c] == cell ? static_cast<acc_t>(gmp[o + c]) : acc_t(0);
            total[c] += hit + static_cast<acc_t>(gtp[o + c]) * share;
          }
        }
      }
      for (int64_t c = 0; c < block; ++c) out[r * block + c] = static_cast<scalar_t>(total[c]);
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
    max_topk_backward_impl<scalar_t>(gm, gt, x, ix, kt, ti, k, g, fmt == at::MemoryFormat::ChannelsLast, gx);
  });
  return gx;
}

}  // namespace

TORCH_LIBRARY(poolkit_cpu, m) {
  m.def("max_mean_forward(Tensor x, int[] kernel, int[] stride, int[] padding, int[] dilation, int[] out_size)"
        " -> (Tensor, Tensor, Tensor)");
  m.def("max_mean_backward(Tensor grad_m, Tensor grad_a, Tensor idx, int[] in_size, int[] kernel, int[] stride,"
        " int[] padding, int[] dilation, bool channels_last) -> Tensor");
  m.def("max_topk_forward(Tensor x, int k, int[] kernel, int[] stride, int[] padding, int[] dilation,"
        " int[] out_size) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("max_topk_backward(Tensor grad_m, Tensor grad_t, Tensor x, Tensor idx, Tensor kth, Tensor tie, int k,"
        " int[] kernel, int[] stride, int[] padding, int[] dilation, bool channels_last) -> Tensor");
}

TORCH_LIBRARY_IMPL(poolkit_cpu, CPU, m) {
  m.impl("max_mean_forward", &max_mean_forward);
  m.impl("max_mean_backward", &max_mean_backward);
  m.impl("max_topk_forward", &max_topk_forward);
  m.impl("max_topk_backward", &max_topk_backward);
}
