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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from llamahub.hub.errors import ImportRefusedError
from llamahub.registry import Variant

SHARD_BYTES = 5 * 10**9  # transformers' default shard size for safetensors
HF_TEXTS = ("LICENSE", "USE_POLICY.md")


def to_hf(model_dir: Path, variant: Variant, tokenizer: Path | None, texts: dict[str, Path | bytes],
          out: Path) -> dict[str, Path | bytes]:
    """Write ``variant``'s HF layout from the Meta folder ``model_dir`` into ``out``; returns
    ``{served path: file or bytes}`` with paths under ``<variant>/``."""
    from llamahub.model.checkpoint import open_checkpoint

    reader = open_checkpoint(model_dir, args=variant.arch).reader()
    files, dtype = _write_safetensors(reader.tensors(), variant, out)
    bos, eos = _special_ids(tokenizer, variant.chat_format)
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
    ``{served path: file}`` with Meta's download-root paths. One Meta shard is cut, written and
    read back at a time."""
    from llamahub.model.checkpoint import load_pth, open_checkpoint
    from llamahub.model.writer import write_checklist, write_meta_shards

    source = open_checkpoint(hf_dir, args=variant.arch)
    reader = source.reader()
    reader.check()
    n, emb = variant.shards, 1 if variant.meta_llama2_vocab else 0

    def shard(rank: int) -> dict[str, torch.Tensor]:
        part = reader.shard(rank, n, embedding_dim=emb)
        if variant.arch.tie_embeddings:
            part.pop("output.weight", None)
        return part

    tok_dir = out if variant.tokenizer_location == "top" else out / variant.meta_folder
    served: dict[str, Path | bytes] = {}
    if source.tokenizer_path is not None:
        tok_dir.mkdir(parents=True, exist_ok=True)
        (tok_dir / "tokenizer.model").write_bytes(source.tokenizer_path.read_bytes())
        if variant.tokenizer_location == "top":
            write_checklist(out, ["tokenizer.model"], "tokenizer_checklist.chk")
    folder = write_meta_shards(out / variant.meta_folder, variant.arch, (shard(r) for r in range(n)),
                               llama2_style=variant.meta_llama2_vocab)
    for rank in range(n):
        _same(load_pth(folder / f"consolidated.{rank:02d}.pth"), shard(rank), variant, "meta")
    open_checkpoint(folder, args=variant.arch).reader().check()  # the shards add up to the model
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        served[path.relative_to(out).as_posix()] = path
    for name in HF_TEXTS:
        if (hf_dir / name).is_file():
            served[name] = hf_dir / name
    return served


def _write_safetensors(tensors: Iterator[tuple[str, torch.Tensor]], variant: Variant,
                       out: Path) -> tuple[dict[str, Path], str]:
    """``model.safetensors``, or shards of at most SHARD_BYTES and ``model.safetensors.index.json``,
    from Meta-named tensors; returns the files and the dtype's name.

    One shard is held at a time: each is written, read back, converted to Meta's names and
    compared with the source tensors before the next is made, so a 70B model converts in about
    one shard's memory.
    """
    out.mkdir(parents=True, exist_ok=True)
    parts: list[Path] = []
    weight_map: dict[str, str] = {}
    total, dtype = 0, "float32"
    for group in _groups(tensors, variant):
        part = out / f"part-{len(parts)}.safetensors"
        hf = {hf_key: t for hf_key, (_, _, t) in group.items()}
        save_file(hf, str(part), metadata={"format": "pt"})
        _verify(part, {meta_key: source for meta_key, source, _ in group.values()}, variant)
        weight_map.update(dict.fromkeys(hf, part.name))
        total += sum(t.numel() * t.element_size() for t in hf.values())
        dtype = str(next(iter(hf.values())).dtype).removeprefix("torch.")
        parts.append(part)
    if len(parts) == 1:
        parts[0].replace(out / "model.safetensors")
        return {"model.safetensors": out / "model.safetensors"}, dtype
    files: dict[str, Path] = {}
    for i, part in enumerate(parts, 1):
        name = f"model-{i:05d}-of-{len(parts):05d}.safetensors"
        part.replace(out / name)
        files[name] = out / name
    names = {p.name: n for p, n in zip(parts, files, strict=True)}
    index = out / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": total},
                                 "weight_map": {k: names[v] for k, v in weight_map.items()}}, indent=2))
    files[index.name] = index
    return files, dtype


def _groups(tensors: Iterator[tuple[str, torch.Tensor]],
            variant: Variant) -> Iterator[dict[str, tuple[str, torch.Tensor, torch.Tensor]]]:
    """``{hf key: (meta key, source tensor, HF tensor)}`` groups of at most SHARD_BYTES (a bigger
    tensor alone)."""
    from llamahub.model import convert

    group: dict[str, tuple[str, torch.Tensor, torch.Tensor]] = {}
    size = 0
    for key, source in tensors:
        for hf_key, t in convert.meta_to_hf({key: source}, variant.arch).items():
            n = t.numel() * t.element_size()
            if group and size + n > SHARD_BYTES:
                yield group
                group, size = {}, 0
            group[hf_key] = (key, source, t)
            size += n
    if group:
        yield group


def _verify(part: Path, sources: dict[str, torch.Tensor], variant: Variant) -> None:
    """The shard at ``part``, read back in Meta's names, equals the source tensors it came from."""
    from llamahub.model import convert
    from llamahub.model.checkpoint import load_safetensors

    _same(convert.hf_to_meta(load_safetensors(part), variant.arch), sources, variant, "hf")


def _same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], variant: Variant, layout: str) -> None:
    keys = set(want) - ({"output.weight"} if variant.arch.tie_embeddings else set())
    bad = sorted(k for k in keys if k not in got or not torch.equal(got[k], want[k]))
    if bad:
        raise ImportRefusedError(f"the {layout} layout converted from {variant.name} differs from the "
                                 f"source in {', '.join(bad[:3])}", code="conversion_mismatch",
                                 hint="report this as a bug; import with --no-convert meanwhile")


def _special_ids(tokenizer: Path | None, chat_format: str | None) -> tuple[int, int | list[int]]:
    """BOS and the id(s) generation stops at (Llama 3.x: end of text, of turn and of message; a chat
    model: where its chat format ends a turn, e.g. Code Llama 70B Instruct's <step>)."""
    if tokenizer is None:
        return 1, 2
    from llamahub.model.chat import chat_stop_ids
    from llamahub.model.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer)
    stops = sorted(chat_stop_ids(tok, chat_format) if chat_format else tok.stop_ids)
    return tok.bos_id, stops[0] if len(stops) == 1 else stops


def _json(data: Any) -> bytes:
    return (json.dumps(data, indent=2) + "\n").encode("utf-8")
