// Weight-only quantized linear layers for the CPU: y = x W^T with W stored in blocks of 32 along
// its input dimension, each block with one fp16 scale (w = q * scale).
//   int8: q [N, Kp] int8.
//   int4: q [N, Kp/2] uint8; in block b, byte j holds element j in its low nibble and element
//         j + 16 in its high nibble, each stored as value + 8 (values -8..7).
// Kp is K rounded up to a whole block (the padding holds zeros). x [M, K] float32.
//
// qgemv: M <= 8 rows (decode, and the serving path's batched decode): every block of weights is
//        widened once into registers and multiplied into all M rows; rows of W are split over
//        torch's intra-op threads. Built for AVX2+FMA+F16C; an AVX-512 variant of the same loop
//        is chosen at run time when the CPU has AVX-512F/BW.
// qgemm: any M (prefill): a tile of W's rows is widened to float32 and multiplied with aten's
//        GEMM, so a long prompt is one pass over the weights, not one GEMV per token.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include "gemv.h"
#include "qdot.h"
#include "block.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace {

constexpr int64_t BLOCK = 32;
constexpr int MAX_ROWS = 8;

inline float half_to_float(uint16_t h) { return _cvtsh_ss(h); }

// --- widening one block of 32 weights to signed 8-bit lanes -------------------------------------

// The block's 32 values as two 16-byte vectors of int8 (elements 0..15, 16..31).
template <int BITS>
inline void block_bytes(const uint8_t* q, __m128i& a, __m128i& b) {
  if constexpr (BITS == 8) {
    a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
    b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 16));
  } else {
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
    const __m128i low4 = _mm_set1_epi8(0x0F), eight = _mm_set1_epi8(8);
    a = _mm_sub_epi8(_mm_and_si128(raw, low4), eight);
    b = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(raw, 4), low4), eight);
  }
}

template <int BITS>
constexpr int64_t block_stride() { return BITS == 8 ? BLOCK : BLOCK / 2; }

// --- AVX2: 4 vectors of 8 per block -------------------------------------------------------------

template <int BITS, int M>
void rows_avx2(const uint8_t* q, const uint16_t* s, const float* x, float* y, int64_t r0, int64_t r1,
               int64_t n, int64_t kp) {
  constexpr int C = M <= 2 ? 4 : 1;  // independent accumulators per row: few rows need more chains
  const int64_t nb = kp / BLOCK;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* qr = q + r * nb * block_stride<BITS>();
    const uint16_t* sr = s + r * nb;
    __m256 acc[M][C];
    for (int m = 0; m < M; ++m)
      for (int c = 0; c < C; ++c) acc[m][c] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      __m128i lo, hi;
      block_bytes<BITS>(qr + b * block_stride<BITS>(), lo, hi);
      const __m256 scale = _mm256_set1_ps(half_to_float(sr[b]));
      __m256 w[4];
      w[0] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)), scale);
      w[1] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8))), scale);
      w[2] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)), scale);
      w[3] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8))), scale);
      const float* xb = x + b * BLOCK;
      for (int m = 0; m < M; ++m)
        for (int c = 0; c < 4; ++c)
          acc[m][c % C] = _mm256_fmadd_ps(w[c], _mm256_loadu_ps(xb + m * kp + 8 * c), acc[m][c % C]);
    }
    for (int m = 0; m < M; ++m) {
      __m256 t = acc[m][0];
      for (int c = 1; c < C; ++c) t = _mm256_add_ps(t, acc[m][c]);
      y[m * n + r] = gemvk::hsum(t);
    }
  }
}

// --- AVX-512: 2 vectors of 16 per block ---------------------------------------------------------

alignas(64) constexpr float INT4_LEVELS[16] = {-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7};

#define LLAMAHUB_AVX512 __attribute__((target("avx512f,avx512bw")))

// One block of 32 weights into the two accumulators of each of the M rows.
template <int BITS, int M>
LLAMAHUB_AVX512 inline void block_avx512(const uint8_t* qr, const uint16_t* sr, const float* x, int64_t b,
                                         int64_t kp, __m512 (&acc)[M][2]) {
  const __m512 scale = _mm512_set1_ps(half_to_float(sr[b]));
  __m512 w0, w1;
  if constexpr (BITS == 8) {
    __m128i lo, hi;
    block_bytes<8>(qr + b * block_stride<8>(), lo, hi);
    w0 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo)), scale);
    w1 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi)), scale);
  } else {
    // 16 levels times the scale as a table; each nibble picks its float with a permute (the
    // permute reads only an index's low 4 bits), sparing a convert and a multiply per vector.
    const __m512 table = _mm512_mul_ps(_mm512_loadu_ps(INT4_LEVELS), scale);
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qr + b * block_stride<4>()));
    w0 = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(raw), table);
    w1 = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_srli_epi16(raw, 4)), table);
  }
  const float* xb = x + b * BLOCK;
  for (int m = 0; m < M; ++m) {
    acc[m][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xb + m * kp), acc[m][0]);
    acc[m][1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xb + m * kp + 16), acc[m][1]);
  }
}

