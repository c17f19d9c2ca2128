"""The reference path any backend may take: identify a folder, open its checkpoint and tokenizer.

``open_reference(artifacts, variant, options)`` is what a backend that runs the reference
transformer calls: it opens the Meta or Hugging Face checkpoint in ``artifacts`` with the
variant's architecture (and the caller's context length and RoPE scaling), checks the tensor
shapes from headers, and reads the tokenizer once, checking its vocabulary against the model.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

from llamahub.errors import (
    ContextLengthError,
    CorruptCheckpointError,
    NotACheckpointError,
    TokenizerError,
)
from llamahub.interfaces import Artifacts, LoadOptions
from llamahub.model.args import ModelArgs, RopeScaling
from llamahub.model.checkpoint import (
    MARKER,
    Checkpoint,
    detect_format,
    detect_formats,
    find_tokenizer,
    open_checkpoint,
    read_json,
)
from llamahub.model.reader import CheckpointReader
from llamahub.model.tokenizer import Tokenizer, load_tokenizer, sniff_kind
from llamahub.registry import Registry, Variant

_ARCH_FIELDS = ("dim", "n_layers", "n_heads", "kv_heads", "vocab_size", "hidden_dim", "head_dim")
REFERENCE_FORMATS = frozenset({"meta", "hf"})


# --- context length -------------------------------------------------------------------------


def context_length(variant: Variant, options: LoadOptions) -> int:
    """The context the caller asked for (default: the variant's); beyond it needs RoPE scaling."""
    asked = options.context_length
    if asked is None:
        return variant.context_length
    if asked < 1:
        raise ContextLengthError(f"context_length must be at least 1, got {asked}",
                                 hint=f"omit it to use {variant.name}'s {variant.context_length} tokens")
    if asked > variant.context_length and not options.rope_scaling:
        raise ContextLengthError(
            f"{variant.name} was trained for {variant.context_length} tokens; {asked} needs RoPE scaling",
            hint=f"ask for at most {variant.context_length}, or pass rope_scaling="
                 "{'factor': F} to stretch the positions (quality may drop)")
    return asked


def model_args(variant: Variant, options: LoadOptions) -> ModelArgs:
    """The variant's architecture with the caller's context length and RoPE scaling applied."""
    args = replace(variant.arch, max_seq_len=context_length(variant, options))
    if options.rope_scaling:
        fields = {"original_max_position": variant.context_length, **options.rope_scaling}
        try:
            args = replace(args, rope_scaling=RopeScaling(**fields))  # type: ignore[arg-type]
        except TypeError as e:
            raise ContextLengthError(f"bad rope_scaling {dict(options.rope_scaling)}: {e}",
                                     hint="use keys factor, low_freq_factor, high_freq_factor, "
                                          "original_max_position") from e
    return args


# --- the reference checkpoint ---------------------------------------------------------------


@dataclass
class Reference:
    """An opened Meta/HF checkpoint: its reader, its tokenizer and the architecture to build."""

    checkpoint: Checkpoint
    reader: CheckpointReader
    tokenizer: Tokenizer
    args: ModelArgs

    @property
    def rope_layout(self) -> str:
        """The files' own q/k order: building in it avoids copying q/k at load."""
        return self.checkpoint.rope_layout


def open_reference(artifacts: Artifacts, variant: Variant,
                   options: LoadOptions | None = None) -> Reference:
    """Open the Meta or Hugging Face checkpoint of ``artifacts`` as ``variant``, with its tokenizer."""
    options = options or LoadOptions()
    if not artifacts.formats & REFERENCE_FORMATS:
        detect_format(artifacts.folder)  # raises the NotACheckpointError that says what to pass
    args = model_args(variant, options)
    ckpt = open_checkpoint(artifacts.folder, args=args)
    reader = ckpt.reader()
    reader.check()
    return Reference(ckpt, reader, open_tokenizer(ckpt.tokenizer_path, ckpt.path, variant), args)


def open_tokenizer(path: Path | None, folder: Path, variant: Variant) -> Tokenizer:
    if path is None:
        raise TokenizerError(f"no tokenizer.model in {folder} or its parent folder",
                             hint="copy the tokenizer.model that came with the weights next to them")
    tokenizer = load_tokenizer(path, variant.tokenizer)
    if tokenizer.n_words != variant.arch.vocab_size:
        raise TokenizerError(
            f"tokenizer has {tokenizer.n_words} tokens but the model's vocabulary is "
            f"{variant.arch.vocab_size}",
            hint=f"use the tokenizer.model that came with {variant.name}")
    return tokenizer


# --- local folders --------------------------------------------------------------------------


def identify_folder(folder: Path, name: str | None, registry: Registry) -> Variant:
    """The registry variant of a local folder, checked against its shapes when it has a config.

    Order: ``name``; the folder's llamahub.json marker; Meta's folder name; else an ad-hoc
    variant described by the folder's own params.json/config.json.
    """
    formats = detect_formats(folder)
    marker = read_json(folder / MARKER) if (folder / MARKER).is_file() else {}
    if name:
        found = registry.resolve(name)
    elif marker.get("variant"):
        found = registry.resolve(str(marker["variant"]))
    else:
        found = registry.by_meta_folder(folder.name)
    if not ((folder / "params.json").is_file() or (folder / "config.json").is_file()):
        if found is None:
            if formats:
                raise NotACheckpointError(f"{folder} holds {', '.join(sorted(formats))} files but no "
                                          "params.json or config.json to say what model they are",
                                          hint="name the variant: load(path, variant='llama-2-7b')")
            detect_format(folder)  # raises with the formats we read
        return found  # type: ignore[return-value]
    ckpt = open_checkpoint(folder)
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
    kind = sniff_kind(ckpt.tokenizer_path) if ckpt.tokenizer_path else "sentencepiece"
    return Variant(
        name=ckpt.path.name, family="local", family_title="local checkpoint", size="custom",
        kind="base", arch=ckpt.args, shards=1, meta_folder=ckpt.path.name, tokenizer=kind,
        tokenizer_location="model", license="unknown", context_length=ckpt.args.max_seq_len,
        release_date="", source=str(ckpt.path),
    )


def folder_artifacts(folder: Path, cache_root: Path) -> Artifacts:
    """Artifacts of a folder outside the cache; its derived files are keyed by path and contents."""
    folder = folder.expanduser().resolve()
    stamp = hashlib.sha256(str(folder).encode())
    for p in sorted(folder.iterdir()) if folder.is_dir() else ():
        if p.is_file():
            st = p.stat()
            stamp.update(f"{p.name} {st.st_size} {st.st_mtime_ns}\n".encode())
    snap = "local-" + stamp.hexdigest()[:16]
    root = folder.parent if find_tokenizer(folder) == folder.parent / "tokenizer.model" else folder
    return Artifacts(folder=folder, root=root, formats=detect_formats(folder), snapshot_id=snap,
                     derived_root=Path(cache_root) / "derived" / snap)


# --- a GGUF file of the user's own ----------------------------------------------------------

_GGUF_ARCH = {"embedding_length": "dim", "block_count": "n_layers", "attention.head_count": "n_heads",
              "attention.head_count_kv": "kv_heads", "feed_forward_length": "hidden_dim",
              "vocab_size": "vocab_size"}


def identify_gguf(path: Path, name: str | None, registry: Registry) -> Variant:
    """The registry variant a GGUF file holds: ``name``, else the first variant its metadata
    names (``llamahub.variant``, a Hugging Face repo URL, ``general.name``); its shapes must
    agree with that variant's, so the variant's license gates are the right ones."""
    from llamahub.errors import UnknownVariantError
    from llamahub.model import gguf_file

    meta = gguf_file.read_metadata(path)
    found = registry.resolve(name) if name else None
    for candidate in [] if found else gguf_file.names(meta):
        try:
            found = registry.resolve(candidate)
            break
        except UnknownVariantError:
            continue
    if found is None:
        said = meta.get("general.name") or "no name"
        raise NotACheckpointError(
            f"{path.name} does not name a variant llamahub knows (its metadata says {said!r})",
            hint="name it: llamahub.load(path, variant='llama-2-7b-chat') (CLI: --variant); "
                 "that variant's license gates then apply")
    diffs = [f"{_GGUF_ARCH[k]} {v} != {getattr(found.arch, _GGUF_ARCH[k])}"
             for k, v in gguf_file.shapes(meta).items() if v != getattr(found.arch, _GGUF_ARCH[k])]
    if diffs:
        raise CorruptCheckpointError(f"{path.name} does not hold {found.name}: {', '.join(diffs)}",
                                     hint="name the right variant (variant=...)")
    return found


def file_artifacts(path: Path, cache_root: Path) -> Artifacts:
    """Artifacts of one file outside the cache (a GGUF): ``folder`` is the file itself."""
    path = path.expanduser().resolve()
    st = path.stat()
    snap = "local-" + hashlib.sha256(f"{path} {st.st_size} {st.st_mtime_ns}".encode()).hexdigest()[:16]
    return Artifacts(folder=path, root=path.parent, formats=frozenset({"gguf"}), snapshot_id=snap,
                     derived_root=Path(cache_root) / "derived" / snap)
