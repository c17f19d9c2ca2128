"""A Code Llama 70B Instruct-style variant (chat format codellama70b) loads on the cpu backend as a
chat model: ``chat()`` sends our dialog encoding and stops at ``<step>`` as Meta's code does."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from llamahub_cpu.engine import load_cpu_model

from llamahub.interfaces import LoadOptions
from llamahub.model.chat import encode_dialog
from llamahub.model.llm import LlamaModel
from llamahub.model.tokenizer import train_sentencepiece
from llamahub.model.writer import generate_checkpoint, write_checklist
from llamahub.reference import folder_artifacts
from llamahub.registry import shipped

DIALOG = [{"role": "system", "content": "Answer in Python."}, {"role": "user", "content": "Sort a list."}]


def _with_step(path: Path, pieces: int) -> None:
    """Replace the tokenizer at ``path`` by a trained one of ``pieces`` pieces, the last ``<step>``."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    train_sentencepiece(path, pieces - 1)
    model = pb.ModelProto()
    model.ParseFromString(path.read_bytes())
    piece = model.pieces.add()
    piece.piece, piece.type = "<step>", pb.ModelProto.SentencePiece.CONTROL
    path.write_bytes(model.SerializeToString())


@pytest.fixture
def model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LlamaModel:
    monkeypatch.setenv("LLAMAHUB_CPU_KERNEL", "0")  # plain torch: no kernel build for this test
    variant = replace(shipped().resolve("llama-debug-2-chat"), chat_format="codellama70b")
    folder = generate_checkpoint(variant, tmp_path / "download", fmt="meta", seed=0, dtype=torch.float32)
    root = folder.parent  # Llama 2 style: the tokenizer sits beside the model folder
    _with_step(root / "tokenizer.model", variant.arch.vocab_size)
    write_checklist(root, ["tokenizer.model"], "tokenizer_checklist.chk")
    return load_cpu_model(folder_artifacts(folder, tmp_path / "cache"), variant, LoadOptions(dtype="fp32"))


def _boosted_chat(m: LlamaModel, token: int) -> tuple[str, int]:
    """Chat with the same weights but ``token`` made the most likely next token at every step;
    the answer and how many forward passes it took."""
    real, calls = m.decoder, [0]
    assert real is not None

    def decoder(tokens: torch.Tensor, start: int) -> torch.Tensor:
        calls[0] += 1
        logits = real(tokens, start).clone()
        logits[..., token] += 1e4
        return logits

    boosted = LlamaModel(decoder, m.tokenizer, m.variant, backend="cpu", dtype="fp32", close=m.close)
    answer = boosted.chat(DIALOG, max_new_tokens=6, temperature=0)
    assert isinstance(answer, str)
    return answer, calls[0]


def test_it_chats_in_its_own_format_and_stops_at_step(model: LlamaModel) -> None:
    tok = model.tokenizer
    step = tok.special_id("<step>")
    assert model.chat_tokens(DIALOG) == len(encode_dialog(tok, DIALOG, "codellama70b"))
    assert encode_dialog(tok, DIALOG, "codellama70b").count(step) == 2  # one after each message
    answer = model.chat(DIALOG, max_new_tokens=6, temperature=0)
    assert isinstance(answer, str) and answer  # random weights: gibberish, but an answer
    assert _boosted_chat(model, step) == ("", 1)  # <step> ends the answer at once (the prompt's pass)
    assert _boosted_chat(model, tok.eos_id) == ("", 1)  # and so does EOS
    other, passes = _boosted_chat(model, tok.encode("a")[-1])
    assert other != "" and passes > 1  # an ordinary token goes on to max_new_tokens
