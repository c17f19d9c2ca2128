"""Quantized weights made once per snapshot and scheme, kept in the derived-artifact cache.

``quantized_weights(artifacts, reader, scheme)`` returns the tensors of
``<derived>/cpu-<scheme>-v<FORMAT>/weights.safetensors``, memory-mapped. The first load quantizes
the checkpoint one tensor at a time (the float model is never held whole) and writes the file
atomically under a file lock, with a sidecar recording its size, modification time and sha256.
A later load trusts a file whose size and modification time match the sidecar; a file that
changed is re-hashed, and rebuilt when it no longer matches (as is one that cannot be read or
whose tensors do not fit the model). A new snapshot has its own derived folder, so it is
quantized anew.

A checkpoint folder may also ship its quantized weights, made ahead of time in this very layout
(``shipped_path``: ``quantized/cpu-<scheme>-v<FORMAT>.safetensors``, written through
``llamahub_cpu.prequant`` by quantization-aware training); a load in that scheme maps that file
as it is and quantizes nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from llamahub.errors import CorruptCheckpointError
from llamahub.plugin import Artifacts, CheckpointReader
from llamahub_cpu.quant import head_scheme, quantize_with

log = logging.getLogger(__name__)
FORMAT = 1  # bump when the file's layout changes: older files are then rebuilt
FILE = "weights.safetensors"
SHIPPED_DIR = "quantized"  # in a checkpoint's folder: weights shipped already quantized


def artifact_key(scheme: str) -> str:
    return f"cpu-{scheme}-v{FORMAT}"


def shipped_path(folder: Path, scheme: str) -> Path:
    """Where a checkpoint folder ships weights already quantized in ``scheme`` (see the module doc)."""
    return folder / SHIPPED_DIR / f"{artifact_key(scheme)}.safetensors"


def tensor_kind(key: str, ndim: int, scheme: str) -> str:
    """What the reference model's tensor ``key`` is stored as in ``scheme``: the scheme of a
    linear's weight ("int8"/"int4"; the output head's is ``head_scheme``), "bf16" (the
    embedding) or "fp32" (norms)."""
    if key == "tok_embeddings.weight":
        return "bf16"
    if key.endswith(".weight") and ndim == 2:
        return head_scheme(scheme) if key == "output.weight" else scheme
    return "fp32"


class CorruptArtifactError(Exception):
    """The cached file cannot be used; the caller rebuilds it."""


def quantized_state(reader: CheckpointReader, scheme: str,
                    ops: ModuleType | None = None) -> dict[str, torch.Tensor]:
    """The model's tensors under the quantized model's names: ``<linear>.q``/``.scales``, the
    embedding in bfloat16, the rest float32. Reads the checkpoint memory-mapped, one at a time;
    quantizes on the compiled kernel ``ops`` when given."""
    state = reader.state_dict(reader.checkpoint.rope_layout)
    if reader.args.tie_embeddings and "output.weight" not in state:
        state["output.weight"] = state["tok_embeddings.weight"]
    out: dict[str, torch.Tensor] = {}
    for key in list(state):
        t = state.pop(key)
        kind = tensor_kind(key, t.dim(), scheme)
        if kind == "bf16":
            out[key] = t.to(torch.bfloat16).contiguous()
        elif kind != "fp32":
            name = key.removesuffix(".weight")
            q, s = quantize_with(ops, t, kind)
            out[f"{name}.q"], out[f"{name}.scales"] = q.contiguous(), s.contiguous()
        else:
            out[key] = t.float().contiguous()
        del t
    return out


def _digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _write(artifacts: Artifacts, reader: CheckpointReader, scheme: str, path: Path,
           ops: ModuleType | None) -> dict[str, Any]:
    from safetensors.torch import save_file

    started = time.perf_counter()
    tensors = quantized_state(reader, scheme, ops)
    tmp = path.with_suffix(".partial")
    save_file(tensors, str(tmp), metadata={"scheme": scheme, "format": str(FORMAT),
                                            "snapshot": artifacts.snapshot_id})
    del tensors
    os.replace(tmp, path)
    st = path.stat()
    record = {"file": FILE, "scheme": scheme, "format": FORMAT, "snapshot": artifacts.snapshot_id,
              "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": _digest(path),
              "seconds": round(time.perf_counter() - started, 3)}
    artifacts.write_sidecar(artifact_key(scheme), record)
    return record


def _check(artifacts: Artifacts, scheme: str, path: Path) -> str | None:
    """Why the cached file cannot be trusted (None when it can)."""
    key = artifact_key(scheme)
    side = artifacts.sidecar(key)
    if not side or side.get("format") != FORMAT or side.get("scheme") != scheme:
        return "no record of it"
    if not path.is_file():
        return "the file is missing"
    st = path.stat()
    if st.st_size != side.get("size"):
        return f"its size is {st.st_size} bytes, {side.get('size')} were written"
    if st.st_mtime_ns == side.get("mtime_ns"):
        return None
    if _digest(path) != side.get("sha256"):
        return "its contents changed since it was written"
    artifacts.write_sidecar(key, {**side, "mtime_ns": st.st_mtime_ns})  # touched, same bytes
    return None


def _map(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (OSError, SafetensorError, ValueError) as e:
        raise CorruptArtifactError(f"unreadable: {e}") from e


def map_shipped(path: Path, scheme: str) -> dict[str, torch.Tensor]:
    """The tensors of a shipped file (memory-mapped), refused when not this scheme and format."""
    from safetensors import SafetensorError, safe_open

    redo = ("run the quantization-aware fine-tune again with this llamahub, or load the "
            "checkpoint with another dtype (fp32, bf16)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (OSError, SafetensorError, ValueError) as e:
        raise CorruptCheckpointError(f"the quantized weights shipped in {path} are unreadable: {e}",
                                     hint=redo) from e
    if (meta.get("scheme"), meta.get("format")) != (scheme, str(FORMAT)):
        raise CorruptCheckpointError(
            f"{path} holds {meta.get('scheme')} weights in format {meta.get('format')}, "
            f"not {scheme} in format {FORMAT}", hint=redo)
    return tensors


def quantized_weights(artifacts: Artifacts, reader: CheckpointReader, scheme: str,
                      ops: ModuleType | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The memory-mapped quantized tensors, and what happened: ``{"built": bool, "path", ...}``
    (``"shipped": True`` when the checkpoint folder carried them)."""
    from filelock import FileLock

    shipped = shipped_path(artifacts.folder, scheme)
    if shipped.is_file():
        return map_shipped(shipped, scheme), {"built": False, "shipped": True, "path": str(shipped)}
    folder = artifacts.derived(artifact_key(scheme))
    path = folder / FILE
    with FileLock(str(folder / ".lock")):
        problem = _check(artifacts, scheme, path)
        if problem is None:
            try:
                return _map(path), {"built": False, "path": str(path)}
            except CorruptArtifactError as e:
                problem = str(e)
        if path.exists():
            log.warning("rebuilding the quantized weights at %s: %s", path, problem)
        record = _write(artifacts, reader, scheme, path, ops)
        return _map(path), {"built": True, "path": str(path), "rebuilt_because": problem,
                            "build_seconds": record["seconds"]}


def rebuild(artifacts: Artifacts, reader: CheckpointReader, scheme: str,
            ops: ModuleType | None = None) -> dict[str, torch.Tensor]:
    """Quantize again, replacing the cached file (after it proved unusable)."""
    from filelock import FileLock

    folder = artifacts.derived(artifact_key(scheme))
    with FileLock(str(folder / ".lock")):
        _write(artifacts, reader, scheme, folder / FILE, ops)
        return _map(folder / FILE)
