// Matrix-vector product for decoding (one token): y = W x, with W [N, K] row-major in fp32 or
// bf16 and x [..., K] holding one row; y [..., N] comes back in x's dtype (accumulated in fp32).
// Rows are split over torch's intra-op threads, so both cores stream weights (aten's fp32 GEMV
// uses one core in this torch build). AVX2 + FMA.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <cstring>

namespace {

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

// One row of W times x, four independent accumulators to keep the loads in flight.
template <typename T>
float dot(const T* w, const float* x, int64_t k) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= k; i += 32) {
    a0 = _mm256_fmadd_ps(load8(w + i), _mm256_loadu_ps(x + i), a0);
    a1 = _mm256_fmadd_ps(load8(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
    a2 = _mm256_fmadd_ps(load8(w + i + 16), _mm256_loadu_ps(x + i + 16), a2);
    a3 = _mm256_fmadd_ps(load8(w + i + 24), _mm256_loadu_ps(x + i + 24), a3);
  }
  float s = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  for (; i < k; ++i) s += to_float(w[i]) * x[i];
  return s;
}

template <typename T>
void gemv_rows(const T* w, const float* x, float* y, int64_t n, int64_t k) {
  at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) y[r] = dot(w + r * k, x, k);
  });
}

}  // namespace

torch::Tensor gemv(torch::Tensor x, torch::Tensor w) {
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous(), "weight must be a contiguous 2-D tensor");
  TORCH_CHECK(x.numel() == w.size(1), "x has ", x.numel(), " elements, weight has ", w.size(1), " columns");
  TORCH_CHECK(w.scalar_type() == torch::kFloat || w.scalar_type() == torch::kBFloat16,
              "weight must be float32 or bfloat16");
  TORCH_CHECK(x.dim() >= 1, "x must have at least one dimension");
  auto xf = x.reshape({-1}).to(torch::kFloat).contiguous();
  const int64_t n = w.size(0), k = w.size(1);
  auto y = torch::empty({n}, xf.options());
  const float* xp = xf.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  if (w.scalar_type() == torch::kBFloat16) {
    gemv_rows(static_cast<const uint16_t*>(w.data_ptr()), xp, yp, n, k);
  } else {
    gemv_rows(w.data_ptr<float>(), xp, yp, n, k);
  }
  auto shape = x.sizes().vec();
  shape.back() = n;
  return y.to(x.scalar_type()).view(shape);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gemv", &gemv, "y = W x for one token (fp32 or bf16 weights; result in x's dtype)");
}
