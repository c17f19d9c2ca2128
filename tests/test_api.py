"""llamahub.load() on local folders: recognition, generation, chat, and typed errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import llamahub
from llamahub.errors import (
    ChatFormatError,
    ContextLengthError,
    CorruptCheckpointError,
    NotACheckpointError,
    TokenizerError,
    UnknownVariantError,
)


@pytest.fixture(scope="module")
def l2(debug_root: Path):
    m = llamahub.load(debug_root / "llama-debug-2-chat" / "llama-debug-2-chat", dtype="fp32")
    yield m
    m.close()


@pytest.fixture(scope="module")
def l3(debug_root: Path):
    m = llamahub.load(debug_root / "llama-debug-3.1-instruct" / "llama-debug-3.1-instruct", dtype="fp32")
    yield m
    m.close()


def test_public_api_is_explicit() -> None:
    assert {"load", "variants", "variant", "hookimpl", "LlamahubError"} <= set(llamahub.__all__)
    assert all(hasattr(llamahub, n) for n in llamahub.__all__)
    v = llamahub.variant("llama2:13b-chat")
    assert v.name == "llama-2-13b-chat" and len(llamahub.variants()) >= 24


def test_local_folder_is_recognised_by_marker(l2, l3) -> None:
    assert l2.variant.name == "llama-debug-2-chat" and l2.backend == "cpu" and l2.dtype == "fp32"
    assert l3.variant.name == "llama-debug-3.1-instruct" and l3.tokenizer.kind == "tiktoken"


def test_meta_folder_name_identifies_variant_without_marker(debug_root: Path, tmp_path: Path) -> None:
    src = debug_root / "llama-debug-3.1-instruct"
    shutil.copytree(src, tmp_path / "dl")
    (tmp_path / "dl" / "llama-debug-3.1-instruct" / "llamahub.json").unlink()
    m = llamahub.load(tmp_path / "dl" / "llama-debug-3.1-instruct")
    assert m.variant.name == "llama-debug-3.1-instruct" and m.dtype == "bf16"


def test_generate_greedy_is_deterministic_and_respects_length(l2) -> None:
    a = l2.generate("Once upon a time", max_new_tokens=12, temperature=0)
    assert a == l2.generate("Once upon a time", max_new_tokens=12, temperature=0)
    shorter = l2.generate("Once upon a time", max_new_tokens=6, temperature=0)
    assert a.startswith(shorter) and len(shorter) < len(a)


def test_streaming_equals_non_streaming(l2, l3) -> None:
    for m in (l2, l3):
        full = m.generate("The llama", max_new_tokens=16, temperature=0.9, seed=3)
        pieces = list(m.generate("The llama", max_new_tokens=16, temperature=0.9, seed=3, stream=True))
        assert "".join(pieces) == full and len(pieces) > 1


def test_batch_generation_matches_single(l3) -> None:
    prompts = ["a", "a much longer prompt than the first"]
    batch = l3.generate(prompts, max_new_tokens=8, temperature=0)
    assert batch == [l3.generate(p, max_new_tokens=8, temperature=0) for p in prompts]


def test_chat_in_both_formats(l2, l3) -> None:
    dialog = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    for m in (l2, l3):
        out = m.chat(dialog, max_new_tokens=10, temperature=0)
        assert isinstance(out, str)
        assert out == "".join(m.chat(dialog, max_new_tokens=10, temperature=0, stream=True)).strip()


def test_stop_strings(l2) -> None:
    full = l2.generate("x", max_new_tokens=20, temperature=0)
    cut = full[3:5]
    assert l2.generate("x", max_new_tokens=20, temperature=0, stop=[cut]) == full[: full.index(cut)]


def test_context_limit_is_enforced(l2) -> None:
    with pytest.raises(ContextLengthError) as e:
        l2.generate("hello " * 600, max_new_tokens=8)
    assert "512-token context" in str(e.value) and e.value.hint
    with pytest.raises(ContextLengthError, match="lower max_new_tokens"):
        l2.generate("hi", max_new_tokens=600)


def test_invalid_dialog_is_refused(l2) -> None:
    with pytest.raises(ChatFormatError):
        l2.chat([{"role": "assistant", "content": "I speak first"}])


def test_unknown_variant_name() -> None:
    with pytest.raises(UnknownVariantError) as e:
        llamahub.load("llama-2-13-chat")
    assert "llama-2-13b-chat" in str(e.value)


def test_folder_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(NotACheckpointError):
        llamahub.load(tmp_path)


def test_wrong_variant_for_folder(debug_root: Path) -> None:
    with pytest.raises(CorruptCheckpointError, match="does not hold llama-2-7b"):
        llamahub.load(debug_root / "llama-debug-2-chat" / "llama-debug-2-chat", variant="llama-2-7b")


def test_missing_tokenizer(debug_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "llama-debug-3.1-instruct"
    shutil.copytree(debug_root / "llama-debug-3.1-instruct" / "llama-debug-3.1-instruct", folder)
    (folder / "tokenizer.model").unlink()
    with pytest.raises(TokenizerError, match=r"no tokenizer\.model"):
        llamahub.load(folder)


def test_unknown_folder_gets_a_local_variant(debug_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "my-finetune"
    shutil.copytree(debug_root / "llama-debug-3.1-instruct" / "llama-debug-3.1-instruct", folder)
    (folder / "llamahub.json").unlink()
    params = json.loads((folder / "params.json").read_text())
    m = llamahub.load(folder)
    assert m.variant.family == "local" and m.variant.arch.dim == params["dim"]
    assert m.tokenizer.kind == "tiktoken" and isinstance(m.generate("x", max_new_tokens=3), str)
