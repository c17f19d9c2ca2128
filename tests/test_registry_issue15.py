"""Llama 1, Code Llama and Llama 3.3 in the registry, with the licenses they ship under."""

from __future__ import annotations

import pytest

import llamahub
from llamahub.policy import license_terms

# (name, license, family, context, shards, dim, layers, heads, kv heads, vocab, billions of parameters)
TABLE = [
    ("llama-1-7b", "llama1", "llama-1", 2048, 1, 4096, 32, 32, 32, 32000, 6.7),
    ("llama-1-13b", "llama1", "llama-1", 2048, 2, 5120, 40, 40, 40, 32000, 13.0),
    ("llama-1-33b", "llama1", "llama-1", 2048, 4, 6656, 60, 52, 52, 32000, 32.5),
    ("llama-1-65b", "llama1", "llama-1", 2048, 8, 8192, 80, 64, 64, 32000, 65.3),
    ("code-llama-7b", "llama2", "code-llama", 16384, 1, 4096, 32, 32, 32, 32016, 6.7),
    ("code-llama-7b-python", "llama2", "code-llama", 16384, 1, 4096, 32, 32, 32, 32000, 6.7),
    ("code-llama-13b-instruct", "llama2", "code-llama", 16384, 2, 5120, 40, 40, 40, 32016, 13.0),
    ("code-llama-34b", "llama2", "code-llama", 16384, 4, 8192, 48, 64, 8, 32000, 33.7),
    ("code-llama-70b", "llama2", "code-llama", 16384, 8, 8192, 80, 64, 8, 32016, 69.0),
    ("code-llama-70b-python", "llama2", "code-llama", 4096, 8, 8192, 80, 64, 8, 32016, 69.0),
    ("code-llama-70b-instruct", "llama2", "code-llama", 4096, 8, 8192, 80, 64, 8, 32016, 69.0),
    ("llama-3.3-70b-instruct", "llama3.3", "llama-3.3", 131072, 8, 8192, 80, 64, 8, 128256, 70.6),
]


@pytest.mark.parametrize(("name", "license_id", "family", "context", "shards", "dim", "layers", "heads", "kv",
                          "vocab", "billions"), TABLE)
def test_new_variants(name: str, license_id: str, family: str, context: int, shards: int, dim: int,
                      layers: int, heads: int, kv: int, vocab: int, billions: float) -> None:
    v = llamahub.variant(name)
    a = v.arch
    assert (v.license, v.family, v.context_length, v.shards) == (license_id, family, context, shards)
    assert (a.dim, a.n_layers, a.n_heads, a.kv_heads, a.vocab_size) == (dim, layers, heads, kv, vocab)
    assert round(v.param_count() / 1e9, 1) == billions


def test_meta_folder_names_and_aliases() -> None:
    assert llamahub.variant("LLaMA-30B").name == "llama-1-33b"
    assert llamahub.variant("CodeLlama-34b-Instruct").chat_format == "llama2"
    cl70 = llamahub.variant("codellama:70b-instruct")
    assert (cl70.kind, cl70.chat_format) == ("chat", "codellama70b")  # its own format, not Llama 2's
    assert llamahub.variant("llama3.3").name == "llama-3.3-70b-instruct"


def test_the_licenses() -> None:
    llama1 = license_terms("llama1")
    assert llama1.research_only and llama1.mau_threshold is None and not llama1.outputs_may_train_other_models
    assert license_terms("llama2").covers("code-llama")
    llama33 = license_terms("llama3.3")
    assert llama33.release_date.isoformat() == "2024-12-06" and llama33.derivative_name_prefix == "Llama"
    assert llama33.id != license_terms("llama3.1").id  # accepted separately


# Code Llama as Meta's params.json and HF's config.json give it (sources: registry/variants/code-llama.toml):
# (size, FFN hidden width, vocab of base / Python / Instruct)
CODE_LLAMA = [("7b", 11008, (32016, 32000, 32016)), ("13b", 13824, (32016, 32000, 32016)),
              ("34b", 22016, (32000, 32000, 32000)), ("70b", 28672, (32016, 32016, 32016))]


@pytest.mark.parametrize(("size", "hidden", "vocabs"), CODE_LLAMA)
def test_code_llama_numbers(size: str, hidden: int, vocabs: tuple[int, int, int]) -> None:
    names = [f"code-llama-{size}", f"code-llama-{size}-python", f"code-llama-{size}-instruct"]
    for name, vocab in zip(names, vocabs, strict=True):
        a = llamahub.variant(name).arch
        assert (a.hidden_dim, a.vocab_size, a.head_dim) == (hidden, vocab, 128)
        assert (a.rope_theta, a.norm_eps) == (1e6, 1e-5)
        assert a.max_seq_len == llamahub.variant(name).context_length
        assert a.rope_scaling is None


def test_code_llama_download_layout_is_meta_download_sh() -> None:
    assert llamahub.variant("code-llama-7b-python").meta_files() == [
        "LICENSE", "USE_POLICY.md", "CodeLlama-7b-Python/consolidated.00.pth",
        "CodeLlama-7b-Python/params.json", "CodeLlama-7b-Python/tokenizer.model",
        "CodeLlama-7b-Python/checklist.chk"]
    shards = {s: llamahub.variant(f"code-llama-{s}-instruct").shards for s in ("7b", "13b", "34b", "70b")}
    assert shards == {"7b": 1, "13b": 2, "34b": 4, "70b": 8}
