"""``llamahub.finetune()``: a base model, a method plugin and a data file → a local derivative.

Everything that can refuse does so before training: the method, its config, the output name
(the base license's naming rule), the data's provenance (whose outputs may train this base),
the context length, then the base's license gates as ``load()`` runs them. The method plugin
trains and returns the weights; the core writes them in Meta's layout with the tokenizer, a
NOTICE and the lineage, adds them to the cache as a snapshot of the new name, and records the
derivative so that ``llamahub.load(NAME)`` finds it behind the same gates as its base.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamahub import derivatives, plugins
from llamahub.errors import ConfigError, FinetuneError, TrainingDataError, UnknownVariantError
from llamahub.interfaces import Artifacts, FinetuneJob, Finetuner, FinetuneResult, LoadOptions
from llamahub.paths import data_dir
from llamahub.policy import rules
from llamahub.registry import Variant


@dataclass(frozen=True)
class Finetuned:
    """What ``finetune`` made: the new variant, its folder in the cache, lineage and measurements."""

    name: str
    variant: Variant
    folder: Path
    lineage: Mapping[str, Any]
    metrics: Mapping[str, Any]


def finetune(base: str | Path, *, method: str = "lora", data: str | Path, output: str,
             config: str | Path | None = None, context_length: int | None = None,
             rope_scaling: Mapping[str, float] | None = None, overwrite: bool = False,
             progress: bool | None = None, source: str | None = None, location: str | None = None,
             **settings: Any) -> Finetuned:
    """Fine-tune ``base`` (a name, or a folder written as a path) with ``method`` on ``data``.

    ``config`` is a TOML file of the method's settings; keyword ``settings`` override it.
    ``context_length`` beyond the base's own needs ``rope_scaling`` (fine-tuning for longer
    sequences). The result is the local variant ``output``: ``llamahub.load(output)``.
    """
    from llamahub import api

    finetuner = method_named(method)
    data_path = Path(data).expanduser()
    v, folder = _base_variant(base)
    _check_output(output, v, overwrite)
    reason = finetuner.unsupported_reason(v)
    if reason:
        raise FinetuneError(f"the {method} method cannot fine-tune {v.name}: {reason}",
                            hint="`llamahub plugins` lists the methods installed")
    file_config = read_config(config)
    context_length = context_length or file_config.pop("context_length", None)
    rope_scaling = rope_scaling or file_config.pop("rope_scaling", None)
    full_config = dict(finetuner.check_config({**file_config, **settings}))
    attributions = check_data(data_path, v)
    options = LoadOptions(context_length=context_length, rope_scaling=rope_scaling)
    from llamahub.reference import context_length as checked_context

    checked_context(v, options)
    show = api.progress_default() if progress is None else progress
    if folder is not None:
        from llamahub.reference import folder_artifacts

        artifacts = folder_artifacts(folder, api._cache_root())
    else:
        snap, _ = api._fetch(v, source, location, show)  # the base's license gates run here
        artifacts = api.snapshot_artifacts(snap, v, api._cache_root())
    workdir = data_dir() / "finetune-runs" / output
    out = workdir / "method-files"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    job = FinetuneJob(base=v, artifacts=artifacts, options=options, data=data_path, output=out,
                      workdir=workdir, config=full_config, progress=show)
    result = finetuner.train(job)
    lineage = {
        "name": output, "base": v.name, "base_license": v.license, "method": method,
        "data": str(data_path.resolve()), "data_sha256": file_sha256(data_path),
        "config": full_config, "context_length": result.args.max_seq_len,
        "attributions": attributions,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "metrics": {k: val for k, val in result.metrics.items() if _jsonable(val)},
    }
    return _export(output, v, artifacts, result, job, lineage)


def method_named(name: str) -> Finetuner:
    found = plugins.finetuners()
    if name not in found:
        raise ConfigError(f"no fine-tuning method named {name!r}",
                          hint=f"installed methods: {', '.join(sorted(found)) or 'none'}; "
                               "`llamahub plugins` shows why one is missing")
    return found[name]


def read_config(path: str | Path | None) -> dict[str, Any]:
    """A method's settings from a TOML file (an empty dict for None)."""
    if path is None:
        return {}
    path = Path(path).expanduser()
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read the config {path}: {e.strerror}",
                          hint="check the path") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}",
                          hint="fix the file (see the shipped configs)") from e


def _base_variant(base: str | Path) -> tuple[Variant, Path | None]:
    from llamahub.api import looks_like_path

    if looks_like_path(base):
        from llamahub.reference import identify_folder

        folder = Path(base).expanduser().resolve()
        return identify_folder(folder, None, plugins.catalogue()), folder
    return plugins.resolve(str(base)), None


