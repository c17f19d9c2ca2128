"""The contracts plugins implement (typing Protocols) and the records the core hands them.

Plugins reach these through ``llamahub.plugin``; this module names no client or hub class.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from llamahub.fsutil import atomic_write

if TYPE_CHECKING:
    import torch

    from llamahub.model.args import ModelArgs
    from llamahub.model.llm import LlamaModel
    from llamahub.registry import Variant


@dataclass(frozen=True)
class LoadOptions:
    """What the caller asked of ``load()``; None means "let the backend choose".

    ``context_length`` caps prompt + generation (and so the KV cache the plan counts); above the
    variant's own context it needs ``rope_scaling`` (Llama 3.1-style factors: ``factor``,
    ``low_freq_factor``, ``high_freq_factor``, ``original_max_position``). ``extra`` holds
    backend-specific options (``load(name, tp=2)`` → ``extra={"tp": 2}``).
    """

    backend: str | None = None
    dtype: str | None = None
    device: str | None = None
    threads: int | None = None
    context_length: int | None = None
    rope_scaling: Mapping[str, float] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


# --- what a backend is handed -----------------------------------------------------------------

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class Artifacts:
    """The verified files of one variant, as the core hands them to a backend.

    ``folder`` is the model folder (Meta: consolidated.NN.pth + params.json; Hugging Face:
    config.json + safetensors; or whatever a source fetched, e.g. a GGUF file); ``root`` the
    download root above it (LICENSE, Llama 2's tokenizer.model). ``formats`` names what is
    present ("meta", "hf", "gguf", "tokenizer"). ``derived(key)`` is a folder of the core's cache,
    kept per snapshot, where a backend stores what it derives once (a GGUF file, quantized
    weights, a compiled kernel), with a JSON sidecar to say what it holds.
    """

    folder: Path
    root: Path
    formats: frozenset[str]
    snapshot_id: str
    derived_root: Path

    def derived(self, key: str) -> Path:
        """The folder for ``key`` (letters, digits, ``.-_``), created if needed."""
        if not _KEY.match(key):
            raise ValueError(f"derived-artifact key {key!r} must be letters, digits, '.', '-', '_'")
        path = self.derived_root / key
        path.mkdir(parents=True, exist_ok=True)
        return path

    def sidecar(self, key: str) -> dict[str, Any] | None:
        """The JSON a backend wrote beside ``derived(key)``; None when absent or unreadable."""
        path = self.derived_root / f"{key}.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write_sidecar(self, key: str, data: Mapping[str, Any]) -> None:
        """Record what ``derived(key)`` holds (written atomically: readers never see half)."""
        self.derived(key)
        path = self.derived_root / f"{key}.json"
        atomic_write(path, json.dumps(dict(data), indent=2))


@dataclass(frozen=True)
class MemoryPlan:
    """What loading a variant needs: host bytes, and bytes on each of ``devices`` accelerators."""

    host_bytes: int
    device_bytes: int = 0
    devices: int = 0
    device: str = "cpu"
    dtype: str = ""
    note: str = ""


@dataclass(frozen=True)
class Capacity:
    """What a backend has here: host bytes free, and accelerators with their free bytes each."""

    host_bytes: int
    device_bytes: int = 0
    devices: int = 0
    device: str = "cpu"

    def shortfall(self, plan: MemoryPlan) -> str | None:
        """Why ``plan`` does not fit (None when it does)."""
        gib = 2**30
        if plan.devices > self.devices:
            return f"needs {plan.devices} {plan.device} device(s), {self.devices} here"
        if plan.devices and plan.device_bytes > self.device_bytes:
            return (f"needs {plan.device_bytes / gib:.1f} GiB per {plan.device} device, "
                    f"{self.device_bytes / gib:.1f} GiB free")
        if plan.host_bytes > self.host_bytes:
            return (f"needs {plan.host_bytes / gib:.1f} GiB of memory, "
                    f"{self.host_bytes / gib:.1f} GiB available")
        return None


# --- plugin contracts -------------------------------------------------------------------------


@runtime_checkable
class Backend(Protocol):
    """Runs a Llama variant. Module import must stay cheap: import heavy code in ``load``.

    ``dtypes`` lists the dtypes it accepts (the first is its default) and ``devices`` the
    ``device=`` names it answers to; both feed the CLI's choices and the plan table.
    """

    name: str
    priority: int  # higher wins when several backends could run a variant
    description: str
    dtypes: tuple[str, ...]
    devices: tuple[str, ...]

    def unavailable_reason(self) -> str | None:
        """Why this backend cannot run on this machine (None when it can). Never raises."""

    def unsupported_reason(self, variant: Variant, options: LoadOptions) -> str | None:
        """Why this backend cannot run ``variant`` with ``options`` (None when it can)."""

    def plan(self, variant: Variant, options: LoadOptions) -> MemoryPlan:
        """Memory needed for ``variant`` with ``options`` (weights, KV cache, overhead). Pure."""

    def capacity(self) -> Capacity:
        """Memory this backend has available on this machine now."""

    def load(self, artifacts: Artifacts, variant: Variant, options: LoadOptions) -> LlamaModel:
        """Open what it needs in ``artifacts`` (``llamahub.plugin.open_reference`` for Meta/HF)."""


@dataclass(frozen=True)
class RemoteFile:
    """One file a source offers: its path in Meta's layout, a URL, and what it knows of it."""

    path: str
    url: str
    size: int | None = None
    md5: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class SourcePlan:
    """What a source found for a variant: the files to fetch, and where they came from.

    ``origin`` is recorded in the cache beside the files.
    """

    files: tuple[RemoteFile, ...]
    origin: Mapping[str, Any] = field(default_factory=dict)
    # paths the source found no digest for: refused unless the user trusts them unverified
    unverified: tuple[str, ...] = ()


@dataclass(frozen=True)
class MirrorFile:
    """One verified cached file that ``llamahub mirror push`` hands a source to upload."""

    path: str  # in Meta's layout, e.g. "llama-2-7b/consolidated.00.pth"
    local: Path
    size: int
    md5: str
    sha256: str


class HubAccess(Protocol):
    """The narrow view of the hub a source gets (the configured hub, or the embedded one)."""

    @property
    def url(self) -> str: ...

    @property
    def embedded(self) -> bool:
        """True for the hub started inside this process (no hub was configured)."""

    def require_account(self) -> None:
        """Raise AuthenticationError (saying to log in) when there is no account to use."""

    def issue_link(self, variant: str) -> dict[str, Any]:
        """A signed link for ``variant``: {"url", "link_id", "key_id", "grants", ...}."""

    def manifest(self, link_url: str) -> dict[str, Any]:
        """Every file under a link: {"files": [{"path", "size", "md5", "sha256"}, ...]}."""


@runtime_checkable
class Source(Protocol):
    """Where weights come from (the hub, a Meta presigned URL, a local folder, a mirror, ...).

    Capabilities instead of names: ``default`` (used when the caller names no source; one
    source should claim it), ``works_offline`` (reads nothing from the network, so
    ``LLAMAHUB_OFFLINE=1`` allows it), ``carries_grants`` (its answer may include an enterprise
    grant, so a local MAU refusal is left to it).

    Optional: ``schemes`` (location URL schemes it answers to, e.g. ``("s3",)``: a location with
    one picks this source when none is named) and ``push(files, location, echo)`` (it can fill a
    mirror at ``location``: ``llamahub mirror push``).
    """

    name: str
    description: str
    needs_location: bool  # True when the user must name where (a URL, a folder)
    default: bool
    works_offline: bool
    carries_grants: bool

    def plan(self, variant: Variant, hub: HubAccess, location: str | None) -> SourcePlan:
        """The files of ``variant`` to fetch. ``hub`` reaches the hub; ``location`` is user-given."""


@dataclass(frozen=True)
class FinetuneJob:
    """What the core hands a fine-tuning method: the base (gated and fetched), the data, the config.

    ``artifacts`` and ``options`` open the base as a backend would (``open_reference``; the
    options carry ``context_length`` and ``rope_scaling`` when the job extends the context).
    ``data`` is a JSONL file of ``{"messages": [...]}`` dialogs or ``{"text": ...}`` records.
    ``output`` is an empty folder for the method's own files (e.g. a PEFT adapter), which end up
    next to the weights; ``workdir`` persists between runs of the same job (checkpoints to
    resume from). ``config`` holds the method's settings, already merged from its defaults, a
    config file and keyword arguments (the method validates them).
    """

    base: Variant
    artifacts: Artifacts
    options: LoadOptions
    data: Path
    output: Path
    workdir: Path
    config: Mapping[str, Any]
    progress: bool = True


@dataclass(frozen=True)
class FinetuneResult:
    """What a method returns: the full weights (Meta naming, interleaved RoPE rows), the
    architecture they fit (``ModelArgs``), what it wrote into ``output``, and its measurements
    (``train_loss``, ``eval_loss``, ``tokens``, ...)."""

    state_dict: Mapping[str, torch.Tensor]
    args: ModelArgs
    files: tuple[str, ...] = ()
    metrics: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Finetuner(Protocol):
    """A fine-tuning method (LoRA, full, QAT, ...). Import heavy code inside ``train``."""

    name: str
    description: str

    def unsupported_reason(self, variant: Variant) -> str | None:
        """Why this method cannot fine-tune ``variant`` (None when it can)."""

    def check_config(self, config: Mapping[str, Any]) -> Mapping[str, Any]:
        """The method's full config (its defaults filled in); raise ConfigError when bad. Pure."""

    def train(self, job: FinetuneJob) -> FinetuneResult:
        """Train on ``job.data`` and return the weights (rank 0 of a data-parallel run)."""
