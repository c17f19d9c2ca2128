"""Sampling, the batch decode loop, streaming text and the limits of generation."""

from __future__ import annotations

import pytest
import torch

from llamahub.errors import GenerationError
from llamahub.model.args import ModelArgs
from llamahub.model.generation import Sampling, TextStream, generate_ids, sample
from llamahub.model.transformer import build_model
from llamahub.model.writer import random_state_dict

ARGS = ModelArgs(dim=32, n_layers=2, n_heads=4, vocab_size=97, multiple_of=16)


@pytest.fixture(scope="module")
def model():
    return build_model(ARGS, random_state_dict(ARGS, seed=3, std=0.2))


def _run(model, prompts, n, sampling, stop=frozenset()):
    rows: list[list[int]] = [[] for _ in prompts]
    for step in generate_ids(model, prompts, n, sampling, stop):
        for row, tok in zip(rows, step, strict=True):
            if tok is not None:
                row.append(tok)
    return rows


def test_greedy_is_argmax_of_full_forward(model) -> None:
    prompt = [5, 9, 11]
    (out,) = _run(model, [prompt], 6, Sampling(temperature=0))
    seq = list(prompt)
    ref = build_model(ARGS, random_state_dict(ARGS, seed=3, std=0.2))
    for tok in out:
        logits = ref(torch.tensor([seq]), 0)  # full forward from position 0, no cache reuse
        assert tok == int(logits[0, -1].argmax())
        seq.append(tok)


def test_batch_rows_equal_single_runs(model) -> None:
    prompts = [[1, 2, 3, 4, 5, 6], [7, 8], [9, 10, 11, 12]]
    batch = _run(model, prompts, 8, Sampling(temperature=0))
    for p, row in zip(prompts, batch, strict=True):
        assert _run(model, [p], 8, Sampling(temperature=0))[0] == row
        assert len(row) == 8


def test_seed_makes_sampling_repeatable(model) -> None:
    s = Sampling(temperature=1.0, top_p=0.95, seed=42)
    a = _run(model, [[1, 2]], 20, s)
    assert a == _run(model, [[1, 2]], 20, s)
    assert a != _run(model, [[1, 2]], 20, Sampling(temperature=1.0, top_p=0.95, seed=43))


def test_stop_token_ends_row_and_is_reported(model) -> None:
    (free,) = _run(model, [[3, 4]], 10, Sampling(temperature=0))
    stop = free[3]
    (out,) = _run(model, [[3, 4]], 10, Sampling(temperature=0), frozenset({stop}))
    assert out == free[: free.index(stop) + 1]


def test_top_k_one_is_greedy() -> None:
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(sample(logits, Sampling(temperature=1.5, top_p=1.0, top_k=1), gen), logits.argmax(-1))


def test_top_p_keeps_only_the_nucleus() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    gen = torch.Generator().manual_seed(0)
    seen = {int(sample(logits, Sampling(temperature=1.0, top_p=0.7), gen)) for _ in range(300)}
    assert seen == {0, 1}


@pytest.mark.parametrize("kwargs", [{"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}, {"top_k": -2}])
def test_bad_sampling_arguments(kwargs) -> None:
    with pytest.raises(GenerationError) as e:
        Sampling(**kwargs)
    assert e.value.hint


def test_text_stream_never_splits_a_multibyte_character() -> None:
    data = "héllo 🦙 wörld".encode()
    stream = TextStream(lambda ids: bytes(ids).decode("utf-8", errors="replace"))
    pieces = [stream.push(b) for b in data]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + stream.flush() == "héllo 🦙 wörld"
    assert pieces[data.index("🦙".encode()[0])] == ""  # held back until complete


def test_text_stream_cuts_at_stop_string_and_holds_back_prefixes() -> None:
    stream = TextStream(lambda ids: "".join(chr(i) for i in ids), stop=["END"])
    shown = [stream.push(ord(c)) for c in "abcENxEND tail"]
    text = "".join(shown)
    assert text == "abcENx" and stream.stopped
    assert shown[4] == ""  # "EN" could have started "END"
