"""The second layout of an imported variant, converted once at import and verified.

A Meta import is also served in Hugging Face's layout (``model.safetensors`` or shards with their
index, ``config.json``, ``generation_config.json``, the tokenizer and its config), and an HF import
in Meta's (``consolidated.NN.pth``, ``params.json``, ``checklist.chk``, the tokenizer). Paths follow
the rules of the ``files`` table for that format: HF files under ``<variant>/``, Meta files as in
Meta's download root. The converted tensors are read back and compared with the source before
anything is recorded; their blobs get digests like any other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from llamahub.hub.errors import ImportRefusedError
from llamahub.registry import Variant

SHARD_BYTES = 5 * 10**9  # transformers' default shard size for safetensors
HF_TEXTS = ("LICENSE", "USE_POLICY.md")


def to_hf(model_dir: Path, variant: Variant, tokenizer: Path | None, texts: dict[str, Path | bytes],
          out: Path) -> dict[str, Path | bytes]:
    """Write ``variant``'s HF layout from the Meta folder ``model_dir`` into ``out``; returns
    ``{served path: file or bytes}`` with paths under ``<variant>/``."""
    from llamahub.model import convert
    from llamahub.model.checkpoint import open_checkpoint

    state = open_checkpoint(model_dir, args=variant.arch).state_dict()
    hf_state = convert.meta_to_hf(state, variant.arch)
    files = _write_safetensors(hf_state, out)
    _verify(files, state, variant, "hf")
    bos, eos = _special_ids(tokenizer)
    dtype = str(next(iter(hf_state.values())).dtype).removeprefix("torch.")
    config = variant.arch.to_hf_config(bos_token_id=bos, eos_token_id=eos, dtype=dtype)
    served: dict[str, Path | bytes] = {name: path for name, path in files.items()}
    served["config.json"] = _json(config)
    served["generation_config.json"] = _json({"bos_token_id": bos, "eos_token_id": eos,
                                              "do_sample": False})
    if tokenizer is not None:
        from llamahub.model.hf_tokenizer import tokenizer_files

        served["tokenizer.model"] = tokenizer
        served.update(tokenizer_files(tokenizer, chat_format=variant.chat_format,
                                      context_length=variant.context_length))
    for name in HF_TEXTS:
        if name in texts:
            served[name] = texts[name]
    return {f"{variant.name}/{name}": source for name, source in served.items()}


def to_meta(hf_dir: Path, variant: Variant, out: Path) -> dict[str, Path | bytes]:
    """Write ``variant``'s Meta layout from the HF folder ``hf_dir`` into ``out``; returns
    ``{served path: file}`` with Meta's download-root paths."""
    from llamahub.model.checkpoint import open_checkpoint
    from llamahub.model.writer import write_checklist, write_meta

    source = open_checkpoint(hf_dir, args=variant.arch)
    state = source.state_dict()
    tok_dir = out if variant.tokenizer_location == "top" else out / variant.meta_folder
    served: dict[str, Path | bytes] = {}
    if source.tokenizer_path is not None:
        tok_dir.mkdir(parents=True, exist_ok=True)
        (tok_dir / "tokenizer.model").write_bytes(source.tokenizer_path.read_bytes())
        if variant.tokenizer_location == "top":
            write_checklist(out, ["tokenizer.model"], "tokenizer_checklist.chk")
    folder = write_meta(out / variant.meta_folder, variant.arch, state, shards=variant.shards,
                        llama2_style=variant.meta_llama2_vocab)
    written = open_checkpoint(folder, args=variant.arch).state_dict()
    _same(written, state, variant, "meta")
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        served[path.relative_to(out).as_posix()] = path
    for name in HF_TEXTS:
        if (hf_dir / name).is_file():
            served[name] = hf_dir / name
    return served


def _write_safetensors(state: dict[str, torch.Tensor], out: Path) -> dict[str, Path]:
    """``model.safetensors``, or shards of at most SHARD_BYTES and ``model.safetensors.index.json``."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    groups: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, t in state.items():
        n = t.numel() * t.element_size()
        if groups[-1] and size + n > SHARD_BYTES:
            groups.append({})
            size = 0
        groups[-1][key] = t
        size += n
    if len(groups) == 1:
        save_file(groups[0], str(out / "model.safetensors"), metadata={"format": "pt"})
        return {"model.safetensors": out / "model.safetensors"}
    files: dict[str, Path] = {}
    weight_map: dict[str, str] = {}
    for i, group in enumerate(groups, 1):
        name = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        save_file(group, str(out / name), metadata={"format": "pt"})
        files[name] = out / name
        weight_map.update(dict.fromkeys(group, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = out / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    files[index.name] = index
    return files


def _verify(files: dict[str, Path], state: dict[str, torch.Tensor], variant: Variant, layout: str) -> None:
    from llamahub.model import convert
    from llamahub.model.checkpoint import load_safetensors

    hf: dict[str, torch.Tensor] = {}
    for name, path in files.items():
        if name.endswith(".safetensors"):
            hf.update(load_safetensors(path))
    _same(convert.hf_to_meta(hf, variant.arch), state, variant, layout)


def _same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], variant: Variant, layout: str) -> None:
    keys = set(want) - ({"output.weight"} if variant.arch.tie_embeddings else set())
    bad = sorted(k for k in keys if k not in got or not torch.equal(got[k], want[k]))
    if bad:
        raise ImportRefusedError(f"the {layout} layout converted from {variant.name} differs from the "
                                 f"source in {', '.join(bad[:3])}", code="conversion_mismatch",
                                 hint="report this as a bug; import with --no-convert meanwhile")


def _special_ids(tokenizer: Path | None) -> tuple[int, int | list[int]]:
    """BOS and the id(s) generation stops at (Llama 3.x: end of text, of turn and of message)."""
    if tokenizer is None:
        return 1, 2
    from llamahub.model.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer)
    stops = sorted(tok.stop_ids)
    return tok.bos_id, stops[0] if len(stops) == 1 else stops


def _json(data: Any) -> bytes:
    return (json.dumps(data, indent=2) + "\n").encode("utf-8")
