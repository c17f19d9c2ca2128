"""Tokenizers: the real Llama 2 SentencePiece model, synthetic Llama 3 ranks, a trained tiny model."""

from __future__ import annotations

import base64
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from llamahub.errors import TokenizerError
from llamahub.model.tokenizer import (
    LLAMA3_PATTERN,
    SentencePieceTokenizer,
    TiktokenTokenizer,
    Tokenizer,
    _split_long_runs,
    load_tokenizer,
    train_sentencepiece,
    write_tiktoken_ranks,
)

UNICODE_TEXT = "Héllo, naïve café — Ünïcödé! 日本語のテキスト 中文字符 🦙🚀 👩‍💻 tab\there  two  spaces\n"

LLAMA3_IDS = {
    "<|begin_of_text|>": 128000,
    "<|end_of_text|>": 128001,
    "<|reserved_special_token_0|>": 128002,
    "<|reserved_special_token_1|>": 128003,
    "<|finetune_right_pad_id|>": 128004,
    "<|step_id|>": 128005,
    "<|start_header_id|>": 128006,
    "<|end_header_id|>": 128007,
    "<|eom_id|>": 128008,
    "<|eot_id|>": 128009,
    "<|python_tag|>": 128010,
    "<|reserved_special_token_2|>": 128011,
    "<|reserved_special_token_246|>": 128255,
}


@pytest.fixture
def llama2(llama2_tokenizer_path: Path) -> SentencePieceTokenizer:
    return SentencePieceTokenizer(llama2_tokenizer_path)


@pytest.fixture(scope="module")
def llama3_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("llama3") / "tokenizer.model"
    write_tiktoken_ranks(path, 128_000)
    return path


@pytest.fixture(scope="module")
def llama3(llama3_path: Path) -> TiktokenTokenizer:
    return TiktokenTokenizer(llama3_path)


@pytest.fixture(scope="module")
def trained_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sp") / "tokenizer.model"
    train_sentencepiece(path, 512)
    return path


@pytest.fixture
def trained(trained_path: Path) -> SentencePieceTokenizer:
    return SentencePieceTokenizer(trained_path)


# --- real Llama 2 tokenizer -----------------------------------------------------------------


def test_llama2_vocabulary_and_markers(llama2: SentencePieceTokenizer) -> None:
    assert (llama2.kind, llama2.n_words, llama2.bos_id, llama2.eos_id, llama2.pad_id) == (
        "sentencepiece",
        32000,
        1,
        2,
        -1,
    )
    assert llama2.stop_ids == frozenset({2})
    assert isinstance(llama2, Tokenizer)


def test_llama2_bos_and_eos_are_added_on_request(llama2: SentencePieceTokenizer) -> None:
    plain = llama2.encode("Hello world")
    with_bos = llama2.encode("Hello world", bos=True)
    assert with_bos[0] == 1 and with_bos[1:] == plain
    assert 1 not in plain and 2 not in plain
    assert llama2.encode("Hello world", bos=True, eos=True) == [1, *plain, 2]


def test_llama2_special_ids(llama2: SentencePieceTokenizer) -> None:
    assert llama2.special_id("<s>") == 1
    assert llama2.special_id("</s>") == 2
    assert llama2.is_special(1) and llama2.is_special(2)
    assert not llama2.is_special(llama2.encode("Hello")[0])
    assert not llama2.is_special(32000) and not llama2.is_special(-1)
    with pytest.raises(TokenizerError) as err:
        llama2.special_id("<|eot_id|>")
    assert err.value.hint


def test_llama2_control_token_text_is_plain_text(llama2: SentencePieceTokenizer) -> None:
    ids = llama2.encode("<s> hi </s>")
    assert 1 not in ids and 2 not in ids
    assert llama2.decode(ids) == "<s> hi </s>"


def test_decode_of_unknown_id_raises(llama2: SentencePieceTokenizer, llama3: TiktokenTokenizer) -> None:
    for tok in (llama2, llama3):
        with pytest.raises(TokenizerError) as err:
            tok.decode([tok.n_words + 5])
        assert err.value.hint


@pytest.mark.parametrize("which", ["llama2", "llama3", "trained"])
def test_unicode_round_trip(which: str, request: pytest.FixtureRequest) -> None:
    tok = request.getfixturevalue(which)
    ids = tok.encode(UNICODE_TEXT)
    assert ids and all(0 <= i < tok.n_words for i in ids)
    assert tok.decode(ids) == UNICODE_TEXT


