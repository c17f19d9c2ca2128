"""The one error hierarchy of llamahub.

Every error carries a message that says what went wrong and a ``hint`` that says what to do
next (usually a command to run). The CLI prints both; the hub turns ``code`` into a
machine-readable error code.
"""

from __future__ import annotations

from collections.abc import Sequence


class LlamahubError(Exception):
    """Root of every error llamahub raises on purpose."""

    code = "llamahub_error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  next: {self.hint}"
        return self.message


# --- registry -------------------------------------------------------------------------------


class RegistryError(LlamahubError):
    """A registry data file is malformed or inconsistent."""

    code = "registry_invalid"


class DataFileError(RegistryError):
    """An entry of a registry data file breaks its schema; names the file, the entry and each field.

    The message reads ``<file>, <entry>: <field>: <problem>[; <field>: <problem> ...]``.
    """

    def __init__(self, file: str, entry: str, problems: Sequence[tuple[str, str]], *, hint: str) -> None:
        self.file = file
        self.entry = entry
        self.problems = list(problems)
        detail = "; ".join(f"{field}: {problem}" for field, problem in self.problems)
        super().__init__(f"{file}, {entry}: {detail}", hint=hint)

    @property
    def fields(self) -> list[str]:
        return [field for field, _ in self.problems]


class UnknownVariantError(RegistryError):
    """A variant name or alias that the registry does not know."""

    code = "unknown_variant"

    def __init__(self, name: str, suggestions: Sequence[str] = ()) -> None:
        self.name = name
        self.suggestions = list(suggestions)
        if self.suggestions:
            hint = f"did you mean {', '.join(self.suggestions)}? `llamahub list` shows every variant"
        else:
            hint = "run `llamahub list` to see every registered variant"
        super().__init__(f"unknown variant {name!r}", hint=hint)


# --- plugins and backends -------------------------------------------------------------------


class PluginError(LlamahubError):
    """A plugin could not be loaded or misbehaved."""

    code = "plugin_error"


class NoBackendError(LlamahubError):
    """No installed backend can run the requested variant; lists why each was refused."""

    code = "no_backend"

    def __init__(self, variant: str, reasons: dict[str, str], *, table: str | None = None,
                 instead: str = "") -> None:
        self.variant = variant
        self.reasons = dict(reasons)
        self.table = table
        lines = [f"no backend can run {variant}:"]
        if table:
            lines.append(table)
        else:
            lines += [f"  {name}: {why}" for name, why in sorted(self.reasons.items())]
        if not self.reasons:
            lines.append("  (no backend plugin is installed)")
        hint = "run `llamahub plugins` to see installed backends, or pass backend=/dtype= explicitly"
        super().__init__("\n".join(lines), hint=f"{instead}; {hint}" if instead else hint)


class BackendError(LlamahubError):
    """A backend failed while running a model (a worker process died, a device error)."""

    code = "backend_failed"


# --- checkpoints ----------------------------------------------------------------------------


class CheckpointError(LlamahubError):
    """A checkpoint folder or file cannot be read as a Llama checkpoint."""

    code = "checkpoint_invalid"


class NotACheckpointError(CheckpointError):
    code = "not_a_checkpoint"


class MissingShardError(CheckpointError):
    code = "missing_shard"


class CorruptCheckpointError(CheckpointError):
    """Truncated or unreadable shard, or tensors whose shapes disagree with the variant."""

    code = "corrupt_checkpoint"


class UnsafeCheckpointError(CheckpointError):
    """A pickle that holds more than plain tensors (it could run code)."""

    code = "unsafe_checkpoint"


# --- tokenizers, prompts, generation --------------------------------------------------------


class TokenizerError(LlamahubError):
    code = "tokenizer_error"


class ChatFormatError(LlamahubError):
    """A dialog that the variant's chat format cannot encode."""

    code = "invalid_dialog"


class ContextLengthError(LlamahubError):
    """Prompt plus requested tokens exceed the variant's context window."""

    code = "context_length_exceeded"


class GenerationError(LlamahubError):
    """Bad generation arguments (temperature, top_p, ...)."""

    code = "invalid_generation_args"


# --- license policy -------------------------------------------------------------------------


class LicenseError(LlamahubError):
    """A license gate refused access."""

    code = "license_error"


class LicenseNotAcceptedError(LicenseError):
    code = "license_not_accepted"


class MauLimitError(LicenseError):
    code = "mau_over_threshold"


class AcceptableUseError(LicenseError):
    code = "prohibited_use"


# --- configuration, network, cache ----------------------------------------------------------


class ConfigError(LlamahubError):
    code = "config_error"


class HubError(LlamahubError):
    """The hub refused a request or answered something unexpected (``code`` is the hub's)."""

    code = "hub_error"


class HubUnreachableError(HubError):
    """No connection to the hub."""

    code = "hub_unreachable"


class AuthenticationError(HubError):
    """The hub does not know the token (or none is configured)."""

    code = "unauthenticated"


class OfflineError(LlamahubError):
    """Offline mode (``LLAMAHUB_OFFLINE=1``) and what was asked needs the network."""

    code = "offline"


class CacheError(LlamahubError):
    """A cached file is missing or does not match the digest recorded when it was verified."""

    code = "cache_corrupt"


class ReceiptError(LicenseError):
    """A license-acceptance receipt is missing or does not verify against the pinned hub key."""

    code = "receipt_invalid"


class DownloadError(LlamahubError):
    """A file could not be downloaded (the server refused, or retries ran out)."""

    code = "download_failed"


class ChecksumError(DownloadError):
    """A downloaded file does not match the digest its source published."""

    code = "checksum_mismatch"


class DiskSpaceError(DownloadError):
    """Not enough free disk space for a download."""

    code = "insufficient_disk_space"


# --- fine-tuning ----------------------------------------------------------------------------


class FinetuneError(LlamahubError):
    """A fine-tuning job cannot run as asked (method, config, output name)."""

    code = "finetune_failed"


class TrainingDataError(FinetuneError):
    """A training data file is unreadable or a record does not fit the method or the context."""

    code = "training_data_invalid"


class DerivativeNameError(LicenseError):
    """A derivative's name breaks its base license's naming rule."""

    code = "derivative_name"


class OutputUseError(LicenseError):
    """Training data came from a model whose license forbids training this base on its outputs."""

    code = "output_use"
