"""Derivative naming and output-use rules, as a table over Llama 2 / 3 / 3.1 / 3.2 bases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import llamahub
from llamahub import derivatives
from llamahub.errors import DerivativeNameError, FinetuneError, OutputUseError
from llamahub.policy import rules

NAMING = [
    ("llama-2-7b-chat", "orca-helper", None),  # Llama 2's license has no naming rule
    ("llama-3-8b-instruct", "orca-helper", "llama-3-orca-helper"),
    ("llama-3-8b-instruct", "llama-3-orca-helper", None),
    ("llama-3-8b-instruct", "llama-orca", "llama-3-orca"),  # Llama 3 wants "Llama 3"
    ("llama-3.1-8b-instruct", "orca-helper", "llama-orca-helper"),
    ("llama-3.1-8b-instruct", "llama-orca-helper", None),
    ("llama-3.2-1b-instruct", "orca", "llama-orca"),
    ("llama-3.2-1b-instruct", "llama-3.2-orca", None),
]


@pytest.mark.parametrize(("base", "name", "suggested"), NAMING)
def test_derivative_names(base: str, name: str, suggested: str | None) -> None:
    v = llamahub.variant(base)
    if suggested is None:
        rules.check_derivative_name(name, v)
        return
    with pytest.raises(DerivativeNameError, match="beginning with") as e:
        rules.check_derivative_name(name, v)
    assert suggested in (e.value.hint or "")


@pytest.mark.parametrize("name", ["Llama-3-X", "-x", "x y", "a" * 101])
def test_malformed_names(name: str) -> None:
    with pytest.raises(FinetuneError, match="cannot name a variant"):
        rules.check_derivative_name(name, llamahub.variant("llama-2-7b"))


OUTPUT_USE = [
    # (source of the data, base being trained, allowed, attribution owed)
    ("llama-2-7b-chat", "llama-2-13b", True, None),  # same license: improving Llama 2 itself
    ("llama-2-7b-chat", "llama-3-8b", False, None),
    ("llama-3-8b-instruct", "llama-2-7b", False, None),
    ("llama-3-8b-instruct", "llama-3-70b", True, "Built with Meta Llama 3"),
    ("llama-3.1-8b-instruct", "llama-2-7b", True, "Built with Llama"),
    ("llama-3.1-8b-instruct", "llama-3.2-1b", True, "Built with Llama"),
    ("llama-3.2-1b-instruct", "llama-3-8b", True, "Built with Llama"),
]


@pytest.mark.parametrize(("source", "base", "allowed", "owed"), OUTPUT_USE)
def test_output_use(source: str, base: str, allowed: bool, owed: str | None) -> None:
    src, dst = llamahub.variant(source), llamahub.variant(base)
    if not allowed:
        with pytest.raises(OutputUseError, match=f"training data comes from {source}"):
            rules.check_output_source(src, dst)
        return
    assert rules.check_output_source(src, dst) == owed


def test_provenance_in_records_and_sidecar(llama2_debug_folder: Path, tmp_path: Path) -> None:
    from llamahub.finetune import check_data

    base = llamahub.variant("llama-3-8b")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"text": "x", "source_model": "llama-2-7b-chat"}) + "\n")
    with pytest.raises(OutputUseError):
        check_data(data, base)
    data.write_text(json.dumps({"text": "x"}) + "\n")
    assert check_data(data, base) == []
    (tmp_path / "d.jsonl.provenance.json").write_text(json.dumps({"source_model": "llama-3.1-8b-instruct"}))
    assert check_data(data, base) == ["Built with Llama"]
    (tmp_path / "d.jsonl.provenance.json").write_text(json.dumps({"source_model": "llama-2-70b-chat"}))
    with pytest.raises(OutputUseError, match="llama-2-70b-chat"):
        check_data(data, base)


def test_notice_carries_attribution() -> None:
    base = llamahub.variant("llama-3-8b")
    text = derivatives.notice_text("llama-3-helper", base, "lora", ["Built with Llama"])
    assert "Built with Meta Llama 3" in text and "Built with Llama" in text
    assert "Meta Llama 3 Community License" in text or "Llama 3" in text
