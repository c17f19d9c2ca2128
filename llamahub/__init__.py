"""llamahub: load Llama models by name, with license compliance built in.

Public API only; importing llamahub has no side effects (plugins load on first use).
"""

from __future__ import annotations

from llamahub.api import download, load
from llamahub.compliance import license_check
from llamahub.errors import (
    AcceptableUseError,
    AuthenticationError,
    CacheError,
    ChatFormatError,
    CheckpointError,
    ChecksumError,
    ContextLengthError,
    CorruptCheckpointError,
    DiskSpaceError,
    DownloadError,
    GenerationError,
    HubError,
    HubUnreachableError,
    LicenseError,
    LicenseNotAcceptedError,
    LlamahubError,
    MauLimitError,
    MissingShardError,
    NoBackendError,
    NotACheckpointError,
    OfflineError,
    PluginError,
    ReceiptError,
    RegistryError,
    TokenizerError,
    UnknownVariantError,
    UnsafeCheckpointError,
)
from llamahub.finetune import finetune, load_adapter
from llamahub.hookspecs import hookimpl
from llamahub.interfaces import LoadOptions
from llamahub.plugins import resolve as variant
from llamahub.plugins import variants
from llamahub.registry import Variant
from llamahub.version import __version__

__all__ = [
    "AcceptableUseError",
    "AuthenticationError",
    "CacheError",
    "ChatFormatError",
    "CheckpointError",
    "ChecksumError",
    "ContextLengthError",
    "CorruptCheckpointError",
    "DiskSpaceError",
    "DownloadError",
    "GenerationError",
    "HubError",
    "HubUnreachableError",
    "LicenseError",
    "LicenseNotAcceptedError",
    "LlamahubError",
    "LoadOptions",
    "MauLimitError",
    "MissingShardError",
    "NoBackendError",
    "NotACheckpointError",
    "OfflineError",
    "PluginError",
    "ReceiptError",
    "RegistryError",
    "TokenizerError",
    "UnknownVariantError",
    "UnsafeCheckpointError",
    "Variant",
    "__version__",
    "download",
    "finetune",
    "hookimpl",
    "license_check",
    "load",
    "load_adapter",
    "variant",
    "variants",
]
