"""Tokenizers of the Llama family: SentencePiece (Llama 2) and tiktoken BPE (Llama 3.x).

Both classes satisfy the :class:`Tokenizer` protocol, so the chat formats and the generation loop
never need to know which one they hold. :func:`load_tokenizer` picks the class by sniffing the
file. The two generators at the bottom (:func:`write_tiktoken_ranks` and
:func:`train_sentencepiece`) build small but valid tokenizer files for tests and the demo: the
project does not ship Meta's Llama 3 tokenizer.
"""

from __future__ import annotations

import base64
import binascii
import io
import itertools
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import sentencepiece as spm
import tiktoken

from llamahub.errors import TokenizerError

__all__ = [
    "SentencePieceTokenizer",
    "TiktokenTokenizer",
    "Tokenizer",
    "load_tokenizer",
    "train_sentencepiece",
    "write_tiktoken_ranks",
]

KINDS = ("sentencepiece", "tiktoken")


@runtime_checkable
class Tokenizer(Protocol):
    """What the rest of llamahub needs from a tokenizer."""

    kind: str
    n_words: int
    bos_id: int
    eos_id: int
    pad_id: int
    stop_ids: frozenset[int]

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def special_id(self, name: str) -> int: ...

    def is_special(self, id: int) -> bool: ...


def _with_markers(ids: list[int], bos_id: int, eos_id: int, *, bos: bool, eos: bool) -> list[int]:
    return ([bos_id] if bos else []) + ids + ([eos_id] if eos else [])


def _unknown_special(name: str, known: Sequence[str]) -> TokenizerError:
    shown = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
    return TokenizerError(
        f"unknown special token {name!r}",
        hint=f"use one of the tokenizer's special token names: {shown}",
    )


def _bad_ids(exc: Exception, n_words: int) -> TokenizerError:
    return TokenizerError(
        f"cannot decode token ids: {exc}",
        hint=f"pass ids in 0..{n_words - 1}; were they produced by a different tokenizer?",
    )


def _check_file(path: Path) -> None:
    if not path.exists():
        raise TokenizerError(
            f"tokenizer file not found: {path}",
            hint="check the path; a Meta download keeps tokenizer.model next to params.json "
            "(Llama 3) or at the top of the download folder (Llama 2)",
        )
    if not path.is_file():
        raise TokenizerError(
            f"tokenizer path is not a file: {path}",
            hint="pass the tokenizer.model file itself, not its folder",
        )


# --- SentencePiece (Llama 2) ----------------------------------------------------------------


class SentencePieceTokenizer:
    """Llama 2's tokenizer: a SentencePiece model (BOS 1, EOS 2, no pad)."""

    kind = "sentencepiece"

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        _check_file(self.path)
        try:
            self._sp = spm.SentencePieceProcessor(model_file=str(self.path))
        except (RuntimeError, OSError) as exc:
            raise TokenizerError(
                f"{self.path} is not a readable SentencePiece model: {exc}",
                hint="re-download tokenizer.model and check it against tokenizer_checklist.chk",
            ) from exc
        self.n_words: int = self._sp.vocab_size()
        self.bos_id: int = self._sp.bos_id()
        self.eos_id: int = self._sp.eos_id()
        self.pad_id: int = self._sp.pad_id()
        self.stop_ids: frozenset[int] = frozenset({self.eos_id})
        self._specials = {"<s>": self.bos_id, "</s>": self.eos_id, "<unk>": self._sp.unk_id()}
        step = self._sp.piece_to_id("<step>")  # Code Llama 70B Instruct's turn separator
        if step != self._sp.unk_id():
            self._specials["<step>"] = step

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        """Token ids of ``text``; control-token text such as ``<s>`` is encoded as plain text."""
        ids = list(self._sp.encode(text))
        return _with_markers(ids, self.bos_id, self.eos_id, bos=bos, eos=eos)

    def decode(self, ids: Sequence[int]) -> str:
        try:
            return self._sp.decode([int(i) for i in ids])
        except IndexError as exc:
            raise _bad_ids(exc, self.n_words) from exc

    def special_id(self, name: str) -> int:
        if name not in self._specials or self._specials[name] < 0:
            raise _unknown_special(name, list(self._specials))
        return self._specials[name]

    def is_special(self, id: int) -> bool:
        if not 0 <= id < self.n_words:
            return False
        return bool(self._sp.is_control(id) or self._sp.is_unknown(id) or id == self._specials.get("<step>"))

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer({str(self.path)!r}, n_words={self.n_words})"


# --- tiktoken (Llama 3.x) -------------------------------------------------------------------

# Meta's Llama 3 pre-tokenizer, one alternative per line: English contractions, a word with at
# most one leading non-letter, numbers of 1-3 digits, punctuation runs (with an optional leading
# space and trailing newlines), newline runs, whitespace not followed by text, other whitespace.
LLAMA3_PATTERN = "|".join(
    [
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)",
        r"[^\r\n\p{L}\p{N}]?\p{L}+",
        r"\p{N}{1,3}",
        r" ?[^\s\p{L}\p{N}]+[\r\n]*",
        r"\s*[\r\n]+",
        r"\s+(?!\S)",
        r"\s+",
    ]
)

