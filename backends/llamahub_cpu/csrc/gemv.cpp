// The fp32/bf16 decode GEMV (gemv.h) and the fused decode block (block.h) as a torch extension.
#include "gemv.h"
#include "block.h"


torch::Tensor gemv(torch::Tensor x, torch::Tensor w) {
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous(), "weight must be a contiguous 2-D tensor");
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == w.size(1), "x must end in ", w.size(1), " columns");
  TORCH_CHECK(w.scalar_type() == torch::kFloat || w.scalar_type() == torch::kBFloat16,
              "weight must be float32 or bfloat16");
  const int64_t n = w.size(0), k = w.size(1), rows = x.numel() / k;
  TORCH_CHECK(rows >= 1 && rows <= gemvk::kMaxRows, "x must hold 1 to ", gemvk::kMaxRows, " rows, not ", rows);
  auto xf = x.reshape({rows, k}).to(torch::kFloat).contiguous();
  auto y = torch::empty({rows, n}, xf.options());
  const float* xp = xf.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  if (w.scalar_type() == torch::kBFloat16) {
    gemvk::gemv_rows(static_cast<const uint16_t*>(w.data_ptr()), xp, yp, rows, n, k);
  } else {
    gemvk::gemv_rows(w.data_ptr<float>(), xp, yp, rows, n, k);
  }
  auto shape = x.sizes().vec();
  shape.back() = n;
  return y.to(x.scalar_type()).view(shape);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // Without the GIL, as aten's own ops run: the server's event loop streams tokens meanwhile.
  m.def("gemv", &gemv, "y = x W^T for 1 to 8 rows of x (fp32 or bf16 weights; result in x's dtype)",
        py::call_guard<py::gil_scoped_release>());
  m.attr("max_rows") = gemvk::kMaxRows;
  m.def("decode_block", &decode_block, "one token through one transformer block (csrc/block.h)",
        py::call_guard<py::gil_scoped_release>());
}
