"""Every registry file loads, validates and agrees with the published architecture facts."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from llamahub.errors import DataFileError, RegistryError, UnknownVariantError
from llamahub.registry import Registry, _builtin, _registry_root, load_file, validate

EXPECTED = {  # name: (dim, layers, heads, kv heads, ffn, vocab, shards)
    "llama-2-7b": (4096, 32, 32, 32, 11008, 32000, 1),
    "llama-2-13b-chat": (5120, 40, 40, 40, 13824, 32000, 2),
    "llama-2-70b": (8192, 80, 64, 8, 28672, 32000, 8),
    "llama-3-8b-instruct": (4096, 32, 32, 8, 14336, 128256, 1),
    "llama-3-70b": (8192, 80, 64, 8, 28672, 128256, 8),
    "llama-3.1-8b": (4096, 32, 32, 8, 14336, 128256, 1),
    "llama-3.1-405b-instruct": (16384, 126, 128, 8, 53248, 128256, 8),
    "llama-3.2-1b": (2048, 16, 32, 8, 8192, 128256, 1),
    "llama-3.2-3b-instruct": (3072, 28, 24, 8, 8192, 128256, 1),
}
# Parameter counts Meta publishes (rounded), as a check on the whole architecture table.
PARAMS_B = {"llama-2-7b": 6.74, "llama-2-13b": 13.0, "llama-2-70b": 69.0, "llama-3-8b": 8.03,
            "llama-3.1-70b": 70.6, "llama-3.1-405b": 405.9, "llama-3.2-1b": 1.24, "llama-3.2-3b": 3.21}


def test_every_variant_file_loads() -> None:
    files = sorted((_registry_root() / "variants").glob("*.toml"))
    assert {f.stem for f in files} >= {"llama-2", "llama-3", "llama-3.1", "llama-3.2", "llama-debug"}
    for f in files:
        assert load_file(f), f"{f.name} defines no variant"


def test_all_families_and_sizes_present() -> None:
    names = {v.name for v in _builtin()}
    for size in ("7b", "13b", "70b"):
        assert {f"llama-2-{size}", f"llama-2-{size}-chat"} <= names
    for fam, sizes in (("llama-3", ("8b", "70b")), ("llama-3.1", ("8b", "70b", "405b")),
                       ("llama-3.2", ("1b", "3b"))):
        for size in sizes:
            assert {f"{fam}-{size}", f"{fam}-{size}-instruct"} <= names


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_architecture_numbers(name: str) -> None:
    v = _builtin().resolve(name)
    a = v.arch
    assert (a.dim, a.n_layers, a.n_heads, a.kv_heads, a.hidden_dim, a.vocab_size, v.shards) == EXPECTED[name]


@pytest.mark.parametrize(("name", "billions"), sorted(PARAMS_B.items()))
def test_parameter_counts(name: str, billions: float) -> None:
    assert _builtin().resolve(name).param_count() / 1e9 == pytest.approx(billions, rel=0.01)


def test_cross_checks() -> None:
    reg = _builtin()
    for v in reg:
        if v.family == "llama-2" and v.size != "70b":
            assert v.arch.n_kv_heads is None  # Llama 2 7B/13B: kv heads = heads
        if v.family.startswith("llama-3"):
            assert v.tokenizer == "tiktoken" and v.tokenizer_location == "model"
        if v.family in ("llama-3.1", "llama-3.2"):
            assert v.arch.rope_scaling is not None and v.context_length == 131072
        if v.kind == "chat" and v.family != "llama-3.3":  # Llama 3.3 was released as Instruct only
            base = reg.resolve(v.name.removesuffix("-chat").removesuffix("-instruct"))
            # same weights' shapes; the context may be shorter (Code Llama 70B Instruct: 4096)
            assert replace(base.arch, max_seq_len=v.arch.max_seq_len) == v.arch and base.shards == v.shards
            assert v.context_length <= base.context_length
        assert v.arch.max_seq_len == v.context_length
    assert reg.resolve("llama-2-7b").context_length == 4096
    assert reg.resolve("llama-3-8b").context_length == 8192
    assert reg.resolve("llama-3.2-1b").arch.tie_embeddings


def test_meta_files_layout() -> None:
    reg = _builtin()
    files = reg.resolve("llama-2-13b-chat").meta_files()
    assert files[:4] == ["LICENSE", "USE_POLICY.md", "tokenizer.model", "tokenizer_checklist.chk"]
    assert "llama-2-13b-chat/consolidated.01.pth" in files
    assert "llama-2-13b-chat/checklist.chk" in files
    l3 = reg.resolve("llama-3-8b").meta_files()
    assert "Meta-Llama-3-8B/tokenizer.model" in l3 and "tokenizer.model" not in l3


@pytest.mark.parametrize("alias", ["llama-2-13b-chat", "llama2:13b-chat", "meta-llama/Llama-2-13b-chat-hf",
                                   "META-LLAMA/llama-2-13b-chat", "Llama-2-13b-chat"])
def test_aliases_resolve(alias: str) -> None:
    assert _builtin().resolve(alias).name == "llama-2-13b-chat"


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(UnknownVariantError) as e:
        _builtin().resolve("llama-2-13-chat")
    assert "llama-2-13b-chat" in e.value.suggestions
    assert "llamahub list" in str(e.value)


def test_memory_estimate_from_architecture() -> None:
    v = _builtin().resolve("llama-2-7b")
    kv = 2 * 32 * 4096 * 4096 * 2
    assert v.memory_estimate("bf16") == v.param_count() * 2 + kv
    assert v.memory_estimate("fp32", context=0) == v.param_count() * 4
    with pytest.raises(RegistryError):
        v.memory_estimate("fp8")


def test_debug_family_is_labelled() -> None:
    debug = [v for v in _builtin() if v.family.startswith("llama-debug")]
    assert {v.family for v in debug} == {"llama-debug", "llama-debug-big"}
    assert all(v.debug and "debug" in v.family_title.lower() for v in debug)
    assert not any(v.debug for v in _builtin() if not v.family.startswith("llama-debug"))


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "x.toml"
    p.write_text(text)
    return p


BASE = """[family]
name = "f"
license = "l"
tokenizer = "sentencepiece"
tokenizer_location = "top"
context_length = 64
release_date = "2024-01-01"
[family.arch]
vocab_size = 32
"""


GOOD = {"name": '"a"', "size": '"s"', "kind": '"base"', "shards": "1", "meta_folder": '"a"',
        "arch": "{dim=8,n_layers=1,n_heads=2}"}


def _entry(**changes: str | None) -> str:
    keys = {k: v for k, v in (GOOD | changes).items() if v is not None}
    return BASE + "[[variant]]\n" + "".join(f"{k}={v}\n" for k, v in keys.items())


def test_a_good_entry_loads(tmp_path: Path) -> None:
    [v] = load_file(_write(tmp_path, _entry()))
    assert (v.name, v.family, v.arch.dim, v.arch.max_seq_len) == ("a", "f", 8, 64)
    assert (v.release_date, v.source, v.arch.vocab_size) == ("2024-01-01", "x.toml", 32)


@pytest.mark.parametrize(("changes", "field", "problem"), [
    ({"kind": '"chat"'}, "chat_format", "needs one of llama2, llama3"),
    ({"chat_format": '"llama2"'}, "chat_format", "a base variant has none"),
    ({"kind": '"odd"'}, "kind", "input should be 'base' or 'chat', got 'odd'"),
    ({"arch": "{dim=9,n_layers=1,n_heads=2}"}, "arch", "not divisible"),
    ({"arch": "{dim=-8,n_layers=1,n_heads=2}"}, "arch.dim", "greater than 0, got -8"),
    ({"arch": "{dim=8,n_layers=1,n_heads=2,rope_scaling={factor='x'}}"}, "arch.rope_scaling.factor",
     "valid number, got 'x'"),
    ({"arch": "{dim=8,n_layers=1,n_heads=2,heads=3}"}, "arch.heads", "unknown key"),
    ({"colour": '"red"'}, "colour", "unknown key"),
    ({"size": None}, "size", "missing"),
    ({"shards": "3"}, "shards", "3 shards cannot split 2 kv heads"),
    ({"shards": "0"}, "shards", "greater than 0"),
    ({"shards": '"1"'}, "shards", "valid integer, got '1'"),
    ({"aliases": '["x", "x"]'}, "aliases", "must not repeat"),
    ({"hf_repo": '"a\\nb"'}, "hf_repo", "one-line"),
    ({"name": '"Llama 2"'}, "name", "pattern"),
])
def test_a_bad_entry_names_file_entry_and_field(tmp_path: Path, changes: dict[str, str | None], field: str,
                                                problem: str) -> None:
    with pytest.raises(DataFileError) as err:
        load_file(_write(tmp_path, _entry(**changes)))
    e = err.value
    assert isinstance(e, RegistryError)
    assert (e.file, e.fields) == ("x.toml", [field])
    assert e.entry.startswith("variant[0]")
    assert problem in e.problems[0][1]
    assert e.message.startswith(f"x.toml, {e.entry}: {field}: ") and e.hint


def test_unknown_keys_hint_lists_the_allowed_ones(tmp_path: Path) -> None:
    with pytest.raises(DataFileError) as err:
        load_file(_write(tmp_path, _entry(colour='"red"', heads="2")))
    assert err.value.fields == ["colour", "heads"]
    assert "meta_folder" in (err.value.hint or "") and "chat_format" in (err.value.hint or "")
    with pytest.raises(DataFileError) as err:
        load_file(_write(tmp_path, _entry(arch="{dim=8,n_layers=1,n_heads=2,heads=3}")))
    assert "n_kv_heads" in (err.value.hint or "")


@pytest.mark.parametrize(("text", "entry", "field"), [
    (BASE.replace('license = "l"\n', ""), "[family]", "license"),
    (BASE.replace('"2024-01-01"', '"Jan 2024"'), "[family]", "release_date"),
    (BASE.replace("context_length = 64", "context_length = -1"), "[family]", "context_length"),
    (BASE.replace("vocab_size = 32", "vocab_size = 32\nvocab = 3"), "[family]", "arch.vocab"),
    (BASE.replace("[family]", "[familie]"), "(file)", "familie"),
    ("[family\n", "(file)", "(syntax)"),
])
def test_family_and_file_problems_name_their_place(tmp_path: Path, text: str, entry: str, field: str) -> None:
    with pytest.raises(DataFileError) as err:
        load_file(_write(tmp_path, text + "[[variant]]\n" + "".join(f"{k}={v}\n" for k, v in GOOD.items())))
    assert (err.value.file, err.value.entry, err.value.fields[0]) == ("x.toml", entry, field)


def test_toml_dates_are_accepted_as_release_dates(tmp_path: Path) -> None:
    [v] = load_file(_write(tmp_path, _entry().replace('"2024-01-01"', "2024-01-01")))
    assert v.release_date == "2024-01-01"


def test_variants_built_in_code_are_checked_alike() -> None:
    v = _builtin().resolve("llama-2-7b")
    assert validate(v, "my_plugin") is v
    with pytest.raises(DataFileError) as err:
        validate(replace(v, kind="instruct", shards=3), "my_plugin")
    assert (err.value.file, err.value.entry, err.value.fields) == ("my_plugin", "variant llama-2-7b",
                                                                   ["kind", "shards"])


def test_duplicate_alias_rejected(tmp_path: Path) -> None:
    v = _builtin().resolve("llama-2-7b")
    clash = v.__class__(**{**v.__dict__, "name": "other", "aliases": ("llama2:7b",), "hf_repo": None,
                           "hf_repo_native": None})
    with pytest.raises(DataFileError, match="already used by llama-2-7b") as err:
        Registry([v, clash])
    assert err.value.fields == ["aliases"]