N_SPECIAL = 256
_NAMED_SPECIALS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
)

# tiktoken's regex engine recurses on very long runs of one character class; cut input first.
_MAX_CHUNK_CHARS = 400_000
_MAX_RUN_CHARS = 25_000
_RUNS = re.compile(r"\s+|\S+")
_RANK_LINE = re.compile(rb"^[A-Za-z0-9+/]+={0,2} [0-9]+\r?$")


def llama3_special_tokens() -> list[str]:
    """The 256 special token names of Llama 3.x, in id order (id = number of ranks + index)."""
    n_reserved = N_SPECIAL - len(_NAMED_SPECIALS)
    reserved = [f"<|reserved_special_token_{k}|>" for k in range(2, 2 + n_reserved)]
    return [*_NAMED_SPECIALS, *reserved]


def _read_ranks(path: Path) -> dict[bytes, int]:
    """Parse Meta's ranks file: one ``base64(token bytes) rank`` per line."""
    ranks: dict[bytes, int] = {}
    hint = "re-download tokenizer.model and check it against the folder's checklist.chk"
    for lineno, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error) as exc:
            raise TokenizerError(f"{path}:{lineno}: not a `base64 rank` line", hint=hint) from exc
    if not ranks or sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerError(f"{path}: ranks are not exactly 0..n-1 with distinct tokens", hint=hint)
    return ranks


def _split_long_runs(text: str) -> Iterator[str]:
    """Cut ``text`` so that no piece holds a whitespace or non-whitespace run over the limit."""
    start = 0
    for match in _RUNS.finditer(text):
        run_start, run_end = match.span()
        while run_end - run_start > _MAX_RUN_CHARS:
            run_start += _MAX_RUN_CHARS
            yield text[start:run_start]
            start = run_start
    yield text[start:]


def _safe_pieces(text: str) -> Iterator[str]:
    for offset in range(0, len(text), _MAX_CHUNK_CHARS):
        yield from _split_long_runs(text[offset : offset + _MAX_CHUNK_CHARS])


class TiktokenTokenizer:
    """Llama 3.x's tokenizer: tiktoken BPE over Meta's ranks file plus 256 special tokens."""

    kind = "tiktoken"

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        _check_file(self.path)
        try:
            ranks = _read_ranks(self.path)
        except OSError as exc:
            raise TokenizerError(
                f"cannot read {self.path}: {exc}", hint="check the file's permissions"
            ) from exc
        self.n_ranks = len(ranks)
        self._specials = {name: self.n_ranks + i for i, name in enumerate(llama3_special_tokens())}
        self._enc = tiktoken.Encoding(
            name=self.path.name,
            pat_str=LLAMA3_PATTERN,
            mergeable_ranks=ranks,
            special_tokens=self._specials,
        )
        self.n_words: int = self.n_ranks + N_SPECIAL
        self.bos_id: int = self._specials["<|begin_of_text|>"]
        self.eos_id: int = self._specials["<|end_of_text|>"]
        self.pad_id: int = self._specials["<|finetune_right_pad_id|>"]
        stops = ("<|end_of_text|>", "<|eot_id|>", "<|eom_id|>")
        self.stop_ids: frozenset[int] = frozenset(self._specials[name] for name in stops)

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        """Token ids of ``text``; special-token text typed by a user stays plain text."""
        ids: list[int] = []
        for piece in _safe_pieces(text):
            ids += self._enc.encode(piece, allowed_special=set(), disallowed_special=())
        return _with_markers(ids, self.bos_id, self.eos_id, bos=bos, eos=eos)

    def decode(self, ids: Sequence[int]) -> str:
        try:
            return self._enc.decode([int(i) for i in ids])
        except (KeyError, ValueError, OverflowError) as exc:
            raise _bad_ids(exc, self.n_words) from exc

    def special_id(self, name: str) -> int:
        if name not in self._specials:
            raise _unknown_special(name, list(self._specials))
        return self._specials[name]

    def is_special(self, id: int) -> bool:
        return self.n_ranks <= id < self.n_words

    def __repr__(self) -> str:
        return f"TiktokenTokenizer({str(self.path)!r}, n_words={self.n_words})"


# --- loading --------------------------------------------------------------------------------


def _looks_like_ranks(path: Path) -> bool:
    """True when the file's first line is ``<base64> <int>`` (Meta's tiktoken format)."""
    with path.open("rb") as f:
        head = f.read(4096)
    first_line = head.split(b"\n", 1)[0]
    return bool(_RANK_LINE.match(first_line)) and (b"\n" in head or len(head) < 4096)


def sniff_kind(path: Path) -> str:
    """"tiktoken" or "sentencepiece", from the first bytes of the file."""
    try:
        return "tiktoken" if _looks_like_ranks(path) else "sentencepiece"
    except OSError as exc:
        raise TokenizerError(f"cannot read {path}: {exc}", hint="check the file's permissions") from exc


