"""Our LoRA adapter, loaded by ``peft`` onto transformers' LlamaForCausalLM, gives our logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import llamahub
from llamahub.model.checkpoint import open_checkpoint
from llamahub.model.reader import CheckpointReader
from llamahub.model.writer import write_hf

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("folder_fixture", ["llama2_debug_folder", "llama3_debug_folder"])
def test_peft_loads_our_adapter(folder_fixture: str, qa_data: Path, tmp_path: Path,
                                request: pytest.FixtureRequest) -> None:
    base_folder: Path = request.getfixturevalue(folder_fixture)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    done = llamahub.finetune(base_folder, method="lora", data=qa_data, output=f"peft-{folder_fixture[:6]}",
                             progress=False, max_steps=6, batch_size=4, lr=5e-2, rank=4, alpha=8.0,
                             targets=targets)
    ours = llamahub.load_adapter(done.folder / "adapter", base=base_folder)
    ckpt = open_checkpoint(base_folder, args=ours.variant.arch)  # the registry's RoPE scaling
    state = CheckpointReader(ckpt).state_dict()
    hf_folder = write_hf(tmp_path / "hf", ckpt.args, state)
    hf = transformers.LlamaForCausalLM.from_pretrained(hf_folder, torch_dtype=torch.float32).eval()
    with_adapter = peft.PeftModel.from_pretrained(hf, done.folder / "adapter").eval()
    tokens = torch.tensor([ours.tokenizer.encode("What color is the rose?", bos=True)])
    with torch.no_grad():
        theirs = with_adapter(tokens).logits
        mine = ours.decoder(tokens, 0)
    assert torch.allclose(mine, theirs, atol=1e-4, rtol=0), (mine - theirs).abs().max()
    with torch.no_grad():
        base_only = with_adapter.get_base_model()
        with with_adapter.disable_adapter():
            untouched = base_only(tokens).logits
    assert (mine - untouched).abs().max() > 1e-3  # the adapter changed something
