"""The reference model's seams: transforms before assign, training forward, tensor positions,
and a KV cache that follows the weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llamahub.model.args import ModelArgs
from llamahub.model.transformer import Linear, Transformer, assign_weights, build_meta, build_model
from llamahub.model.writer import random_state_dict

ARGS = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128, multiple_of=32)


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return random_state_dict(ARGS, seed=11, std=0.1)


def _tokens(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, ARGS.vocab_size, (2, n), generator=torch.Generator().manual_seed(seed))


def test_one_training_step_through_the_reference_model(state) -> None:
    model = build_model(ARGS, {k: v.clone() for k, v in state.items()})
    model.requires_grad_(True).train()
    tokens = _tokens(17)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    def loss_of() -> torch.Tensor:
        logits = model(tokens[:, :-1], use_cache=False)
        return nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    before = loss_of()
    before.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.layers[0].attention.wq.weight.grad.abs().sum() > 0  # type: ignore[union-attr]
    opt.step()
    opt.zero_grad()
    with torch.no_grad():
        assert loss_of() < before.detach()
    # the training forward never touched a KV cache
    assert model.layers[0].attention.cache is None


def test_cache_free_forward_equals_the_cached_forward(state) -> None:
    model = build_model(ARGS, state)
    tokens = _tokens(20, seed=1)
    with torch.inference_mode():
        cached = model(tokens, 0)
    plain = model(tokens, use_cache=False)
    assert (cached - plain).abs().max() < 1e-4


def test_a_module_swapped_before_assign_receives_the_weights(state) -> None:
    class Scaled(Linear):
        """A stand-in for a quantized/LoRA linear: same weight name, own forward, extra buffer."""

        def __init__(self, base: nn.Linear) -> None:
            super().__init__(base.in_features, base.out_features)
            self.register_buffer("scale", torch.full((), 2.0), persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * self.scale

    def swap_wo(model: Transformer) -> None:
        for layer in model.layers:
            with torch.device("cpu"):
                layer.attention.wo = Scaled(layer.attention.wo)

    plain = build_model(ARGS, state)
    swapped = build_model(ARGS, state, transforms=(swap_wo,))
    assert isinstance(swapped.layers[1].attention.wo, Scaled)
    wo = state["layers.1.attention.wo.weight"]
    assert swapped.layers[1].attention.wo.weight.data_ptr() == wo.data_ptr()
    tokens = _tokens(6, seed=2)
    with torch.inference_mode():
        assert not torch.allclose(plain(tokens, 0), swapped(tokens, 0))
    # doubling wo's output equals doubling its weight in a plain model
    doubled = {k: v * 2 if k.endswith("attention.wo.weight") else v for k, v in state.items()}
    with torch.inference_mode():
        assert torch.allclose(build_model(ARGS, doubled)(tokens, 0), swapped(tokens, 0), atol=1e-5)


def test_tensor_positions_give_the_same_logits_as_int_positions(state) -> None:
    a, b = build_model(ARGS, state), build_model(ARGS, state)
    tokens = _tokens(12, seed=3)
    b.setup_cache(2, 32)
    with torch.inference_mode():
        ref = torch.cat([a(tokens[:, :8], 0)] + [a(tokens[:, i:i + 1], i) for i in range(8, 12)], dim=1)
        got = [b(tokens[:, :8], torch.tensor(0))]
        got += [b(tokens[:, i:i + 1], torch.tensor(i)) for i in range(8, 12)]
    assert (torch.cat(got, dim=1) - ref).abs().max() < 1e-4
    assert b.cache_len == 32  # static shapes: the cache never grew


def test_cache_follows_the_weights_dtype_and_local_heads(state) -> None:
    model = build_model(ARGS, state, torch.bfloat16)
    with torch.inference_mode():
        model(_tokens(3), 0)
    cache = model.layers[0].attention.cache
    assert cache is not None and cache.k.dtype == torch.bfloat16 and cache.k.device == model.device
    assert cache.k.shape[1] == ARGS.kv_heads
    # a tensor-parallel split halves the heads an attention module holds: the cache follows
    meta = build_meta(ARGS)
    for layer in meta.layers:
        layer.attention.n_heads //= 2
        layer.attention.n_kv_heads //= 2
    meta.setup_cache(1, 8)
    assert meta.layers[0].attention.cache.k.shape == (1, ARGS.kv_heads // 2, 8, ARGS.head_dim)  # type: ignore[union-attr]
    model.reset_cache()
    model.cache_dtype = torch.float32
    model.setup_cache(1, 8)
    assert model.layers[1].attention.cache.k.dtype == torch.float32  # type: ignore[union-attr]


def test_assign_freezes_weights_and_refuses_missing_keys(state) -> None:
    model = build_model(ARGS, state)
    assert not any(p.requires_grad for p in model.parameters())
    partial = {k: v for k, v in state.items() if k != "norm.weight"}
    with pytest.raises(RuntimeError, match=r"norm\.weight"):
        assign_weights(build_meta(ARGS), partial)
