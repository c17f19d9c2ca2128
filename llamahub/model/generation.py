"""Token generation: sampling, the decode loop over a batch, and streaming detokenization."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from llamahub.errors import GenerationError

# A decoder maps tokens [B, T] at positions start.. to float logits [B, T, vocab].
Decoder = Callable[[torch.Tensor, int], torch.Tensor]


class Generator(Protocol):
    """A backend's own generation loop (llama.cpp, XLA, a remote server, ...).

    Same contract as ``generate_ids``: yield, per step, each row's new token (None once the row
    has finished); stop a row at ``max_new_tokens`` or a token of ``stop_ids`` (yielded).
    """

    def __call__(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, sampling: Sampling,
                 stop_ids: frozenset[int]) -> Iterator[list[int | None]]: ...


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen. temperature 0 means greedy (argmax)."""

    temperature: float = 0.6
    top_p: float = 0.9
    top_k: int = 0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise GenerationError(f"temperature must be >= 0, got {self.temperature}",
                                  hint="use 0 for greedy decoding, around 0.6-1.0 for sampling")
        if not 0 < self.top_p <= 1:
            raise GenerationError(f"top_p must be in (0, 1], got {self.top_p}",
                                  hint="use top_p=1.0 to disable nucleus sampling")
        if self.top_k < 0:
            raise GenerationError(f"top_k must be >= 0, got {self.top_k}", hint="use 0 to disable top-k")

    def generator(self) -> torch.Generator:
        gen = torch.Generator()
        if self.seed is None:
            gen.seed()
        else:
            gen.manual_seed(self.seed)
        return gen


def sample(logits: torch.Tensor, s: Sampling, gen: torch.Generator) -> torch.Tensor:
    """Next token per row of logits [B, vocab]."""
    if s.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / s.temperature
    if s.top_k:
        kth = torch.topk(logits, min(s.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if s.top_p < 1.0:
        sorted_p, order = torch.sort(probs, dim=-1, descending=True)
        cum = torch.cumsum(sorted_p, dim=-1)
        sorted_p = sorted_p.masked_fill(cum - sorted_p > s.top_p, 0.0)
        choice = torch.multinomial(sorted_p / sorted_p.sum(-1, keepdim=True), 1, generator=gen)
        return order.gather(-1, choice).squeeze(-1)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


def generate_ids(decoder: Decoder, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                 sampling: Sampling, stop_ids: frozenset[int]) -> Iterator[list[int | None]]:
    """Yield, per step, each row's new token (None once the row has finished).

    Rows start decoding together from the shortest prompt; a longer prompt keeps feeding its
    own tokens until it is exhausted, so every row sees exactly its prompt (Meta's scheme).
    A stop token ends its row and is yielded; the caller decides whether to show it.
    """
    bsz = len(prompts)
    lens = [len(p) for p in prompts]
    total = max(lens) + max_new_tokens
    tokens = torch.zeros((bsz, total), dtype=torch.long)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = torch.tensor(p, dtype=torch.long)
    in_prompt = torch.arange(total)[None, :] < torch.tensor(lens)[:, None]
    stop = torch.tensor(sorted(stop_ids), dtype=torch.long)
    produced = [0] * bsz
    done = [False] * bsz
    gen = sampling.generator()
    prev = 0
    for cur in range(min(lens), total):
        with torch.inference_mode():  # per step: a suspended generator must not leak the mode
            logits = decoder(tokens[:, prev:cur], prev)[:, -1]
        nxt = torch.where(in_prompt[:, cur], tokens[:, cur], sample(logits, sampling, gen))
        tokens[:, cur] = nxt
        prev = cur
        step: list[int | None] = [None] * bsz
        for i in range(bsz):
            if done[i] or bool(in_prompt[i, cur]):
                continue
            tok = int(nxt[i])
            step[i] = tok
            produced[i] += 1
            done[i] = produced[i] >= max_new_tokens or bool(torch.isin(nxt[i], stop))
        if any(t is not None for t in step):
            yield step
        if all(done):
            return


class DecoderLoop:
    """The default ``Generator``: ``generate_ids`` over a decoder callable."""

    def __init__(self, decoder: Decoder) -> None:
        self.decoder = decoder

    def __call__(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, sampling: Sampling,
                 stop_ids: frozenset[int]) -> Iterator[list[int | None]]:
        return generate_ids(self.decoder, prompts, max_new_tokens, sampling, stop_ids)


class TextStream:
    """Turns a growing list of token ids into text pieces.

    Never emits half of a multi-byte character (a trailing U+FFFD is held back until the next
    token completes it) and never emits a prefix of a stop string until it is known not to be one.
    """

    def __init__(self, decode: Callable[[list[int]], str], stop: Sequence[str] = ()) -> None:
        self._decode = decode
        self._stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.text = ""  # everything decoded so far, cut at a stop string once one is found
        self.emitted = 0
        self.stopped = False

    def push(self, token: int) -> str:
        """Add a token; return the text that is now safe to show."""
        if self.stopped:
            return ""
        self.ids.append(token)
        self.text = self._decode(self.ids)
        for s in self._stop:
            at = self.text.find(s)
            if at >= 0:
                self.text, self.stopped = self.text[:at], True
        if self.stopped:
            return self._take(len(self.text))
        safe = len(self.text)
        if self.text.endswith("\ufffd"):
            safe = len(self.text.rstrip("\ufffd"))
        safe = min(safe, len(self.text) - self._stop_prefix_len())
        return self._take(max(safe, self.emitted))

    def flush(self) -> str:
        """At the end: whatever is left (a partial stop string is real text after all)."""
        return self._take(len(self.text))

    def _stop_prefix_len(self) -> int:
        best = 0
        for s in self._stop:
            for n in range(min(len(s) - 1, len(self.text)), 0, -1):
                if self.text.endswith(s[:n]):
                    best = max(best, n)
                    break
        return best

    def _take(self, upto: int) -> str:
        piece = self.text[self.emitted:upto]
        self.emitted = max(self.emitted, upto)
        return piece
