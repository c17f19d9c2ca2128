"""Scheduling generation requests onto one model, in a thread of their own.

``BatchEngine`` is continuous batching: every step decodes one token of each running sequence
together; a finished or cancelled sequence leaves its KV slot, and a waiting one takes it at the
next step (its prompt is prefilled first). ``SerialEngine`` runs one request at a time through
the backend's own ``Generator``, for backends without a slot decoder. Both report per sequence
through ``Job.emit``: text pieces, then one ``Done`` (or ``Failed``).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from llamahub.errors import BackendError, LlamahubError
from llamahub.model.generation import Sampling, TextStream, sample
from llamahub.model.llm import LlamaModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Piece:
    text: str


@dataclass(frozen=True)
class Done:
    reason: str  # "stop" (a stop token or string) or "length" (max_tokens)
    completion_tokens: int


@dataclass(frozen=True)
class Failed:
    error: LlamahubError


Event = Piece | Done | Failed


@dataclass
class Job:
    """One sequence to generate. ``cancelled`` may be set from any thread; the engine drops the
    sequence (and frees its slot) before its next step."""

    prompt: list[int]
    max_tokens: int
    sampling: Sampling
    stop_ids: frozenset[int]
    emit: Callable[[Event], None]
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    cancelled: bool = False


@dataclass
class Stats:
    """What an engine did: ``batched_steps`` counts decode steps shared by 2+ sequences."""

    steps: int = 0
    batched_steps: int = 0
    max_rows: int = 0
    rows: int = 0
    prefills: int = 0
    prefill_steps: int = 0  # forwards that prefilled them (several prompts share one when they can)
    tokens: int = 0
    finished: int = 0
    cancelled: int = 0
    failed: int = 0

    def step(self, rows: int) -> None:
        self.steps += 1
        self.rows += rows
        self.batched_steps += rows > 1
        self.max_rows = max(self.max_rows, rows)


@dataclass
class _Sequence:
    """A job being generated: its text so far and where it is."""

    job: Job
    decode: Callable[[list[int]], str]
    slot: int = -1
    position: int = 0
    last: int = 0
    produced: int = 0
    gen: torch.Generator | None = None
    text: TextStream = field(init=False)

    def __post_init__(self) -> None:
        self.text = TextStream(self.decode, self.job.stop)

    def accept(self, token: int) -> Done | None:
        """Take a new token; emit its text; the Done event when the sequence has finished."""
        job = self.job
        self.produced += 1
        self.last = token
        if token in job.stop_ids and not job.ignore_eos:
            return self._finish("stop")
        if piece := self.text.push(token):
            job.emit(Piece(piece))
        if self.text.stopped:
            return self._finish("stop")
        if self.produced >= job.max_tokens:
            return self._finish("length")
        return None

    def _finish(self, reason: str) -> Done:
        if rest := self.text.flush():
            self.job.emit(Piece(rest))
        done = Done(reason, self.produced)
        self.job.emit(done)
        return done


class _Engine:
    """The queue, the worker thread and the stats both engines share."""

    kind = ""

    def __init__(self, model: LlamaModel, name: str) -> None:
        self.model = model
        self.queue: queue.Queue[Job] = queue.Queue()
        self.stats = Stats()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"serve-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        self.queue.put(job)

    def close(self) -> None:
        self._closing.set()
        self._thread.join(timeout=10)

    def snapshot(self) -> dict[str, Any]:
        return {"engine": self.kind, **self.stats.__dict__, "queued": self.queue.qsize()}

    def _main(self) -> None:
        if self.model.threads:
            torch.set_num_threads(self.model.threads)
        while not self._closing.is_set():
            try:
                self._tick()
            except Exception:  # never let the worker die: the next request must still be served
                log.exception("serve engine step failed")

    def _tick(self) -> None:
        raise NotImplementedError

    def _next_job(self, wait: bool) -> Job | None:
        try:
            job = self.queue.get(timeout=0.1) if wait else self.queue.get_nowait()
        except queue.Empty:
            return None
        if job.cancelled:
            self.stats.cancelled += 1
            return None
        return job

    def _fail(self, seq: _Sequence, error: Exception) -> None:
        self.stats.failed += 1
        err = error if isinstance(error, LlamahubError) else BackendError(
            f"generation failed: {type(error).__name__}: {error}",
            hint="retry the request; if it fails again, restart the server and report the error")
        seq.job.emit(Failed(err))


class BatchEngine(_Engine):
    """Continuous batching over the model's slot decoder (``slots`` sequences at once)."""

    kind = "continuous-batching"

    def __init__(self, model: LlamaModel, name: str, slots: int) -> None:
        super().__init__(model, name)
        assert model.slot_decoder is not None
        self.decoder = model.slot_decoder(slots)
        self.slots = slots
        self.running: dict[int, _Sequence] = {}

    def snapshot(self) -> dict[str, Any]:
        return {**super().snapshot(), "slots": self.slots, "active": len(self.running)}

    def _tick(self) -> None:
        self._admit()
        self._drop_cancelled()
        if self.running:
            self._step()

    def _admit(self) -> None:
        """Waiting jobs take the free slots; their prompts are prefilled together in one forward
        when the decoder can (``prefill_many``), else one by one."""
        free = sorted(set(range(self.slots)) - set(self.running))
        new: list[_Sequence] = []
        while len(new) < len(free):
            job = self._next_job(wait=not self.running and not new)
            if job is None:
                break
            new.append(_Sequence(job, self.model.tokenizer.decode, slot=free[len(new)],
                                 gen=job.sampling.generator()))
        if not new:
            return
        many = getattr(self.decoder, "prefill_many", None)
        if many is not None and len(new) > 1:
            try:
                logits = many([s.slot for s in new], [s.job.prompt for s in new])
                self.stats.prefill_steps += 1
            except Exception:  # one at a time below: only a prompt that fails alone fails
                log.exception("batched prefill failed; prefilling one by one")
            else:
                for seq, row in zip(new, logits, strict=True):
                    self._join(seq, row)
                return
        for seq in new:
            try:
                logits = self.decoder.prefill(seq.slot, seq.job.prompt)
                self.stats.prefill_steps += 1
            except Exception as e:
                self._fail(seq, e)
                continue
            self._join(seq, logits)

    def _join(self, seq: _Sequence, logits: torch.Tensor) -> None:
        self.stats.prefills += 1
        seq.position = len(seq.job.prompt)
        self.running[seq.slot] = seq
        self._take(seq, logits)

    def _drop_cancelled(self) -> None:
        for slot in [s for s, seq in self.running.items() if seq.job.cancelled]:
            del self.running[slot]
            self.stats.cancelled += 1

    def _step(self) -> None:
        seqs = sorted(self.running.values(), key=lambda s: s.slot)
        try:
            logits = self.decoder.decode([s.slot for s in seqs], [s.last for s in seqs],
                                         [s.position for s in seqs])
        except Exception as e:
            for seq in seqs:
                del self.running[seq.slot]
                self._fail(seq, e)
            return
        self.stats.step(len(seqs))
        for row, seq in enumerate(seqs):
            seq.position += 1
            self._take(seq, logits[row])

    def _take(self, seq: _Sequence, logits: torch.Tensor) -> None:
        """Sample the sequence's next token from its logits; it leaves its slot when done."""
        token = int(sample(logits[None], seq.job.sampling, seq.gen)[0])  # type: ignore[arg-type]
        self.stats.tokens += 1
        if seq.accept(token) is not None:
            self.running.pop(seq.slot, None)
            self.stats.finished += 1


