"""The training loop every method shares: seeded, resumable, data-parallel, with progress.

One optimizer step sees ``batch_size`` examples across all ranks: each rank takes its share of
the step's examples, sums its token losses and divides by the step's token count over every
rank. The model trains through torch's DistributedDataParallel (or FSDP, see ``parallel.py``),
which averages gradients over the ranks; each rank's loss is scaled by the world size, so the
averaged gradient is the sum of every rank's and a step's update is the one a single process
makes on the whole batch. A rank whose share is empty still runs a forward and backward (on a
batch weighted 0), as the gradient all-reduce needs every rank. Data order comes from a
generator seeded by (seed, epoch); checkpoints keep the trainable tensors, optimizer and
scheduler state (full tensors, whatever the sharding) and every rank's RNG state, so a resumed
run makes the same updates as an uninterrupted one.

On a GPU the forward runs under ``torch.autocast`` in bf16 (``autocast = "auto"``), the weights
and optimizer state staying in the config's dtype; ``autocast = "bf16"`` asks for the same on
the CPU.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import llamahub.plugin as lp

from . import data as D
from . import parallel as P
from .config import TrainConfig

CHECKPOINT = "checkpoint.pt"


@dataclass
class Rank:
    rank: int = 0
    world: int = 1

    def all_sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(value)
        return value


@dataclass
class Metrics:
    train_loss: list[tuple[int, float]] = field(default_factory=list)
    eval_loss: list[tuple[int, float]] = field(default_factory=list)
    tokens: int = 0  # input tokens processed (all ranks)
    seconds: float = 0.0
    resumed_from: int = 0  # the step of the checkpoint this run continued from (0: a fresh start)


def fingerprint(job: lp.FinetuneJob, cfg: TrainConfig, data_sha: str) -> str:
    """What must match for a checkpoint to be resumed: base, data, context and settings."""
    settings = cfg.model_dump(exclude={"resume", "checkpoint_every", "processes", "threads", "eval_every",
                                       "parallel"})
    what = {"base": job.base.name, "data": data_sha, "config": settings,
            "context": job.options.context_length, "rope": dict(job.options.rope_scaling or {})}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def device_for(cfg: TrainConfig, rank: int) -> torch.device:
    """Rank ``rank``'s device: its own GPU (``device = "cuda"``, or "auto" with a GPU), else the CPU."""
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        check_gpus(cfg)
        return torch.device("cuda", rank)
    return torch.device("cpu")


def check_gpus(cfg: TrainConfig) -> None:
    """Refuse ``device = "cuda"`` without enough GPUs: NCCL wants one GPU per rank."""
    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if found == 0:
        build = f"a CPU-only build ({torch.__version__})" if torch.version.cuda is None else \
            f"CUDA {torch.version.cuda}, but no GPU is visible (CUDA_VISIBLE_DEVICES, driver?)"
        raise lp.ConfigError(f"device = 'cuda' but this torch sees no GPU: {build}",
                             hint="set device = 'cpu' (or 'auto'), or install a CUDA build of torch")
    if cfg.processes > found:
        raise lp.ConfigError(f"processes = {cfg.processes} on device = 'cuda' needs {cfg.processes} GPUs "
                             f"(one per rank), and {found} are visible",
                             hint=f"set processes to at most {found}")


