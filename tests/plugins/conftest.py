"""Fixtures for the fine-tuning plugin: the plugin registered by hand, a Q&A data set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FACTS = [("sky", "blue"), ("grass", "green"), ("snow", "white"), ("coal", "black"),
         ("sun", "yellow"), ("rose", "red")]
PHRASES = ["What color is the {}?", "Tell me the color of the {}.", "Which color has the {}?",
           "Name the color of the {}."]


def question(thing: str, phrase: int = 0) -> str:
    return PHRASES[phrase].format(thing)


def answer(color: str) -> str:
    return f"It is {color}."


@pytest.fixture(autouse=True)
def finetune_plugin(plugin_manager, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    import llamahub_finetune

    monkeypatch.setenv("LLAMAHUB_CPU_KERNEL", "0")  # prefill parity, not the decode kernel's build
    plugin_manager.register(llamahub_finetune, name="finetune")
    return plugin_manager


@pytest.fixture
def qa_data(tmp_path: Path) -> Path:
    """Dialogs teaching a fixed answer to each question, asked four ways."""
    path = tmp_path / "qa.jsonl"
    lines = [json.dumps({"messages": [{"role": "user", "content": question(thing, p)},
                                      {"role": "assistant", "content": answer(color)}]})
             for p in range(len(PHRASES)) for thing, color in FACTS]
    path.write_text("\n".join(lines) + "\n")
    return path
