"""The training loop every method shares: seeded, resumable, data-parallel, with progress.

One optimizer step sees ``batch_size`` examples across all ranks: each rank takes its share of
the step's examples, sums its token losses, divides by the step's token count over every rank,
and the gradients are summed across ranks (one all-reduce of a flat buffer), so a step's update
is the same as one process would make on the whole batch. Data order comes from a generator
seeded by (seed, epoch); checkpoints keep the trainable tensors, optimizer and scheduler state
and every rank's RNG state, so a resumed run makes the same updates as an uninterrupted one.
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
    settings = cfg.model_dump(exclude={"resume", "checkpoint_every", "processes", "threads", "eval_every"})
    what = {"base": job.base.name, "data": data_sha, "config": settings,
            "context": job.options.context_length, "rope": dict(job.options.rope_scaling or {})}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def device_for(cfg: TrainConfig, rank: int) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise lp.ConfigError("device = 'cuda' but this torch sees no GPU",
                                 hint="set device = 'cpu' (or 'auto')")
        return torch.device("cuda", rank % torch.cuda.device_count())
    return torch.device("cpu")


def batch_loss(model: nn.Module, batch: D.Batch, device: torch.device) -> torch.Tensor:
    """The summed cross-entropy of the batch's targets (a 0-d tensor)."""
    mask = batch.mask.to(device) if batch.mask is not None else None
    logits = model(batch.inputs.to(device), use_cache=False, mask=mask)
    return F.cross_entropy(logits.flatten(0, 1), batch.targets.to(device).flatten(),
                           ignore_index=D.IGNORE, reduction="sum")


class Loop:
    """One rank's training run over already-encoded examples."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, rank: Rank, device: torch.device,
                 make_batch: Callable[[list[D.Example]], D.Batch], workdir: Path, stamp: str) -> None:
        self.model, self.cfg, self.rank, self.device = model, cfg, rank, device
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

    def _trainable(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def save(self) -> None:
        states = [torch.get_rng_state()]
        if self.rank.world > 1:
            states = [None] * self.rank.world  # type: ignore[list-item]
            dist.all_gather_object(states, torch.get_rng_state())
        if self.rank.rank != 0:
            return
        blob = {"stamp": self.stamp, "step": self.step, "trainable": self._trainable(),
                "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
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
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                if name in blob["trainable"]:
                    p.copy_(blob["trainable"][name])
        self.opt.load_state_dict(blob["optimizer"])
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
        batch = self.make_batch(mine) if mine else None
        count = torch.tensor([float(batch.n_targets if batch else 0)])
        total = self.rank.all_sum(count.clone()).item()
        self.opt.zero_grad(set_to_none=False)
        local = torch.zeros(())
        if batch is not None and total > 0:
            loss = batch_loss(self.model, batch, self.device)
            (loss / total).backward()
            local = loss.detach().cpu()
            self.metrics.tokens += batch.inputs.numel() * self.rank.world
        self._reduce_grads()
        if self.cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        self.opt.step()
        self.sched.step()
        return self.rank.all_sum(local.reshape(1).float()).item() / max(total, 1.0)

    def _reduce_grads(self) -> None:
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if self.rank.world == 1:
            return
        flat = torch.cat([p.grad.flatten() for p in self.params])
        dist.all_reduce(flat)
        at = 0
        for p in self.params:
            n = p.grad.numel()
            p.grad.copy_(flat[at:at + n].view_as(p.grad))
            at += n

    @torch.no_grad()
    def evaluate(self, examples: list[D.Example]) -> float | None:
        if not examples:
            return None
        self.model.eval()
        mine = self._share(examples)
        total = torch.zeros(2)
        for i in range(0, len(mine), self.cfg.batch_size):
            batch = self.make_batch(mine[i:i + self.cfg.batch_size])
            total += torch.tensor([batch_loss(self.model, batch, self.device).item(), batch.n_targets])
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
