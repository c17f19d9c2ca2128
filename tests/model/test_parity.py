"""Correctness by parity with transformers' LlamaForCausalLM on the same random weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llamahub.model.args import ModelArgs, RopeScaling
from llamahub.model.checkpoint import open_checkpoint
from llamahub.model.generation import Sampling, generate_ids
from llamahub.model.transformer import build_model
from llamahub.model.writer import random_state_dict, write_hf, write_meta

transformers = pytest.importorskip("transformers")

SCALED = RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position=8192)
CONFIGS = {
    # Llama 2 style: multi-head attention, embedding split on dim 1 across shards.
    "mha-llama2": (ModelArgs(dim=64, n_layers=2, n_heads=4, vocab_size=300, multiple_of=32), 1, True),
    "mha-llama2-2shards": (ModelArgs(dim=64, n_layers=3, n_heads=4, vocab_size=300, multiple_of=32), 2, True),
    # Llama 2 70B style: grouped-query attention, ffn multiplier.
    "gqa-llama2-70b-style": (ModelArgs(dim=128, n_layers=2, n_heads=8, n_kv_heads=2, vocab_size=320,
                                       multiple_of=64, ffn_dim_multiplier=1.3), 2, True),
    # Llama 3.1 style: GQA, theta 5e5, scaled RoPE, vocab-parallel embedding, 4 shards.
    "gqa-llama31-4shards": (ModelArgs(dim=128, n_layers=2, n_heads=8, n_kv_heads=4, vocab_size=512,
                                      multiple_of=32, ffn_dim_multiplier=1.3, rope_theta=500000.0,
                                      rope_scaling=SCALED), 4, False),
    # Llama 3.2 style: tied embeddings.
    "gqa-llama32-tied": (ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=1, vocab_size=260,
                                   multiple_of=32, rope_theta=500000.0, rope_scaling=SCALED,
                                   tie_embeddings=True), 1, False),
}


def _hf_model(folder: Path) -> torch.nn.Module:
    return transformers.LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    args, shards, llama2 = CONFIGS[request.param]
    state = random_state_dict(args, seed=7)
    root = tmp_path_factory.mktemp(request.param)
    write_hf(root / "hf", args, state)
    write_meta(root / "meta", args, state, shards=shards, llama2_style=llama2)
    return args, state, root, _hf_model(root / "hf")


def test_logits_match_transformers(case) -> None:
    args, state, _, hf = case
    tokens = torch.randint(0, args.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf(tokens).logits
    ours = build_model(args, state)(tokens, 0)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() <= 1e-4


def test_incremental_decode_matches_full_forward(case) -> None:
    args, state, _, hf = case
    tokens = torch.randint(0, args.vocab_size, (1, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(tokens).logits
    model = build_model(args, state)
    parts = [model(tokens[:, :10], 0)] + [model(tokens[:, i:i + 1], i) for i in range(10, 30)]
    assert (torch.cat(parts, dim=1) - ref).abs().max().item() <= 1e-4


def test_meta_and_hf_folders_give_same_logits(case) -> None:
    args, _, root, hf = case
    tokens = torch.randint(0, args.vocab_size, (1, 24), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf(tokens).logits
    for fmt in ("meta", "hf"):
        ckpt = open_checkpoint(root / fmt, args=args)
        logits = build_model(args, ckpt.state_dict(), torch.float32)(tokens, 0)
        assert (logits - ref).abs().max().item() <= 1e-4, fmt


def test_hf_folder_in_its_own_rope_layout_gives_same_logits(case) -> None:
    """Loading HF q/k rows as they are (no permutation, rotate halves) is exact too."""
    args, _, root, hf = case
    tokens = torch.randint(0, args.vocab_size, (1, 24), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = hf(tokens).logits
    ckpt = open_checkpoint(root / "hf", args=args)
    assert ckpt.rope_layout == "half"
    model = build_model(args, ckpt.state_dict("half"), torch.float32, rope_layout="half")
    assert (model(tokens, 0) - ref).abs().max().item() <= 1e-4
    for i in range(24):  # decode step by step through the KV cache
        step = model(tokens[:, i:i + 1], i)
        assert (step[0, 0] - ref[0, i]).abs().max().item() <= 1e-4


def test_greedy_generation_is_token_identical(case) -> None:
    args, state, _, hf = case
    prompt = torch.randint(3, args.vocab_size, (1, 12), generator=torch.Generator().manual_seed(3))
    n = 24
    with torch.no_grad():
        ref = hf.generate(prompt, max_new_tokens=n, do_sample=False, eos_token_id=None,
                          pad_token_id=0, min_new_tokens=n)[0, 12:].tolist()
    model = build_model(args, state)
    ours = [step[0] for step in generate_ids(model, [prompt[0].tolist()], n, Sampling(temperature=0),
                                             frozenset())]
    assert ours == ref
