"""The public plugin API: everything a third-party backend, source or fine-tuning method needs.

Plugins import from here (and from ``llamahub.errors``), never from the client or the hub::

    from llamahub.plugin import Artifacts, LoadOptions, MemoryPlan, Capacity, hookimpl
    from llamahub.plugin import open_reference, build_meta, assign_weights, LlamaModel

Heavy parts (torch, the model) are imported on first use of their names, so that a plugin
module importing this stays cheap to import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from llamahub.errors import (
    AuthenticationError,
    BackendError,
    ChecksumError,
    ConfigError,
    ContextLengthError,
    DownloadError,
    GenerationError,
    LlamahubError,
    MissingShardError,
    NoBackendError,
    NotACheckpointError,
    PluginError,
)
from llamahub.hookspecs import hookimpl
from llamahub.interfaces import (
    Artifacts,
    Backend,
    Capacity,
    FinetuneJob,
    Finetuner,
    FinetuneResult,
    HubAccess,
    LoadOptions,
    MemoryPlan,
    MirrorFile,
    RemoteFile,
    Source,
    SourcePlan,
)
from llamahub.model.checklist import parse_checklist
from llamahub.paths import cache_dir
from llamahub.registry import Variant

if TYPE_CHECKING:
    from llamahub.model.args import ModelArgs, RopeScaling
    from llamahub.model.batching import SlotDecoder, TransformerSlots
    from llamahub.model.bpe import read_ranks, spell, spelled_merges
    from llamahub.model.chat import chat_stop_ids, encode_dialog
    from llamahub.model.chat_templates import CHAT_TEMPLATES
    from llamahub.model.convert import hf_key_to_meta, hf_rows_to_meta, meta_key_to_hf, meta_rows_to_hf
    from llamahub.model.generation import Decoder, DecoderLoop, Generator, Sampling, generate_ids
    from llamahub.model.llm import LlamaModel
    from llamahub.model.reader import CheckpointReader
    from llamahub.model.tokenizer import Tokenizer
    from llamahub.model.transformer import (
        Step,
        Transformer,
        TransformerBlock,
        assign_weights,
        build_meta,
        build_model,
        rope_frequencies,
    )
    from llamahub.policy.terms import load_licenses
    from llamahub.reference import Reference, context_length, model_args, open_reference

_LAZY = {
    "ModelArgs": "llamahub.model.args", "RopeScaling": "llamahub.model.args",
    "chat_stop_ids": "llamahub.model.chat", "encode_dialog": "llamahub.model.chat",
    "hf_key_to_meta": "llamahub.model.convert", "hf_rows_to_meta": "llamahub.model.convert",
    "meta_key_to_hf": "llamahub.model.convert", "meta_rows_to_hf": "llamahub.model.convert",
    "Decoder": "llamahub.model.generation", "DecoderLoop": "llamahub.model.generation",
    "Generator": "llamahub.model.generation", "Sampling": "llamahub.model.generation",
    "generate_ids": "llamahub.model.generation",
    "LlamaModel": "llamahub.model.llm",
    "CHAT_TEMPLATES": "llamahub.model.chat_templates",
    "read_ranks": "llamahub.model.bpe", "spell": "llamahub.model.bpe", "spelled_merges": "llamahub.model.bpe",
    "SlotDecoder": "llamahub.model.batching", "TransformerSlots": "llamahub.model.batching",
    "CheckpointReader": "llamahub.model.reader",
    "Tokenizer": "llamahub.model.tokenizer",
    "Transformer": "llamahub.model.transformer", "TransformerBlock": "llamahub.model.transformer",
    "Step": "llamahub.model.transformer", "assign_weights": "llamahub.model.transformer",
    "build_meta": "llamahub.model.transformer", "build_model": "llamahub.model.transformer",
    "rope_frequencies": "llamahub.model.transformer", "load_licenses": "llamahub.policy.terms",
    "Reference": "llamahub.reference", "context_length": "llamahub.reference",
    "model_args": "llamahub.reference", "open_reference": "llamahub.reference",
}


def installed_backends() -> dict[str, Backend]:
    """Every installed backend by name, for a plugin that uses another's declared capabilities
    (QAT asks each for a ``quantizer``); the core itself never asks a backend by name."""
    from llamahub.plugins import backends

    return backends()


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'llamahub.plugin' has no attribute {name!r}")


__all__ = [
    "CHAT_TEMPLATES",
    "Artifacts",
    "AuthenticationError",
    "Backend",
    "BackendError",
    "Capacity",
    "CheckpointReader",
    "ChecksumError",
    "ConfigError",
    "ContextLengthError",
    "Decoder",
    "DecoderLoop",
    "DownloadError",
    "FinetuneJob",
    "FinetuneResult",
    "Finetuner",
    "GenerationError",
    "Generator",
    "HubAccess",
    "LlamaModel",
    "LlamahubError",
    "LoadOptions",
    "MemoryPlan",
    "MirrorFile",
    "MissingShardError",
    "ModelArgs",
    "NoBackendError",
    "NotACheckpointError",
    "PluginError",
    "Reference",
    "RemoteFile",
    "RopeScaling",
    "Sampling",
    "SlotDecoder",
    "Source",
    "SourcePlan",
    "Step",
    "Tokenizer",
    "Transformer",
    "TransformerBlock",
    "TransformerSlots",
    "Variant",
    "assign_weights",
    "build_meta",
    "build_model",
    "cache_dir",
    "chat_stop_ids",
    "context_length",
    "encode_dialog",
    "generate_ids",
    "hf_key_to_meta",
    "hf_rows_to_meta",
    "hookimpl",
    "installed_backends",
    "load_licenses",
    "meta_key_to_hf",
    "meta_rows_to_hf",
    "model_args",
    "open_reference",
    "parse_checklist",
    "read_ranks",
    "rope_frequencies",
    "spell",
    "spelled_merges",
]