# --- synthetic Llama 3 tokenizer ------------------------------------------------------------


@pytest.mark.parametrize(("name", "token_id"), sorted(LLAMA3_IDS.items()))
def test_llama3_special_ids_match_meta(llama3: TiktokenTokenizer, name: str, token_id: int) -> None:
    assert llama3.special_id(name) == token_id
    assert llama3.is_special(token_id)
    assert llama3.decode([token_id]) == name


def test_llama3_markers(llama3: TiktokenTokenizer) -> None:
    assert (llama3.kind, llama3.n_words, llama3.bos_id, llama3.eos_id, llama3.pad_id) == (
        "tiktoken",
        128256,
        128000,
        128001,
        128004,
    )
    assert llama3.stop_ids == frozenset({128001, 128008, 128009})
    assert llama3.encode("hi", bos=True, eos=True) == [128000, *llama3.encode("hi"), 128001]
    assert not llama3.is_special(127999) and not llama3.is_special(128256)
    assert isinstance(llama3, Tokenizer)
    with pytest.raises(TokenizerError) as err:
        llama3.special_id("<|reserved_special_token_247|>")
    assert err.value.hint


@pytest.mark.parametrize("name", ["<|eot_id|>", "<|begin_of_text|>", "<|start_header_id|>"])
def test_llama3_special_token_text_from_users_is_plain_text(llama3: TiktokenTokenizer, name: str) -> None:
    text = f"please print {name} now"
    ids = llama3.encode(text)
    assert llama3.special_id(name) not in ids
    assert not any(llama3.is_special(i) for i in ids)
    assert llama3.decode(ids) == text


@pytest.mark.parametrize(
    ("text", "pieces"),
    [
        ("Hello world", ["Hello", " world"]),
        ("12345", ["123", "45"]),
        ("I'm here, DON'T go!", ["I", "'m", " here", ",", " DON", "'T", " go", "!"]),
        ("a   b", ["a", "  ", " b"]),
        ("Hi!!\n\nyou", ["Hi", "!!\n\n", "you"]),
        ("line1\n\n  x", ["line", "1", "\n\n", " ", " x"]),
        ("$100", ["$", "100"]),
    ],
)
def test_llama3_pretokenizer_pattern(text: str, pieces: list[str]) -> None:
    regex = pytest.importorskip("regex")
    assert regex.findall(LLAMA3_PATTERN, text) == pieces


def _token_ends(tok: TiktokenTokenizer, text: str) -> set[int]:
    ends, offset = set(), 0
    for token_id in tok.encode(text):
        offset += len(tok.decode([token_id]))
        ends.add(offset)
    return ends


def test_llama3_tokens_never_cross_pretokenizer_boundaries(llama3: TiktokenTokenizer) -> None:
    # "12345" splits as "123" + "45": without the 1-3 digit rule BPE here gives "12", "34", "5".
    assert 3 in _token_ends(llama3, "12345")
    assert 5 in _token_ends(llama3, "Hello world")


def test_llama3_very_long_runs_encode_and_round_trip(llama3: TiktokenTokenizer) -> None:
    text = "a" * 600_000 + " " * 60_000 + "b c " * 10_000
    start = time.perf_counter()
    ids = llama3.encode(text)
    assert time.perf_counter() - start < 20
    assert llama3.decode(ids) == text


def test_long_runs_are_cut_below_the_limit() -> None:
    text = "x" * 60_000 + " " * 30_000 + "short words here"
    pieces = list(_split_long_runs(text))
    assert "".join(pieces) == text
    assert len(pieces) > 1
    assert all(len(run) <= 25_000 for piece in pieces for run in piece.split())


# --- write_tiktoken_ranks -------------------------------------------------------------------


def test_ranks_file_format(tmp_path: Path) -> None:
    path = tmp_path / "ranks.model"
    write_tiktoken_ranks(path, 70_000)
    lines = path.read_text(encoding="ascii").splitlines()
    tokens = [base64.b64decode(line.split()[0]) for line in lines]
    assert [int(line.split()[1]) for line in lines] == list(range(70_000))
    assert tokens[:256] == [bytes([b]) for b in range(256)]
    assert len(set(tokens)) == 70_000
    assert {len(t) for t in tokens[256:]} == {2, 3}