template <int BITS, int M>
LLAMAHUB_AVX512 void rows_avx512(const uint8_t* q, const uint16_t* s, const float* x, float* y, int64_t r0,
                                 int64_t r1, int64_t n, int64_t kp) {
  constexpr bool pairs = M <= 2;  // few rows: two blocks in flight, for more independent FMA chains
  const int64_t nb = kp / BLOCK;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* qr = q + r * nb * block_stride<BITS>();
    const uint16_t* sr = s + r * nb;
    __m512 a[M][2], b2[M][2];
    for (int m = 0; m < M; ++m) a[m][0] = a[m][1] = b2[m][0] = b2[m][1] = _mm512_setzero_ps();
    int64_t b = 0;
    if constexpr (pairs) {
      for (; b + 2 <= nb; b += 2) {
        block_avx512<BITS, M>(qr, sr, x, b, kp, a);
        block_avx512<BITS, M>(qr, sr, x, b + 1, kp, b2);
      }
    }
    for (; b < nb; ++b) block_avx512<BITS, M>(qr, sr, x, b, kp, a);
    for (int m = 0; m < M; ++m) {
      const __m512 t = _mm512_add_ps(_mm512_add_ps(a[m][0], a[m][1]), _mm512_add_ps(b2[m][0], b2[m][1]));
      y[m * n + r] = _mm512_reduce_add_ps(t);
    }
  }
}

bool has_avx512() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  return yes;
}

bool use_avx512 = true;  // set_isa("avx2") turns it off (tests compare both paths)

using RowsFn = void (*)(const uint8_t*, const uint16_t*, const float*, float*, int64_t, int64_t, int64_t,
                        int64_t);

template <int BITS, int M>
RowsFn pick_m() {
  return (use_avx512 && has_avx512()) ? rows_avx512<BITS, M> : rows_avx2<BITS, M>;
}

template <int BITS>
RowsFn pick(int64_t m) {
  switch (m) {
    case 1: return pick_m<BITS, 1>();
    case 2: return pick_m<BITS, 2>();
    case 3: return pick_m<BITS, 3>();
    case 4: return pick_m<BITS, 4>();
    case 5: return pick_m<BITS, 5>();
    case 6: return pick_m<BITS, 6>();
    case 7: return pick_m<BITS, 7>();
    default: return pick_m<BITS, 8>();
  }
}

struct Shapes {
  int64_t n, k, kp;
};

Shapes check(const torch::Tensor& x, const torch::Tensor& q, const torch::Tensor& s, int64_t bits) {
  TORCH_CHECK(bits == 8 || bits == 4, "bits must be 8 or 4");
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat, "x must be a 2-D float32 tensor");
  TORCH_CHECK(q.dim() == 2 && q.is_contiguous(), "q must be a contiguous 2-D tensor");
  TORCH_CHECK(s.dim() == 2 && s.is_contiguous() && s.scalar_type() == torch::kHalf,
              "scales must be a contiguous 2-D float16 tensor");
  const int64_t n = q.size(0), nb = s.size(1), kp = nb * BLOCK;
  TORCH_CHECK(s.size(0) == n, "scales have ", s.size(0), " rows, q has ", n);
  TORCH_CHECK(q.size(1) == (bits == 8 ? kp : kp / 2), "q has ", q.size(1), " columns, scales say ", kp,
              " weights per row");
  TORCH_CHECK(x.size(1) <= kp && x.size(1) > kp - BLOCK, "x has ", x.size(1), " columns for ", kp,
              " padded weights per row");
  return {n, x.size(1), kp};
}

// x as a contiguous [M, Kp] float32 tensor (zeros beyond K).
torch::Tensor padded(const torch::Tensor& x, int64_t kp) {
  auto xc = x.contiguous();
  if (xc.size(1) == kp) return xc;
  auto out = torch::zeros({xc.size(0), kp}, xc.options());
  out.narrow(1, 0, xc.size(1)).copy_(xc);
  return out;
}

}  // namespace

