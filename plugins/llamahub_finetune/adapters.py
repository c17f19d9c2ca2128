"""A base model with a LoRA adapter applied on the fly, as a ``LlamaModel``."""

from __future__ import annotations

from pathlib import Path

import torch

import llamahub.plugin as lp

from . import lora as L


def adapter_model(artifacts: lp.Artifacts, variant: lp.Variant, folder: Path,
                  options: lp.LoadOptions) -> lp.LlamaModel:
    ref = lp.open_reference(artifacts, variant, options)
    cfg, tensors, _ = L.read_adapter(folder, ref.args)
    model = lp.build_meta(ref.args)
    L.add_lora(model, cfg)
    state = ref.reader.state_dict(dtype=torch.float32)
    state.update({k: v.float() for k, v in tensors.items()})
    lp.assign_weights(model, state)

    def decode(tokens: torch.Tensor, start: int | torch.Tensor) -> torch.Tensor:
        return model(tokens, start)

    return lp.LlamaModel(decode, ref.tokenizer, variant, backend="lora-adapter", dtype="fp32",
                         context_length=ref.args.max_seq_len, info={"adapter": str(folder)})
