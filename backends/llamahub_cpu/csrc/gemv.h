// Matrix-vector products for decoding: y = x W^T, with W [N, K] row-major in fp32 or bf16 and
// x [..., K] holding 1 to 8 rows (one token, or one token of each sequence of a server's batched
// step); y [..., N] comes back in x's dtype (accumulated in fp32). Each weight is read once per
// call whatever the number of rows, so a batched step costs little more than a single token.
// Rows are split over torch's intra-op threads, so both cores stream weights (aten's fp32 GEMV
// uses one core in this torch build). AVX2 + FMA; AVX-512 when the CPU has it (the same sums;
// LLAMAHUB_CPU_AVX512=0 keeps AVX2).
#pragma once

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <utility>

namespace gemvk {

constexpr int64_t kMaxRows = 8;  // more rows (a prompt) go to aten's GEMM

inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_hadd_ps(lo, lo);
  lo = _mm_hadd_ps(lo, lo);
  return _mm_cvtss_f32(lo);
}

// Eight weights as floats: fp32 as they are; bf16 is the top half of an fp32, so widen and shift.
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }

inline __m256 load8(const uint16_t* p) {
  __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}

inline float to_float(float v) { return v; }

inline float to_float(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// One row of W times R rows of x, each row summed exactly as a lone row is (four accumulators
// over blocks of 32, the same order and tail), so a sequence's result does not depend on how
// many share the step. The weight row is read from memory once; later groups of rows find it in
// L1. R <= 3 keeps the 4 * R accumulators in the 16 AVX2 registers.
template <typename T, int R>
inline void dot_rows(const T* w, const float* x, int64_t k, float* y, int64_t y_stride) {
  __m256 acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < 4; ++j) acc[r][j] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= k; i += 32) {
    for (int j = 0; j < 4; ++j) {
      const __m256 wj = load8(w + i + 8 * j);
      for (int r = 0; r < R; ++r)
        acc[r][j] = _mm256_fmadd_ps(wj, _mm256_loadu_ps(x + r * k + i + 8 * j), acc[r][j]);
    }
  }
  for (int r = 0; r < R; ++r) {
    float s = hsum(_mm256_add_ps(_mm256_add_ps(acc[r][0], acc[r][1]), _mm256_add_ps(acc[r][2], acc[r][3])));
    for (int64_t t = i; t < k; ++t) s = std::fma(to_float(w[t]), x[r * k + t], s);  // one rounding, in both ISAs
    y[r * y_stride] = s;
  }
}

// AVX-512 (chosen at run time): the very sums of dot_rows, with half the instructions. Each
// 16-lane accumulator is two of dot_rows' 8-lane ones side by side (lanes never mix until the
// end), split back into those four before the same horizontal sum; 32 registers hold all 8 rows.
#define AVX512 __attribute__((target("avx512f")))

AVX512 inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }

AVX512 inline __m512 load16(const uint16_t* p) {
  __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

AVX512 inline __m256 high8(__m512 v) {
  return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
}

// The two 16-lane accumulators as dot_rows' four 8-lane ones, summed in its order.
AVX512 inline float split_sum(__m512 lo, __m512 hi) {
  const __m256 a0 = _mm512_castps512_ps256(lo), a1 = high8(lo);
  const __m256 a2 = _mm512_castps512_ps256(hi), a3 = high8(hi);
  return hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
}

template <typename T, int R>
AVX512 inline void dot_rows512(const T* w, const float* x, int64_t k, float* y, int64_t y_stride) {
  __m512 lo[R], hi[R];
  for (int r = 0; r < R; ++r) lo[r] = hi[r] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= k; i += 32) {
    const __m512 w0 = load16(w + i), w1 = load16(w + i + 16);
    for (int r = 0; r < R; ++r) {
      lo[r] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + r * k + i), lo[r]);
      hi[r] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + r * k + i + 16), hi[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    float s = split_sum(lo[r], hi[r]);
    for (int64_t t = i; t < k; ++t) s = std::fma(to_float(w[t]), x[r * k + t], s);  // one rounding, in both ISAs
    y[r * y_stride] = s;
  }
}