// y [M, N] = x [M, K] · dequant(q, s)^T for M <= 8.
torch::Tensor qgemv(torch::Tensor x, torch::Tensor q, torch::Tensor s, int64_t bits) {
  const Shapes sh = check(x, q, s, bits);
  const int64_t m = x.size(0);
  TORCH_CHECK(m >= 1 && m <= MAX_ROWS, "qgemv takes 1 to ", MAX_ROWS, " rows, not ", m);
  auto xp = padded(x, sh.kp);
  auto y = torch::empty({m, sh.n}, x.options());
  const RowsFn fn = bits == 8 ? pick<8>(m) : pick<4>(m);
  const auto* qp = static_cast<const uint8_t*>(q.data_ptr());
  const auto* sp = reinterpret_cast<const uint16_t*>(s.data_ptr<at::Half>());
  const float* xd = xp.data_ptr<float>();
  float* yd = y.data_ptr<float>();
  const int64_t n = sh.n, kp = sh.kp;
  at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) { fn(qp, sp, xd, yd, begin, end, n, kp); });
  return y;
}

// The same with activations rounded to integers (8 bits for int4 weights, 16 for int8: qdot.h)
// and integer dot products, on AVX-512 VNNI or AVX2.
torch::Tensor qgemv_int(torch::Tensor x, torch::Tensor q, torch::Tensor s, int64_t bits) {
  const Shapes sh = check(x, q, s, bits);
  const int64_t m = x.size(0);
  TORCH_CHECK(m >= 1 && m <= MAX_ROWS, "qgemv takes 1 to ", MAX_ROWS, " rows, not ", m);
  auto xc = x.contiguous();
  qdot::Acts acts;
  qdot::quantize_acts(xc.data_ptr<float>(), m, sh.k, sh.k, acts, bits == 8);
  auto y = torch::empty({m, sh.n}, x.options());
  const bool vnni = qdot::use_vnni();
  const qdot::RowsFn fn = bits == 8 ? qdot::pick<8>(m, vnni) : qdot::pick<4>(m, vnni);
  const auto* qp = static_cast<const uint8_t*>(q.data_ptr());
  const auto* sp = reinterpret_cast<const uint16_t*>(s.data_ptr<at::Half>());
  float* yd = y.data_ptr<float>();
  const int64_t n = sh.n, nbw = sh.kp / BLOCK;
  gemvk::parallel_rows(n, qdot::row_bytes(static_cast<int>(bits), sh.kp), [&](int64_t begin, int64_t end) { fn(qp, sp, acts, yd, begin, end, n, nbw); });
  return y;
}

// The SwiGLU feed-forward of 1..8 rows in one call: w2 (silu(w1 x) * (w3 x)), on qgemv_int's dots;
// w1 and w3 share x's rounding and one pass over the threads.
torch::Tensor qffn_int(torch::Tensor x, torch::Tensor q1, torch::Tensor s1, torch::Tensor q3,
                       torch::Tensor s3, torch::Tensor q2, torch::Tensor s2, int64_t bits) {
  const Shapes sh = check(x, q1, s1, bits);
  const Shapes sh3 = check(x, q3, s3, bits);
  TORCH_CHECK(sh3.n == sh.n, "w1 has ", sh.n, " rows, w3 ", sh3.n);
  const int64_t m = x.size(0), hidden = sh.n, nbw = sh.kp / BLOCK;
  TORCH_CHECK(m >= 1 && m <= MAX_ROWS, "qffn takes 1 to ", MAX_ROWS, " rows, not ", m);
  auto xc = x.contiguous();
  qdot::Acts acts;
  qdot::quantize_acts(xc.data_ptr<float>(), m, sh.k, sh.k, acts, bits == 8);
  auto gate = torch::empty({m, hidden}, x.options()), up = torch::empty({m, hidden}, x.options());
  const bool vnni = qdot::use_vnni();
  const qdot::RowsFn fn = bits == 8 ? qdot::pick<8>(m, vnni) : qdot::pick<4>(m, vnni);
  const auto* q1p = static_cast<const uint8_t*>(q1.data_ptr());
  const auto* q3p = static_cast<const uint8_t*>(q3.data_ptr());
  const auto* s1p = reinterpret_cast<const uint16_t*>(s1.data_ptr<at::Half>());
  const auto* s3p = reinterpret_cast<const uint16_t*>(s3.data_ptr<at::Half>());
  float* g = gate.data_ptr<float>();
  float* u = up.data_ptr<float>();
  gemvk::parallel_rows(hidden, 2 * qdot::row_bytes(static_cast<int>(bits), sh.kp), [&](int64_t begin, int64_t end) {
    fn(q1p, s1p, acts, g, begin, end, hidden, nbw);
    fn(q3p, s3p, acts, u, begin, end, hidden, nbw);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t r = begin; r < end; ++r) {
        const float v = g[i * hidden + r];
        g[i * hidden + r] = v / (1.0f + std::exp(-v)) * u[i * hidden + r];
      }
  });
  return qgemv_int(gate, q2, s2, bits);
}

