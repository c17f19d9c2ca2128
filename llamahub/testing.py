"""Tools for plugin authors' tests: tiny checkpoints, a fake hub, and conformance checks.

    from llamahub.testing import check_backend, tiny_artifacts

    def test_my_backend_conforms(tmp_path):
        artifacts, variant = tiny_artifacts(tmp_path)
        check_backend(MyBackend(), artifacts, variant)

The checks raise ``AssertionError`` naming every problem found. They run against the in-tree
plugins in llamahub's own suite.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamahub.errors import ConfigError
from llamahub.interfaces import (
    Artifacts,
    Backend,
    Capacity,
    Finetuner,
    LoadOptions,
    MemoryPlan,
    RemoteFile,
    Source,
    SourcePlan,
)
from llamahub.registry import Variant, shipped

TINY = "llama-debug-2-chat"


def tiny_artifacts(tmp_path: Path, variant: str = TINY, *, fmt: str = "meta",
                   seed: int = 0) -> tuple[Artifacts, Variant]:
    """A random checkpoint of a tiny debug variant written under ``tmp_path``, as a backend gets it."""
    import torch

    from llamahub.model.writer import generate_checkpoint
    from llamahub.reference import folder_artifacts

    v = shipped().resolve(variant)
    folder = generate_checkpoint(v, tmp_path / "download", fmt=fmt, seed=seed, dtype=torch.float32)
    return folder_artifacts(folder, tmp_path / "cache"), v


@dataclass
class FakeHub:
    """A ``HubAccess`` over a local download root: links are ``file://`` URLs with a ``*``."""

    root: Path
    issued: list[str] = field(default_factory=list)
    account: bool = True
    embedded: bool = False

    @property
    def url(self) -> str:
        return self.root.as_uri()

    def require_account(self) -> None:
        if not self.account:
            from llamahub.errors import AuthenticationError

            raise AuthenticationError("no account on the fake hub", hint="FakeHub(account=True)")

    def issue_link(self, variant: str) -> dict[str, Any]:
        self.issued.append(variant)
        return {"url": f"{self.url}/*", "link_id": f"fake-{len(self.issued)}", "key_id": "fake",
                "grants": []}

    def manifest(self, link_url: str) -> dict[str, Any]:
        files = []
        for p in sorted(q for q in self.root.rglob("*") if q.is_file()):
            data = p.read_bytes()
            files.append({"path": p.relative_to(self.root).as_posix(), "size": len(data),
                          "md5": hashlib.md5(data).hexdigest(), "sha256": hashlib.sha256(data).hexdigest()})
        return {"files": files}


# --- conformance ------------------------------------------------------------------------------


def _check_attributes(obj: object, spec: dict[str, type | tuple[type, ...]], problems: list[str]) -> None:
    for attr, kind in spec.items():
        if not isinstance(getattr(obj, attr, None), kind):
            problems.append(f"{attr} must be a {kind}, got {getattr(obj, attr, None)!r}")


def _raise(what: str, problems: list[str]) -> None:
    if problems:
        raise AssertionError(f"{what} does not conform:\n  - " + "\n  - ".join(problems))


def check_backend(backend: Backend, artifacts: Artifacts | None = None, variant: Variant | None = None,
                  *, generate: bool = True) -> None:
    """Check ``backend`` against the contract; with ``artifacts`` also load, generate and close."""
    problems: list[str] = []
    _check_attributes(backend, {"name": str, "priority": int, "description": str, "dtypes": tuple,
                                "devices": tuple}, problems)
    if not getattr(backend, "dtypes", ()):
        problems.append("dtypes must name at least one dtype (the first is the default)")
    v = variant or shipped().resolve(TINY)
    try:
        why = backend.unavailable_reason()
    except Exception as e:
        problems.append(f"unavailable_reason() must never raise; it raised {e!r}")
        why = "raised"
    if why is not None and not isinstance(why, str):
        problems.append(f"unavailable_reason() must return None or a str, got {why!r}")
    if not isinstance(backend.unsupported_reason(v, LoadOptions(dtype="no-such-dtype")), str):
        problems.append("unsupported_reason() must refuse an unknown dtype with a reason")
    plan = backend.plan(v, LoadOptions())
    if not isinstance(plan, MemoryPlan) or min(plan.host_bytes, plan.device_bytes, plan.devices) < 0:
        problems.append(f"plan() must return a MemoryPlan of non-negative sizes, got {plan!r}")
    elif backend.plan(v, LoadOptions(context_length=1)).host_bytes > plan.host_bytes:
        problems.append("a shorter context must not need more memory")
    if why is None and not isinstance(backend.capacity(), Capacity):
        problems.append("capacity() must return a Capacity")
    _raise(f"backend {getattr(backend, 'name', backend)!r}", problems)
    if why is None and artifacts is not None:
        _check_load(backend, artifacts, v, generate, problems)
        _raise(f"backend {backend.name!r}", problems)


