"""One tensor-parallel rank: join the process group, load this rank's slice, serve token steps.

Rank 0 takes commands from the driver over a pipe and passes each to the other ranks with one
broadcast (a small header with the tokens inline; a long prompt follows in a second one); every
rank runs the forward (the all-reduces happen inside it), the vocabulary slices of the logits
are gathered on rank 0, which sends them back. The other ranks never talk to the driver after
they are ready; they wait in the broadcast. While idle, rank 0 broadcasts a keep-alive so that
the process group's timeout only fires for a rank that is really stuck.

A worker exits when its parent goes away (a watchdog thread), ignores SIGINT (the driver
decides what Ctrl-C means) and reports a failure to the driver before exiting.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import pickle
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

HEADER = 5  # op, batch, length, start, last_only
INLINE = 64  # tokens carried in the header's broadcast
OP_STOP, OP_PING, OP_FORWARD = 0, 1, 2
SPEC_KEY = "llamahub/spec"
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class WorkerSpec:
    """What every rank needs to start: the checkpoint to open and how to join the group."""

    artifacts: Any  # llamahub.plugin.Artifacts
    variant: Any  # llamahub.plugin.Variant
    options: Any  # llamahub.plugin.LoadOptions
    world: int
    device: str  # "cpu" or "cuda"
    dtype: str
    threads: int
    timeout_s: float = 600.0
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Rendezvous:
    """Where the ranks meet (torchrun's MASTER_ADDR and MASTER_PORT) and which rank this is.

    Rank 0 hosts the store there and publishes the ``WorkerSpec``; ranks started by a node
    launcher on another machine read it from the store, so they need nothing else.
    """

    master_addr: str
    master_port: int
    rank: int
    timeout_s: float = 600.0
    folder: str | None = None  # the checkpoint's folder on this node, when it differs


def rank_device(device: str, rank: int) -> torch.device:
    if device == "cuda":
        local = rank % max(torch.cuda.device_count(), 1)
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def build_rank_model(reader: Any, args: Any, rank: int, world: int, device: torch.device,
                     dtype: str) -> Any:
    """This rank's part of the reference model: built on meta, split, then its slice assigned."""
    from llamahub.plugin import assign_weights, build_meta
    from llamahub_cuda.parallel import Group, split_model

    layout = reader.checkpoint.rope_layout
    emb = reader.embedding_split_dim() if world > 1 else 0
    model = build_meta(args, layout)
    split_model(model, Group(rank, world), emb)
    state = reader.shard(rank, world, rope_layout=layout, dtype=TORCH_DTYPES[dtype])
    if args.tie_embeddings and "output.weight" not in state and emb == 1:
        from llamahub.errors import CheckpointError

        raise CheckpointError("tied embeddings split on dim 1 cannot serve as the output head",
                              hint="load this checkpoint with tp=1")
    return assign_weights(model, state, dtype=TORCH_DTYPES[dtype], device=device)


def main(rdzv: Rendezvous, spec: WorkerSpec | None, conn: Any) -> None:
    """A rank's process: join, load its slice, serve (started by the driver or a node launcher)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    faulthandler.register(signal.SIGUSR1)  # kill -USR1 <pid> prints where a rank is
    _watch_parent(os.getppid())
    rank = rdzv.rank
    try:
        import torch.distributed as dist

        from llamahub.plugin import open_reference

        spec, store = join(rdzv, spec)
        os.environ.update(spec.env)
        torch.set_num_threads(spec.threads)
        device = rank_device(spec.device, rank)
        dist.init_process_group("nccl" if spec.device == "cuda" else "gloo", store=store, rank=rank,
                                world_size=spec.world, timeout=timedelta(seconds=spec.timeout_s))
        before = rss_bytes("VmRSS")
        ref = open_reference(spec.artifacts, spec.variant, spec.options)
        model = build_rank_model(ref.reader, ref.args, rank, spec.world, device, spec.dtype)
        if conn is not None:
            conn.send(("ready", {"rank": rank, "pid": os.getpid(), "files": ref.reader.n_files,
                                 "rss_before_load": before}))
        Server(model, rank, spec.world, device, conn, spec.timeout_s / 4).serve()
        dist.destroy_process_group()
    except BaseException as e:  # report, then exit: the driver raises it
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.send(("error", type(e).__name__, getattr(e, "message", str(e)), getattr(e, "hint", None),
                           traceback.format_exc()))
        else:
            traceback.print_exc()
        os._exit(1)
    os._exit(0)


def rss_bytes(field: str) -> int:
    """This process's resident memory now (VmRSS) or at its peak (VmHWM), from /proc (0 elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def join(rdzv: Rendezvous, spec: WorkerSpec | None) -> tuple[WorkerSpec, Any]:
    """Meet at the rendezvous store; rank 0 publishes the spec, the others read it."""
    import torch.distributed as dist

    store = dist.TCPStore(rdzv.master_addr, rdzv.master_port, is_master=rdzv.rank == 0,
                          timeout=timedelta(seconds=rdzv.timeout_s), wait_for_workers=False)
    if rdzv.rank == 0:
        store.set(SPEC_KEY, pickle.dumps(spec))
    elif spec is None:
        spec = pickle.loads(store.get(SPEC_KEY))  # the same trust as torch.distributed itself
    assert spec is not None
    if rdzv.folder:
        folder = Path(rdzv.folder)
        spec = replace(spec, artifacts=replace(spec.artifacts, folder=folder, root=folder.parent))
    return spec, store


def _watch_parent(parent: int) -> None:
    """Exit as soon as the process that started this one is gone (no orphans, whatever happens)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="llamahub-parent-watch").start()


class Server:
    """The step loop of one rank."""

    def __init__(self, model: Any, rank: int, world: int, device: torch.device, conn: Any,
                 keepalive_s: float) -> None:
        self.model, self.rank, self.world, self.device = model, rank, world, device
        self.conn = conn
        self.keepalive_s = keepalive_s
        self.buf = torch.zeros(HEADER + INLINE, dtype=torch.long, device=device)
        self.group = model.tp_group
        self.steps, self.step_s = 0, 0.0

    def serve(self) -> None:
        import torch.distributed as dist

        while True:
            tokens = self._next_command() if self.rank == 0 else None
            started = time.perf_counter()
            self.group.timed(dist.broadcast, self.buf, src=0)
            op, bsz, length, start, last_only = (int(x) for x in self.buf[:HEADER].tolist())
            if op == OP_STOP:
                return
            if op == OP_FORWARD:
                if tokens is None:
                    tokens = self._receive_tokens(bsz, length)
                self._forward(tokens, start, bool(last_only))
                self.steps += 1
                self.step_s += time.perf_counter() - started

    def _next_command(self) -> torch.Tensor | None:
        """Rank 0: wait for the driver's command and write its header; tokens if not inline."""
        self.buf.zero_()
        while True:
            if not self.conn.poll(self.keepalive_s):
                self.buf[0] = OP_PING
                return None
            try:
                msg = self.conn.recv()
            except EOFError:  # the driver is gone
                msg = ("stop",)
            if msg[0] != "stats":
                break
            self.conn.send(("ok", self._stats()))  # answered by rank 0 alone
        if msg[0] == "stop":
            self.buf[0] = OP_STOP
            return None
        _, array, start, last_only = msg
        tokens = torch.from_numpy(array).to(self.device)
        bsz, length = tokens.shape
        self.buf[:HEADER] = torch.tensor([OP_FORWARD, bsz, length, start, int(last_only)])
        if tokens.numel() <= INLINE:
            self.buf[HEADER:HEADER + tokens.numel()] = tokens.flatten()
        return tokens

    def _stats(self) -> dict[str, float]:
        return {"steps": self.steps, "step_seconds": self.step_s, "comm_seconds": self.group.comm_s,
                "rss_bytes": rss_bytes("VmRSS"), "peak_rss_bytes": rss_bytes("VmHWM")}

    def _receive_tokens(self, bsz: int, length: int) -> torch.Tensor:
        import torch.distributed as dist

        if bsz * length <= INLINE:
            return self.buf[HEADER:HEADER + bsz * length].view(bsz, length).clone()
        tokens = torch.empty((bsz, length), dtype=torch.long, device=self.device)
        self.group.timed(dist.broadcast, tokens, src=0)
        return tokens

    def _forward(self, tokens: torch.Tensor, start: int, last_only: bool) -> None:
        import torch.distributed as dist

        if self.rank == 0 and tokens.numel() > INLINE:
            self.group.timed(dist.broadcast, tokens.contiguous(), src=0)
        head = self.model.output
        with torch.inference_mode():
            head.last_only = last_only and hasattr(head, "last_only")
            logits = self.model(tokens, start)
            if last_only:
                logits = logits[:, -1:]  # (already so when the head scored the last row only)
            logits = logits.contiguous()
            parts = [torch.empty_like(logits) for _ in range(self.world)] if self.rank == 0 else None
            if self.world > 1:
                self.group.timed(dist.gather, logits, parts, dst=0)
            if self.rank == 0:
                full = torch.cat(parts, dim=-1) if self.world > 1 else logits  # type: ignore[arg-type]
                self.conn.send(("ok", full.cpu().numpy()))
