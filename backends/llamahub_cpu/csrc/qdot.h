// Decode (1..8 rows) with integer activations and integer dot products, as llama.cpp runs q4_0:
// each call rounds its activations per block of 32 (d = max|x| / limit, q = round(x / d)), then
// every weight block meets every row's block in an integer dot product (int32, exact), scaled
// once per block by (weight scale x activation scale). The weights' format is unchanged.
//   int4: 8-bit activations; (w + 8) (the stored nibble, unsigned) . x, minus 8 * sum(x) of the
//         block (in int32): vpdpbusd / vpmaddubsw take one unsigned side.
//   int8: 16-bit activations (d = max|x| / 32767), w . x in int16 pairs (vpdpwssd / vpmaddwd):
//         8-bit ones would double int8's error (measured on the 110m bench model, decode, mean KL
//         against fp32: 0.00014 with 8-bit activations, 0.00009 with float ones) for little
//         speed, as int8 weights are read at the memory's pace anyway.
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
  // 16-bit activations (int8 weights): per pair of blocks b, b + 1, their values 0..15 (b, then
  // b + 1), then 16..31 (b, then b + 1): one vpdpwssd then sums block b in lanes 0..7, b + 1 in 8..15.
  std::vector<int16_t> q16;
  std::vector<float> dblock;    // [rows][ng]: d once per block, zeros up to a multiple of 16
  std::vector<float> d;         // [rows][nb * LANES]
  std::vector<int32_t> negsum;  // [rows][nb * LANES]
};

// Where value i of block b sits in a row of q16.
inline int64_t wide_at(int64_t b, int64_t i) {
  return (b / 2) * 64 + (i < 16 ? 0 : 32) + (b % 2) * 16 + (i % 16);
}

// x [rows, k] (row stride ldx) quantized into a: to 16 bits when wide, else 8.
inline void quantize_acts(const float* x, int64_t rows, int64_t k, int64_t ldx, Acts& a, bool wide) {
  const int64_t used = (k + BLOCK - 1) / BLOCK;
  a.rows = rows;
  a.nb = (used + 1) / 2 * 2;
  a.kq = a.nb * BLOCK;
  a.q.assign(wide ? 0 : rows * a.kq, 0);
  a.q16.assign(wide ? rows * a.kq : 0, 0);
  const float limit = wide ? 32767.0f : 127.0f;
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
      const float d = peak / limit, inv = d != 0.0f ? 1.0f / d : 0.0f;
      int sum = 0;
      for (int64_t i = 0; i < count; ++i) {
        const int qi = static_cast<int>(std::min(limit, std::max(-limit, std::nearbyint(v[i] * inv))));
        if (wide) {
          a.q16[m * a.kq + wide_at(b, i)] = static_cast<int16_t>(qi);
        } else {
          a.q[m * a.kq + b * BLOCK + i] = static_cast<int8_t>(qi);
        }
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
      const __m256 sw = _mm256_set1_ps(half_to_float(sr[b]));
      __m256i w0 = w, w1 = w;
      if constexpr (BITS == 8) {
        w0 = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(w));
        w1 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(w, 1));
      }
      for (int m = 0; m < M; ++m) {
        const int64_t at = (m * a.nb + b) * LANES;
        __m256i dot;
        if constexpr (BITS == 8) {
          const int16_t* xr = a.q16.data() + m * a.kq;
          dot = _mm256_add_epi32(
              _mm256_madd_epi16(w0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr + wide_at(b, 0)))),
              _mm256_madd_epi16(w1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr + wide_at(b, 16)))));
        } else {
          const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q.data() + m * a.kq + b * BLOCK));
          dot = _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(w, xv), ones),
                                 _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.negsum.data() + at)));
        }
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

// int8 weights of two blocks (weights_vnni's 64 bytes) as int16: values 0..15 of both blocks in
// w0, 16..31 in w1, the order of the 16-bit activations (Acts::q16).
QDOT_VNNI inline void widen_int8(__m512i w, __m512i& w0, __m512i& w1) {
  const __m256i lo = _mm512_castsi512_si256(w), hi = _mm512_extracti64x4_epi64(w, 1);
  w0 = _mm512_cvtepi8_epi16(_mm256_permute2x128_si256(lo, hi, 0x20));
  w1 = _mm512_cvtepi8_epi16(_mm256_permute2x128_si256(lo, hi, 0x31));
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
        __m512i w0 = w, w1 = w;
        if constexpr (BITS == 8) widen_int8(w, w0, w1);
        for (int m = 0; m < M; ++m) {
          __m512i dot;
          if constexpr (BITS == 8) {
            const int16_t* xr = a.q16.data() + m * a.kq + b * BLOCK;
            dot = _mm512_dpwssd_epi32(_mm512_dpwssd_epi32(zero, w0, _mm512_loadu_si512(xr)), w1,
                                      _mm512_loadu_si512(xr + 32));
          } else {
            const __m512i xv = _mm512_loadu_si512(a.q.data() + m * a.kq + b * BLOCK);
            dot = _mm512_dpbusd_epi32(_mm512_loadu_si512(a.negsum.data() + (m * a.nb + b) * LANES), w, xv);
          }
          acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_permutexvar_ps(spread, sd[m]), acc[m]);
        }
      }
    }
    for (int m = 0; m < M; ++m) y[m * n + r] = _mm512_reduce_add_ps(acc[m]);
  }
}

