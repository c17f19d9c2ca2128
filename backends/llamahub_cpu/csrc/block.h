// The decode step of one transformer block for one token, in a single call: what the reference
// block (llamahub/model/transformer.py) does for a token at position `pos`, without the ~60 small
// torch ops (and their Python dispatch) that cost more than the weights' reads on small models.
//
//   h   = x + wo(attention(rope(wq n1), rope(wk n1), wv n1))   with n1 = rmsnorm(x) * attention_norm
//   out = h + w2(silu(w1 n2) * w3 n2)                          with n2 = rmsnorm(h) * ffn_norm
//
// Linears are fp32 or bf16 W [N, K] (gemv.h's loops), or int8/int4 blocks with fp16 scales (qdot.h's
// integer dots, activations rounded per call as qgemv_int rounds them). q, k and v share one pass
// over the threads, as do w1 and w3. The KV cache is float32 [B, KV, L, D]; the token's k and v go
// to cache row `row` at `pos`, and it attends over positions 0..pos.
//
// Rounding follows the reference: for a bf16 model (x bf16) every value the reference holds in
// bf16 is rounded to bf16 at the same point (linear outputs, the normed input, residual sums, the
// feed-forward's silu and product, the attention's output); rotated keys, scores and the cache
// stay float32, as there.
#pragma once

#include "gemv.h"
#include "qdot.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

namespace block {

// float → the nearest bfloat16 (ties to even), as a float: torch's rounding.
inline float bf16_round(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof b);
  if ((b & 0x7f800000u) == 0x7f800000u) {
    if (b & 0x007fffffu) b |= 0x00400000u;  // a NaN stays a (quiet) NaN
  } else {
    b += 0x7fffu + ((b >> 16) & 1u);
  }
  b &= 0xffff0000u;
  float r;
  std::memcpy(&r, &b, sizeof r);
  return r;
}

inline void round_all(float* v, int64_t n, bool bf16) {
  if (bf16)
    for (int64_t i = 0; i < n; ++i) v[i] = bf16_round(v[i]);
}

// A linear layer's weights: kind 0 fp32, 1 bf16 (w [n, k]); 8 int8, 4 int4 (q and fp16 scales,
// nbw blocks of 32 per row).
struct Lin {
  const void* w = nullptr;
  const uint16_t* s = nullptr;
  int64_t n = 0, k = 0, nbw = 0;
  int kind = 0;
};

inline Lin lin_of(const torch::Tensor& w, const torch::Tensor* s) {
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous(), "weights must be contiguous 2-D tensors");
  Lin l;
  l.w = w.data_ptr();
  l.n = w.size(0);
  if (s == nullptr) {
    TORCH_CHECK(w.scalar_type() == torch::kFloat || w.scalar_type() == torch::kBFloat16,
                "float weights must be float32 or bfloat16");
    l.kind = w.scalar_type() == torch::kFloat ? 0 : 1;
    l.k = w.size(1);
    return l;
  }
  TORCH_CHECK(w.scalar_type() == torch::kChar || w.scalar_type() == torch::kByte,
              "quantized weights must be int8 (int8) or uint8 (int4)");
  TORCH_CHECK(s->dim() == 2 && s->is_contiguous() && s->scalar_type() == torch::kHalf && s->size(0) == l.n,
              "scales must be contiguous float16 [rows, blocks]");
  l.kind = w.scalar_type() == torch::kChar ? 8 : 4;
  l.s = reinterpret_cast<const uint16_t*>(s->data_ptr<at::Half>());
  l.nbw = s->size(1);
  l.k = l.nbw * qdot::BLOCK;
  TORCH_CHECK(w.size(1) == (l.kind == 8 ? l.k : l.k / 2), "quantized weights do not match their scales");
  return l;
}

// One linear's input: float32 x, and (quantized weights) x rounded to integers once.
struct Input {
  const float* x = nullptr;
  qdot::Acts acts;
};

inline void prepare(Input& in, const float* x, int64_t k, const Lin& l) {
  in.x = x;
  if (l.kind == 8 || l.kind == 4) qdot::quantize_acts(x, 1, k, k, in.acts, l.kind == 8);
}

