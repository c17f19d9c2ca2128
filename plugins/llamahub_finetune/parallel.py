"""Data parallelism on torch.distributed: DDP for every method, FSDP for full-weight methods.

``wrap`` returns the module a rank trains through: the model itself on one rank; with several,
``DistributedDataParallel`` (each rank holds every weight; gradients are all-reduced in buckets
while the backward runs), or with ``parallel = "fsdp"`` the model sharded by FSDP2's
``fully_shard`` (each transformer block, then the root: each rank keeps 1/world of every weight,
gradient and optimizer state, and gathers a block's weights only while it computes it).

Both average gradients over the ranks; the loop scales each rank's loss by ``world`` so that a
step's update is the one a single process makes on the whole batch (see ``train.py``).

The state helpers read and write full tensors whatever the wrapping, so checkpoints and results
look the same for 1 rank, DDP and FSDP (with FSDP every rank must call them: they gather).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

import llamahub.plugin as lp

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
# FSDP keeps no LoRA-sized win (the frozen base is what is large) and its frozen/trainable mix in
# one block needs more care than it repays: these methods train every weight
FSDP_METHODS = ("full", "qat")


def check(method: str, parallel: str, processes: int) -> None:
    """Refuse a parallel mode that cannot run (before any process starts)."""
    if parallel == "fsdp" and method not in FSDP_METHODS:
        raise lp.ConfigError(f"parallel = 'fsdp' shards full fine-tuning, not the {method} method",
                             hint="use parallel = 'ddp' (the default) for LoRA, or method full/qat")
    if parallel == "fsdp" and processes < 2:
        raise lp.ConfigError("parallel = 'fsdp' needs processes >= 2 (one rank has nothing to shard)",
                             hint="set processes = 2 or more, or parallel = 'ddp'")


def wrap(model: nn.Module, parallel: str, world: int, device: torch.device) -> nn.Module:
    """The module a rank's forward and backward go through."""
    if world == 1:
        return model
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.layers:  # type: ignore[union-attr]
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


def unwrapped(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable tensors, full and on the CPU (every rank calls; with FSDP rank 0 gets them)."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    state = get_model_state_dict(model, options=FULL)
    return {k: v.detach().clone() for k, v in state.items() if k in names}


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every weight, full and on the CPU (every rank calls; with FSDP rank 0 gets them)."""
    return {k: v.detach().clone() for k, v in get_model_state_dict(model, options=FULL).items()}


def load_trainable(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    set_model_state_dict(model, tensors, options=StateDictOptions(full_state_dict=True, strict=False))


def optimizer_state(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    return get_optimizer_state_dict(model, opt, options=FULL)


def load_optimizer(model: nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    set_optimizer_state_dict(model, opt, state, options=StateDictOptions(full_state_dict=True))