def _check_output(name: str, base: Variant, overwrite: bool) -> None:
    rules.check_derivative_name(name, base)
    try:
        existing = plugins.resolve(name)
    except UnknownVariantError:
        return
    if derivatives.read_record(existing.name) is None:
        raise FinetuneError(f"{name!r} already names the variant {existing.name}",
                            hint="choose another output name")
    if not overwrite:
        raise FinetuneError(f"a fine-tune named {name!r} exists already",
                            hint="choose another name, or pass overwrite=True (--overwrite)")


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def check_data(path: Path, base: Variant) -> list[str]:
    """Refuse data whose recorded provenance forbids training ``base``; the attributions owed.

    Provenance is a record's ``source_model`` or, for the whole file, a sidecar
    ``<file>.provenance.json`` ``{"source_model": NAME}`` (``llamahub run --save`` writes it).
    """
    if not path.is_file():
        raise TrainingDataError(f"no training data at {path}",
                                hint="pass a JSONL file of {\"messages\": [...]} or {\"text\": ...} records")
    sources: set[str] = set()
    sidecar = path.with_name(path.name + ".provenance.json")
    if sidecar.is_file():
        try:
            sources.add(str(json.loads(sidecar.read_text())["source_model"]))
        except (ValueError, KeyError, TypeError) as e:
            raise TrainingDataError(f"{sidecar} is not a provenance record ({e})",
                                    hint='write {"source_model": "NAME"} or remove it') from e
    with path.open(encoding="utf-8") as f:
        for line in f:
            if '"source_model"' in line:
                try:
                    sources.add(str(json.loads(line)["source_model"]))
                except (ValueError, KeyError, TypeError):
                    continue  # the method's reader reports bad lines with their numbers
    owed = []
    for name in sorted(sources):
        try:
            src = plugins.resolve(name)
        except UnknownVariantError:
            continue  # not a model we know the license of
        attribution = rules.check_output_source(src, base)
        if attribution:
            owed.append(attribution)
    return owed


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _export(name: str, base: Variant, artifacts: Artifacts, result: FinetuneResult, job: FinetuneJob,
            lineage: dict[str, Any]) -> Finetuned:
    """Write the weights, tokenizer, NOTICE and lineage; add them to the cache; record the variant."""
    from llamahub.api import _cache_root
    from llamahub.client.cache import Cache, sha256_file
    from llamahub.model.checkpoint import find_tokenizer
    from llamahub.model.writer import write_meta

    staging = job.workdir / "export"
    shutil.rmtree(staging, ignore_errors=True)
    folder = staging / name
    folder.mkdir(parents=True)
    tokenizer = find_tokenizer(artifacts.folder)
    if tokenizer is None:
        raise FinetuneError(f"no tokenizer.model next to {artifacts.folder}",
                            hint="copy the base's tokenizer.model next to its weights")
    shutil.copyfile(tokenizer, folder / "tokenizer.model")
    for top in ("LICENSE", "USE_POLICY.md"):
        if (artifacts.root / top).is_file():
            shutil.copyfile(artifacts.root / top, staging / top)
    write_meta(folder, result.args, result.state_dict, variant=name)
    for rel in result.files:
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(job.output / rel, target)
    attributions = lineage["attributions"]
    notice = derivatives.notice_text(name, base, lineage["method"], attributions)
    (folder / derivatives.NOTICE).write_text(notice)
    (folder / derivatives.RECORD).write_text(json.dumps(lineage, indent=2))
    cache = Cache(_cache_root())
    entries = []
    for path in sorted(p for p in staging.rglob("*") if p.is_file()):
        sha = sha256_file(path)
        size = path.stat().st_size
        cache.put_blob(path, sha)
        entries.append((str(path.relative_to(staging)), size, sha, None))
    snap = cache.add(name, entries, {"source": "finetune", "base": base.name, "method": lineage["method"]})
    lineage["snapshot"] = snap.id
    variant = derivatives.derived_variant(name, base, result.args)
    derivatives.write_record(name, variant, lineage)
    shutil.rmtree(staging, ignore_errors=True)
    return Finetuned(name, variant, snap.folder_of(name, name), lineage, dict(result.metrics))


def load_adapter(adapter: str | Path, base: str | Path | None = None, *, progress: bool | None = None,
                 context_length: int | None = None) -> Any:
    """A base model with a LoRA adapter (PEFT's format) applied on the fly, not merged.

    ``base`` defaults to the adapter's ``base_model_name_or_path``. A base named by name passes
    its license gates and comes from the cache (or is fetched) as ``load()`` does.
    """
    from llamahub import api

    folder = Path(adapter).expanduser().resolve()
    try:
        named = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError) as e:
        raise ConfigError(f"{folder} holds no readable adapter_config.json ({e})",
                          hint="pass the adapter folder a fine-tune wrote (it is in its adapter/)") from e
    v, base_folder = _base_variant(base or named or "")
    options = LoadOptions(context_length=context_length)
    if base_folder is not None:
        from llamahub.reference import folder_artifacts

        artifacts = folder_artifacts(base_folder, api._cache_root())
    else:
        show = api.progress_default() if progress is None else progress
        snap, _ = api._fetch(v, None, None, show)
        artifacts = api.snapshot_artifacts(snap, v, api._cache_root())
    loaders = [f for f in plugins.finetuners().values() if callable(getattr(f, "load_adapter", None))]
    if not loaders:
        raise ConfigError("no installed fine-tuning method loads adapters",
                          hint="install llamahub's fine-tuning plugin; `llamahub plugins` lists methods")
    return loaders[0].load_adapter(artifacts, v, folder, options)  # type: ignore[attr-defined]
