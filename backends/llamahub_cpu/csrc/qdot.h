// Decode (1..8 rows) with 8-bit activations and integer dot products, as llama.cpp runs q8_0/q4_0:
// each call quantizes its activations per block of 32 (d = max|x| / 127, q = round(x / d)), then
// every weight block meets every row's block in an int8 x int8 -> int32 dot product, scaled once
// per block by (weight scale x activation scale). The weights' format is unchanged (qgemv.cpp).
//
//   int8: |w| (unsigned) . (x with w's sign)   -- the u8 x s8 instructions need one side unsigned
//   int4: (w + 8) (the stored nibble, unsigned) . x, minus 8 * sum(x) of the block (in int32)
//
// AVX-512 VNNI (vpdpbusd) does two blocks per instruction; AVX2 (vpmaddubsw + vpmaddwd) one. Both
// give the same integer sums, so only the float accumulation order differs between them.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace qdot {

constexpr int64_t BLOCK = 32;
constexpr int LANES = 8;  // int32 lanes of one block's partial sums (one 256-bit vector)

inline float half_to_float(uint16_t h) { return _cvtsh_ss(h); }

// One call's activations: rows of kq bytes (blocks padded with zeros to an even count), and per
// block and lane its scale d and -sum(q) (repeated over the block's 8 lanes, so a vector of 16
// lanes holds two blocks' values; int4's 8 lanes then add up to -8 sum(q), its offset, exactly).
struct Acts {
  int64_t rows = 0, nb = 0, kq = 0, ng = 0;
  std::vector<int8_t> q;
  std::vector<float> dblock;    // [rows][ng]: d once per block, zeros up to a multiple of 16
  std::vector<float> d;         // [rows][nb * LANES]
  std::vector<int32_t> negsum;  // [rows][nb * LANES]
};

// x [rows, k] (row stride ldx) quantized into a.
inline void quantize_acts(const float* x, int64_t rows, int64_t k, int64_t ldx, Acts& a) {
  const int64_t used = (k + BLOCK - 1) / BLOCK;
  a.rows = rows;
  a.nb = (used + 1) / 2 * 2;
  a.kq = a.nb * BLOCK;
  a.q.assign(rows * a.kq, 0);
  a.ng = (used + 15) / 16 * 16;
  a.dblock.assign(rows * a.ng, 0.0f);
  a.d.assign(rows * a.nb * LANES, 0.0f);
  a.negsum.assign(rows * a.nb * LANES, 0);
  for (int64_t m = 0; m < rows; ++m) {
    for (int64_t b = 0; b < used; ++b) {
      const float* v = x + m * ldx + b * BLOCK;
      const int64_t count = std::min(BLOCK, k - b * BLOCK);
      float peak = 0.0f;
      for (int64_t i = 0; i < count; ++i) peak = std::max(peak, std::fabs(v[i]));
      const float d = peak / 127.0f, inv = d != 0.0f ? 1.0f / d : 0.0f;
      int sum = 0;
      int8_t* out = a.q.data() + m * a.kq + b * BLOCK;
      for (int64_t i = 0; i < count; ++i) {
        const int qi = static_cast<int>(std::min(127.0f, std::max(-127.0f, std::nearbyint(v[i] * inv))));
        out[i] = static_cast<int8_t>(qi);
        sum += qi;
      }
      float* dl = a.d.data() + (m * a.nb + b) * LANES;
      int32_t* sl = a.negsum.data() + (m * a.nb + b) * LANES;
      std::fill(dl, dl + LANES, d);
      a.dblock[m * a.ng + b] = d;
      std::fill(sl, sl + LANES, -sum);
    }
  }
}

// --- AVX2: one block (32 bytes) per step ----------------------------------------------------------

template <int BITS>
inline __m256i weights_avx2(const uint8_t* qr, int64_t b) {
  if constexpr (BITS == 8) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qr + b * BLOCK));
  } else {
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qr + b * BLOCK / 2));
    const __m128i low4 = _mm_set1_epi8(0x0F);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), low4), _mm_and_si128(raw, low4));
  }
}

// Rows [r0, r1) of W (nbw blocks per row) times the M rows of a: y[m * n + r].
template <int BITS, int M>
void rows_avx2(const uint8_t* q, const uint16_t* s, const Acts& a, float* y, int64_t r0, int64_t r1,
               int64_t n, int64_t nbw) {
  constexpr int64_t stride = BITS == 8 ? BLOCK : BLOCK / 2;
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* qr = q + r * nbw * stride;
    const uint16_t* sr = s + r * nbw;
    __m256 acc[M];
    for (int m = 0; m < M; ++m) acc[m] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nbw; ++b) {
      const __m256i w = weights_avx2<BITS>(qr, b);
      const __m256i aw = BITS == 8 ? _mm256_abs_epi8(w) : w;
      const __m256 sw = _mm256_set1_ps(half_to_float(sr[b]));
      for (int m = 0; m < M; ++m) {
        __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q.data() + m * a.kq + b * BLOCK));
        if constexpr (BITS == 8) xv = _mm256_sign_epi8(xv, w);
        const int64_t at = (m * a.nb + b) * LANES;
        __m256i dot = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, xv), ones);
        if constexpr (BITS == 4)
          dot = _mm256_add_epi32(dot, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.negsum.data() + at)));
        const __m256 d = _mm256_loadu_ps(a.d.data() + at);
        acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(sw, d), acc[m]);
      }
    }
    for (int m = 0; m < M; ++m) {
      __m128 t = _mm_add_ps(_mm256_castps256_ps128(acc[m]), _mm256_extractf128_ps(acc[m], 1));
      t = _mm_hadd_ps(t, t);
      t = _mm_hadd_ps(t, t);
      y[m * n + r] = _mm_cvtss_f32(t);
    }
  }
}

