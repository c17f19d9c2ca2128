"""Our tokenizers as llama.cpp's GGUF vocabulary.

- SentencePiece (Llama 2) becomes llama.cpp's "llama" vocabulary: every piece with its score and
  type (normal, unknown, control, unused, byte), and whether a space is put before the text.
- tiktoken BPE (Llama 3.x) becomes a "gpt2" vocabulary with the "llama-bpe" pre-tokenizer: each
  rank's bytes spelled in GPT-2's byte-to-character alphabet, the merge that makes each token
  (found by running BPE on its bytes with only the lower ranks), then the 256 special tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamahub.errors import TokenizerError
from llamahub.plugin import read_ranks, spell, spelled_merges

# llama.cpp's token types
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass
class Vocab:
    """What a GGUF file says about its tokenizer (``tokenizer.ggml.*``)."""

    model: str  # "llama" (SentencePiece) or "gpt2" (byte-level BPE)
    tokens: list[str]
    types: list[int]
    bos_id: int
    eos_id: int
    scores: list[float] | None = None
    merges: list[str] | None = None
    pre: str | None = None
    unk_id: int | None = None
    pad_id: int | None = None
    specials: dict[str, int] = field(default_factory=dict)  # eot/eom ids by key name
    add_space_prefix: bool | None = None


def build_vocab(tokenizer: Any, *, chat: bool) -> Vocab:
    """The GGUF vocabulary of one of our tokenizers (``kind`` "sentencepiece" or "tiktoken")."""
    if tokenizer.kind == "sentencepiece":
        return sentencepiece_vocab(Path(tokenizer.path))
    if tokenizer.kind == "tiktoken":
        return tiktoken_vocab(tokenizer, chat=chat)
    raise TokenizerError(f"no GGUF vocabulary for a {tokenizer.kind!r} tokenizer",
                         hint="export a model with a SentencePiece or tiktoken tokenizer.model")


# --- SentencePiece ----------------------------------------------------------------------------


def sentencepiece_vocab(path: Path) -> Vocab:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(path))
    tokens, types, scores = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(float(sp.get_score(i)))
        if sp.is_unknown(i):
            types.append(UNKNOWN)
        elif sp.is_control(i):
            types.append(CONTROL)
        elif sp.is_unused(i):
            types.append(UNUSED)
        elif sp.is_byte(i):
            types.append(BYTE)
        else:
            types.append(NORMAL)
    pad = sp.pad_id()
    return Vocab("llama", tokens, types, bos_id=sp.bos_id(), eos_id=sp.eos_id(), scores=scores,
                 unk_id=sp.unk_id(), pad_id=pad if pad >= 0 else None,
                 add_space_prefix=_adds_dummy_prefix(path))


def _adds_dummy_prefix(path: Path) -> bool:
    """SentencePiece's ``add_dummy_prefix`` (True for Llama 2), read from the model's protobuf."""
    try:
        from sentencepiece import sentencepiece_model_pb2 as pb
    except ImportError:  # protobuf missing: Llama 2's tokenizer adds the prefix
        return True
    proto = pb.ModelProto()
    proto.ParseFromString(path.read_bytes())
    return bool(proto.normalizer_spec.add_dummy_prefix)


# --- tiktoken BPE -----------------------------------------------------------------------------


def tiktoken_vocab(tokenizer: Any, *, chat: bool) -> Vocab:
    ordered = read_ranks(Path(tokenizer.path))
    merges = [f"{left} {right}" for left, right in spelled_merges(ordered)]
    tokens = [spell(t) for t in ordered]
    types = [NORMAL] * len(tokens)
    for i in range(len(ordered), tokenizer.n_words):
        tokens.append(tokenizer.decode([i]))  # a special token decodes to its name
        types.append(CONTROL)
    eot = tokenizer.special_id("<|eot_id|>")
    return Vocab("gpt2", tokens, types, bos_id=tokenizer.bos_id, eos_id=eot if chat else tokenizer.eos_id,
                 merges=merges, pre="llama-bpe", pad_id=tokenizer.pad_id,
                 specials={"eot": eot, "eom": tokenizer.special_id("<|eom_id|>")})