def test_ranks_file_of_256_gives_512_words(tmp_path: Path) -> None:
    write_tiktoken_ranks(tmp_path / "r.model", 256)
    tok = TiktokenTokenizer(tmp_path / "r.model")
    assert (tok.n_words, tok.bos_id, tok.special_id("<|eot_id|>")) == (512, 256, 265)
    assert tok.decode(tok.encode(UNICODE_TEXT)) == UNICODE_TEXT


def test_ranks_file_too_small_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError) as err:
        write_tiktoken_ranks(tmp_path / "r.model", 100)
    assert err.value.hint


@pytest.mark.parametrize(
    "content",
    ["AAA= notanumber\n", "QQ== 0\nQg== 2\n", "QQ== 0\nQQ== 1\n", "!!! 0\n"],
    ids=["bad-rank", "gap", "duplicate-token", "bad-base64"],
)
def test_malformed_ranks_file_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.model"
    path.write_text(content)
    with pytest.raises(TokenizerError) as err:
        load_tokenizer(path, kind="tiktoken")
    assert err.value.hint


# --- train_sentencepiece --------------------------------------------------------------------


@pytest.mark.parametrize("vocab_size", [400, 512])
def test_trained_model_has_exact_vocab_and_llama2_markers(tmp_path: Path, vocab_size: int) -> None:
    start = time.perf_counter()
    train_sentencepiece(tmp_path / "sp.model", vocab_size)
    assert time.perf_counter() - start < 2
    tok = load_tokenizer(tmp_path / "sp.model")
    assert isinstance(tok, SentencePieceTokenizer)
    assert (tok.n_words, tok.bos_id, tok.eos_id, tok.pad_id) == (vocab_size, 1, 2, -1)
    assert tok.special_id("<unk>") == 0


def test_training_is_deterministic(tmp_path: Path) -> None:
    train_sentencepiece(tmp_path / "a.model", 512)
    train_sentencepiece(tmp_path / "b.model", 512)
    assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()


def test_trained_model_falls_back_to_bytes_for_emoji(trained: SentencePieceTokenizer) -> None:
    text = "llama 🦙 says 你好"
    ids = trained.encode(text)
    assert 0 not in ids  # no <unk>: the emoji and the CJK characters became byte pieces
    assert any(3 <= i < 259 for i in ids)
    assert trained.decode(ids) == text


def test_training_with_impossible_vocab_size_raises(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError) as err:
        train_sentencepiece(tmp_path / "sp.model", 100)
    assert err.value.hint
    assert not (tmp_path / "sp.model").exists()


# --- load_tokenizer -------------------------------------------------------------------------


def test_sniffing_picks_the_right_class(
    llama2_tokenizer_path: Path, llama3_path: Path, trained_path: Path
) -> None:
    assert isinstance(load_tokenizer(llama2_tokenizer_path), SentencePieceTokenizer)
    assert isinstance(load_tokenizer(trained_path), SentencePieceTokenizer)
    tok = load_tokenizer(llama3_path)
    assert isinstance(tok, TiktokenTokenizer) and tok.n_words == 128256


def test_explicit_kind_is_used(llama3_path: Path, trained_path: Path) -> None:
    assert isinstance(load_tokenizer(trained_path, kind="sentencepiece"), SentencePieceTokenizer)
    assert isinstance(load_tokenizer(str(llama3_path), kind="tiktoken"), TiktokenTokenizer)
    with pytest.raises(TokenizerError):
        load_tokenizer(llama3_path, kind="sentencepiece")
    with pytest.raises(TokenizerError):
        load_tokenizer(trained_path, kind="tiktoken")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "make",
    [
        lambda tmp: _write(tmp / "random.model", random.Random(0).randbytes(8192)),
        lambda tmp: tmp / "missing.model",
        lambda tmp: tmp,
        lambda tmp: _write(tmp / "empty.model", b""),
        lambda tmp: _write(tmp / "text.model", b"just some text\n"),
    ],
    ids=["random-bytes", "missing", "directory", "empty", "plain-text"],
)
def test_unreadable_tokenizers_raise(tmp_path: Path, make: Callable[[Path], Path]) -> None:
    path = make(tmp_path)
    with pytest.raises(TokenizerError) as err:
        load_tokenizer(path)
    assert err.value.hint
    assert err.value.code == "tokenizer_error"


def test_unknown_kind_is_refused(trained_path: Path) -> None:
    with pytest.raises(TokenizerError) as err:
        load_tokenizer(trained_path, kind="bpe")
    assert "sentencepiece" in (err.value.hint or "")
