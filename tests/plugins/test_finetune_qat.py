"""QAT: int4 fake-quantized training, exported integers + scales, and its error next to
post-training quantization of a full fine-tune with the same settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from llamahub_finetune import data as D
from llamahub_finetune import qat as Q
from llamahub_finetune.train import batch_loss
from safetensors.torch import load_file

import llamahub
from llamahub.model.checkpoint import open_checkpoint
from llamahub.model.tokenizer import load_tokenizer
from llamahub.model.transformer import build_model

RUN = {"lr": 3e-3, "batch_size": 4, "epochs": 30, "eval_fraction": 0.2, "eval_every": 1000, "threads": 1}
BLOCKS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")


def _loss(folder: Path, state: dict[str, torch.Tensor], data: Path) -> float:
    """Mean token loss on every record of ``data`` (train and held out) of the model ``state``."""
    ckpt = open_checkpoint(folder)
    assert ckpt.tokenizer_path is not None
    tok = load_tokenizer(ckpt.tokenizer_path, "sentencepiece")
    enc = D.Encoder(tok, "llama2", 512, truncate=False, where=data)
    examples = D.encode_all(enc, D.read_records(data))
    model = build_model(ckpt.args, state)
    batch = D.padded(examples, tok.eos_id)
    with torch.no_grad():
        return float(batch_loss(model, batch, torch.device("cpu")) / batch.n_targets)


@pytest.mark.slow
def test_qat_export_beats_post_training_quantization(llama2_debug_folder: Path, qa_data: Path) -> None:
    full = llamahub.finetune(llama2_debug_folder, method="full", data=qa_data, output="qa-full",
                             progress=False, **RUN)
    qat = llamahub.finetune(llama2_debug_folder, method="qat", data=qa_data, output="qa-qat", progress=False,
                            bits=4, group_size=0, **RUN)
    full_state = torch.load(full.folder / "consolidated.00.pth", weights_only=True)
    qat_state = torch.load(qat.folder / "consolidated.00.pth", weights_only=True)
    ptq_state = Q.post_training(full_state, BLOCKS, 4, 0)

    packed = load_file(str(qat.folder / "quantized" / "weights.safetensors"))
    for key in ("layers.0.attention.wq", "layers.1.feed_forward.w2"):
        q, scales = packed[f"{key}.qweight"], packed[f"{key}.scales"]
        assert q.dtype == torch.int8 and int(q.min()) >= -8 and int(q.max()) <= 7
        assert torch.equal(Q.dequantize(q, scales), qat_state[f"{key}.weight"])  # the export is on the grid
    assert Q.post_training(qat_state, BLOCKS, 4, 0).keys() == qat_state.keys()

    fp, ptq, qat_loss = (_loss(llama2_debug_folder, s, qa_data) for s in (full_state, ptq_state, qat_state))
    print(f"loss: full fp32 {fp:.4f}, full + int4 PTQ {ptq:.4f}, QAT int4 {qat_loss:.4f}")
    # measured here: fp32 0.0062, int4 PTQ 0.0063, QAT int4 0.0061 (per-row scales). The tiny
    # random model barely feels int4 rounding of its blocks, so the margin is small, but QAT's
    # exported integers do better than rounding the full fine-tune after the fact.
    assert qat_loss < ptq


def test_fake_quant_passes_gradients_straight_through() -> None:
    w = torch.randn(4, 64, requires_grad=True)
    out = Q.fake_quant(w, 4, 32)
    assert not torch.equal(out, w) and len(torch.unique(out[0, :32])) <= 16
    out.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))
    with pytest.raises(llamahub.errors.ConfigError, match="does not divide"):
        Q.quantize(torch.zeros(2, 48), 4, 32)