// Rows [r0, r1) of y = W x on the calling thread.
inline void rows(const Lin& l, const Input& in, float* y, int64_t r0, int64_t r1) {
  const bool vnni = qdot::use_vnni();
  switch (l.kind) {
    case 0: return gemvk::gemv_range(static_cast<const float*>(l.w), in.x, y, 1, l.n, l.k, r0, r1);
    case 1: return gemvk::gemv_range(static_cast<const uint16_t*>(l.w), in.x, y, 1, l.n, l.k, r0, r1);
    case 8: return qdot::pick<8>(1, vnni)(static_cast<const uint8_t*>(l.w), l.s, in.acts, y, r0, r1, l.n, l.nbw);
    default: return qdot::pick<4>(1, vnni)(static_cast<const uint8_t*>(l.w), l.s, in.acts, y, r0, r1, l.n, l.nbw);
  }
}

inline int64_t row_bytes(const Lin& l) {
  return l.kind == 0 ? l.k * 4 : l.kind == 1 ? l.k * 2 : qdot::row_bytes(l.kind, l.k);
}

// The threads of one block's step: a single OpenMP team runs the whole block, its phases separated
// by barriers, instead of a parallel region per product (and the team's fork and join for each).
// Thread 0 (the lead) does the short serial steps and sets the rows' shares (gemvk::Shares) for
// the product that follows them.
struct Team {
  int t = 0, n = 1;  // this thread, the team's size
  gemvk::Shares* shares = nullptr;

  // This thread's static share [begin, end) of `total` items (attention's heads).
  std::pair<int64_t, int64_t> share(int64_t total) const { return gemvk::even_part(total, n, t); }
};

inline int64_t total_rows(const Lin* const* ls, int count) {
  int64_t total = 0;
  for (int j = 0; j < count; ++j) total += ls[j]->n;
  return total;
}

// y_j = W_j x for several linears of the same input, their rows shared by the team as one range
// (the lead set the shares for total_rows(ls, count) rows).
inline void products(const Lin* const* ls, float* const* ys, int count, const Input& in, const Team& team) {
  team.shares->run(team.t, [&](int64_t begin, int64_t end) {
    int64_t base = 0;
    for (int j = 0; j < count; ++j) {
      const int64_t lo = std::max(begin, base), hi = std::min(end, base + ls[j]->n);
      if (lo < hi) rows(*ls[j], in, ys[j], lo - base, hi - base);
      base += ls[j]->n;
    }
  });
}

// silu(w1 x) * (w3 x) into gate: w1 and w3 over the same rows in each thread, then the product there
// (the lead set the shares for w1's rows, each row counted as two).
inline void gated(const Lin& w1, const Lin& w3, const Input& in, float* gate, float* up, bool bf16,
                  const Team& team) {
  team.shares->run(team.t, [&](int64_t begin, int64_t end) {
    rows(w1, in, gate, begin, end);
    rows(w3, in, up, begin, end);
    for (int64_t r = begin; r < end; ++r) {
      if (bf16) {
        const float g = bf16_round(gate[r]), u = bf16_round(up[r]);
        gate[r] = bf16_round(bf16_round(g / (1.0f + std::exp(-g))) * u);
      } else {
        const float g = gate[r];
        gate[r] = g / (1.0f + std::exp(-g)) * up[r];
      }
    }
  });
}

// out = h + o, the residual sum (bf16: o and the sum rounded, as the reference's bf16 tensors are).
inline void residual(const float* h, const float* o, int64_t n, bool bf16, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = bf16 ? bf16_round(h[i] + bf16_round(o[i])) : h[i] + o[i];
}

inline float weight_at(const torch::Tensor& w, int64_t i) {
  return w.scalar_type() == torch::kFloat ? w.data_ptr<float>()[i]
                                          : gemvk::to_float(static_cast<const uint16_t*>(w.data_ptr())[i]);
}

// out = rmsnorm(x) * w (the reference RMSNorm; bf16: the normed value and the product rounded).
inline void rmsnorm(const float* x, int64_t n, const torch::Tensor& w, double eps, bool bf16, float* out) {
  double ss = 0.0;
  for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float r = 1.0f / std::sqrt(static_cast<float>(ss / n) + static_cast<float>(eps));
  for (int64_t i = 0; i < n; ++i) {
    float v = x[i] * r;
    if (bf16) v = bf16_round(v);
    v *= weight_at(w, i);
    out[i] = bf16 ? bf16_round(v) : v;
  }
}

