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


@pytest.fixture(autouse=True)
def plugin_manager():
    """A fresh plugin manager per test with only the in-tree CPU backend, registered by hand."""
    import llamahub_cpu

    from llamahub import plugins

    pm = plugins.new_manager()
    pm.register(llamahub_cpu, name="cpu")
    plugins.install(pm)
    yield pm
    plugins.install(None)


@pytest.fixture(scope="session")
def debug_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Meta-layout download roots of the llama-debug variants (generated once per session)."""
    import torch

    from llamahub.model.writer import generate_checkpoint
    from llamahub.registry import _builtin

    root = tmp_path_factory.mktemp("debug-meta")
    for name in ("llama-debug-2-chat", "llama-debug-3.1-instruct"):
        generate_checkpoint(_builtin().resolve(name), root / name, dtype=torch.float32)
    return root


@pytest.fixture
def llama2_debug_folder(debug_root: Path) -> Path:
    return debug_root / "llama-debug-2-chat" / "llama-debug-2-chat"


@pytest.fixture
def llama3_debug_folder(debug_root: Path) -> Path:
    return debug_root / "llama-debug-3.1-instruct" / "llama-debug-3.1-instruct"