// One row of x times N rows of W (a lone token's decode): N weight streams in flight at once read
// memory faster than one (measured on the 2-core Xeon, 2048 columns: fp32 19.5 → 24.1 GB/s, bf16
// 15.7 → 20.6 with 4), and each row's sum is computed exactly as dot_rows512<T, 1> computes it.
// bf16 also prefetches the next N rows (768 columns: 11.1 → 15.5 GB/s; fp32 measured slower with it).
template <typename T, int N>
AVX512 inline void dot_wrows512(const T* w, const float* x, int64_t k, float* y) {
  __m512 lo[N], hi[N];
  for (int j = 0; j < N; ++j) lo[j] = hi[j] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= k; i += 32) {
    const __m512 x0 = _mm512_loadu_ps(x + i), x1 = _mm512_loadu_ps(x + i + 16);
    for (int j = 0; j < N; ++j) {
      if constexpr (N > 1 && std::is_same_v<T, uint16_t>)  // the same place N rows on: bf16 rows of 1-2 KiB
        _mm_prefetch(reinterpret_cast<const char*>(w + (j + N) * k + i), _MM_HINT_T0);  // are too short a stream
      lo[j] = _mm512_fmadd_ps(load16(w + j * k + i), x0, lo[j]);
      hi[j] = _mm512_fmadd_ps(load16(w + j * k + i + 16), x1, hi[j]);
    }
  }
  for (int j = 0; j < N; ++j) {
    float s = split_sum(lo[j], hi[j]);
    for (int64_t t = i; t < k; ++t) s = std::fma(to_float(w[j * k + t]), x[t], s);
    y[j] = s;
  }
}

template <typename T>
void dot_rows512_any(const T* w, const float* x, int64_t k, float* y, int64_t y_stride, int64_t rows) {
  switch (rows) {
    case 1: return dot_rows512<T, 1>(w, x, k, y, y_stride);
    case 2: return dot_rows512<T, 2>(w, x, k, y, y_stride);
    case 3: return dot_rows512<T, 3>(w, x, k, y, y_stride);
    case 4: return dot_rows512<T, 4>(w, x, k, y, y_stride);
    case 5: return dot_rows512<T, 5>(w, x, k, y, y_stride);
    case 6: return dot_rows512<T, 6>(w, x, k, y, y_stride);
    case 7: return dot_rows512<T, 7>(w, x, k, y, y_stride);
    default: return dot_rows512<T, 8>(w, x, k, y, y_stride);
  }
}

inline bool use_avx512() {
  static const bool yes = __builtin_cpu_supports("avx512f") && [] {
    const char* v = std::getenv("LLAMAHUB_CPU_AVX512");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }();
  return yes;
}

// Weight rows [begin, end) of y [rows, n] = x [rows, k] W^T, on the calling thread: AVX-512 takes all
// rows at once, AVX2 groups of up to 3.
template <typename T>
void gemv_range(const T* w, const float* x, float* y, int64_t rows, int64_t n, int64_t k, int64_t begin,
                int64_t end) {
  const bool wide = use_avx512();
  if (wide && rows == 1) {
    int64_t o = begin;
    for (; o + 4 <= end; o += 4) dot_wrows512<T, 4>(w + o * k, x, k, y + o);
    for (; o < end; ++o) dot_wrows512<T, 1>(w + o * k, x, k, y + o);
    return;
  }
  for (int64_t o = begin; o < end; ++o) {
    const T* wo = w + o * k;
    if (wide) {
      dot_rows512_any(wo, x, k, y + o, n, rows);
      continue;
    }
    int64_t r = 0;
    for (; r + 3 <= rows; r += 3) dot_rows<T, 3>(wo, x + r * k, k, y + r * n + o, n);
    if (rows - r == 2) dot_rows<T, 2>(wo, x + r * k, k, y + r * n + o, n);
    if (rows - r == 1) dot_rows<T, 1>(wo, x + r * k, k, y + r * n + o, n);
  }
}

// Part i of `total` items cut into `parts` contiguous parts whose sizes differ by one at most.
inline std::pair<int64_t, int64_t> even_part(int64_t total, int64_t parts, int64_t i) {
  const int64_t per = total / parts, extra = total % parts;
  const int64_t begin = i * per + std::min(i, extra);
  return {begin, begin + per + (i < extra ? 1 : 0)};
}

