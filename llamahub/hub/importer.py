"""Import model folders into a hub: Meta download roots or model folders, and Hugging Face folders.

A Meta import is checked before anything is recorded: every file of the variant's Meta layout is
present, ``checklist.chk`` (and ``tokenizer_checklist.chk``) md5s match, every file a checklist
names is one the hub will serve (so ``md5sum -c`` works on the user's side), and the tensors have
the registry's shapes. Files are streamed into the blob store once, hashing on the way; if a check
then fails, the blobs this import added are removed again and the database is not touched.

Served paths follow Meta's layout (``LICENSE``, ``tokenizer.model``, ``<meta_folder>/...``). An HF
folder's files are served under ``<variant>/``. The other layout (HF from Meta, Meta from HF) is
converted once, compared with the source and recorded beside (:mod:`llamahub.hub.layouts`); the
Hugging Face protocol (:mod:`llamahub.hub.routes_hf`) serves both.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llamahub.errors import CheckpointError, NotACheckpointError
from llamahub.hub import layouts
from llamahub.hub.blobs import BlobInfo, Blobs
from llamahub.hub.errors import HubError, ImportRefusedError
from llamahub.hub.store import FileRecord, Store
from llamahub.model.checklist import parse_checklist
from llamahub.registry import Variant

TOP_TEXTS = ("LICENSE", "USE_POLICY.md")
_SKIP_HF = {"llamahub.json"}


@dataclass(frozen=True)
class ImportReport:
    variant: str
    format: str
    files: tuple[FileRecord, ...]
    new_blobs: int
    converted: tuple[FileRecord, ...] = ()

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass
class _Plan:
    format: str
    model_dir: Path
    sources: dict[str, Path | bytes]  # served path -> file, or bytes of a placeholder text
    checklists: dict[str, dict[str, str]]  # served path of a checklist -> {served path: md5}


def import_folder(store: Store, blobs: Blobs, folder: Path, variant: Variant, *,
                  actor: str = "operator", convert: bool = True) -> ImportReport:
    """Verify ``folder`` as ``variant`` and record every file of it, and (``convert``) the other
    layout converted from it (:mod:`llamahub.hub.layouts`); see the module docstring."""
    folder = Path(folder).expanduser().resolve()
    plan = _plan(folder, variant)
    _check_shapes(plan.model_dir, variant)
    infos: dict[str, BlobInfo] = {}
    extra: dict[str, BlobInfo] = {}
    try:
        for path, source in plan.sources.items():
            infos[path] = _add(blobs, source)
        _verify_checklists(plan, infos)
        if convert:
            with tempfile.TemporaryDirectory(dir=blobs.work_dir()) as work:
                extra = {path: _add(blobs, source)
                         for path, source in _converted(plan, variant, Path(work)).items()}
        records = tuple(FileRecord(p, i.sha256, i.md5, i.size) for p, i in sorted(infos.items()))
        converted = tuple(FileRecord(p, i.sha256, i.md5, i.size) for p, i in sorted(extra.items()))
        store.record_variant(variant.name, variant.family, variant.license, plan.format, records, actor,
                             converted=converted)
    except BaseException:
        for info in [*infos.values(), *extra.values()]:
            if info.created and not store.blob_referenced(info.sha256):
                with contextlib.suppress(HubError):  # an unreachable store keeps an unreferenced object
                    blobs.remove(info.sha256)
        raise
    created = sum(i.created for i in [*infos.values(), *extra.values()])
    return ImportReport(variant.name, plan.format, records, created, converted)


def _add(blobs: Blobs, source: Path | bytes) -> BlobInfo:
    return blobs.add_bytes(source) if isinstance(source, bytes) else blobs.add_file(source)


def _converted(plan: _Plan, variant: Variant, work: Path) -> dict[str, Path | bytes]:
    if plan.format == "hf":
        return layouts.to_meta(plan.model_dir, variant, work)
    tokenizer = (plan.sources.get("tokenizer.model")
                 or plan.sources.get(f"{variant.meta_folder}/tokenizer.model"))
    texts = {name: plan.sources[name] for name in TOP_TEXTS if name in plan.sources}
    return layouts.to_hf(plan.model_dir, variant, tokenizer if isinstance(tokenizer, Path) else None,
                         texts, work)


def _plan(folder: Path, variant: Variant) -> _Plan:
    if (folder / variant.meta_folder / "params.json").is_file():
        return _meta_plan(folder, folder / variant.meta_folder, variant)
    if (folder / "params.json").is_file():
        return _meta_plan(folder.parent, folder, variant)
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return _hf_plan(folder, variant)
    raise NotACheckpointError(
        f"{folder} holds neither a Meta download of {variant.name} ({variant.meta_folder}/params.json) "
        "nor a model folder (params.json, or config.json + *.safetensors)",
        hint=f"point at the download root that contains {variant.meta_folder}/, or at the model folder")


def _meta_plan(root: Path, model_dir: Path, variant: Variant) -> _Plan:
    sources: dict[str, Path | bytes] = {}
    missing = []
    for path in variant.meta_files():
        source = _meta_source(root, model_dir, variant, path)
        if source is None:
            missing.append(path)
        else:
            sources[path] = source
    if missing:
        raise ImportRefusedError(f"{model_dir} is missing {', '.join(missing)} of {variant.name}",
                                 code="missing_file",
                                 hint="import a complete download (Meta's download.sh fetches them all)")
    checklists = {f"{variant.meta_folder}/checklist.chk": _read_checklist(
        model_dir / "checklist.chk", f"{variant.meta_folder}/")}
    required = [p for p in sources if p.startswith(f"{variant.meta_folder}/consolidated.")]
    required.append(f"{variant.meta_folder}/params.json")
    if variant.tokenizer_location == "top":
        tokenizer_checklist = _top(root, model_dir, "tokenizer_checklist.chk")
        checklists["tokenizer_checklist.chk"] = _read_checklist(tokenizer_checklist, "")
        required.append("tokenizer.model")
    listed = {p for entries in checklists.values() for p in entries}
    unlisted = [p for p in required if p not in listed]
    if unlisted:
        raise ImportRefusedError(f"the checklists of {model_dir} do not list {', '.join(unlisted)}",
                                 code="bad_checklist",
                                 hint="re-download the variant; its checklist is damaged")
    strays = sorted(listed - set(sources))
    if strays:
        raise ImportRefusedError(f"the checklists list {', '.join(strays)}, which {variant.name} does not "
                                 "have in the registry's layout", code="bad_checklist",
                                 hint="check --variant: the folder may hold another variant")
    return _Plan("meta", model_dir, sources, checklists)


def _top(root: Path, model_dir: Path, name: str) -> Path:
    for candidate in (root / name, model_dir / name):
        if candidate.is_file():
            return candidate
    return root / name


def _meta_source(root: Path, model_dir: Path, variant: Variant, path: str) -> Path | bytes | None:
    head, _, rest = path.partition("/")
    candidate = model_dir / rest if rest and head == variant.meta_folder else _top(root, model_dir, path)
    if candidate.is_file():
        return candidate
    if variant.debug and path in TOP_TEXTS:
        from llamahub.model.writer import PLACEHOLDER_LICENSE, PLACEHOLDER_USE_POLICY

        text = PLACEHOLDER_LICENSE if path == "LICENSE" else PLACEHOLDER_USE_POLICY
        return text.encode("utf-8")
    return None


def _read_checklist(path: Path, prefix: str) -> dict[str, str]:
    """``{served path: md5}`` from Meta's ``<md5>  <file>`` lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ImportRefusedError(f"cannot read {path}: {e}", code="bad_checklist",
                                 hint="re-download the variant") from e
    try:
        return parse_checklist(text, prefix)
    except ValueError as e:
        raise ImportRefusedError(f"{path}: {e}", code="bad_checklist", hint="re-download the variant") from e


