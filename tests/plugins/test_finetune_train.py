"""LoRA and full fine-tuning on the tiny debug model: losses fall, answers are learned, merged and
adapter-loaded models agree, the output is a derivative with lineage."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from qa_task import FACTS, answer, question

import llamahub
from llamahub import derivatives

# The debug model's weights are random: LoRA must also reach its head to sharpen the logits, and it
# needs a few hundred steps (the full fine-tune, 150). One thread: on a busy 2-core host, two
# threads make these small ops several times slower.
LORA = {"rank": 8, "alpha": 16.0, "targets": ["wq", "wk", "wv", "wo", "w1", "w2", "w3", "output"],
        "lr": 1e-2, "batch_size": 4, "epochs": 150, "eval_fraction": 0.2, "eval_every": 50, "threads": 1}


def _learned(model: llamahub.plugin.LlamaModel) -> int:  # type: ignore[name-defined]
    right = 0
    for thing, color in FACTS:
        said = model.chat([{"role": "user", "content": question(thing)}], temperature=0, max_new_tokens=12)
        right += said == answer(color)
    return right


def _first_last(curve: list) -> tuple[float, float]:
    return curve[0][1], curve[-1][1]


@pytest.mark.slow
def test_lora_learns_the_answers_and_merged_equals_adapter(llama2_debug_folder: Path, qa_data: Path) -> None:
    before = llamahub.load(llama2_debug_folder, dtype="fp32")
    assert _learned(before) == 0
    done = llamahub.finetune(llama2_debug_folder, method="lora", data=qa_data, output="debug-qa-lora",
                             progress=False, **LORA)
    first, last = _first_last(done.metrics["train_loss"])
    assert last < 0.05 * first
    ev0, ev1 = _first_last(done.metrics["eval_loss"])
    assert ev1 < 0.05 * ev0  # held-out phrasings of the same questions
    merged = llamahub.load(done.folder, dtype="fp32")
    assert merged.variant.name == "debug-qa-lora"
    assert _learned(merged) == len(FACTS)

    adapted = llamahub.load_adapter(done.folder / "adapter", base=llama2_debug_folder)
    tokens = torch.tensor([merged.tokenizer.encode(question("snow", 2), bos=True)])
    with torch.no_grad():
        a = adapted.decoder(tokens, 0)
        b = merged.decoder(tokens, 0)
    # the same numbers up to fp32 rounding: W x + s B(A x) against (W + s B A) x
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), (a - b).abs().max()
    assert torch.equal(a.argmax(-1), b.argmax(-1))
    assert _learned(adapted) == len(FACTS)


@pytest.mark.slow
def test_full_finetune_learns_the_answers(llama2_debug_folder: Path, qa_data: Path) -> None:
    config = {k: v for k, v in LORA.items() if k not in ("rank", "alpha", "targets")}
    config |= {"lr": 3e-3, "epochs": 30}
    done = llamahub.finetune(llama2_debug_folder, method="full", data=qa_data, output="debug-qa-full",
                             progress=False, **config)
    first, last = _first_last(done.metrics["train_loss"])
    assert last < 0.05 * first
    ev0, ev1 = _first_last(done.metrics["eval_loss"])
    assert ev1 < 0.05 * ev0  # held-out phrasings of the same questions
    model = llamahub.load(done.folder, dtype="fp32")
    assert _learned(model) == len(FACTS)
    assert not (done.folder / "adapter").exists()


def test_output_is_a_derivative_with_lineage(llama2_debug_folder: Path, qa_data: Path) -> None:
    done = llamahub.finetune(llama2_debug_folder, method="lora", data=qa_data, output="debug-qa-tiny",
                             progress=False, max_steps=2, batch_size=2)
    v = llamahub.variant("debug-qa-tiny")
    base = llamahub.variant("llama-debug-2-chat")
    assert (v.license, v.family, v.release_date, v.chat_format) == (base.license, base.family,
                                                                     base.release_date, base.chat_format)
    lineage = derivatives.lineage("debug-qa-tiny")
    assert lineage is not None
    assert lineage["base"] == "llama-debug-2-chat" and lineage["method"] == "lora"
    assert lineage["data_sha256"] == hashlib.sha256(qa_data.read_bytes()).hexdigest()
    assert lineage["base_license"] == "llama-debug"
    on_disk = json.loads((done.folder / "lineage.json").read_text())
    assert on_disk["data_sha256"] == lineage["data_sha256"]
    notice = (done.folder / "NOTICE").read_text()
    assert "llama-debug-2-chat" in notice and "llamahub Debug Model License" in notice
    for name in ("consolidated.00.pth", "params.json", "tokenizer.model", "adapter/adapter_config.json",
                 "adapter/adapter_model.safetensors"):
        assert (done.folder / name).is_file(), name
    with pytest.raises(llamahub.errors.FinetuneError, match="exists already"):
        llamahub.finetune(llama2_debug_folder, method="lora", data=qa_data, output="debug-qa-tiny",
                          progress=False, max_steps=1)
    with pytest.raises(llamahub.errors.FinetuneError, match="already names the variant"):
        llamahub.finetune(llama2_debug_folder, method="lora", data=qa_data, output="llama-debug-2",
                          progress=False, max_steps=1)


def test_derivative_by_name_passes_the_base_gates(llama2_debug_folder: Path, qa_data: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    llamahub.finetune(llama2_debug_folder, method="lora", data=qa_data, output="debug-qa-gated",
                      progress=False, max_steps=1)
    monkeypatch.setenv("LLAMAHUB_OFFLINE", "1")
    # nothing from a hub on this machine (no signed profile, no receipt): the derivative is refused
    # offline exactly as its base is
    with pytest.raises(llamahub.ReceiptError) as derived:
        llamahub.load("debug-qa-gated")
    with pytest.raises(llamahub.ReceiptError) as base:
        llamahub.load("llama-debug-2-chat")
    assert str(derived.value).replace("debug-qa-gated", "llama-debug-2-chat") == str(base.value)