// Rotate `heads` vectors of d values by the table's (cos, sin) pairs: Meta's interleaved pairs
// (x[2i], x[2i+1]) or Hugging Face's halves (x[i], x[i + d/2]).
inline void rope(float* v, int64_t heads, int64_t d, const float* table, bool interleaved) {
  const int64_t half = d / 2;
  for (int64_t h = 0; h < heads; ++h) {
    float* x = v + h * d;
    for (int64_t i = 0; i < half; ++i) {
      const float c = table[2 * i], s = table[2 * i + 1];
      float& a = interleaved ? x[2 * i] : x[i];
      float& b = interleaved ? x[2 * i + 1] : x[i + half];
      const float x0 = a, x1 = b;
      a = x0 * c - x1 * s;
      b = x0 * s + x1 * c;
    }
  }
}

inline float dot(const float* a, const float* b, int64_t d) {
  int64_t i = 0;
  __m256 acc = _mm256_setzero_ps();
  for (; i + 8 <= d; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  float s = gemvk::hsum(acc);
  for (; i < d; ++i) s += a[i] * b[i];
  return s;
}

// out [heads, d]: each query head over keys/values [len, d] of its KV head (GQA groups); the team
// splits the heads.
inline void attend(const float* q, const float* keys, const float* values, int64_t heads, int64_t kv_heads,
                   int64_t len, int64_t stride, int64_t d, float* out, const Team& team) {
  const int64_t group = heads / kv_heads;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  const auto [begin, end] = team.share(heads);
  std::vector<float> p(len);
  for (int64_t h = begin; h < end; ++h) {
    const float* kh = keys + (h / group) * stride;
    const float* vh = values + (h / group) * stride;
    const float* qh = q + h * d;
    float peak = -INFINITY;
    for (int64_t t = 0; t < len; ++t) {
      p[t] = dot(qh, kh + t * d, d) * scale;
      peak = std::max(peak, p[t]);
    }
    float sum = 0.0f;
    for (int64_t t = 0; t < len; ++t) sum += (p[t] = std::exp(p[t] - peak));
    float* o = out + h * d;
    std::fill(o, o + d, 0.0f);
    for (int64_t t = 0; t < len; ++t) {
      const float w = p[t] / sum;
      const float* vt = vh + t * d;
      for (int64_t i = 0; i < d; ++i) o[i] += w * vt[i];
    }
  }
}

}  // namespace block