// Rows [r0, r1) of W as float32 [r1 - r0, Kp].
torch::Tensor dequant(torch::Tensor q, torch::Tensor s, int64_t bits, int64_t r0, int64_t r1) {
  TORCH_CHECK(q.is_contiguous() && s.is_contiguous() && s.scalar_type() == torch::kHalf,
              "q and float16 scales must be contiguous");
  const int64_t nb = s.size(1), kp = nb * BLOCK;
  TORCH_CHECK(0 <= r0 && r0 <= r1 && r1 <= q.size(0), "rows out of range");
  auto out = torch::empty({r1 - r0, kp}, torch::TensorOptions().dtype(torch::kFloat));
  const auto* qp = static_cast<const uint8_t*>(q.data_ptr());
  const auto* sp = reinterpret_cast<const uint16_t*>(s.data_ptr<at::Half>());
  float* o = out.data_ptr<float>();
  const int64_t stride = bits == 8 ? BLOCK : BLOCK / 2;
  at::parallel_for(r0, r1, 4, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t b = 0; b < nb; ++b) {
        __m128i lo, hi;
        if (bits == 8) {
          block_bytes<8>(qp + (r * nb + b) * stride, lo, hi);
        } else {
          block_bytes<4>(qp + (r * nb + b) * stride, lo, hi);
        }
        const __m256 scale = _mm256_set1_ps(half_to_float(sp[r * nb + b]));
        float* dst = o + (r - r0) * kp + b * BLOCK;
        _mm256_storeu_ps(dst, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)), scale));
        _mm256_storeu_ps(dst + 8, _mm256_mul_ps(
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8))), scale));
        _mm256_storeu_ps(dst + 16, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)), scale));
        _mm256_storeu_ps(dst + 24, _mm256_mul_ps(
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8))), scale));
      }
    }
  });
  return out;
}

// y [M, N] for any M: W widened a tile of rows at a time (about 1 MiB of float32), aten's GEMM.
torch::Tensor qgemm(torch::Tensor x, torch::Tensor q, torch::Tensor s, int64_t bits) {
  const Shapes sh = check(x, q, s, bits);
  auto xp = padded(x, sh.kp);
  auto y = torch::empty({x.size(0), sh.n}, x.options());
  const int64_t tile = std::max<int64_t>(16, (int64_t{1} << 18) / sh.kp / 16 * 16);
  for (int64_t r0 = 0; r0 < sh.n; r0 += tile) {
    const int64_t r1 = std::min(sh.n, r0 + tile);
    auto w = dequant(q, s, bits, r0, r1);
    y.narrow(1, r0, r1 - r0).copy_(at::mm(xp, w.t()));
  }
  return y;
}

// --- quantizing (the same rules as llamahub_cpu.quant, which documents them) ---------------------

