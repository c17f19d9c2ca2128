"""``llamahub.load()``: chains resolution, checkpoint reading, backend selection and loading."""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from llamahub import registry, selection
from llamahub.errors import CorruptCheckpointError, TokenizerError
from llamahub.interfaces import LoadOptions
from llamahub.registry import Variant

if TYPE_CHECKING:
    from llamahub.client.cache import Snapshot
    from llamahub.model.checkpoint import Checkpoint
    from llamahub.model.llm import LlamaModel

_ARCH_FIELDS = ("dim", "n_layers", "n_heads", "kv_heads", "vocab_size", "hidden_dim", "head_dim")


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or Path(name).expanduser().exists()


def load(name: str | Path, *, variant: str | None = None, backend: str | None = None,
         dtype: str | None = None, device: str | None = None, threads: int | None = None,
         source: str | None = None, location: str | None = None,
         progress: bool | None = None) -> LlamaModel:
    """Load a model by registry name (downloading it if needed) or from a local checkpoint folder.

    By name: the license gates run first on your profile and receipts; then the cached copy is
    used, or the files come from ``source`` (``hub`` by default: the configured hub, else the
    embedded one; ``meta-url`` with ``location`` a presigned URL; ``local`` with a folder), are
    verified, cached and loaded. ``LLAMAHUB_OFFLINE=1`` loads only what is cached, with no network.

    ``variant`` names the registry entry of a local folder when it cannot be recognised
    (its ``llamahub.json`` marker or Meta folder name usually says).
    """
    options = LoadOptions(backend=backend, dtype=dtype, device=device, threads=threads)
    if isinstance(name, Path) or _looks_like_path(name):
        return load_local(Path(name), variant=variant, options=options)
    v, snap = _fetch(name, source, location, progress)
    return load_local(snap.folder_of(v.meta_folder, v.name), variant=v.name, options=options)


def download(name: str, *, source: str | None = None, location: str | None = None,
             progress: bool | None = None, force: bool = False) -> Path:
    """Fetch a variant into the cache (license gates first) and return its folder in Meta's layout."""
    return _fetch(name, source, location, progress, force=force)[1].root


def _fetch(name: str, source: str | None, location: str | None, progress: bool | None,
           force: bool = False) -> tuple[Variant, Snapshot]:
    """(variant, its cached snapshot) after the license gates and, if needed, a download."""
    from llamahub.client.fetch import ensure
    from llamahub.client.session import Session

    v = registry.resolve(name)
    show = progress_default() if progress is None else progress
    with Session(echo=_to_stderr if show else None) as session:
        snap = ensure(v, session, source=source, location=location, force=force, progress=show)
    return v, snap


def _to_stderr(message: str) -> None:
    print(f"llamahub: {message}", file=sys.stderr, flush=True)


def progress_default() -> bool:
    """Progress bars unless ``LLAMAHUB_PROGRESS=0`` (scripts and CI turn them off)."""
    return os.environ.get("LLAMAHUB_PROGRESS", "1").strip().lower() not in ("0", "false", "no", "off")


def load_local(path: Path, *, variant: str | None = None,
               options: LoadOptions | None = None) -> LlamaModel:
    from llamahub.model.checkpoint import open_checkpoint
    from llamahub.model.tokenizer import load_tokenizer

    options = options or LoadOptions()
    ckpt = open_checkpoint(path)
    v = identify(ckpt, variant)
    ckpt = replace(ckpt, args=v.arch)
    if ckpt.tokenizer_path is None:
        raise TokenizerError(f"no tokenizer.model in {ckpt.path} or its parent folder",
                             hint="copy the tokenizer.model that came with the weights next to them")
    tokenizer = load_tokenizer(ckpt.tokenizer_path, v.tokenizer)
    if tokenizer.n_words != v.arch.vocab_size:
        raise TokenizerError(
            f"tokenizer has {tokenizer.n_words} tokens but the model's vocabulary is {v.arch.vocab_size}",
            hint=f"use the tokenizer.model that came with {v.name}")
    chosen = selection.choose(v, options)
    return chosen.load(ckpt, v, tokenizer, options)


def identify(ckpt: Checkpoint, name: str | None) -> Variant:
    """The registry variant of a local checkpoint, checked against its shapes.

    Order: the ``name`` given; the folder's llamahub.json marker; the Meta folder name; else
    an ad-hoc variant described by the checkpoint itself.
    """
    reg = registry.default_registry()
    found = None
    if name:
        found = reg.resolve(name)
    elif ckpt.variant_name:
        found = reg.resolve(ckpt.variant_name)
    else:
        found = reg.by_meta_folder(ckpt.path.name)
    if found is None:
        return local_variant(ckpt)
    diffs = [f"{f} {getattr(ckpt.args, f)} != {getattr(found.arch, f)}" for f in _ARCH_FIELDS
             if getattr(ckpt.args, f) != getattr(found.arch, f)]
    if diffs:
        raise CorruptCheckpointError(
            f"{ckpt.path} does not hold {found.name}: {', '.join(diffs)}",
            hint="name the right variant (variant=...) or check the folder's params.json/config.json")
    return found


def local_variant(ckpt: Checkpoint) -> Variant:
    """A variant for a checkpoint the registry does not know (a fine-tune, a custom size)."""
    from llamahub.model.tokenizer import load_tokenizer

    kind = load_tokenizer(ckpt.tokenizer_path).kind if ckpt.tokenizer_path else "sentencepiece"
    return Variant(
        name=ckpt.path.name, family="local", family_title="local checkpoint", size="custom",
        kind="base", arch=ckpt.args, shards=1, meta_folder=ckpt.path.name, tokenizer=kind,
        tokenizer_location="model", license="unknown", context_length=ckpt.args.max_seq_len,
        release_date="", source=str(ckpt.path),
    )
