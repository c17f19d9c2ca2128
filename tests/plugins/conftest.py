"""Fixtures for the fine-tuning plugin: the plugin registered by hand, the Q&A data set."""

from __future__ import annotations

from pathlib import Path

import pytest
from qa_task import write_dialogs


@pytest.fixture(autouse=True)
def finetune_plugin(plugin_manager, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    import llamahub_finetune

    monkeypatch.setenv("LLAMAHUB_CPU_KERNEL", "0")  # prefill parity, not the decode kernel's build
    plugin_manager.register(llamahub_finetune, name="finetune")
    return plugin_manager


@pytest.fixture
def qa_data(tmp_path: Path) -> Path:
    """Dialogs teaching a fixed answer to each question, asked four ways."""
    return write_dialogs(tmp_path / "qa.jsonl")