// Rows [0, total) shared by a team of threads: each thread owns one contiguous share and takes it
// from the front in chunks of about 64 KiB of weights (whole groups of 4 rows: a lone token's loops
// take weight rows four at a time), so it reads one long stream; a thread done with its own share
// takes chunks from the back of the others'. A thread slowed by another process (2 vCPUs) then does
// less instead of holding up the product, and without that the threads read as with a static split.
// One long stream per thread read the 110M model's short products (2-6 MB) about 8% faster than
// chunks handed out in turn from one counter.
class Shares {
 public:
  static constexpr int kMax = 64;  // more threads share the rows of the first 64

  // Before the team starts (or behind a barrier): up to `team` shares of `total` rows.
  void set(int64_t total, int64_t row_bytes, int team) {
    total_ = total;
    const int64_t groups = (total + 3) / 4;
    chunk_ = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, 4 * row_bytes));
    const int64_t chunks = (groups + chunk_ - 1) / chunk_;  // rows of one chunk or less: one thread
    n_ = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({team, kMax, chunks})));
    for (int t = 0; t < n_; ++t) {
      const auto [lo, hi] = even_part(groups, n_, t);
      slot_[t].range.store(pack(lo, hi), std::memory_order_relaxed);
    }
  }

  // Thread t's part of f(begin, end) over the rows: its own share, then what it can take from others.
  template <typename F>
  void run(int t, const F& f) {
    int64_t g0, g1;
    if (t < n_)  // threads past the shares (more threads than groups of rows) only take from others
      while (take_front(t, g0, g1)) f(std::min(total_, g0 * 4), std::min(total_, g1 * 4));
    for (int k = 1; k <= n_; ++k) {
      const int other = (t + k) % n_;
      if (other != t)
        while (take_back(other, g0, g1)) f(std::min(total_, g0 * 4), std::min(total_, g1 * 4));
    }
  }

  int size() const { return n_; }

 private:
  struct alignas(64) Slot {
    std::atomic<uint64_t> range{0};  // [lo, hi) in groups of 4 rows, lo in the high half
  };
  static uint64_t pack(int64_t lo, int64_t hi) { return static_cast<uint64_t>(lo) << 32 | static_cast<uint64_t>(hi); }

  bool take_front(int t, int64_t& g0, int64_t& g1) {
    uint64_t cur = slot_[t].range.load(std::memory_order_relaxed);
    for (;;) {
      const int64_t lo = static_cast<int64_t>(cur >> 32), hi = static_cast<int64_t>(cur & 0xffffffffu);
      if (lo >= hi) return false;
      g0 = lo;
      g1 = std::min(hi, lo + chunk_);
      if (slot_[t].range.compare_exchange_weak(cur, pack(g1, hi), std::memory_order_relaxed)) return true;
    }
  }

  bool take_back(int t, int64_t& g0, int64_t& g1) {
    uint64_t cur = slot_[t].range.load(std::memory_order_relaxed);
    for (;;) {
      const int64_t lo = static_cast<int64_t>(cur >> 32), hi = static_cast<int64_t>(cur & 0xffffffffu);
      if (lo >= hi) return false;
      g1 = hi;
      g0 = std::max(lo, hi - chunk_);
      if (slot_[t].range.compare_exchange_weak(cur, pack(lo, g0), std::memory_order_relaxed)) return true;
    }
  }

  Slot slot_[kMax];
  int64_t total_ = 0, chunk_ = 1;
  int n_ = 1;
};

// f(begin, end) over [0, total), rows shared by torch's intra-op threads (Shares).
template <typename F>
void parallel_rows(int64_t total, int64_t row_bytes, const F& f) {
  if (total <= 0) return;
  Shares shares;
  shares.set(total, row_bytes, at::get_num_threads());
  if (shares.size() <= 1) return f(int64_t{0}, total);
  at::parallel_for(0, shares.size(), 1, [&](int64_t wb, int64_t we) {
    for (int64_t w = wb; w < we; ++w) shares.run(static_cast<int>(w), f);
  });
}

// y [rows, n] = x [rows, k] W^T, weight rows split over torch's intra-op threads.
template <typename T>
void gemv_rows(const T* w, const float* x, float* y, int64_t rows, int64_t n, int64_t k) {
  parallel_rows(n, k * static_cast<int64_t>(sizeof(T)),
                [&](int64_t begin, int64_t end) { gemv_range(w, x, y, rows, n, k, begin, end); });
}

}  // namespace gemvk
