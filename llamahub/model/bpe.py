"""Llama 3.x's tiktoken ranks as a byte-level BPE vocabulary with merges.

Formats that spell BPE tokens as text (Hugging Face's ``tokenizer.json``, llama.cpp's GGUF "gpt2"
vocabulary) write each rank's bytes in GPT-2's byte-to-character alphabet and list, for every token
longer than one byte, the merge that makes it: found by running BPE on its bytes with only the
lower ranks.
"""

from __future__ import annotations

import base64
import functools
from pathlib import Path


@functools.cache
def byte_alphabet() -> tuple[str, ...]:
    """GPT-2's printable stand-in for each byte: printable Latin-1 bytes are themselves, the
    others map in order to U+0100 onwards."""
    printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    out, extra = [], 0
    for b in range(256):
        if b in printable:
            out.append(chr(b))
        else:
            out.append(chr(0x100 + extra))
            extra += 1
    return tuple(out)


def spell(token: bytes) -> str:
    chars = byte_alphabet()
    return "".join(chars[b] for b in token)


def read_ranks(path: Path) -> list[bytes]:
    """The token bytes of a Meta ranks file, in rank order."""
    ranked: dict[int, bytes] = {}
    for line in path.read_bytes().splitlines():
        if line.strip():
            token, rank = line.split()
            ranked[int(rank)] = base64.b64decode(token)
    return [ranked[r] for r in range(len(ranked))]


def merge_of(token: bytes, ranks: dict[bytes, int], rank: int) -> tuple[bytes, bytes] | None:
    """The two parts BPE joins to make ``token``: merge its bytes by lowest rank below ``rank``
    until two parts are left (None when the lower ranks cannot build it)."""
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best, at = rank, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1], rank)
            if r < best:
                best, at = r, i
        if at < 0:
            return None
        parts[at:at + 2] = [parts[at] + parts[at + 1]]
    return (parts[0], parts[1]) if len(parts) == 2 else None


def spelled_merges(ordered: list[bytes]) -> list[tuple[str, str]]:
    """The merges of a rank-ordered vocabulary, in rank order, spelled in the byte alphabet."""
    ranks = {tok: r for r, tok in enumerate(ordered)}
    merges = []
    for r, tok in enumerate(ordered):
        if len(tok) > 1 and (pair := merge_of(tok, ranks, r)) is not None:
            merges.append((spell(pair[0]), spell(pair[1])))
    return merges
