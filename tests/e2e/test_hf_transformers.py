"""``transformers`` loads a variant from the hub with ``HF_ENDPOINT``, as a user of Hugging Face's
gated repos does, and its logits equal ``llamahub.load()`` of the same variant."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from clienttest import MakeClient

import llamahub

pytest.importorskip("transformers")

TEXT = "Once upon a time,  a small llama\n  said: 12 words"
SCRIPT = """
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
ids = tok(sys.argv[2])["input_ids"]
with torch.no_grad():
    logits = model(torch.tensor([ids])).logits
torch.save({"ids": ids, "logits": logits}, sys.argv[3])
"""


@pytest.mark.parametrize("variant", ["llama-debug-2-chat", "llama-debug-3.1-instruct"])
def test_from_pretrained_with_hf_endpoint_matches_llamahub_load(
        make_client: MakeClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variant: str) -> None:
    client = make_client()
    repo = f"llamahub/{variant}"  # debug variants have no hf_repo of their own
    env = os.environ | {"HF_ENDPOINT": client.hub.url, "HF_TOKEN": client.account.token,
                        "HF_HUB_CACHE": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    out = tmp_path / "logits.pt"
    run = subprocess.run([sys.executable, "-c", SCRIPT, repo, TEXT, str(out)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    theirs = torch.load(out)

    client.use(monkeypatch)
    with llamahub.load(variant, dtype="fp32") as model:
        ids = model.tokenizer.encode(TEXT, bos=True)
        assert ids == theirs["ids"]  # AutoTokenizer reads our tokenizer.json as we tokenize
        with torch.no_grad():
            ours = model.decoder(torch.tensor([ids]), 0)
    assert ours.shape == theirs["logits"].shape
    assert (ours - theirs["logits"]).abs().max().item() <= 1e-4
