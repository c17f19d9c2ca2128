"""Slots for continuous batching: each sequence in its own cache row, at its own position, gives
the logits it would have alone."""

from __future__ import annotations

import pytest
import torch

from llamahub.model.args import ModelArgs
from llamahub.model.batching import TransformerSlots
from llamahub.model.transformer import build_model
from llamahub.model.writer import random_state_dict

ARGS = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128, multiple_of=32)


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return random_state_dict(ARGS, seed=5, std=0.1)


def _prompt(n: int, seed: int) -> list[int]:
    return torch.randint(0, ARGS.vocab_size, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _alone(state: dict[str, torch.Tensor], prompt: list[int], steps: int) -> list[torch.Tensor]:
    """Greedy decode of one sequence through the int-position path: the logits of each step."""
    model = build_model(ARGS, state)
    out = []
    with torch.inference_mode():
        logits = model(torch.tensor([prompt]), 0)[0, -1]
        pos = len(prompt)
        for _ in range(steps):
            out.append(logits)
            tok = int(logits.argmax())
            logits = model(torch.tensor([[tok]]), pos)[0, -1]
            pos += 1
    return out


def test_one_sequence_in_slot_zero_matches_the_int_path_exactly(state) -> None:
    prompt = _prompt(9, 1)
    ref = _alone(state, prompt, 5)
    slots = TransformerSlots(build_model(ARGS, state), 4)
    logits = slots.prefill(0, prompt)
    pos = len(prompt)
    for expected in ref:
        assert torch.equal(logits, expected)
        logits = slots.decode([0], [int(logits.argmax())], [pos])[0]
        pos += 1


def test_sequences_join_and_leave_a_batch_in_their_own_slots(state) -> None:
    """Three prompts of different lengths in slots 2, 0, 3; the second joins late, the first leaves."""
    prompts = {2: _prompt(7, 2), 0: _prompt(12, 3), 3: _prompt(4, 4)}
    refs = {slot: _alone(state, p, 6) for slot, p in prompts.items()}
    dec = TransformerSlots(build_model(ARGS, state), 4)
    seen: dict[int, list[torch.Tensor]] = {}
    last: dict[int, torch.Tensor] = {}
    pos: dict[int, int] = {}

    def join(slot: int) -> None:
        last[slot] = dec.prefill(slot, prompts[slot])
        pos[slot] = len(prompts[slot])
        seen[slot] = [last[slot]]

    join(2)
    join(3)
    for step in range(5):
        if step == 2:
            join(0)  # joins while the others are mid-decode
        active = [s for s in (0, 2, 3) if s in last and len(seen[s]) < 6]
        logits = dec.decode(active, [int(last[s].argmax()) for s in active], [pos[s] for s in active])
        for row, s in enumerate(active):
            last[s], pos[s] = logits[row], pos[s] + 1
            seen[s].append(logits[row])
    assert len(seen[0]) == 4  # joined late: prefill + 3 batched steps
    for slot, got in seen.items():
        for a, b in zip(got, refs[slot], strict=False):
            assert (a - b).abs().max() < 1e-4
            assert int(a.argmax()) == int(b.argmax())


def test_slots_outside_the_range_are_refused(state) -> None:
    dec = TransformerSlots(build_model(ARGS, state), 2)
    with pytest.raises(ValueError, match="slots"):
        dec.prefill(2, [1, 2])
    with pytest.raises(ValueError, match="distinct"):
        dec.decode([0, 0], [1, 2], [3, 3])


def test_prompts_prefilled_together_decode_as_each_alone(state) -> None:
    """One forward over prompts of different lengths (the shorter padded at their end): each
    slot's logits, and those of the steps that follow, are the prompt's own alone."""
    prompts = {1: _prompt(3, 7), 3: _prompt(11, 8), 0: _prompt(6, 9)}
    refs = {slot: _alone(state, p, 5) for slot, p in prompts.items()}
    dec = TransformerSlots(build_model(ARGS, state), 4)
    order = list(prompts)
    logits = dec.prefill_many(order, [prompts[s] for s in order])
    assert logits.shape == (3, ARGS.vocab_size)
    pos = {s: len(prompts[s]) for s in order}
    for step in range(5):
        for row, s in enumerate(order):
            assert (logits[row] - refs[s][step]).abs().max() < 1e-4
            assert int(logits[row].argmax()) == int(refs[s][step].argmax())
        logits = dec.decode(order, [int(logits[row].argmax()) for row in range(3)], [pos[s] for s in order])
        pos = {s: p + 1 for s, p in pos.items()}
    single = dec.prefill_many([2], [prompts[3]])  # one prompt: the plain prefill
    assert torch.equal(single[0], refs[3][0])