class SerialEngine(_Engine):
    """One request at a time through the backend's ``Generator`` (no slot decoder)."""

    kind = "serial"

    def snapshot(self) -> dict[str, Any]:
        return {**super().snapshot(), "slots": 1}

    def _tick(self) -> None:
        job = self._next_job(wait=True)
        if job is None:
            return
        seq = _Sequence(job, self.model.tokenizer.decode)
        stop_ids = frozenset() if job.ignore_eos else job.stop_ids
        steps: Iterator[list[int | None]] = self.model.generator([job.prompt], job.max_tokens,
                                                                 job.sampling, stop_ids)
        try:
            for (token,) in steps:
                if job.cancelled:
                    self.stats.cancelled += 1
                    return
                self.stats.step(1)
                if token is None:
                    continue
                self.stats.tokens += 1
                if seq.accept(token) is not None:
                    self.stats.finished += 1
                    return
            seq.job.emit(Done("stop", seq.produced))  # the generator ended the row itself
            self.stats.finished += 1
        except Exception as e:
            self._fail(seq, e)
        finally:
            close = getattr(steps, "close", None)
            if close is not None:
                close()


def make_engine(model: LlamaModel, name: str, slots: int) -> BatchEngine | SerialEngine:
    """Continuous batching when the backend gives a slot decoder, else one request at a time."""
    engine = (BatchEngine(model, name, slots) if model.slot_decoder is not None
              else SerialEngine(model, name))
    engine.start()
    return engine