def _verify_checklists(plan: _Plan, infos: dict[str, BlobInfo]) -> None:
    bad = [f"{path} (md5 {infos[path].md5}, checklist says {md5})"
           for entries in plan.checklists.values() for path, md5 in sorted(entries.items())
           if infos[path].md5 != md5]
    if bad:
        raise ImportRefusedError(f"checksum mismatch: {'; '.join(bad)}", code="checksum_mismatch",
                                 hint="the download is damaged: download those files again and re-import")


def _hf_plan(folder: Path, variant: Variant) -> _Plan:
    sources: dict[str, Path | bytes] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder)
        if rel.name in _SKIP_HF or any(part.startswith(".") for part in rel.parts):
            continue
        sources[f"{variant.name}/{rel.as_posix()}"] = path
    return _Plan("hf", folder, sources, {})


def _check_shapes(model_dir: Path, variant: Variant) -> None:
    from llamahub.model.checkpoint import open_checkpoint

    try:
        open_checkpoint(model_dir, args=variant.arch).reader().check()  # headers only
    except CheckpointError as e:
        raise ImportRefusedError(f"{model_dir} does not hold {variant.name}: {e.message}", code=e.code,
                                 hint="check --variant, or re-download the checkpoint") from e


def seed_demo(store: Store, blobs: Blobs, workdir: Path,
              echo: Callable[[str], None] | None = None) -> list[ImportReport]:
    """Generate the tiny random ``llama-debug`` variants in one Meta download root and import them."""
    from llamahub.model.writer import generate_checkpoint
    from llamahub.registry import default_registry

    debug = [v for v in default_registry() if v.family == "llama-debug"]
    root = Path(workdir) / "llama-debug"
    for seed, variant in enumerate(debug):
        generate_checkpoint(variant, root, seed=seed)
    reports = []
    for variant in debug:
        reports.append(import_folder(store, blobs, root, variant))
        if echo:
            echo(f"imported {variant.name}: {len(reports[-1].files)} files, {reports[-1].bytes:,} bytes")
    return reports
