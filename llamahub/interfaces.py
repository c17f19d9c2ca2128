"""The contracts plugins implement (typing Protocols) and the options ``load()`` passes on."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from llamahub.client.session import Session
    from llamahub.model.checkpoint import Checkpoint
    from llamahub.model.llm import LlamaModel
    from llamahub.model.tokenizer import Tokenizer
    from llamahub.registry import Variant


@dataclass(frozen=True)
class LoadOptions:
    """What the caller asked of ``load()``; None means "let the backend choose"."""

    backend: str | None = None
    dtype: str | None = None
    device: str | None = None
    threads: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """Runs a Llama checkpoint. Module import must stay cheap: import heavy code in ``load``."""

    name: str
    priority: int  # higher wins when several backends could run a variant
    description: str

    def unavailable_reason(self) -> str | None:
        """Why this backend cannot run on this machine (None when it can). Never raises."""

    def unsupported_reason(self, variant: Variant, options: LoadOptions) -> str | None:
        """Why this backend cannot run ``variant`` with ``options`` (None when it can)."""

    def memory_estimate(self, variant: Variant, options: LoadOptions) -> int:
        """Bytes of memory the loaded model needs."""

    def load(self, checkpoint: Checkpoint, variant: Variant, tokenizer: Tokenizer,
             options: LoadOptions) -> LlamaModel:
        """Build the model from the checkpoint's tensors."""


@dataclass(frozen=True)
class SourcePlan:
    """What a source found for a variant: the files to fetch, and where they came from.

    ``files`` are ``llamahub.client.download.RemoteFile`` (path in Meta's layout, URL, and the
    size and digests the source knows). ``origin`` is recorded in the cache beside the files.
    """

    files: tuple[Any, ...]
    origin: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Source(Protocol):
    """Where weights come from (the hub, a Meta presigned URL, a local folder, ...)."""

    name: str
    description: str
    needs_location: bool  # True when the user must name where (a URL, a folder)

    def plan(self, variant: Variant, session: Session, location: str | None) -> SourcePlan:
        """The files of ``variant`` to fetch. ``session`` reaches the hub; ``location`` is user-given."""


@runtime_checkable
class Finetuner(Protocol):
    """A fine-tuning method (LoRA, full, QAT, ...)."""

    name: str
    description: str

    def unsupported_reason(self, variant: Variant) -> str | None:
        """Why this method cannot fine-tune ``variant`` (None when it can)."""
