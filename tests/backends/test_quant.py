"""int8/int4 formats and kernels: round-trip bounds, and the compiled kernels against plain torch on
odd shapes, 1 to 8 rows (decode) and many (prefill), 1 and 2 threads, AVX2 and AVX-512 loops."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch
import torch.nn.functional as F
from llamahub_cpu.quant import BLOCK, QuantFeedForward, QuantLinear, dequantize, padded_k, quantize


def _weights(n: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * 0.02


@pytest.mark.parametrize("scheme", ["int8", "int4"])
@pytest.mark.parametrize("shape", [(64, 128), (7, 100), (33, 31), (1, 1)])
def test_round_trip_error_is_bounded_by_the_block_step(scheme: str, shape: tuple[int, int]) -> None:
    w = _weights(*shape)
    q, s = quantize(w, scheme)
    assert s.dtype == torch.float16 and s.shape == (shape[0], padded_k(shape[1]) // BLOCK)
    back = dequantize(q, s, scheme, shape[1])
    assert back.shape == w.shape
    # int8: at most half a step of its block (+ fp16 scale rounding); int4 may clip a value of the
    # sign opposite to the block's peak (the asymmetric -8..7 range), by at most 1.5 steps
    step = s.float().abs().repeat_interleave(BLOCK, dim=1)[:, :shape[1]]
    bound = 0.5 if scheme == "int8" else 1.5
    assert ((back - w).abs() <= step * bound + 1e-3 * w.abs() + 1e-8).all()
    if scheme == "int8":
        assert ((back - w).abs() <= step * 0.5 + 1e-3 * w.abs() + 1e-8).all()


def test_int4_scale_search_beats_the_plain_absmax_rule() -> None:
    w = _weights(128, 256, seed=3)
    q, s = quantize(w, "int4")
    ours = (dequantize(q, s, "int4") - w).pow(2).view(128, -1, BLOCK).sum(-1)
    blocks = w.view(128, -1, BLOCK)
    peak = blocks.gather(-1, blocks.abs().argmax(-1, keepdim=True))
    scale = (peak / -8).half().float()  # llama.cpp q4_0's rule: the peak maps to -8
    plain = ((blocks / scale).round().clamp(-8, 7) * scale - blocks).pow(2).sum(-1)
    assert (ours <= plain * (1 + 1e-3) + 1e-12).all()
    assert ours.sum() < 0.9 * plain.sum()


def test_relative_errors_of_the_two_schemes() -> None:
    w = _weights(256, 512)
    err = {s: ((dequantize(*quantize(w, s), s) - w).norm() / w.norm()).item() for s in ("int8", "int4")}
    assert err["int8"] < 0.01  # measured 0.0045
    assert err["int4"] < 0.12  # measured 0.09
    assert err["int4"] > 5 * err["int8"]


def test_int4_values_are_packed_two_per_byte() -> None:
    w = torch.zeros(1, 32)
    w[0, 0], w[0, 16] = 0.7, -0.8  # -0.8 is the block's largest magnitude: it maps to -8
    q, s = quantize(w, "int4")
    assert q.shape == (1, 16) and q.dtype == torch.uint8
    assert q[0, 0].item() & 0x0F != 8 and q[0, 0].item() >> 4 == 0  # -8 + 8 = 0 in the high nibble
    assert torch.allclose(dequantize(q, s, "int4"), w, atol=0.06)


def test_zero_weights_quantize_to_zero() -> None:
    for scheme in ("int8", "int4"):
        q, s = quantize(torch.zeros(3, 40), scheme)
        assert torch.equal(dequantize(q, s, scheme, 40), torch.zeros(3, 40))


def _reference(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor, scheme: str, k: int) -> torch.Tensor:
    return x.double() @ dequantize(q, s, scheme, k).double().T


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
@pytest.mark.parametrize("scheme", ["int8", "int4"])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_gemv_matches_torch_on_odd_shapes(ops: ModuleType, isa: str, scheme: str, n_threads: int,
                                          threads: None) -> None:
    from llamahub_cpu import quant_isa

    if isa == "avx512" and not (quant_isa() or "").startswith("AVX-512"):
        pytest.skip("no AVX-512 on this CPU")
    torch.set_num_threads(n_threads)
    bits = 8 if scheme == "int8" else 4
    ops.set_isa(isa)
    try:
        assert ops.isa().startswith(isa)
        for n, k in [(1, 32), (17, 96), (53, 100), (250, 64 * 5 + 7), (1000, 256)]:
            q, s = quantize(_weights(n, k, seed=n), scheme)
            for rows in range(1, 9):
                x = torch.randn(rows, k)
                y = ops.qgemv(x, q, s, bits)
                ref = _reference(x, q, s, scheme, k)
                assert y.shape == (rows, n)
                assert torch.allclose(y.double(), ref, rtol=1e-4, atol=1e-4), (n, k, rows)
    finally:
        ops.set_isa("avx512" if (quant_isa() or "").startswith("AVX-512") else "avx2")


def _rounded(x: torch.Tensor, k: int, limit: int) -> torch.Tensor:
    """x as qgemv_int rounds it (float64): per block of 32, d = max|x| / limit, q = round(x / d)
    (limit 127 for int4 weights, 32767 for int8)."""
    rows, kp = x.shape[0], padded_k(k)
    blocks = F.pad(x, (0, kp - k)).view(rows, -1, BLOCK)
    d = blocks.abs().amax(-1, keepdim=True) / limit
    xq = (blocks * torch.where(d != 0, 1 / d, torch.zeros_like(d))).round().clamp(-limit, limit)
    return (xq.double() * d.double()).view(rows, kp)[:, :k]


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
@pytest.mark.parametrize("scheme", ["int8", "int4"])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_integer_gemv_matches_float64_on_odd_shapes(ops: ModuleType, isa: str, scheme: str, n_threads: int,
                                                    threads: None) -> None:
    """Integer activations (8 bits for int4, 16 for int8) and dots: AVX2 (maddubs/madd) and AVX-512
    VNNI (dpbusd/dpwssd; odd block counts take its one-block tail), against float64 on the same
    rounded activations."""
    from llamahub_cpu import quant_isa

    if isa == "avx512" and not (quant_isa() or "").startswith("AVX-512"):
        pytest.skip("no AVX-512 on this CPU")
    torch.set_num_threads(n_threads)
    bits = 8 if scheme == "int8" else 4
    limit = 32767 if scheme == "int8" else 127
    ops.set_isa(isa)
    try:
        assert ops.isa() == ("avx512-vnni" if isa == "avx512" and quant_isa() == "AVX-512 VNNI" else isa)
        for n, k in [(1, 32), (17, 96), (53, 100), (250, 64 * 5 + 7), (1000, 256), (3, 2048)]:
            q, s = quantize(_weights(n, k, seed=n), scheme)
            for rows in range(1, 9):
                x = torch.randn(rows, k)
                x[0, :7] = 0  # an all-zero part of a block, and scales of very different sizes
                x[-1] *= 1e3
                y = ops.qgemv_int(x, q, s, bits)
                w = dequantize(q, s, scheme, k).double()
                ref = _rounded(x, k, limit) @ w.T
                assert y.shape == (rows, n)
                scale = _rounded(x, k, limit).abs() @ w.abs().T  # the sum of |terms|: float32 rounding
                assert ((y.double() - ref).abs() <= 1e-5 * scale + 1e-6).all(), (n, k, rows)
                # and off the unrounded product by at most half a step of each activation
                half_step = F.pad(x, (0, padded_k(k) - k)).view(rows, -1, BLOCK).abs().amax(-1) / (2 * limit)
                bound = half_step.double().repeat_interleave(BLOCK, 1)[:, :k] @ \
                    dequantize(q, s, scheme, k).double().abs().T
                assert ((y.double() - _reference(x, q, s, scheme, k)).abs() <= bound * 1.001 + 1e-5).all()
    finally:
        ops.set_isa("avx512" if (quant_isa() or "").startswith("AVX-512") else "avx2")


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_a_row_alone_gets_the_very_sums_it_gets_in_a_batch(ops: ModuleType, scheme: str) -> None:
    """A lone token runs four weight rows per pass (its own loop); a server's batched step one
    weight row for all its tokens. Each token's result must not depend on which ran it."""
    bits = 8 if scheme == "int8" else 4
    for n, k in [(70, 100), (7, 64 * 5 + 7), (1001, 256)]:  # rows not a multiple of 4, odd block counts
        q, s = quantize(_weights(n, k, seed=k), scheme)
        x = torch.randn(8, k, generator=torch.Generator().manual_seed(n))
        together = ops.qgemv_int(x, q, s, bits)
        for r in range(8):
            assert torch.equal(ops.qgemv_int(x[r:r + 1], q, s, bits)[0], together[r]), (n, k, r)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_gemm_matches_torch_for_long_inputs(ops: ModuleType, scheme: str, n_threads: int,
                                            threads: None) -> None:
    torch.set_num_threads(n_threads)
    bits = 8 if scheme == "int8" else 4
    for n, k, rows in [(300, 100, 9), (5000, 64, 33), (129, 2048, 70)]:
        q, s = quantize(_weights(n, k, seed=k), scheme)
        x = torch.randn(rows, k)
        y = ops.qgemm(x, q, s, bits)
        assert torch.allclose(y.double(), _reference(x, q, s, scheme, k), rtol=1e-4, atol=1e-4)
        assert torch.equal(ops.dequant(q, s, bits, 3, 9)[:, :k], dequantize(q, s, scheme, k)[3:9])


