"""The caller's side of a tensor-parallel model: start one worker per rank, drive them, stop them.

Workers are started through multiprocessing's fork server, which imports torch once (its
children are forked from a process that never touched CUDA or started a thread pool, so they
are as clean as spawned ones, and start in a fraction of a second instead of importing torch
each). A token step is one message to rank 0, which broadcasts it; the logits come back
from rank 0. While it waits the driver also watches every worker's process handle, so a worker
that dies (kill -9, out of memory, a crash) is noticed at once and the call raises
``BackendError`` instead of hanging. ``close()``, garbage collection, interpreter exit and
Ctrl-C stop every worker; a worker whose driver disappears exits on its own (see ``worker``).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import socket
import time
import weakref
from multiprocessing.connection import Connection, wait
from typing import Any

import torch

from llamahub.errors import BackendError, LlamahubError
from llamahub_cuda.worker import Rendezvous, WorkerSpec, main

STOP_GRACE_S = 3.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Engine:
    """``world`` worker processes holding one model; ``forward`` is a decoder callable."""

    def __init__(self, spec: WorkerSpec, master_addr: str, master_port: int, *,
                 local_ranks: int | None = None, load_timeout_s: float = 600.0) -> None:
        self.spec = spec
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["llamahub_cuda.worker"])  # used when the server starts
        self.procs: list[Any] = []
        self.conns: list[Connection] = []
        self.closed = False
        self._inbox: dict[int, list[tuple[Any, ...]]] = {}
        self._finalizer = weakref.finalize(self, _stop, self.procs, self.conns)
        for rank in range(spec.world if local_ranks is None else local_ranks):
            parent, child = ctx.Pipe()
            rdzv = Rendezvous(master_addr, master_port, rank, spec.timeout_s)
            proc = ctx.Process(target=main, args=(rdzv, spec, child), daemon=True,
                               name=f"llamahub-tp-rank{rank}")
            proc.start()
            child.close()
            self.procs.append(proc)
            self.conns.append(parent)
        self.ready = [self._await_ready(i, load_timeout_s) for i in range(len(self.procs))]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def _await_ready(self, i: int, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                msg = self._wait(self.conns[i], deadline - time.monotonic())
                if msg is not None:
                    return msg[1]  # type: ignore[no-any-return]
        except BaseException:
            self.close()
            raise
        self.close()
        raise BackendError(f"tensor-parallel rank {i} was not ready after {timeout_s:.0f} s",
                           hint="check that every rank can reach MASTER_ADDR:MASTER_PORT")

    def forward(self, tokens: torch.Tensor, start: int | torch.Tensor = 0, *,
                last_only: bool = False) -> torch.Tensor:
        """Logits [B, T, vocab] (float32) for tokens [B, T] at positions start.. (one step)."""
        array = tokens.to(torch.long).cpu().numpy()
        return torch.from_numpy(self._request(("forward", array, int(start), last_only)))

    __call__ = forward

    def stats(self) -> dict[str, float]:
        """Rank 0's counters: token steps run, seconds in them, seconds in collectives, and its
        resident memory now and at its peak (bytes)."""
        return dict(self._request(("stats",)))

    def _request(self, msg: tuple[Any, ...]) -> Any:
        """Send ``msg`` to rank 0 and return its answer."""
        if self.closed:
            raise BackendError("this tensor-parallel model was closed",
                               hint="load it again with llamahub.load()")
        try:
            self._check_alive()
            self.conns[0].send(msg)
            while True:
                answer = self._wait(self.conns[0], None)
                if answer is not None:
                    return answer[1]
        except BaseException:  # a dead worker, Ctrl-C: the ranks are out of step, stop them all
            self.close()
            raise

    def last_logits(self, tokens: torch.Tensor, start: int | torch.Tensor = 0) -> torch.Tensor:
        """Logits of the last position only, [B, 1, vocab]: all the generation loop needs."""
        return self.forward(tokens, start, last_only=True)

    def _wait(self, conn: Connection, timeout: float | None) -> tuple[Any, ...] | None:
        """The next message on ``conn``; raises if any worker dies or reports an error first.

        Messages that arrive meanwhile on the other ranks' pipes are kept for later.
        """
        if self._inbox.get(id(conn)):
            return self._inbox[id(conn)].pop(0)
        watched = [*self.conns, *(p.sentinel for p in self.procs)]
        for ready in wait(watched, timeout):
            if ready not in self.conns:
                continue  # a sentinel: a process exited, _check_alive says which
            try:
                msg = ready.recv()  # type: ignore[union-attr]
            except (EOFError, OSError):
                continue  # its process is exiting: the sentinel says how
            if msg[0] == "error":
                rank = self.conns.index(ready)  # type: ignore[arg-type]
                self._check_alive(but=rank, grace_s=1.0, killed_only=True)  # the real cause
                raise _worker_error(rank, msg)
            self._inbox.setdefault(id(ready), []).append(msg)
        self._check_alive()
        if self._inbox.get(id(conn)):
            return self._inbox[id(conn)].pop(0)
        return None

    def _check_alive(self, *, but: int | None = None, grace_s: float = 0.0,
                     killed_only: bool = False) -> None:
        """Raise if a worker (other than rank ``but``) has exited (``killed_only``: by a signal),
        waiting up to ``grace_s`` for one to."""
        others = [p for rank, p in enumerate(self.procs) if rank != but]
        if grace_s:
            wait([p.sentinel for p in others], grace_s)
        for rank, proc in enumerate(self.procs):
            if rank != but and proc.exitcode is not None and not (killed_only and proc.exitcode >= 0):
                how = (f"killed by signal {-proc.exitcode}" if proc.exitcode < 0
                       else f"exit code {proc.exitcode}")
                raise BackendError(f"tensor-parallel rank {rank} (pid {proc.pid}) died ({how}); "
                                   "the model is closed",
                                   hint="load the model again; if it keeps dying, check memory "
                                        "(dmesg) and the rank's output")

    def close(self) -> None:
        """Stop every worker (politely, then by force) and wait for them."""
        self.closed = True
        self._finalizer()


def _worker_error(rank: int, msg: tuple[Any, ...]) -> LlamahubError:
    """The error a rank reported, as the same llamahub error class when it was one."""
    import llamahub.errors

    _, kind, text, hint, tb = msg
    cls = getattr(llamahub.errors, kind, None)
    if isinstance(cls, type) and issubclass(cls, LlamahubError):
        try:
            return cls(f"tensor-parallel rank {rank}: {text}", hint=hint)
        except TypeError:  # an error class with its own signature
            pass
    return BackendError(f"tensor-parallel rank {rank} failed: {kind}: {text}",
                        hint=hint or "load the model again; the rank's traceback ends: " + tb[-500:])


def _stop(procs: list[Any], conns: list[Connection]) -> None:
    """Ask rank 0 to stop everyone, then terminate and kill whatever is left; reap them all."""
    if conns and procs and procs[0].exitcode is None:
        with contextlib.suppress(OSError):
            conns[0].send(("stop",))
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
    for proc in procs:
        if proc.exitcode is None:
            proc.terminate()
    for proc in procs:
        proc.join(1.0)
        if proc.exitcode is None:
            proc.kill()
            proc.join()
    for conn in conns:
        conn.close()