// M = 1 (a lone token's decode), N weight rows r.. at once: the activations are loaded once for
// all N, and N weight streams are in flight (faster reads, as in gemv.h). Each row's sum is
// computed exactly as rows_vnni computes it for each of a batch's rows.
template <int BITS, int N>
QDOT_VNNI void wrows_vnni(const uint8_t* q, const uint16_t* s, const Acts& a, float* y, int64_t r, int64_t nbw) {
  constexpr int64_t stride = BITS == 8 ? BLOCK : BLOCK / 2;
  const __m512i first = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i next = _mm512_set1_epi32(2), zero = _mm512_setzero_si512();
  __m512 acc[N];
  for (int j = 0; j < N; ++j) acc[j] = _mm512_setzero_ps();
  for (int64_t g = 0; g < nbw; g += 16) {
    const int64_t left = std::min<int64_t>(16, nbw - g);
    const __m512 ad = _mm512_loadu_ps(a.dblock.data() + g);
    __m512 sd[N];
    for (int j = 0; j < N; ++j)
      sd[j] = _mm512_mul_ps(
          _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << left) - 1), s + (r + j) * nbw + g)),
          ad);
    __m512i spread = first;
    for (int64_t b = g; b < g + left; b += 2, spread = _mm512_add_epi32(spread, next)) {
      __m512i x0, x1;
      if constexpr (BITS == 8) {
        const int16_t* xr = a.q16.data() + b * BLOCK;
        x0 = _mm512_loadu_si512(xr);
        x1 = _mm512_loadu_si512(xr + 32);
      } else {
        x0 = _mm512_loadu_si512(a.q.data() + b * BLOCK);
        x1 = _mm512_loadu_si512(a.negsum.data() + b * LANES);
      }
      for (int j = 0; j < N; ++j) {
        // the same place in the next N rows: a row is only 1-2 KiB, too short a stream for the
        // hardware prefetcher to run far enough ahead (prefetches never fault past the end)
        _mm_prefetch(reinterpret_cast<const char*>(q + (r + j + N) * nbw * stride + b * stride), _MM_HINT_T0);
        const __m512i w = weights_vnni<BITS>(q + (r + j) * nbw * stride, b, b + 1 < nbw);
        __m512i dot;
        if constexpr (BITS == 8) {
          __m512i w0, w1;
          widen_int8(w, w0, w1);
          dot = _mm512_dpwssd_epi32(_mm512_dpwssd_epi32(zero, w0, x0), w1, x1);
        } else {
          dot = _mm512_dpbusd_epi32(x1, w, x0);
        }
        acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_permutexvar_ps(spread, sd[j]), acc[j]);
      }
    }
  }
  for (int j = 0; j < N; ++j) y[r + j] = _mm512_reduce_add_ps(acc[j]);
}

// Rows [r0, r1) of W times one row of activations, four weight rows at a time.
template <int BITS>
QDOT_VNNI void rows_vnni_one(const uint8_t* q, const uint16_t* s, const Acts& a, float* y, int64_t r0,
                             int64_t r1, int64_t, int64_t nbw) {
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) wrows_vnni<BITS, 4>(q, s, a, y, r, nbw);
  for (; r < r1; ++r) wrows_vnni<BITS, 1>(q, s, a, y, r, nbw);
}

inline bool has_vnni() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
  return yes;
}

inline bool allow_vnni = true;  // qgemv's set_isa("avx2") turns it off (tests compare both paths)

// Whether the integer dots run on VNNI: the CPU has it and set_isa allows it.
inline bool use_vnni() { return allow_vnni && has_vnni(); }

// Bytes of one weight row of kp (padded) values: the values and a fp16 scale per block.
inline int64_t row_bytes(int bits, int64_t kp) { return (bits == 8 ? kp : kp / 2) + kp / BLOCK * 2; }

using RowsFn = void (*)(const uint8_t*, const uint16_t*, const Acts&, float*, int64_t, int64_t, int64_t,
                        int64_t);

template <int BITS, int M>
RowsFn pick_m(bool vnni) {
  if constexpr (M == 1) {
    return vnni ? rows_vnni_one<BITS> : rows_avx2<BITS, 1>;
  } else {
    return vnni ? rows_vnni<BITS, M> : rows_avx2<BITS, M>;
  }
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