def dist_backend(device: torch.device) -> str:
    """NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if device.type == "cuda" else "gloo"


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on a GPU by default (or anywhere when asked); None: plain precision."""
    if cfg.autocast == "bf16" or (cfg.autocast == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def batch_loss(model: nn.Module, batch: D.Batch, device: torch.device,
               autocast: torch.dtype | None = None) -> torch.Tensor:
    """The summed cross-entropy of the batch's targets (a 0-d float32 tensor)."""
    mask = batch.mask.to(device) if batch.mask is not None else None
    with torch.autocast(device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        logits = model(batch.inputs.to(device), use_cache=False, mask=mask)
    return F.cross_entropy(logits.float().flatten(0, 1), batch.targets.to(device).flatten(),
                           ignore_index=D.IGNORE, reduction="sum")


class Loop:
    """One rank's training run over already-encoded examples."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, rank: Rank, device: torch.device,
                 make_batch: Callable[[list[D.Example]], D.Batch], workdir: Path, stamp: str) -> None:
        self.model, self.cfg, self.rank, self.device = model, cfg, rank, device
        # what the steps run through; FSDP swaps the parameters for shards, so they are read after
        self.wrapped = P.wrap(model, cfg.parallel, rank.world, device)
        self.autocast = autocast_dtype(cfg, device)
        self.make_batch = make_batch
        self.workdir, self.stamp = workdir, stamp
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        warm = cfg.warmup_steps
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
        self.metrics = Metrics()
        self.step = 0

    # --- checkpoints -------------------------------------------------------------------

    def save(self) -> None:
        trainable = P.trainable_state(self.model)  # every rank: FSDP gathers the shards
        optimizer = P.optimizer_state(self.model, self.opt)
        states = [torch.get_rng_state()]
        if self.rank.world > 1:
            states = [None] * self.rank.world  # type: ignore[list-item]
            dist.all_gather_object(states, torch.get_rng_state())
        if self.rank.rank != 0:
            return
        blob = {"stamp": self.stamp, "step": self.step, "trainable": trainable,
                "optimizer": optimizer, "scheduler": self.sched.state_dict(),
                "rng": states, "metrics": vars(self.metrics)}
        self.workdir.mkdir(parents=True, exist_ok=True)
        tmp = self.workdir / f"{CHECKPOINT}.tmp"
        torch.save(blob, tmp)
        os.replace(tmp, self.workdir / CHECKPOINT)

    def restore(self) -> bool:
        path = self.workdir / CHECKPOINT
        if not (self.cfg.resume and path.is_file()):
            return False
        blob = torch.load(path, weights_only=False, map_location="cpu")
        if blob.get("stamp") != self.stamp or len(blob["rng"]) != self.rank.world:
            return False  # another job's, or other settings: start afresh
        P.load_trainable(self.model, blob["trainable"])
        P.load_optimizer(self.model, self.opt, blob["optimizer"])
        self.sched.load_state_dict(blob["scheduler"])
        torch.set_rng_state(blob["rng"][self.rank.rank])
        self.step = int(blob["step"])
        self.metrics = Metrics(**{**blob["metrics"], "resumed_from": self.step})
        return True

    def discard_checkpoint(self) -> None:
        if self.rank.rank == 0:
            (self.workdir / CHECKPOINT).unlink(missing_ok=True)

    # --- steps ---------------------------------------------------------------------------

    def _share(self, examples: list[D.Example]) -> list[D.Example]:
        return examples[self.rank.rank::self.rank.world]

    def train_step(self, examples: list[D.Example]) -> float:
        mine = self._share(examples)
        # a rank without examples still runs a forward and backward (weight 0): DDP and FSDP
        # reduce gradients in the backward, and every rank must join
        batch = self.make_batch(mine or examples[:1])
        count = torch.tensor([float(batch.n_targets if mine else 0)])
        total = self.rank.all_sum(count.clone()).item()
        self.opt.zero_grad(set_to_none=False)
        local = torch.zeros(())
        if total > 0:
            loss = batch_loss(self.wrapped, batch, self.device, self.autocast)
            # the wrapper averages gradients over ranks: x world makes that average their sum
            weight = self.rank.world / total if mine else 0.0
            (loss * weight if self.rank.world > 1 else loss / total).backward()
            if mine:
                local = loss.detach().cpu()
                self.metrics.tokens += batch.inputs.numel() * self.rank.world
        for p in self.params:  # a step without targets still steps (weight decay, schedule)
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if self.cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        self.opt.step()
        self.sched.step()
        return self.rank.all_sum(local.reshape(1).float()).item() / max(total, 1.0)

    @torch.no_grad()
    def evaluate(self, examples: list[D.Example]) -> float | None:
        if not examples:
            return None
        self.model.eval()
        mine = self._share(examples)
        size = self.cfg.batch_size
        # FSDP gathers each block's weights in every forward: every rank runs as many batches
        # (the longest share's), a rank past its own share on a batch counted 0
        batches = math.ceil(math.ceil(len(examples) / self.rank.world) / size)
        total = torch.zeros(2)
        for i in range(0, batches * size, size):
            part = mine[i:i + size]
            batch = self.make_batch(part or examples[:1])
            loss = batch_loss(self.wrapped, batch, self.device, self.autocast).item()
            if part:
                total += torch.tensor([loss, batch.n_targets])
        self.rank.all_sum(total)
        self.model.train()
        return float(total[0] / max(total[1].item(), 1.0))

    def run(self, train: list[D.Example], held_out: list[D.Example], progress: bool) -> Metrics:
        from tqdm import tqdm

        per_epoch = math.ceil(len(train) / self.cfg.batch_size)
        steps = per_epoch * self.cfg.epochs
        steps = min(steps, self.cfg.max_steps) if self.cfg.max_steps else steps
        resumed = self.restore()
        if not resumed:
            self.metrics.eval_loss.append((0, self.evaluate(held_out) or math.nan))
        started = time.perf_counter()
        bar = tqdm(total=steps, initial=self.step, disable=not progress or self.rank.rank != 0,
                   desc="fine-tuning", unit="step")
        self.model.train()
        while self.step < steps:
            epoch, index = divmod(self.step, per_epoch)
            order = D.step_batches(len(train), self.cfg.batch_size, self.cfg.seed, epoch)[index]
            loss = self.train_step([train[i] for i in order])
            self.step += 1
            self.metrics.train_loss.append((self.step, loss))
            if self.step % self.cfg.eval_every == 0 or self.step == steps:
                ev = self.evaluate(held_out)
                if ev is not None:
                    self.metrics.eval_loss.append((self.step, ev))
            bar.set_postfix(loss=f"{loss:.4f}")
            bar.update(1)
            if self.step % self.cfg.checkpoint_every == 0 and self.step < steps:
                self.save()
        bar.close()
        self.metrics.seconds += time.perf_counter() - started
        self.model.eval()
        return self.metrics


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