// --- AVX-512 VNNI: two blocks (64 bytes) per step ------------------------------------------------

#define QDOT_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

// Blocks b and b + 1 of a row as 64 bytes in the activations' order (b's 32 values, then b + 1's);
// when b is the row's last block, the second half is zero (no read past it).
template <int BITS>
QDOT_VNNI inline __m512i weights_vnni(const uint8_t* qr, int64_t b, bool two) {
  if constexpr (BITS == 8) {
    const uint8_t* p = qr + b * BLOCK;
    return two ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi8(0xFFFFFFFFull, p);
  } else {
    const uint8_t* p = qr + b * BLOCK / 2;
    const __m256i raw = two ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
                            : _mm256_maskz_loadu_epi8(0xFFFFu, p);
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    const __m256i lo = _mm256_and_si256(raw, low4), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4);
    const __m512i w = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);  // lo b, lo b+1, hi b, hi b+1
    return _mm512_shuffle_i64x2(w, w, _MM_SHUFFLE(3, 1, 2, 0));                // lo b, hi b, lo b+1, hi b+1
  }
}

// Groups of 16 blocks share one load of their weight scales, multiplied by each row's activation
// scales once; a permute then spreads a pair of them over the 16 lanes of each dot product.
template <int BITS, int M>
QDOT_VNNI void rows_vnni(const uint8_t* q, const uint16_t* s, const Acts& a, float* y, int64_t r0,
                         int64_t r1, int64_t n, int64_t nbw) {
  constexpr int64_t stride = BITS == 8 ? BLOCK : BLOCK / 2;
  const __m512i first = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i next = _mm512_set1_epi32(2), zero = _mm512_setzero_si512();
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* qr = q + r * nbw * stride;
    const uint16_t* sr = s + r * nbw;
    __m512 acc[M];
    for (int m = 0; m < M; ++m) acc[m] = _mm512_setzero_ps();
    for (int64_t g = 0; g < nbw; g += 16) {
      const int64_t left = std::min<int64_t>(16, nbw - g);
      const __m512 sw = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << left) - 1), sr + g));
      __m512 sd[M];
      for (int m = 0; m < M; ++m) sd[m] = _mm512_mul_ps(sw, _mm512_loadu_ps(a.dblock.data() + m * a.ng + g));
      __m512i spread = first;
      for (int64_t b = g; b < g + left; b += 2, spread = _mm512_add_epi32(spread, next)) {
        const __m512i w = weights_vnni<BITS>(qr, b, b + 1 < nbw);
        __m512i aw = w;
        __mmask64 neg = 0;
        if constexpr (BITS == 8) {
          aw = _mm512_abs_epi8(w);
          neg = _mm512_movepi8_mask(w);
        }
        for (int m = 0; m < M; ++m) {
          __m512i xv = _mm512_loadu_si512(a.q.data() + m * a.kq + b * BLOCK);
          if constexpr (BITS == 8) xv = _mm512_mask_sub_epi8(xv, neg, zero, xv);
          const __m512i start = BITS == 8 ? zero : _mm512_loadu_si512(a.negsum.data() + (m * a.nb + b) * LANES);
          const __m512 dot = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(start, aw, xv));
          acc[m] = _mm512_fmadd_ps(dot, _mm512_permutexvar_ps(spread, sd[m]), acc[m]);
        }
      }
    }
    for (int m = 0; m < M; ++m) y[m * n + r] = _mm512_reduce_add_ps(acc[m]);
  }
}

inline bool has_vnni() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
  return yes;
}

using RowsFn = void (*)(const uint8_t*, const uint16_t*, const Acts&, float*, int64_t, int64_t, int64_t,
                        int64_t);

template <int BITS, int M>
RowsFn pick_m(bool vnni) {
  return vnni ? rows_vnni<BITS, M> : rows_avx2<BITS, M>;
}

template <int BITS>
RowsFn pick(int64_t m, bool vnni) {
  switch (m) {
    case 1: return pick_m<BITS, 1>(vnni);
    case 2: return pick_m<BITS, 2>(vnni);
    case 3: return pick_m<BITS, 3>(vnni);
    case 4: return pick_m<BITS, 4>(vnni);
    case 5: return pick_m<BITS, 5>(vnni);
    case 6: return pick_m<BITS, 6>(vnni);
    case 7: return pick_m<BITS, 7>(vnni);
    default: return pick_m<BITS, 8>(vnni);
  }
}

}  // namespace qdot
