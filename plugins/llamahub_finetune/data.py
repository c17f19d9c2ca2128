"""Training data: JSONL records → token examples with loss masks → batches (padded or packed).

A record is ``{"messages": [...]}`` (a dialog; the loss counts only the assistant's answers) or
``{"text": "..."}`` (the loss counts every token). A dialog gives one example per assistant
turn: the prompt exactly as the chat format encodes it at inference (``encode_dialog``), then
the answer and the token that ends the turn. Records are split into train and held-out sets
before encoding, by a seeded shuffle.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import llamahub.plugin as lp
from llamahub.errors import ChatFormatError, TrainingDataError

IGNORE = -100  # target value the loss skips


@dataclass(frozen=True)
class Example:
    tokens: tuple[int, ...]
    trained: tuple[bool, ...]  # per token: is it a target of the loss?

    def __len__(self) -> int:
        return len(self.tokens)


def read_records(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) of every non-blank line; a bad line is a TrainingDataError naming it."""
    out = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise TrainingDataError(f"cannot read {path}: {e}", hint="pass a UTF-8 JSONL file") from e
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            raise TrainingDataError(f"{path}:{number} is not JSON ({e.args[0]})",
                                    hint="write one JSON object per line") from e
        if not isinstance(record, dict) or not ({"messages", "text"} & set(record)):
            raise TrainingDataError(f"{path}:{number} has neither 'messages' nor 'text'",
                                    hint='write {"messages": [...]} or {"text": "..."} records')
        out.append((number, record))
    if not out:
        raise TrainingDataError(f"{path} holds no records", hint="add JSONL records to train on")
    return out


def split(records: list[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """(train, held out): a seeded shuffle; at least one of each when there are two or more."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    held = round(len(records) * fraction)
    if fraction > 0 and len(records) >= 2:
        held = min(max(held, 1), len(records) - 1)
    held_out = sorted(order[:held])
    kept = sorted(order[held:])
    return [records[i] for i in kept], [records[i] for i in held_out]


class Encoder:
    """Turns records into examples with a base's tokenizer and chat format, within a context."""

    def __init__(self, tokenizer: lp.Tokenizer, chat_format: str, context: int, *, truncate: bool,
                 where: Path) -> None:
        self.tokenizer = tokenizer
        self.chat_format = chat_format
        self.stop = min(lp.chat_stop_ids(tokenizer, chat_format))
        if chat_format == "llama3":
            self.stop = tokenizer.special_id("<|eot_id|>")
        elif chat_format == "codellama70b":  # every turn ends with <step>, the answer's too
            self.stop = tokenizer.special_id("<step>")
        self.context = context
        self.truncate = truncate
        self.where = where

    def encode(self, number: int, record: dict[str, Any]) -> list[Example]:
        if "messages" in record:
            examples = self._dialog(number, record["messages"])
        else:
            if not isinstance(record["text"], str) or not record["text"]:
                raise TrainingDataError(f"{self.where}:{number}: 'text' must be a non-empty string",
                                        hint="drop the record or give it text")
            ids = self.tokenizer.encode(record["text"], bos=True, eos=True)
            examples = [Example(tuple(ids), (False, *([True] * (len(ids) - 1))))]
        return [self._fit(number, e) for e in examples]

    def _dialog(self, number: int, messages: Any) -> list[Example]:
        if not isinstance(messages, list) or not messages:
            raise TrainingDataError(f"{self.where}:{number}: 'messages' must be a non-empty list",
                                    hint='write [{"role": "user", ...}, {"role": "assistant", ...}]')
        out = []
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") != "assistant":
                continue
            try:
                prompt = lp.encode_dialog(self.tokenizer, messages[:i], self.chat_format)
            except ChatFormatError as e:
                raise TrainingDataError(f"{self.where}:{number}: {e.message}", hint=e.hint) from e
            if not isinstance(message.get("content"), str):
                raise TrainingDataError(f"{self.where}:{number}: message {i} has no text content",
                                        hint="give every message a string 'content'")
            answer = [*self.tokenizer.encode(message["content"].strip()), self.stop]
            out.append(Example(tuple(prompt + answer), tuple([False] * len(prompt) + [True] * len(answer))))
        if not out:
            raise TrainingDataError(f"{self.where}:{number}: the dialog has no assistant message to learn",
                                    hint="end each dialog with the assistant's answer")
        return out

    def _fit(self, number: int, example: Example) -> Example:
        if len(example) <= self.context:
            return example
        if not self.truncate:
            raise TrainingDataError(
                f"{self.where}:{number} is {len(example)} tokens, beyond the {self.context}-token context",
                hint="shorten it, set truncate = true, or fine-tune for a longer context "
                     "(context_length with rope_scaling)")
        return Example(example.tokens[:self.context], example.trained[:self.context])


def encode_all(encoder: Encoder, records: list[tuple[int, dict[str, Any]]]) -> list[Example]:
    return [e for number, record in records for e in encoder.encode(number, record)]


# --- batches ------------------------------------------------------------------------------


@dataclass
class Batch:
    inputs: torch.Tensor  # [B, T] token ids
    targets: torch.Tensor  # [B, T] next-token ids, IGNORE where the loss skips
    mask: torch.Tensor | None  # [B, 1, T, T] boolean (packed rows), None for causal padding

    @property
    def n_targets(self) -> int:
        return int((self.targets != IGNORE).sum())


def _pairs(example: Example) -> tuple[list[int], list[int]]:
    inputs = list(example.tokens[:-1])
    targets = [t if on else IGNORE for t, on in zip(example.tokens[1:], example.trained[1:], strict=True)]
    return inputs, targets


def padded(examples: Sequence[Example], pad_id: int) -> Batch:
    """Right-padded rows: causal attention keeps pads out of every real token's view."""
    pairs = [_pairs(e) for e in examples]
    width = max(len(i) for i, _ in pairs)
    inputs = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    targets = torch.full((len(pairs), width), IGNORE, dtype=torch.long)
    for row, (i, t) in enumerate(pairs):
        inputs[row, :len(i)] = torch.tensor(i)
        targets[row, :len(t)] = torch.tensor(t)
    return Batch(inputs, targets, None)


def packed(examples: Sequence[Example], pad_id: int, width: int) -> Batch:
    """Examples laid end to end in rows of ``width``, each seeing only itself (block-diagonal
    causal mask; RoPE depends only on distances, so the offset in the row changes nothing)."""
    rows: list[list[tuple[list[int], list[int]]]] = [[]]
    used = 0
    for example in examples:
        pair = _pairs(example)
        if used + len(pair[0]) > width and rows[-1]:
            rows.append([])
            used = 0
        rows[-1].append(pair)
        used += len(pair[0])
    inputs = torch.full((len(rows), width), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    segment = torch.full((len(rows), width), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for s, (i, t) in enumerate(row):
            inputs[r, at:at + len(i)] = torch.tensor(i)
            targets[r, at:at + len(t)] = torch.tensor(t)
            segment[r, at:at + len(i)] = s
            at += len(i)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    same = segment[:, :, None] == segment[:, None, :]
    return Batch(inputs, targets, (same & causal)[:, None])


def step_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Example indices of each step of an epoch: a shuffle seeded by (seed, epoch)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=gen).tolist()
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]
