"""Our GGUF converter (no llama.cpp needed): names, metadata, tensors, vocabularies, chat templates,
the derived cache, `llamahub export`, and naming the variant of a user's GGUF file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import llamahub_llamacpp
import numpy as np
import pluggy
import pytest
import torch
from llamahub_llamacpp.convert import gguf_name, rope_factors
from llamahub_llamacpp.derive import derived_gguf
from llamahub_llamacpp.vocab import tiktoken_vocab

import llamahub
from llamahub.errors import CorruptCheckpointError, NoBackendError, NotACheckpointError
from llamahub.interfaces import LoadOptions
from llamahub.model.bpe import read_ranks
from llamahub.model.tokenizer import load_tokenizer, write_tiktoken_ranks
from llamahub.model.transformer import rope_frequencies
from llamahub.plugin import CHAT_TEMPLATES as TEMPLATES
from llamahub.reference import folder_artifacts, identify_gguf, open_reference
from llamahub.registry import shipped
from llamahub.testing import check_backend

EXE = shutil.which("llamahub") or str(Path(sys.executable).parent / "llamahub")
VARIANTS = ("llama-debug-2-chat", "llama-debug-3.1-instruct")


def _reader(path: Path) -> tuple[dict, dict]:
    r = gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in r.fields.items()}
    return fields, {t.name: t for t in r.tensors}


@pytest.fixture
def folders(llama2_debug_folder: Path, llama3_debug_folder: Path) -> dict[str, Path]:
    return {"llama-debug-2-chat": llama2_debug_folder, "llama-debug-3.1-instruct": llama3_debug_folder}


@pytest.mark.parametrize("name", VARIANTS)
def test_f32_holds_the_checkpoint_exactly_with_llama_cpp_names(name: str, folders: dict[str, Path],
                                                                tmp_path: Path) -> None:
    v = shipped().resolve(name)
    arts = folder_artifacts(folders[name], tmp_path)
    fields, tensors = _reader(derived_gguf(arts, v, "f32"))
    state = open_reference(arts, v).reader.state_dict("interleaved")
    extra = {"rope_freqs.weight"} if v.arch.rope_scaling else set()
    assert set(tensors) == {gguf_name(k) for k in state} | extra
    for key, t in state.items():
        got = tensors[gguf_name(key)]
        assert got.tensor_type == gguf.GGMLQuantizationType.F32
        assert np.array_equal(np.asarray(got.data).reshape(t.shape), t.numpy()), key
    a = v.arch
    assert fields["general.architecture"] == "llama" and fields["general.file_type"] == 0
    assert (fields["llama.embedding_length"], fields["llama.block_count"],
            fields["llama.feed_forward_length"], fields["llama.attention.head_count"],
            fields["llama.attention.head_count_kv"],
            fields["llama.rope.dimension_count"], fields["llama.context_length"]) == \
        (a.dim, a.n_layers, a.hidden_dim, a.n_heads, a.kv_heads, a.head_dim, v.context_length)
    assert fields["llama.rope.freq_base"] == a.rope_theta
    assert fields["llamahub.variant"] == name and fields["llamahub.snapshot"] == arts.snapshot_id
    assert fields["general.license"] == v.license == fields["llamahub.license"]
    assert fields["general.base_model.0.name"] == name
    assert fields["tokenizer.chat_template"] == TEMPLATES[v.chat_format]
    assert len(fields["tokenizer.ggml.tokens"]) == a.vocab_size


def test_llama2_vocab_is_sentencepiece_and_llama3_is_bpe_with_specials(folders: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    v2, v3 = (shipped().resolve(n) for n in VARIANTS)
    f2, _ = _reader(derived_gguf(folder_artifacts(folders[v2.name], tmp_path), v2, "f16"))
    assert f2["tokenizer.ggml.model"] == "llama" and f2["tokenizer.ggml.add_space_prefix"] is True
    assert (f2["tokenizer.ggml.bos_token_id"], f2["tokenizer.ggml.eos_token_id"]) == (1, 2)
    assert f2["tokenizer.ggml.tokens"][1] == "<s>" and f2["tokenizer.ggml.token_type"][1] == 3
    assert "<0x0A>" in f2["tokenizer.ggml.tokens"]  # byte fallback pieces, typed BYTE
    assert f2["tokenizer.ggml.token_type"][f2["tokenizer.ggml.tokens"].index("<0x0A>")] == 6
    f3, _ = _reader(derived_gguf(folder_artifacts(folders[v3.name], tmp_path), v3, "f16"))
    assert (f3["tokenizer.ggml.model"], f3["tokenizer.ggml.pre"]) == ("gpt2", "llama-bpe")
    tokens = f3["tokenizer.ggml.tokens"]
    assert tokens[256] == "<|begin_of_text|>" and f3["tokenizer.ggml.bos_token_id"] == 256
    assert tokens[f3["tokenizer.ggml.eos_token_id"]] == "<|eot_id|>"  # an instruct model ends turns with it
    assert tokens[ord("a")] == "a" and tokens[ord(" ")] == "Ġ" and tokens[ord("\n")] == "Ċ"
    assert set(f3["tokenizer.ggml.token_type"][256:]) == {3}


def test_bpe_merges_rebuild_every_multi_byte_token(tmp_path: Path) -> None:
    write_tiktoken_ranks(tmp_path / "tokenizer.model", 70_000)
    tok = load_tokenizer(tmp_path / "tokenizer.model", "tiktoken")
    vocab = tiktoken_vocab(tok, chat=True)
    ordered = read_ranks(tmp_path / "tokenizer.model")
    assert len(vocab.merges) == sum(len(t) > 1 for t in ordered)
    spelled = set(vocab.tokens)
    for merge in vocab.merges[:2000] + vocab.merges[-2000:]:
        left, right = merge.split(" ")
        assert left in spelled and right in spelled and left + right in spelled


def test_q8_0_dequantizes_close_and_f16_is_half_size(folders: dict[str, Path], tmp_path: Path) -> None:
    v = shipped().resolve(VARIANTS[0])
    arts = folder_artifacts(folders[v.name], tmp_path)
    f32 = derived_gguf(arts, v, "f32")
    _, t8 = _reader(derived_gguf(arts, v, "q8_0"))
    _, t32 = _reader(f32)
    w = np.asarray(t32["blk.0.attn_q.weight"].data)
    q = t8["blk.0.attn_q.weight"]
    assert q.tensor_type == gguf.GGMLQuantizationType.Q8_0
    back = gguf.quants.dequantize(np.asarray(q.data), q.tensor_type).reshape(w.shape)
    assert np.abs(back - w).max() <= np.abs(w).max() / 127 + 1e-6
    assert t8["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32  # 1-D stays f32
    assert derived_gguf(arts, v, "f16").stat().st_size < 0.55 * f32.stat().st_size


def test_hf_and_meta_checkpoints_give_the_same_tensors(tmp_path: Path) -> None:
    from llamahub.testing import tiny_artifacts

    v = shipped().resolve("llama-debug-3.1-instruct")
    meta, _ = tiny_artifacts(tmp_path / "m", v.name, fmt="meta", seed=3)
    hf, _ = tiny_artifacts(tmp_path / "h", v.name, fmt="hf", seed=3)
    _, tm = _reader(derived_gguf(meta, v, "f32"))
    _, th = _reader(derived_gguf(hf, v, "f32"))
    assert set(tm) == set(th)
    for name in tm:  # q and k rows are back in Meta's interleaved order
        assert np.array_equal(np.asarray(tm[name].data), np.asarray(th[name].data)), name


def test_rope_factors_divide_to_the_scaled_frequencies() -> None:
    a = shipped().resolve("llama-debug-3.1").arch
    plain = rope_frequencies(a.head_dim, a.rope_theta, None)
    scaled = rope_frequencies(a.head_dim, a.rope_theta, a.rope_scaling)
    factors = rope_factors(a)
    assert factors.shape == (a.head_dim // 2,) and factors.min() >= 1.0 and factors.max() > 1.0
    assert torch.allclose(plain / factors, scaled, rtol=1e-6)


def test_derived_file_is_made_once_and_again_when_damaged(folders: dict[str, Path], tmp_path: Path) -> None:
    v = shipped().resolve(VARIANTS[0])
    arts = folder_artifacts(folders[v.name], tmp_path)
    path = derived_gguf(arts, v, "f16")
    made = path.stat().st_mtime_ns
    assert derived_gguf(arts, v, "f16").stat().st_mtime_ns == made
    assert arts.sidecar("gguf-f16")["size"] == path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(100)
    again = derived_gguf(arts, v, "f16")
    assert again.stat().st_size == arts.sidecar("gguf-f16")["size"] > 100
    assert not list(path.parent.glob("*.part"))


def test_export_command_writes_a_gguf_and_refuses_bad_quants(llama2_debug_folder: Path,
                                                             tmp_path: Path) -> None:
    env = {**os.environ, "LLAMAHUB_HOME": str(tmp_path / "home")}
    out = subprocess.run([EXE, "export", str(llama2_debug_folder), "--quant", "q8_0", "--out", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    [written] = tmp_path.glob("*.gguf")
    assert written.name == "llama-debug-2-chat-q8_0.gguf" and out.stdout.startswith(f"wrote {written}")
    fields, _ = _reader(written)
    assert fields["general.file_type"] == 7 and fields["llamahub.variant"] == "llama-debug-2-chat"
    bad = subprocess.run([EXE, "export", str(llama2_debug_folder), "--quant", "q3"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert bad.returncode == 1 and "unknown GGUF quantization 'q3'" in bad.stderr and "next:" in bad.stderr


def test_a_gguf_names_its_variant_and_must_match_it(folders: dict[str, Path], tmp_path: Path) -> None:
    v = shipped().resolve(VARIANTS[1])
    path = derived_gguf(folder_artifacts(folders[v.name], tmp_path), v, "q8_0")
    assert identify_gguf(path, None, shipped()).name == v.name
    with pytest.raises(CorruptCheckpointError, match="does not hold llama-debug-2-chat"):
        identify_gguf(path, "llama-debug-2-chat", shipped())  # 2 kv heads vs 4
    anonymous = tmp_path / "anon.gguf"
    w = gguf.GGUFWriter(anonymous, "llama")
    w.add_string("general.name", "my own model")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    with pytest.raises(NotACheckpointError, match="'my own model'") as e:
        identify_gguf(anonymous, None, shipped())
    assert "variant=" in (e.value.hint or "")


def test_backend_contract_without_llama_cpp_says_how_to_install() -> None:
    b = llamahub_llamacpp.LlamaCppBackend()
    check_backend(b)
    v = shipped().resolve("llama-debug-2")
    assert "used only when asked" in b.unsupported_reason(v, LoadOptions())
    assert b.unsupported_reason(v, LoadOptions(extra={"quant": "q4_0"})) is None
    assert "q5" in b.unsupported_reason(v, LoadOptions(extra={"quant": "q5"}))
    q4 = b.plan(v, LoadOptions(backend="llamacpp", dtype="q4_0")).host_bytes
    assert q4 < b.plan(v, LoadOptions(backend="llamacpp", dtype="f32")).host_bytes
    why = b.unavailable_reason()
    if why is not None:
        assert "pip install 'llamahub[llamacpp]'" in why


def test_loading_a_gguf_path_needs_a_backend_that_reads_gguf(folders: dict[str, Path], tmp_path: Path,
                                                             plugin_manager: pluggy.PluginManager) -> None:
    plugin_manager.register(llamahub_llamacpp, name="llamacpp")
    v = shipped().resolve(VARIANTS[0])
    path = derived_gguf(folder_artifacts(folders[v.name], tmp_path), v, "f16")
    with pytest.raises(NoBackendError, match="cannot read gguf"):
        llamahub.load(path, backend="cpu")
    (tmp_path / "notes.gguf").write_text("not a model")
    with pytest.raises(NotACheckpointError, match="not a GGUF file"):
        llamahub.load(tmp_path / "notes.gguf")
    if llamahub_llamacpp.LlamaCppBackend().unavailable_reason() is not None:
        with pytest.raises(NoBackendError, match=r"pip install 'llamahub\[llamacpp\]'"):
            llamahub.load(path)
