"""GGUF files derived from a verified snapshot, made once into the core's derived cache.

``derived_gguf(artifacts, variant, quant)`` returns ``<derived>/gguf-<quant>/<variant>-<quant>.gguf``,
converting (f32, f16, q8_0) or quantizing from the f16 file (q4_0, q4_k_m) the first time. A
sidecar records the converter version and the size; a file lock makes two processes wait for
one conversion instead of doing it twice.

With ``options`` carrying ``rope_scaling`` (a context beyond the variant's), the file is made
for that scaling and context: llama.cpp takes Llama 3.1's per-frequency RoPE scaling only as the
file's ``rope_freqs`` tensor (its context parameters offer linear and YaRN scaling, which are
other formulas), so each scaling is a file of its own, ``gguf-<quant>-rope-<12 hex>/`` (a whole
copy of the weights).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from llamahub_llamacpp.convert import CONVERTER, WRITTEN, Provenance, quantize, write_gguf


def provenance(variant: Any, snapshot: str | None) -> Provenance:
    from llamahub.plugin import load_licenses

    terms = load_licenses().get(variant.license)
    return Provenance(
        variant=variant.name, family=variant.family, size=variant.size, license=variant.license,
        license_url=getattr(terms, "url", None), license_title=getattr(terms, "title", None),
        attribution=getattr(terms, "attribution", None), base_variant=variant.name,
        base_repo=variant.hf_repo, snapshot=snapshot, chat_format=variant.chat_format)


def make_gguf(artifacts: Any, variant: Any, quant: str, out: Path, *, threads: int | None = None,
              options: Any = None) -> Path:
    """Write ``out`` from ``artifacts`` (Meta or HF checkpoint) in ``quant``; q4 via the f16 file."""
    from llamahub.plugin import open_reference

    if quant in WRITTEN:
        ref = open_reference(artifacts, variant, options)
        return write_gguf(ref, out, quant, provenance(variant, artifacts.snapshot_id))
    return quantize(derived_gguf(artifacts, variant, "f16", options=options), out, quant, threads)


def rope_key(options: Any) -> str:
    """'' for the variant's own RoPE, else ``-rope-<12 hex>`` of the scaling and context."""
    if options is None or not options.rope_scaling:
        return ""
    what = {"rope_scaling": dict(options.rope_scaling), "context_length": options.context_length}
    return "-rope-" + hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]


def derived_gguf(artifacts: Any, variant: Any, quant: str, *, threads: int | None = None,
                 options: Any = None) -> Path:
    from filelock import FileLock

    key = f"gguf-{quant}{rope_key(options)}"
    folder = artifacts.derived(key)
    path = folder / f"{variant.name}-{quant}.gguf"
    with FileLock(str(folder / ".lock")):
        if _current(artifacts.sidecar(key), path):
            return path
        started = time.perf_counter()
        make_gguf(artifacts, variant, quant, path, threads=threads, options=options)
        artifacts.write_sidecar(key, {"file": path.name, "quant": quant, "size": path.stat().st_size,
                                      "converter": CONVERTER, "variant": variant.name,
                                      "snapshot": artifacts.snapshot_id,
                                      "seconds": round(time.perf_counter() - started, 3)})
    return path


def _current(sidecar: dict[str, Any] | None, path: Path) -> bool:
    return bool(sidecar and sidecar.get("converter") == CONVERTER and path.is_file()
                and path.stat().st_size == sidecar.get("size"))
