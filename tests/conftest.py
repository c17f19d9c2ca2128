"""Shared fixtures. Tests never autoload entry-point plugins: each test registers what it needs."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LLAMA2_TOKENIZER = ROOT.parent / "shared" / "data" / "llama2-tokenizer.model"


@pytest.fixture
def llama2_tokenizer_path() -> Path:
    """The real Llama 2 SentencePiece model from ../shared/data; skips when it is absent."""
    if not LLAMA2_TOKENIZER.is_file():
        pytest.skip(f"real Llama 2 tokenizer not found at {LLAMA2_TOKENIZER}")
    return LLAMA2_TOKENIZER