def _check_load(backend: Backend, artifacts: Artifacts, v: Variant, generate: bool,
                problems: list[str]) -> None:
    from llamahub.model.llm import LlamaModel

    model = backend.load(artifacts, v, LoadOptions())
    if not isinstance(model, LlamaModel):
        problems.append(f"load() must return a LlamaModel, got {type(model).__name__}")
        return
    if model.backend != backend.name:
        problems.append(f"the model says backend {model.backend!r}, not {backend.name!r}")
    if generate:
        first = model.generate("The llama", max_new_tokens=4, temperature=0)
        again = model.generate("The llama", max_new_tokens=4, temperature=0)
        if not isinstance(first, str) or first != again:
            problems.append(f"greedy generation must be a str and repeatable: {first!r} vs {again!r}")
        streamed = "".join(model.generate("The llama", max_new_tokens=4, temperature=0, stream=True))
        if streamed != first:
            problems.append(f"streaming must give the same text: {streamed!r} vs {first!r}")
    model.close()
    if not model.closed:
        problems.append("close() must mark the model closed")


def check_source(source: Source, variant: Variant, hub: Any, location: str | None = None) -> SourcePlan:
    """Check ``source`` against the contract and return its plan for ``variant``."""
    problems: list[str] = []
    _check_attributes(source, {"name": str, "description": str, "needs_location": bool, "default": bool,
                               "works_offline": bool, "carries_grants": bool}, problems)
    _raise(f"source {getattr(source, 'name', source)!r}", problems)
    plan = source.plan(variant, hub, location)
    if not isinstance(plan, SourcePlan) or not plan.files:
        problems.append(f"plan() must return a SourcePlan with files, got {plan!r}")
    else:
        for f in plan.files:
            if not isinstance(f, RemoteFile) or not f.url or f.path.startswith("/") or ".." in f.path:
                problems.append(f"bad file in the plan: {f!r}")
        paths = [f.path for f in plan.files]
        if len(set(paths)) != len(paths):
            problems.append("the plan lists a path twice")
        if not set(plan.unverified) <= set(paths):
            problems.append(f"unverified names paths that are not in the plan: {plan.unverified}")
    schemes = getattr(source, "schemes", ())
    if not isinstance(schemes, tuple) or not all(isinstance(s, str) and s.isalnum() for s in schemes):
        problems.append(f"schemes must be a tuple of URL schemes such as ('s3',), got {schemes!r}")
    _raise(f"source {source.name!r}", problems)
    return plan


def check_finetuner(finetuner: Finetuner, variant: Variant) -> Mapping[str, Any]:
    """Check ``finetuner``'s static contract (no training) and return its default config."""
    problems: list[str] = []
    _check_attributes(finetuner, {"name": str, "description": str}, problems)
    for method in ("unsupported_reason", "check_config", "train"):
        if not callable(getattr(finetuner, method, None)):
            problems.append(f"{method}() is missing")
    _raise(f"fine-tuning method {getattr(finetuner, 'name', finetuner)!r}", problems)
    reason = finetuner.unsupported_reason(variant)
    if reason is not None and not isinstance(reason, str):
        problems.append(f"unsupported_reason() must return None or a string, got {reason!r}")
    defaults = finetuner.check_config({})
    if not isinstance(defaults, Mapping):
        problems.append(f"check_config({{}}) must return its defaults as a mapping, got {defaults!r}")
    try:
        finetuner.check_config({"no_such_setting_ever": 1})
        problems.append("check_config() accepted an unknown key; refuse it with ConfigError")
    except ConfigError:
        pass
    _raise(f"fine-tuning method {finetuner.name!r}", problems)
    return defaults
