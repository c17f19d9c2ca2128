"""Training data: loss masks on assistant turns, packing masks, context, split, bad records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from llamahub_finetune import data as D
from llamahub_finetune.train import batch_loss

import llamahub
from llamahub.errors import ContextLengthError, TrainingDataError
from llamahub.model.chat import encode_dialog
from llamahub.model.checkpoint import open_checkpoint
from llamahub.model.reader import CheckpointReader
from llamahub.model.tokenizer import load_tokenizer
from llamahub.model.transformer import build_model


def _tokenizer(folder: Path, kind: str = "sentencepiece"):  # type: ignore[no-untyped-def]
    ckpt = open_checkpoint(folder)
    assert ckpt.tokenizer_path is not None
    return load_tokenizer(ckpt.tokenizer_path, kind)


def _write(path: Path, records: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.parametrize(("folder_fixture", "fmt", "kind"), [
    ("llama2_debug_folder", "llama2", "sentencepiece"), ("llama3_debug_folder", "llama3", "tiktoken")])
def test_loss_only_on_assistant_turns(folder_fixture: str, fmt: str, kind: str,
                                      request: pytest.FixtureRequest) -> None:
    tok = _tokenizer(request.getfixturevalue(folder_fixture), kind)
    enc = D.Encoder(tok, fmt, 512, truncate=False, where=Path("x.jsonl"))
    msgs = [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello you"},
            {"role": "user", "content": "and now"}, {"role": "assistant", "content": "bye now"}]
    first, second = enc.encode(1, {"messages": msgs})
    for example, upto, said in ((first, 1, "hello you"), (second, 3, "bye now")):
        prompt = encode_dialog(tok, msgs[:upto], fmt)
        assert list(example.tokens[:len(prompt)]) == prompt  # the prompt exactly as chat() sends it
        assert not any(example.trained[:len(prompt)])
        trained = [t for t, on in zip(example.tokens, example.trained, strict=True) if on]
        assert trained[:-1] == tok.encode(said) and trained[-1] == enc.stop
    [text] = enc.encode(2, {"text": "plain words"})
    assert text.tokens[0] == tok.bos_id and all(text.trained[1:]) and not text.trained[0]


def test_packed_rows_give_the_padded_loss(llama2_debug_folder: Path) -> None:
    ckpt = open_checkpoint(llama2_debug_folder)
    model = build_model(ckpt.args, CheckpointReader(ckpt).state_dict())
    tok = _tokenizer(llama2_debug_folder)
    enc = D.Encoder(tok, "llama2", 512, truncate=False, where=Path("x.jsonl"))
    examples = [e for i, q in enumerate(["one two", "three four five six", "seven", "eight nine ten"])
                for e in enc.encode(i, {"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": q[::-1]}]})]
    padded = D.padded(examples, tok.eos_id)
    packed = D.packed(examples, tok.eos_id, 80)
    assert packed.inputs.shape[0] < padded.inputs.shape[0]  # rows were shared
    assert packed.n_targets == padded.n_targets
    with torch.no_grad():
        a = batch_loss(model, padded, torch.device("cpu"))
        b = batch_loss(model, packed, torch.device("cpu"))
        unmasked = D.Batch(packed.inputs, packed.targets, None)
        c = batch_loss(model, unmasked, torch.device("cpu"))
    assert torch.allclose(a, b, rtol=1e-5)
    # without the mask, examples see each other (random weights attend almost evenly: a small change)
    assert (a - c).abs() > 100 * (a - b).abs() and (a - c).abs() > 1e-4 * a


def test_split_is_seeded_and_holds_out() -> None:
    records = list(range(20))
    train, held = D.split(records, 0.1, seed=3)
    assert len(held) == 2 and sorted(train + held) == records
    assert D.split(records, 0.1, seed=3) == (train, held)
    assert D.split(records, 0.1, seed=4) != (train, held)
    assert D.split([1, 2], 0.01, seed=0)[1]  # at least one held out


def test_context_is_enforced(llama2_debug_folder: Path, tmp_path: Path) -> None:
    long = _write(tmp_path / "long.jsonl", [{"text": "word " * 400}])
    with pytest.raises(TrainingDataError, match=r"long.jsonl:1 is \d+ tokens, beyond the 512-token"):
        llamahub.finetune(llama2_debug_folder, method="lora", data=long, output="too-long", progress=False)
    with pytest.raises(ContextLengthError, match="needs RoPE scaling"):
        llamahub.finetune(llama2_debug_folder, method="lora", data=long, output="too-long",
                          context_length=1024, progress=False)
    done = llamahub.finetune(llama2_debug_folder, method="lora", data=long, output="longer", progress=False,
                             context_length=1024, rope_scaling={"factor": 2.0}, max_steps=1,
                             eval_fraction=0.0)
    assert done.variant.context_length == 1024
    assert done.variant.arch.rope_scaling is not None and done.variant.arch.rope_scaling.factor == 2.0
    assert llamahub.variant("longer").context_length == 1024
    cut = llamahub.finetune(llama2_debug_folder, method="lora", data=long, output="cut", progress=False,
                            truncate=True, max_steps=1, eval_fraction=0.0)
    assert cut.variant.context_length == 512


@pytest.mark.parametrize(("line", "match"), [
    ("not json", r"bad.jsonl:2 is not JSON"),
    ('{"prompt": "x"}', r"bad.jsonl:2 has neither 'messages' nor 'text'"),
    ('{"messages": [{"role": "user", "content": "q"}]}', "no assistant message"),
    ('{"messages": [{"role": "assistant", "content": "a"}]}', "bad.jsonl:2"),
    ('{"text": ""}', "non-empty string"),
])
def test_bad_records_name_their_line(llama2_debug_folder: Path, tmp_path: Path, line: str,
                                     match: str) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n' + line + "\n")
    with pytest.raises(TrainingDataError, match=match):
        llamahub.finetune(llama2_debug_folder, method="lora", data=bad, output="bad", progress=False)
    with pytest.raises(llamahub.UnknownVariantError):
        llamahub.variant("bad")  # nothing was registered


def test_code_llama_70b_answers_are_trained_to_end_with_step(tmp_path: Path) -> None:
    from sentencepiece import sentencepiece_model_pb2 as pb

    from llamahub.model.tokenizer import train_sentencepiece

    train_sentencepiece(tmp_path / "tiny.model", 400)
    model = pb.ModelProto()
    model.ParseFromString((tmp_path / "tiny.model").read_bytes())
    piece = model.pieces.add()
    piece.piece, piece.type = "<step>", pb.ModelProto.SentencePiece.CONTROL
    (tmp_path / "step.model").write_bytes(model.SerializeToString())
    tok = load_tokenizer(tmp_path / "step.model")
    enc = D.Encoder(tok, "codellama70b", 512, truncate=False, where=Path("x.jsonl"))
    assert enc.stop == tok.special_id("<step>") == 400 != tok.eos_id
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    [example] = enc.encode(1, {"messages": msgs})
    prompt = encode_dialog(tok, msgs[:1], "codellama70b")
    assert list(example.tokens[:len(prompt)]) == prompt and example.tokens[-1] == enc.stop
