"""In-tree fine-tuning methods: ``lora`` and ``full``, registered like a third party's.

Import stays cheap: torch and the training code load only when a method trains.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import llamahub.plugin as lp

if TYPE_CHECKING:
    from pathlib import Path


class _Method:
    name = ""
    description = ""

    def unsupported_reason(self, variant: lp.Variant) -> str | None:
        return None

    def check_config(self, config: Mapping[str, Any]) -> Mapping[str, Any]:
        from .config import parse

        return parse(self.name, config).model_dump()

    def train(self, job: lp.FinetuneJob) -> lp.FinetuneResult:
        from .config import parse
        from .methods import run

        return run(job, parse(self.name, job.config))


class LoraMethod(_Method):
    name = "lora"
    description = "LoRA adapters on chosen projections; saved in PEFT's format, merged for loading"

    def load_adapter(self, artifacts: lp.Artifacts, variant: lp.Variant, folder: Path,
                     options: lp.LoadOptions) -> lp.LlamaModel:
        """The base with a PEFT LoRA adapter applied on the fly (not merged)."""
        from .adapters import adapter_model

        return adapter_model(artifacts, variant, folder, options)


class FullMethod(_Method):
    name = "full"
    description = "every weight trained (AdamW); needs about four times the weights' memory"


class QatMethod(_Method):
    name = "qat"
    description = "quantization-aware full fine-tuning (int8/int4 fake-quantized projections)"


@lp.hookimpl
def register_finetuners(register: Any) -> None:
    register(LoraMethod())
    register(FullMethod())
    register(QatMethod())
