"""The seam continuous batching needs from a backend: many sequences, each in its own KV slot.

A server admits a new sequence into a free slot (``prefill``), then decodes one token of every
active sequence per ``decode`` call, each at its own position; a finished or cancelled sequence
just leaves its slot, which the next prefill overwrites. A backend offers this by handing
``LlamaModel`` a ``slot_decoder`` factory; ``TransformerSlots`` is the one for the reference
transformer. Backends without one are served one request at a time through their ``Generator``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from llamahub.model.transformer import Transformer


class SlotDecoder(Protocol):
    """Decodes independent sequences held in ``slots`` KV-cache slots (numbered 0..slots-1)."""

    slots: int

    def prefill(self, slot: int, tokens: Sequence[int]) -> torch.Tensor:
        """Run a prompt into ``slot`` from position 0; logits [vocab] (float) after its last token."""

    def decode(self, slots: Sequence[int], tokens: Sequence[int], positions: Sequence[int]) -> torch.Tensor:
        """One token per slot at its position (one batched step); logits [len(slots), vocab]."""


class TransformerSlots:
    """``SlotDecoder`` over the reference transformer: slot i is row i of its KV cache."""

    def __init__(self, model: Transformer, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.model = model
        self.slots = slots

    def prefill(self, slot: int, tokens: Sequence[int]) -> torch.Tensor:
        self._check([slot])
        ids = torch.tensor([list(tokens)], dtype=torch.long)
        with torch.inference_mode():
            logits = self.model(ids, torch.tensor([0]), rows=torch.tensor([slot]))
        return logits[0, -1]

    def prefill_many(self, slots: Sequence[int], prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """Several prompts in one forward, each into its slot from position 0: logits [len(slots),
        vocab] after each one's last token (one pass over the weights instead of one per prompt).

        Shorter prompts are padded at their end; the padding's keys land past the prompt, where
        the sequence's own decode steps overwrite each position before anything attends to it.
        """
        self._check(slots)
        if len(slots) == 1:
            return self.prefill(slots[0], prompts[0])[None]
        lengths = torch.tensor([len(p) for p in prompts])
        ids = torch.zeros((len(slots), int(lengths.max())), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, : len(prompt)] = torch.tensor(list(prompt), dtype=torch.long)
        starts = torch.zeros(len(slots), dtype=torch.long)
        with torch.inference_mode():
            logits = self.model(ids, starts, rows=torch.tensor(list(slots)))
        return logits[torch.arange(len(slots)), lengths - 1]

    def decode(self, slots: Sequence[int], tokens: Sequence[int], positions: Sequence[int]) -> torch.Tensor:
        self._check(slots)
        ids = torch.tensor(list(tokens), dtype=torch.long)[:, None]
        with torch.inference_mode():
            logits = self.model(ids, torch.tensor(list(positions)), rows=torch.tensor(list(slots)))
        return logits[:, -1]

    def _check(self, slots: Sequence[int]) -> None:
        bad = [s for s in slots if not 0 <= s < self.slots]
        if bad or len(set(slots)) != len(slots):
            raise ValueError(f"slots {list(slots)} must be distinct, in 0..{self.slots - 1}")
