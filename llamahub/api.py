"""``llamahub.load()``: resolve → memory plan → license gates → fetch → the backend loads.

Everything that can refuse (an unknown name, a license gate, a context length, a memory plan)
refuses before any byte is downloaded. The chosen backend receives the verified files as
``Artifacts`` and opens what it needs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamahub import plugins, selection
from llamahub.errors import ConfigError, NoBackendError, NotACheckpointError, UnknownVariantError
from llamahub.interfaces import Artifacts, Backend, LoadOptions
from llamahub.registry import Variant

if TYPE_CHECKING:
    from llamahub.client.cache import Snapshot
    from llamahub.client.session import Session
    from llamahub.model.llm import LlamaModel


def looks_like_path(name: str | Path) -> bool:
    """A ``Path``, or a string starting with ``/``, ``.`` or ``~``: never a name that happens to
    match a folder in the working directory (that would skip every gate)."""
    return isinstance(name, Path) or name.startswith(("/", ".", "~"))


def load(name: str | Path, *, variant: str | None = None, backend: str | None = None,
         dtype: str | None = None, device: str | None = None, threads: int | None = None,
         context_length: int | None = None, rope_scaling: Mapping[str, float] | None = None,
         source: str | None = None, location: str | None = None, progress: bool | None = None,
         trust_unverified: bool = False, **extra: Any) -> LlamaModel:
    """Load a model by registry name (downloading it if needed) or from a local folder.

    By name: every installed backend plans its memory and one is chosen (no network call), the
    license gates run on your profile and receipts; only then is the cached copy used, or the files
    fetched from ``source`` (the default source — our hub — unless you name one: ``meta-url`` with
    ``location`` a presigned URL, ``local`` with a folder, or a plugin's; a ``location`` such as
    ``s3://bucket/prefix`` picks the source of its scheme), verified and cached. A mirror without
    checksums is refused unless ``trust_unverified``.
    ``LLAMAHUB_OFFLINE=1`` loads only what is cached, with no network.

    A path (a ``Path``, or a string starting with ``/``, ``.`` or ``~``) loads a folder;
    ``variant`` names its registry entry when its ``llamahub.json`` marker or Meta folder name
    does not. ``context_length`` caps prompt + generation (beyond the variant's own needs
    ``rope_scaling``); any other keyword is a backend option (``extra``), e.g. ``tp=2``.
    """
    options = LoadOptions(backend=backend, dtype=dtype, device=device, threads=threads,
                          context_length=context_length, rope_scaling=rope_scaling, extra=extra)
    if looks_like_path(name):
        from llamahub.reference import folder_artifacts, identify_folder

        folder = Path(name).expanduser().resolve()
        if folder.is_file():
            return _load_file(folder, variant, options)
        v = identify_folder(folder, variant, plugins.catalogue())
        chosen = _plan(v, options)
        _gate_folder(folder, v)
        return chosen.load(folder_artifacts(folder, _cache_root()), v, options)
    v = _resolve(str(name))
    snap, chosen = _fetch(v, source, location, progress, options=options, trust_unverified=trust_unverified)
    assert chosen is not None
    return chosen.load(snapshot_artifacts(snap, v, _cache_root()), v, options)


def _load_file(path: Path, variant: str | None, options: LoadOptions) -> LlamaModel:
    """A GGUF file of the user's own: the variant its metadata names (or ``variant``), that
    variant's license gates, and a backend that reads GGUF files."""
    from llamahub.model.gguf_file import is_gguf
    from llamahub.reference import file_artifacts, identify_gguf

    if not is_gguf(path):
        raise NotACheckpointError(f"{path} is a file but not a GGUF file",
                                  hint="pass a model folder (Meta or Hugging Face) or a .gguf file")
    v = identify_gguf(path, variant, plugins.catalogue())
    chosen = _plan(v, replace(options, backend=_reader_of("gguf", options.backend)))
    with _session(False) as session:
        session.gate(v).raise_if_denied()
    return chosen.load(file_artifacts(path, _cache_root()), v, options)


def _gate_folder(folder: Path, v: Variant) -> None:
    """A local folder is gated like a download: a known variant by its license; an unknown one by
    the license its LICENSE file is (by digest), if any. Receipts work offline."""
    from llamahub.compliance import as_licensed, identify_license, known_digests
    from llamahub.policy import load_licenses

    with _session(False) as session:
        if v.license not in load_licenses():
            texts = {str(p.get("text_sha256")): lid for lid, p in session.trust.payloads().items()}
            if not session.cfg.offline and not session.embedded:  # the texts this hub shows, too
                texts |= {str(lic["text_sha256"]): lic["id"] for lic in session.hub.licenses()["licenses"]}
            license_id = identify_license(folder, known_digests(texts))
            if license_id is None:
                return
            v = as_licensed(v, license_id)
        if load_licenses()[v.license].local_folders_gated:
            session.gate(v).raise_if_denied()


def _reader_of(fmt: str, asked: str | None) -> str:
    """The backend to read ``fmt`` files: ``asked`` if it can, else the best that declares it."""
    readers = sorted((b for b in plugins.backends().values() if fmt in getattr(b, "formats", ())),
                     key=lambda b: -b.priority)
    names = [b.name for b in readers]
    if (asked and asked not in names) or not names:
        raise NoBackendError(f"a {fmt} file", {asked or "installed backends": f"cannot read {fmt} files"},
                             instead=f"backends that read {fmt}: {', '.join(names) or 'none installed'}")
    return asked or names[0]


def export(name: str | Path, *, fmt: str = "gguf", quant: str | None = None, out: str | Path = ".",
           variant: str | None = None, source: str | None = None, location: str | None = None,
           progress: bool | None = None) -> Path:
    """Write a variant (by name: gated and fetched as for ``load``; or a folder written as a path)
    in another format, e.g. ``export("llama-2-7b", quant="q4_0")`` → a GGUF file; ``out`` is a
    file or a folder. The plugin that declares ``fmt`` in its ``export_formats`` writes it."""
    exporters = [b for b in plugins.backends().values() if fmt in getattr(b, "export_formats", ())]
    if not exporters:
        raise ConfigError(f"no installed plugin exports {fmt!r}",
                          hint="see `llamahub plugins`; the llamacpp backend exports gguf")
    if looks_like_path(name):
        from llamahub.reference import folder_artifacts, identify_folder

        folder = Path(name).expanduser().resolve()
        v = identify_folder(folder, variant, plugins.catalogue())
        artifacts = folder_artifacts(folder, _cache_root())
    else:
        v = _resolve(str(name))
        snap, _ = _fetch(v, source, location, progress)
        artifacts = snapshot_artifacts(snap, v, _cache_root())
    target = Path(out).expanduser()
    if str(out).endswith(("/", os.sep)):  # a folder, even one that does not exist yet
        target.mkdir(parents=True, exist_ok=True)
    exporter = max(exporters, key=lambda b: b.priority)
    return exporter.export(artifacts, v, fmt, quant, target)  # type: ignore[attr-defined]


def download(name: str, *, source: str | None = None, location: str | None = None,
             progress: bool | None = None, force: bool = False, trust_unverified: bool = False) -> Path:
    """Fetch a variant into the cache (license gates first) and return its folder in Meta's layout."""
    return _fetch(_resolve(name), source, location, progress, force=force,
                  trust_unverified=trust_unverified)[0].root


def _resolve(name: str) -> Variant:
    try:
        return plugins.resolve(name)
    except UnknownVariantError as e:
        if Path(name).expanduser().exists():  # a folder is loaded only when written as a path
            e.hint = f"{name!r} is also a folder here: to load it, write ./{name}"
        raise


def load_snapshot(snap: Snapshot, v: Variant, options: LoadOptions | None = None) -> LlamaModel:
    """Load a snapshot already fetched (and gated) with ``llamahub.client.fetch.ensure``."""
    options = options or LoadOptions()
    return _plan(v, options).load(snapshot_artifacts(snap, v, _cache_root()), v, options)


def _plan(v: Variant, options: LoadOptions) -> Backend:
    from llamahub.reference import context_length

    context_length(v, options)  # a bad context length is refused before any plan
    return selection.choose(v, options)


def _fetch(v: Variant, source: str | None, location: str | None, progress: bool | None, *,
           options: LoadOptions | None = None, force: bool = False, trust_unverified: bool = False,
           ) -> tuple[Snapshot, Backend | None]:
    """(the cached snapshot, the backend chosen when ``options`` are given): plan, license gates,
    then fetch if needed."""
    from llamahub.client.fetch import ensure

    show = progress_default() if progress is None else progress
    chosen = _plan(v, options) if options is not None else None  # pure: no network, no files
    with _session(show) as session:
        snap = ensure(v, session, source=source, location=location, force=force, progress=show,
                      trust_unverified=trust_unverified)
    return snap, chosen


def _session(show: bool) -> Session:
    from llamahub.client.session import Session
    from llamahub.launcher import embedded_hub

    return Session(echo=_to_stderr if show else None, embedded=embedded_hub)


def snapshot_artifacts(snap: Snapshot, v: Variant, cache_root: Path) -> Artifacts:
    from llamahub.model.checkpoint import detect_formats

    folder = snap.folder_of(v.meta_folder, v.name)
    return Artifacts(folder=folder, root=snap.root, formats=detect_formats(folder), snapshot_id=snap.id,
                     derived_root=cache_root / "derived" / snap.id)


def _cache_root() -> Path:
    from llamahub.client.config import load_config

    return load_config().cache


def _to_stderr(message: str) -> None:
    print(f"llamahub: {message}", file=sys.stderr, flush=True)


def progress_default() -> bool:
    """Progress bars unless ``LLAMAHUB_PROGRESS=0`` (scripts and CI turn them off)."""
    return os.environ.get("LLAMAHUB_PROGRESS", "1").strip().lower() not in ("0", "false", "no", "off")
