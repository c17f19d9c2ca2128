"""The fused decode block (``llamahub_cpu.block``, ``csrc/block.h``): one token's step through a
block in one kernel call gives the reference block's numbers, for every dtype, GQA and both RoPE
layouts, odd widths, a cache row of the server's slots, 1 and 2 threads; and it steps aside for
what it does not run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from llamahub_cpu import kernels
from llamahub_cpu.block import FusedBlock, fuse_blocks
from llamahub_cpu.engine import build_decoder, build_quant_decoder
from llamahub_cpu.quant import quantize, swap_quantized

from llamahub.model.args import ModelArgs
from llamahub.model.batching import TransformerSlots
from llamahub.model.transformer import Transformer, TransformerBlock, assign_weights, build_meta
from llamahub.reference import folder_artifacts, open_reference
from llamahub.registry import shipped

# Largest difference of the logits from the reference path's, relative to their spread. Both
# differ only in summation order (attention, the norms), but that ulp is amplified where it moves
# a value across a rounding boundary: bf16's, and the quantized models' activations (rounded to
# 16 bits for int8 weights, 8 for int4, at every linear).
TOLERANCE = {"fp32": 1e-5, "int8": 1e-3, "int4": 2e-2, "bf16": 2e-2}


def _args(**kw: object) -> ModelArgs:
    base: dict[str, object] = {"dim": 96, "n_layers": 2, "n_heads": 6, "n_kv_heads": 2, "vocab_size": 101,
                               "ffn_dim": 200, "norm_eps": 1e-5, "rope_theta": 10000.0, "max_seq_len": 64}
    return ModelArgs(**(base | kw))


def _state(model: Transformer, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, t in model.state_dict().items():
        if name.endswith("norm.weight"):
            state[name] = 1 + 0.1 * torch.randn(t.shape, generator=gen)
        else:
            state[name] = torch.randn(t.shape, generator=gen) * t.shape[-1] ** -0.5
    return state


def _pair(args: ModelArgs, dtype: str, layout: str, ops: object) -> tuple[Transformer, Transformer]:
    """(fused, reference) models with the same weights: the reference keeps the plain blocks."""
    models = []
    state = _state(build_meta(args, layout))
    for fused in (True, False):
        model = build_meta(args, layout)
        model.cache_dtype = torch.float32
        if dtype in ("int8", "int4"):
            swap_quantized(model, dtype, ops)
            tensors = {}
            for name, t in state.items():
                if name.endswith("norm.weight"):
                    tensors[name] = t
                elif name == "tok_embeddings.weight":
                    tensors[name] = t.bfloat16()
                else:
                    q, s = quantize(t, "int8" if name == "output.weight" else dtype)
                    stem = name.removesuffix("weight")
                    tensors[stem + "q"], tensors[stem + "scales"] = q, s
            if fused:
                assert fuse_blocks(model, ops)
            model.load_state_dict(tensors, strict=True, assign=True)
            model.eval()
        else:
            kernels.use_decode_kernel(model)
            if fused:
                assert fuse_blocks(model, ops)
            assign_weights(model, state, dtype=torch.float32 if dtype == "fp32" else torch.bfloat16)
        models.append(model)
    return models[0], models[1]


def _decode(model: Transformer, tokens: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model(torch.tensor([[t]]), i) for i, t in enumerate(tokens)], dim=1)


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "int8", "int4"])
@pytest.mark.parametrize("layout", ["interleaved", "half"])
def test_fused_decode_gives_the_reference_logits(dtype: str, layout: str, gemv: object, ops: object) -> None:
    fused, ref = _pair(_args(), dtype, layout, ops if dtype in ("int8", "int4") else gemv)
    assert isinstance(fused.layers[0], FusedBlock) and type(ref.layers[0]) is TransformerBlock
    tokens = [int(t) for t in torch.randint(0, 101, (40,), generator=torch.Generator().manual_seed(1))]
    a, b = _decode(fused, tokens), _decode(ref, tokens)
    assert (a - b).abs().max().item() <= TOLERANCE[dtype] * b.std().item()
    assert (a.argmax(-1) == b.argmax(-1)).float().mean().item() >= 0.95
    # the fused path wrote the cache the reference path reads: prefill after it agrees too
    with torch.inference_mode():
        more = torch.tensor([[3, 4, 5]])
        assert (fused(more, 40) - ref(more, 40)).abs().max().item() <= TOLERANCE[dtype] * b.std().item() * 10


@pytest.mark.parametrize("dtype", ["fp32", "int4"])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_odd_widths_and_threads(dtype: str, n_threads: int, gemv: object, ops: object,
                                threads: None) -> None:
    """Widths that are not whole blocks of 32 (quantized: padded) nor of 8 lanes, MHA, 1 and 2 threads."""
    torch.set_num_threads(n_threads)
    args = _args(dim=60, n_heads=3, n_kv_heads=3, ffn_dim=70)  # head_dim 20
    fused, ref = _pair(args, dtype, "interleaved", ops if dtype == "int4" else gemv)
    tokens = list(range(1, 30))
    a, b = _decode(fused, tokens), _decode(ref, tokens)
    assert (a - b).abs().max().item() <= TOLERANCE[dtype] * b.std().item()


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "int8"])
def test_the_numbers_do_not_depend_on_how_the_threads_share_the_rows(dtype: str, gemv: object, ops: object,
                                                                     threads: None) -> None:
    """Each row is summed whole by one thread, whichever thread takes it (its own share, or from the
    back of another's): 1, 2, 3 and 40 threads (more than the 4-row groups of every product here, so
    most only take from others) decode the very same logits, through the blocks and the head."""
    fused, _ = _pair(_args(dim=64, n_heads=4, n_kv_heads=2, ffn_dim=72), dtype, "interleaved",
                     ops if dtype == "int8" else gemv)
    tokens = list(range(1, 12))
    runs = []
    for n in (1, 2, 3, 40):
        torch.set_num_threads(n)
        fused.reset_cache()
        runs.append(_decode(fused, tokens))
    assert all(torch.equal(runs[0], other) for other in runs[1:])


def test_a_cache_row_of_the_servers_slots(gemv: object) -> None:
    """One sequence in slot 2 of the server's slots steps through the fused block at its own row
    and positions, and generates what the reference blocks generate there."""
    fused, ref = _pair(_args(), "fp32", "interleaved", gemv)

    def run(model: Transformer) -> list[int]:
        slots = TransformerSlots(model, 4)
        last = int(slots.prefill(2, [5, 9, 13]).argmax())
        out = [last]
        for step in range(10):
            last = int(slots.decode([2], [last], [3 + step])[0].argmax())
            out.append(last)
        return out

    assert run(fused) == run(ref)


def test_steps_aside_for_prompts_batches_and_foreign_linears(gemv: object) -> None:
    fused, _ = _pair(_args(), "fp32", "interleaved", gemv)
    block = fused.layers[0]
    calls: list[int] = []
    real = block._ops

    class Counting:
        def decode_block(self, *a: object) -> torch.Tensor:
            calls.append(1)
            return real.decode_block(*a)

    block._ops = Counting()
    with torch.inference_mode():
        fused(torch.tensor([[1, 2, 3]]), 0)  # a prompt: the reference path
        assert calls == []
        fused(torch.tensor([[4]]), 3)
        assert calls == [1]
        fused(torch.tensor([[4], [5]]), 0)  # two sequences at once: reference (SDPA) path
        assert calls == [1]
        block.attention.wq = torch.nn.Linear(96, 96, bias=False)  # another plugin's layer (say, LoRA)
        fused(torch.tensor([[6]]), 4)
        assert calls == [1]


def test_fused_blocks_off_by_environment(gemv: object, monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_meta(_args())
    monkeypatch.setenv("LLAMAHUB_CPU_FUSED", "0")
    assert not fuse_blocks(model, gemv)
    assert type(model.layers[0]) is TransformerBlock
    assert not fuse_blocks(model, None)


def test_kernel_rejects_what_does_not_fit(gemv: object) -> None:
    fused, _ = _pair(_args(), "fp32", "interleaved", gemv)
    block = fused.layers[0]
    a, f = block.attention, block.feed_forward
    weights = [a.wq.weight, a.wk.weight, a.wv.weight, a.wo.weight, f.w1.weight, f.w3.weight, f.w2.weight]
    k = v = torch.zeros(1, 2, 8, 16)
    x, table = torch.zeros(1, 1, 96), torch.zeros(8, 2)
    n = block.attention_norm.weight
    with pytest.raises(RuntimeError, match="out of range"):
        gemv.decode_block(x, n, n, 1e-5, weights, [], k, v, 0, 8, table, True)
    with pytest.raises(RuntimeError, match="wq, wk, wv"):
        gemv.decode_block(x, n, n, 1e-5, weights[:6], [], k, v, 0, 0, table, True)
    with pytest.raises(RuntimeError, match="do not fit"):
        gemv.decode_block(x, n, n, 1e-5, weights, [], torch.zeros(1, 3, 8, 16), torch.zeros(1, 3, 8, 16), 0,
                          0, table, True)


@pytest.mark.parametrize("dtype", ["bf16", "int8"])
def test_loaded_models_use_it_and_match_transformers_order(dtype: str, llama3_debug_folder: Path,
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             gemv: object, ops: object) -> None:
    """A loaded debug variant runs the fused blocks, and greedy decoding gives the tokens of the
    same model with them turned off."""
    artifacts = folder_artifacts(llama3_debug_folder, tmp_path)
    ref = open_reference(artifacts, shipped().resolve(llama3_debug_folder.name))

    def build() -> Transformer:
        if dtype == "int8":
            return build_quant_decoder(artifacts, ref.reader, dtype)[0]
        return build_decoder(ref.reader, dtype)

    def greedy(model: Transformer) -> list[int]:
        with torch.inference_mode():
            last = int(model(torch.tensor([[1, 5, 9, 2]]), 0)[0, -1].argmax())
            out = [last]
            for i in range(4, 24):
                last = int(model(torch.tensor([[last]]), i)[0, -1].argmax())
                out.append(last)
        return out

    fused = build()
    assert "fused decode block" in fused.kernel and isinstance(fused.layers[0], FusedBlock)
    monkeypatch.setenv("LLAMAHUB_CPU_FUSED", "0")
    plain = build()
    assert "fused" not in plain.kernel and type(plain.layers[0]) is TransformerBlock
    assert greedy(fused) == greedy(plain)