def test_kernels_refuse_bad_arguments(ops: ModuleType) -> None:
    q, s = quantize(_weights(8, 64), "int8")
    with pytest.raises(RuntimeError, match="rows"):
        ops.qgemv(torch.randn(9, 64), q, s, 8)
    with pytest.raises(RuntimeError, match="columns"):
        ops.qgemv(torch.randn(1, 65), q, s, 8)
    with pytest.raises(RuntimeError, match="bits"):
        ops.qgemv(torch.randn(1, 64), q, s, 5)
    with pytest.raises(RuntimeError, match="float16"):
        ops.qgemv(torch.randn(1, 64), q, s.float(), 8)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_quant_linear_kernel_and_plain_torch_paths_agree(ops: ModuleType, scheme: str) -> None:
    w = _weights(40, 70)
    q, s = quantize(w, scheme)
    fast, plain = QuantLinear(70, 40, scheme, ops), QuantLinear(70, 40, scheme, None)
    for layer in (fast, plain):
        layer.load_state_dict({"q": q, "scales": s}, assign=True)
    for shape in [(1, 1, 70), (2, 3, 70), (1, 20, 70)]:  # decode, batched decode, prefill
        x = torch.randn(*shape)
        # decode rounds the activations to integers (see the integer gemv test), prefill does not
        tol = 1e-2 if shape[1] * shape[0] <= 8 else 1e-5
        assert (fast(x) - plain(x)).norm() <= tol * plain(x).norm()
        assert fast(x).shape == (*shape[:-1], 40)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_fused_feed_forward_matches_its_three_linears(ops: ModuleType, scheme: str, n_threads: int,
                                                      threads: None) -> None:
    torch.set_num_threads(n_threads)
    dim, hidden = 72, 200  # neither a multiple of 64: odd block counts, rows not a multiple of 16
    layers = {}
    for name, (n, k) in {"w1": (hidden, dim), "w2": (dim, hidden), "w3": (hidden, dim)}.items():
        q, s = quantize(_weights(n, k, seed=n + k), scheme)
        layers[name] = QuantLinear(k, n, scheme, ops)
        layers[name].load_state_dict({"q": q, "scales": s}, assign=True)
    ff = QuantFeedForward(layers["w1"], layers["w2"], layers["w3"])
    for shape in [(1, 1, dim), (2, 4, dim), (1, 9, dim)]:  # decode, batched decode (8), prefill
        x = torch.randn(*shape)
        # the same three kernels called one by one: qgemv_int rounds each input the same way
        x2 = x.reshape(-1, dim)
        h = F.silu(layers["w1"](x2)) * layers["w3"](x2)
        assert torch.allclose(ff(x).reshape(-1, dim), layers["w2"](h), rtol=1e-4, atol=1e-5)
        assert ff(x).shape == shape


@pytest.mark.parametrize("scheme", ["int8", "int4"])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_compiled_quantize_follows_the_same_rules(ops: ModuleType, scheme: str, n_threads: int,
                                                  threads: None) -> None:
    from llamahub_cpu.quant import quantize_with

    torch.set_num_threads(n_threads)
    w = _weights(300, 100, seed=5)
    w[3, :] = 0  # an all-zero row
    q, s = quantize_with(ops, w, scheme)
    ref_q, ref_s = quantize(w, scheme)
    assert q.dtype == ref_q.dtype and q.shape == ref_q.shape and s.shape == ref_s.shape
    same = (s == ref_s).float().mean().item()
    assert same > 0.99  # a near-tie between int4 candidates may go either way (float sums)
    err = (dequantize(q, s, scheme, 100) - w).pow(2).sum()
    ref_err = (dequantize(ref_q, ref_s, scheme, 100) - w).pow(2).sum()
    assert err <= ref_err * 1.001
    if scheme == "int8":
        assert torch.equal(q, ref_q) and torch.equal(s, ref_s)