namespace {

inline uint16_t to_half(float v) { return _cvtss_sh(v, _MM_FROUND_TO_NEAREST_INT); }

inline float quant_error(const float* v, float scale, float lo, float hi) {
  const float div = scale == 0.0f ? 1.0f : scale;
  float err = 0.0f;
  for (int i = 0; i < BLOCK; ++i) {
    const float q = std::min(hi, std::max(lo, std::nearbyint(v[i] / div)));
    const float d = q * scale - v[i];
    err += d * d;
  }
  return err;
}

// One block: its fp16 scale, and its values written to q (int8, or packed nibbles + 8).
void quantize_block(const float* v, int bits, uint8_t* q, uint16_t* scale_out) {
  int peak_at = 0;
  for (int i = 1; i < BLOCK; ++i)
    if (std::fabs(v[i]) > std::fabs(v[peak_at])) peak_at = i;
  const float peak = v[peak_at];
  uint16_t best;
  const float lo = bits == 8 ? -127.0f : -8.0f, hi = bits == 8 ? 127.0f : 7.0f;
  if (bits == 8) {
    best = to_half(std::fabs(peak) / 127.0f);
  } else {
    best = to_half(peak / 7.0f);
    float best_err = quant_error(v, _cvtsh_ss(best), lo, hi);
    for (float steps : {7.0f, 7.5f, 8.0f, 8.5f}) {
      for (float sign : {1.0f, -1.0f}) {
        const uint16_t c = to_half(sign * peak / steps);
        const float e = quant_error(v, _cvtsh_ss(c), lo, hi);
        if (e < best_err) best = c, best_err = e;
      }
    }
    const float bs = _cvtsh_ss(best), div = bs == 0.0f ? 1.0f : bs;
    float qv = 0.0f, qq = 0.0f;
    for (int i = 0; i < BLOCK; ++i) {
      const float qi = std::min(hi, std::max(lo, std::nearbyint(v[i] / div)));
      qv += qi * v[i];
      qq += qi * qi;
    }
    const uint16_t refit = to_half(qv / std::max(qq, 1.0f));
    if (quant_error(v, _cvtsh_ss(refit), lo, hi) < best_err) best = refit;
  }
  *scale_out = best;
  const float bs = _cvtsh_ss(best), div = bs == 0.0f ? 1.0f : bs;
  int8_t vals[BLOCK];
  for (int i = 0; i < BLOCK; ++i)
    vals[i] = static_cast<int8_t>(std::min(hi, std::max(lo, std::nearbyint(v[i] / div))));
  if (bits == 8) {
    std::memcpy(q, vals, BLOCK);
  } else {
    for (int j = 0; j < BLOCK / 2; ++j)
      q[j] = static_cast<uint8_t>((vals[j] + 8) | ((vals[j + BLOCK / 2] + 8) << 4));
  }
}

}  // namespace

// (q, scales) of a float32 weight [N, K]: the layout described at the top of this file.
std::vector<torch::Tensor> quantize(torch::Tensor w, int64_t bits) {
  TORCH_CHECK(bits == 8 || bits == 4, "bits must be 8 or 4");
  TORCH_CHECK(w.dim() == 2, "w must be 2-D");
  auto wf = w.to(torch::kFloat).contiguous();
  const int64_t n = wf.size(0), k = wf.size(1), nb = (k + BLOCK - 1) / BLOCK, kp = nb * BLOCK;
  auto q = torch::empty({n, bits == 8 ? kp : kp / 2}, torch::TensorOptions().dtype(
      bits == 8 ? torch::kChar : torch::kByte));
  auto s = torch::empty({n, nb}, torch::TensorOptions().dtype(torch::kHalf));
  const float* src = wf.data_ptr<float>();
  auto* qp = static_cast<uint8_t*>(q.data_ptr());
  auto* sp = reinterpret_cast<uint16_t*>(s.data_ptr<at::Half>());
  const int64_t stride = bits == 8 ? BLOCK : BLOCK / 2;
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    float block[BLOCK];
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t start = b * BLOCK, count = std::min<int64_t>(BLOCK, k - start);
        std::memset(block, 0, sizeof block);
        std::memcpy(block, src + r * k + start, count * sizeof(float));
        quantize_block(block, static_cast<int>(bits), qp + (r * nb + b) * stride, sp + r * nb + b);
      }
    }
  });
  return {q, s};
}

// "avx512-vnni" when decode runs on VNNI's integer dots, else "avx512" or "avx2".
std::string isa() {
  if (qdot::use_vnni()) return "avx512-vnni";
  return (use_avx512 && has_avx512()) ? "avx512" : "avx2";
}

void set_isa(const std::string& name) {
  TORCH_CHECK(name == "avx2" || name == "avx512", "isa must be avx2 or avx512");
  use_avx512 = qdot::allow_vnni = name == "avx512";
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("qgemv", &qgemv, "y = x W^T for 1..8 rows of x, W int8/int4 in blocks of 32 (fp16 scales)");
  m.def("qgemv_int", &qgemv_int, "qgemv with activations quantized to int8 per block of 32");
  m.def("qffn_int", &qffn_int, "w2 (silu(w1 x) * w3 x) for 1..8 rows, as three qgemv_int");
  m.def("qgemm", &qgemm, "y = x W^T for any rows: W widened tile by tile, aten GEMM");
  m.def("dequant", &dequant, "rows r0..r1 of W as float32");
  m.def("quantize", &quantize, "(q, scales) of a weight, as llamahub_cpu.quant.quantize");
  m.def("isa", &isa, "the instruction set the kernels run on");
  m.def("set_isa", &set_isa, "use avx2 even where avx512 is available (or back)");
  m.def("decode_block", &decode_block, "one token through one transformer block (csrc/block.h)",
        py::call_guard<py::gil_scoped_release>());
}