def load_tokenizer(path: Path | str, kind: str | None = None) -> Tokenizer:
    """Open a ``tokenizer.model``; ``kind`` is "sentencepiece", "tiktoken" or None to sniff."""
    path = Path(path)
    if kind is not None and kind not in KINDS:
        raise TokenizerError(f"unknown tokenizer kind {kind!r}", hint=f"use one of {', '.join(KINDS)}")
    _check_file(path)
    if kind == "tiktoken":
        return TiktokenTokenizer(path)
    if kind == "sentencepiece":
        return SentencePieceTokenizer(path)
    if sniff_kind(path) == "tiktoken":
        return TiktokenTokenizer(path)
    try:
        return SentencePieceTokenizer(path)
    except TokenizerError as exc:
        raise TokenizerError(
            f"{path} is neither a tiktoken ranks file nor a SentencePiece model",
            hint="pass the tokenizer.model of a Llama download; re-download it if it is corrupt",
        ) from exc


# --- generators for tests and the demo ------------------------------------------------------

# Printable ASCII first, so that the multi-byte tokens of a synthetic vocabulary look like text.
_BYTE_ORDER = bytes(range(32, 127)) + bytes(range(32)) + bytes(range(127, 256))


def _synthetic_tokens() -> Iterator[bytes]:
    yield from (bytes([b]) for b in range(256))
    for length in itertools.count(2):
        yield from (bytes(combo) for combo in itertools.product(_BYTE_ORDER, repeat=length))


def write_tiktoken_ranks(path: Path | str, n_ranks: int = 256) -> None:
    """Write a valid Meta-format ranks file: the 256 single bytes, then distinct longer tokens."""
    if n_ranks < 256:
        raise TokenizerError(
            f"n_ranks={n_ranks} is too small", hint="use n_ranks >= 256 (every single byte needs a rank)"
        )
    tokens = itertools.islice(_synthetic_tokens(), n_ranks)
    lines = (f"{base64.b64encode(tok).decode('ascii')} {rank}\n" for rank, tok in enumerate(tokens))
    Path(path).write_text("".join(lines), encoding="ascii")


_CORPUS = """\
The lighthouse keeper wrote in her logbook every evening, long after the ships had passed.
She noted the direction of the wind, the height of the waves, and the colour of the sky at dusk.
Nobody had asked her to keep such careful records, but she believed that small habits,
repeated for years, become a kind of memory that outlives the person who kept them.

In the village below, the baker started work at four in the morning. He mixed flour, water,
salt and yeast, then waited while the dough rose slowly in the warm kitchen. His children
thought the waiting was the hardest part of the job. He told them that patience was simply
another ingredient, and that bread made in a hurry always tasted a little bit disappointed.

A good map is not the same thing as the land it describes. It leaves things out on purpose,
so that the traveller can see the roads, the rivers and the mountains without being lost in
detail. Every map maker must decide what matters and what can be forgotten, and those choices
shape the journeys of everyone who later trusts the map.

Numbers appear everywhere once you start looking for them: 7 days in a week, 12 months in a
year, 24 hours in a day, 60 minutes in an hour and 365 days in most years. The train leaves
at 08:15 from platform 3, and the ticket costs 42 euros, or 21 with a student card.

Learning a new language feels strange at first. The sounds are unfamiliar, the grammar seems
to change its mind without warning, and simple questions take a long time to answer. Then,
one ordinary afternoon, you notice that you understood a whole conversation without thinking
about it, and the language has quietly become part of how you see the world.

The old library had wooden shelves that reached the ceiling and ladders that rolled along
brass rails. Students came to read, to write, and sometimes only to sit in the quiet light
of the tall windows. The librarian knew where every book was kept, even the ones that had
been moved, borrowed, or misplaced by visitors who were certain they would remember.

Gardens teach their own lessons. Seeds planted too early freeze, seeds planted too late never
ripen, and the weather rarely agrees with the calendar. Still, every spring the gardener kneels
in the soil again, because growing something from almost nothing is worth the effort, the
mistakes and the waiting. "Next year," she says, "the tomatoes will be better."

Computers follow instructions exactly, which is both their strength and their weakness. A
program does what it was told to do, not what its author meant. Careful engineers therefore
write tests, read each other's code, and check their assumptions before they trust the results.
"""


def _corpus_sentences() -> Iterator[str]:
    return (line for line in _CORPUS.splitlines() if line.strip())


def train_sentencepiece(path: Path | str, vocab_size: int) -> None:
    """Train a tiny BPE SentencePiece model with Llama 2's conventions on a built-in corpus.

    BOS 1, EOS 2, UNK 0, no pad; byte fallback, so any text (emoji included) round-trips.
    Deterministic: the same ``vocab_size`` gives a byte-identical file.
    """
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_corpus_sentences(),
            model_writer=model,
            model_type="bpe",
            vocab_size=vocab_size,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            byte_fallback=True,
            character_coverage=1.0,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            num_threads=1,
            minloglevel=2,
        )
    except RuntimeError as exc:
        raise TokenizerError(
            f"cannot train a SentencePiece model with vocab_size={vocab_size}: {exc}",
            hint="choose a vocab_size between about 320 and 1900 (the range the built-in corpus supports)",
        ) from exc
    Path(path).write_bytes(model.getvalue())
