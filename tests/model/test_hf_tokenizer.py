"""The HF tokenizer files we write (llamahub/model/hf_tokenizer.py), read by the real
``transformers.AutoTokenizer``: the same ids and text as our tokenizers, and chat templates that
give the ids of our dialog encoder."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
from test_chat_templates import DIALOGS
from tokentexts import STRINGS

from llamahub.model.chat import encode_dialog
from llamahub.model.hf_tokenizer import tokenizer_files
from llamahub.model.tokenizer import load_tokenizer, train_sentencepiece, write_tiktoken_ranks

transformers = pytest.importorskip("transformers")

# HF's tokenizers split special-token text a user typed into the special token; ours keeps it
# plain text (a user cannot forge a turn). The one intended difference, left out of the comparison.
TYPED_SPECIALS = ("<s>", "</s>", "<|eot_id|>")


def hf_folder(model: Path, out: Path, chat_format: str | None) -> Path:
    out.mkdir()
    shutil.copy(model, out / "tokenizer.model")
    for name, data in tokenizer_files(model, chat_format=chat_format, context_length=4096).items():
        (out / name).write_bytes(data)
    return out


@pytest.fixture(params=["sentencepiece", "tiktoken", "llama2"])
def model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if request.param == "llama2":
        return request.getfixturevalue("llama2_tokenizer_path")
    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    if request.param == "sentencepiece":
        train_sentencepiece(path, 800)
    else:
        write_tiktoken_ranks(path, 128_000)
    return path


def test_auto_tokenizer_reads_our_files_as_we_tokenize(model: Path, tmp_path: Path) -> None:
    ours = load_tokenizer(model)
    hf = transformers.AutoTokenizer.from_pretrained(hf_folder(model, tmp_path / "hf", None))
    assert len(hf) == ours.n_words
    assert (hf.bos_token_id, hf.eos_token_id) == (ours.bos_id, ours.eos_id)
    compared = [s for s in STRINGS if not any(t in s for t in TYPED_SPECIALS)]
    assert len(compared) == 28
    for text in compared:
        ids = ours.encode(text)
        assert hf(text, add_special_tokens=False)["input_ids"] == ids, text
        assert hf(text)["input_ids"] == ours.encode(text, bos=True), text
        assert hf.decode(ids) == ours.decode(ids), text
    rng = random.Random(0)  # and random text over letters, spaces, newlines, digits, scripts, emoji
    alphabet = list("abcdefghijklmnopqrstuvwxyz ABCXYZ  \n\t.,;'\"0123456789éü日本🦙_-()[]")
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert hf(text, add_special_tokens=False)["input_ids"] == ours.encode(text), text


@pytest.mark.parametrize("dialog", DIALOGS)
def test_apply_chat_template_gives_our_dialog_ids(model: Path, tmp_path: Path,
                                                  dialog: list[dict[str, str]]) -> None:
    ours = load_tokenizer(model)
    fmt = "llama2" if ours.kind == "sentencepiece" else "llama3"
    hf = transformers.AutoTokenizer.from_pretrained(hf_folder(model, tmp_path / "hf", fmt))
    if fmt == "llama3":
        assert hf.eos_token == "<|eot_id|>"  # an instruct model's turn ends there
    ids = hf.apply_chat_template(dialog, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    assert list(ids) == encode_dialog(ours, dialog, fmt)


def test_no_chat_template_for_a_base_model(model: Path) -> None:
    config = json.loads(tokenizer_files(model, chat_format=None, context_length=8)["tokenizer_config.json"])
    assert "chat_template" not in config and config["model_max_length"] == 8