// The decode step of a block for x [1, 1, dim] (float32 or bfloat16; the result has x's dtype).
// weights: wq, wk, wv, wo, w1, w3, w2; scales: their fp16 scales (quantized weights) or empty.
inline torch::Tensor decode_block(torch::Tensor x, torch::Tensor norm1, torch::Tensor norm2, double eps,
                                  std::vector<torch::Tensor> weights, std::vector<torch::Tensor> scales,
                                  torch::Tensor cache_k, torch::Tensor cache_v, int64_t row, int64_t pos,
                                  torch::Tensor table, bool interleaved) {
  using namespace block;
  TORCH_CHECK(x.numel() == x.size(-1) && (x.scalar_type() == torch::kFloat || x.scalar_type() == torch::kBFloat16),
              "x must be one float32 or bfloat16 token");
  TORCH_CHECK(weights.size() == 7 && (scales.empty() || scales.size() == 7),
              "weights: wq, wk, wv, wo, w1, w3, w2 (and their scales, or none)");
  TORCH_CHECK(cache_k.dim() == 4 && cache_k.is_contiguous() && cache_k.scalar_type() == torch::kFloat &&
                  cache_v.sizes() == cache_k.sizes() && cache_v.is_contiguous() &&
                  cache_v.scalar_type() == torch::kFloat,
              "the KV cache must be contiguous float32 [batch, kv heads, length, head dim]");
  const int64_t dim = x.size(-1), kv_heads = cache_k.size(1), length = cache_k.size(2), d = cache_k.size(3);
  TORCH_CHECK(0 <= row && row < cache_k.size(0) && 0 <= pos && pos < length, "cache row or position out of range");
  TORCH_CHECK(table.is_contiguous() && table.scalar_type() == torch::kFloat && table.numel() == d,
              "the RoPE table row must be contiguous float32 with head_dim values");
  for (const auto& n : {norm1, norm2})
    TORCH_CHECK(n.numel() == dim && n.is_contiguous() &&
                    (n.scalar_type() == torch::kFloat || n.scalar_type() == torch::kBFloat16),
                "norm weights must be float32 or bfloat16 [dim]");
  Lin l[7];
  for (int j = 0; j < 7; ++j) l[j] = lin_of(weights[j], scales.empty() ? nullptr : &scales[j]);
  const Lin &wq = l[0], &wk = l[1], &wv = l[2], &wo = l[3], &w1 = l[4], &w3 = l[5], &w2 = l[6];
  const int64_t heads = wq.n / d, hidden = w1.n;
  TORCH_CHECK(wq.n == heads * d && wk.n == kv_heads * d && wv.n == wk.n && wo.n == dim && w3.n == hidden &&
                  w2.n == dim && heads % kv_heads == 0,
              "weight shapes do not fit the cache's heads or the token's width");
  auto fits = [](const Lin& lin, int64_t k) {  // float: exactly k inputs; quantized: k padded to a block
    return lin.kind < 4 ? lin.k == k : lin.k >= k && lin.k - k < qdot::BLOCK;
  };
  TORCH_CHECK(fits(wq, dim) && fits(wk, dim) && fits(wv, dim) && fits(wo, wq.n) && fits(w1, dim) &&
                  fits(w3, dim) && fits(w2, hidden),
              "weight widths do not fit the token's width");
  const bool bf16 = x.scalar_type() == torch::kBFloat16;

  std::vector<float> h(dim), normed(dim), q(wq.n), k(wk.n), v(wv.n), att(wq.n), o(dim), gate(hidden),
      up(hidden);
  auto xf = x.to(torch::kFloat).contiguous();
  std::memcpy(h.data(), xf.data_ptr<float>(), dim * sizeof(float));

  const float* tab = table.data_ptr<float>();
  float* ck = cache_k.data_ptr<float>() + row * kv_heads * length * d;
  float* cv = cache_v.data_ptr<float>() + row * kv_heads * length * d;
  const Lin* qkv[3] = {&wq, &wk, &wv};
  float* qkv_out[3] = {q.data(), k.data(), v.data()};
  const Lin* one[1] = {&wo};
  const Lin* down[1] = {&w2};
  float* o_out[1] = {o.data()};
  Input in;
  gemvk::Shares shares;
  // One team for the block; the lead (thread 0) does the short serial steps between the products.
#pragma omp parallel num_threads(std::max(1, at::get_num_threads()))
  {
    const Team team{omp_get_thread_num(), omp_get_num_threads(), &shares};
    const bool lead = team.t == 0;
    // attention
    if (lead) {
      rmsnorm(h.data(), dim, norm1, eps, bf16, normed.data());
      prepare(in, normed.data(), dim, wq);
      shares.set(total_rows(qkv, 3), row_bytes(wq), team.n);
    }
#pragma omp barrier
    products(qkv, qkv_out, 3, in, team);
#pragma omp barrier
    if (lead) {
      round_all(q.data(), wq.n, bf16);
      round_all(k.data(), wk.n, bf16);
      round_all(v.data(), wv.n, bf16);
      rope(q.data(), heads, d, tab, interleaved);
      rope(k.data(), kv_heads, d, tab, interleaved);
      for (int64_t g = 0; g < kv_heads; ++g) {
        std::memcpy(ck + (g * length + pos) * d, k.data() + g * d, d * sizeof(float));
        std::memcpy(cv + (g * length + pos) * d, v.data() + g * d, d * sizeof(float));
      }
    }
#pragma omp barrier
    attend(q.data(), ck, cv, heads, kv_heads, pos + 1, length * d, d, att.data(), team);
#pragma omp barrier
    if (lead) {
      round_all(att.data(), wq.n, bf16);
      prepare(in, att.data(), wq.n, wo);
      shares.set(wo.n, row_bytes(wo), team.n);
    }
#pragma omp barrier
    products(one, o_out, 1, in, team);
#pragma omp barrier
    // feed-forward
    if (lead) {
      residual(h.data(), o.data(), dim, bf16, h.data());
      rmsnorm(h.data(), dim, norm2, eps, bf16, normed.data());
      prepare(in, normed.data(), dim, w1);
      shares.set(w1.n, 2 * row_bytes(w1), team.n);
    }
#pragma omp barrier
    gated(w1, w3, in, gate.data(), up.data(), bf16, team);
#pragma omp barrier
    if (lead) {
      prepare(in, gate.data(), hidden, w2);
      shares.set(w2.n, row_bytes(w2), team.n);
    }
#pragma omp barrier
    products(down, o_out, 1, in, team);
  }
  auto out = torch::empty({dim}, xf.options());
  float* res = out.data_ptr<float>();
  residual(h.data(), o.data(), dim, bf16, res);
  return out.to(x.scalar_type()).view(x.sizes());
}
