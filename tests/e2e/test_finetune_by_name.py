"""Fine-tune a base fetched by name from a real hub, then load the derivative by name: the base's
license gates apply to it, online and offline, through the SDK and the ``llamahub`` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from clienttest import MakeClient

import llamahub

BASE = "llama-debug-2-chat"


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"question {i}"},
                                                     {"role": "assistant", "content": f"answer {i}"}]}) + "\n"
                            for i in range(8)))
    return path


@pytest.fixture
def finetune_plugin(plugin_manager):  # type: ignore[no-untyped-def]
    import llamahub_finetune

    plugin_manager.register(llamahub_finetune, name="finetune")
    return plugin_manager


def test_cli_finetunes_a_named_base_and_runs_the_derivative(make_client: MakeClient, data: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            finetune_plugin: object) -> None:
    client = make_client()
    done = client.cli("finetune", BASE, "--method", "lora", "--data", str(data), "--output", "debug-helper",
                      "-s", "max_steps=2", "-s", "batch_size=4", "-s", "threads=1", "-s", "targets=wq,wv",
                      "--no-progress", LLAMAHUB_CPU_KERNEL="0")
    assert done.returncode == 0, done.stderr
    assert "debug-helper: a lora fine-tune of llama-debug-2-chat (license llama-debug)" in done.stdout
    ran = client.cli("run", "debug-helper", "hello", "-n", "4", "-t", "0", LLAMAHUB_CPU_KERNEL="0")
    assert ran.returncode == 0, ran.stderr
    listed = client.cli("list", "--json")
    row = next(r for r in json.loads(listed.stdout) if r["name"] == "debug-helper")
    assert row["license"] == "llama-debug" and row["family"] == "llama-debug"

    client.use(monkeypatch, LLAMAHUB_OFFLINE="1", LLAMAHUB_CPU_KERNEL="0")
    model = llamahub.load("debug-helper", dtype="fp32")  # offline: the base's receipt is on this machine
    assert model.variant.license == "llama-debug"
    # the adapter on top of the cached base it names (base_model_name_or_path), also offline
    adapter = llamahub.download("debug-helper") / "debug-helper" / "adapter"
    adapted = llamahub.load_adapter(adapter)
    assert adapted.variant.name == BASE
    tokens = torch.tensor([model.tokenizer.encode("question 3", bos=True)])
    with torch.no_grad():
        assert torch.allclose(adapted.decoder(tokens, 0), model.decoder(tokens, 0), atol=1e-5, rtol=1e-5)
    model.close()
    again = client.cli("finetune", BASE, "--data", str(data), "--output", "debug-helper")
    assert again.returncode == 1 and "exists already" in again.stderr


def test_the_derivative_is_refused_where_its_base_is(make_client: MakeClient, data: Path,
                                                    llama2_debug_folder: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    finetune_plugin: object) -> None:
    client = make_client(accept=())
    client.use(monkeypatch, LLAMAHUB_CPU_KERNEL="0")
    with pytest.raises(llamahub.LicenseNotAcceptedError):
        llamahub.finetune(BASE, data=data, output="debug-refused", max_steps=1)  # by name: gated
    llamahub.finetune(llama2_debug_folder, data=data, output="debug-refused", max_steps=1, threads=1)
    with pytest.raises(llamahub.LicenseNotAcceptedError, match="llama-debug"):
        llamahub.load("debug-refused")
