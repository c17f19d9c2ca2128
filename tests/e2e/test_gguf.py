"""GGUF files behind the gates: `llamahub export NAME` downloads (gated) and converts; a user's own
GGUF file loads only with its variant's license accepted."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import gguf
import pluggy
import pytest
from clienttest import MakeClient

import llamahub
from llamahub.errors import LicenseNotAcceptedError

VARIANT = "llama-debug-3.1-instruct"
needs_llama_cpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                     reason="no llama-cpp-python: pip install 'llamahub[llamacpp]'")


def test_export_by_name_is_gated_then_downloads_and_converts(make_client: MakeClient, tmp_path: Path) -> None:
    refused = make_client(accept=()).cli("export", VARIANT, "--out", str(tmp_path))
    assert refused.returncode == 1 and "llamahub license accept llama-debug" in refused.stderr
    assert not list(tmp_path.glob("*.gguf"))
    client = make_client()
    done = client.cli("export", VARIANT, "--quant", "q8_0", "--out", str(tmp_path / "x.gguf"))
    assert done.returncode == 0, done.stderr
    fields = {k: f.contents() for k, f in gguf.GGUFReader(tmp_path / "x.gguf").fields.items()
              if not k.startswith("tokenizer.ggml.")}
    [link] = client.links()  # fetched from the hub through a signed link
    assert link["variants"] == [VARIANT]
    [snap] = (client.cache / "variants" / VARIANT).glob("*.json")
    assert fields["llamahub.variant"] == VARIANT and fields["llamahub.snapshot"] == snap.stem
    assert fields["general.file_type"] == 7


@needs_llama_cpp
def test_a_users_gguf_loads_with_its_variants_gates(make_client: MakeClient, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path,
                                                   plugin_manager: pluggy.PluginManager) -> None:
    import llamahub_llamacpp

    plugin_manager.register(llamahub_llamacpp, name="llamacpp")
    owner = make_client()
    made = owner.cli("export", VARIANT, "--quant", "f16", "--out", str(tmp_path / "mine.gguf"))
    assert made.returncode == 0, made.stderr
    stranger = make_client(accept=())
    stranger.use(monkeypatch)
    with pytest.raises(LicenseNotAcceptedError):
        llamahub.load(tmp_path / "mine.gguf")
    assert stranger.cli("license", "accept", "llama-debug", "--yes").returncode == 0
    m = llamahub.load(tmp_path / "mine.gguf")
    assert (m.variant.name, m.backend, m.dtype, m.info["user_file"]) == (VARIANT, "llamacpp", "f16", True)
    assert m.tokenizer.kind == "tiktoken"  # the file's own vocabulary, read by llama.cpp
    assert isinstance(m.chat([{"role": "user", "content": "Hi"}], max_new_tokens=4, temperature=0), str)
    m.close()
