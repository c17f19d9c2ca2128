"""The engines without HTTP: continuous batching and the one-at-a-time fallback for backends that
only have a ``Generator`` give the same answers; a cancelled sequence stops; keys and metadata."""

from __future__ import annotations

import queue
import socket
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

import llamahub
from llamahub.cli_serve import check_address, model_meta, read_keys
from llamahub.errors import ConfigError
from llamahub.model.generation import Sampling
from llamahub.model.llm import LlamaModel
from llamahub.registry import resolve
from llamahub.serve.engine import BatchEngine, Done, Event, Job, Piece, SerialEngine, make_engine
from llamahub.serve.text import Trimmed


@pytest.fixture
def model(llama2_debug_folder: Path) -> LlamaModel:
    return llamahub.load(llama2_debug_folder, dtype="fp32")


def _generator_only(model: LlamaModel) -> LlamaModel:
    """The same model as a backend with its own generation loop and no slot decoder would give it."""
    return LlamaModel(None, model.tokenizer, model.variant, backend="loop", dtype="fp32",
                      generator=model.generator)


def _run(engine: BatchEngine | SerialEngine, prompts: list[list[int]], tokens: int,
         **kw: object) -> list[tuple[str, Done]]:
    sinks: list[queue.Queue[Event]] = [queue.Queue() for _ in prompts]
    for prompt, sink in zip(prompts, sinks, strict=True):
        engine.submit(Job(prompt, tokens, Sampling(temperature=0), frozenset({2}), sink.put, **kw))
    out = []
    for sink in sinks:
        text = ""
        while not isinstance(event := sink.get(timeout=60), Done):
            assert isinstance(event, Piece)
            text += event.text
        out.append((text, event))
    return out


def test_the_fallback_engine_answers_as_the_batching_engine(model: LlamaModel) -> None:
    prompts = [model.tokenizer.encode(p, bos=True) for p in ("Once upon a time", "The llama", "Hi")]
    batch = make_engine(model, "batch", slots=2)
    serial = make_engine(_generator_only(model), "serial", slots=2)
    try:
        assert isinstance(batch, BatchEngine) and isinstance(serial, SerialEngine)
        together = _run(batch, prompts, 20, ignore_eos=True)
        alone = _run(serial, prompts, 20, ignore_eos=True)
        assert together == alone
        assert all(done == Done("length", 20) for _, done in together)
        assert batch.snapshot()["batched_steps"] > 0 and serial.snapshot()["batched_steps"] == 0
        assert [text for text, _ in alone] == [model.generate(p, max_new_tokens=20, temperature=0)
                                               for p in ("Once upon a time", "The llama", "Hi")]
    finally:
        batch.close()
        serial.close()


def test_prompts_waiting_together_are_prefilled_in_one_forward(model: LlamaModel) -> None:
    prompts = [model.tokenizer.encode(p, bos=True) for p in ("Once upon a time", "The llama", "Hi", "A")]
    serial = make_engine(_generator_only(model), "serial", slots=1)
    batch = BatchEngine(model, "batch", slots=4)  # not started: the four jobs wait together
    try:
        alone = _run(serial, prompts, 12, ignore_eos=True)
        sinks: list[queue.Queue[Event]] = [queue.Queue() for _ in prompts]
        for prompt, sink in zip(prompts, sinks, strict=True):
            batch.submit(Job(prompt, 12, Sampling(temperature=0), frozenset({2}), sink.put, ignore_eos=True))
        batch.start()
        together = []
        for sink in sinks:
            text = ""
            while not isinstance(event := sink.get(timeout=60), Done):
                text += event.text
            together.append((text, event))
        assert together == alone
        stats = batch.snapshot()
        assert stats["prefills"] == 4 and stats["prefill_steps"] == 1
    finally:
        batch.close()
        serial.close()


@pytest.mark.parametrize("kind", ["batch", "serial"])
def test_a_cancelled_sequence_stops_and_frees_its_slot(model: LlamaModel, kind: str) -> None:
    engine = make_engine(model if kind == "batch" else _generator_only(model), kind, slots=1)
    try:
        first = threading.Event()
        events: list[Event] = []

        def sink(event: Event) -> None:
            events.append(event)
            first.set()

        job = Job(model.tokenizer.encode("Once", bos=True), 400, Sampling(temperature=0), frozenset(), sink,
                  ignore_eos=True)
        engine.submit(job)
        assert first.wait(30)
        job.cancelled = True
        # the one slot is free again: the next job runs to its end
        [(_, done)] = _run(engine, [model.tokenizer.encode("Hi", bos=True)], 5, ignore_eos=True)
        assert done == Done("length", 5)
        assert engine.snapshot()["cancelled"] == 1
        assert not any(isinstance(e, Done) for e in events)
        assert len(events) < 400
    finally:
        engine.close()


def test_trimmed_pieces_join_to_the_stripped_answer() -> None:
    pieces = ["  ", " Hello", " ", "world ", " \n", "!", "  "]
    trim = Trimmed()
    assert "".join(trim.push(p) for p in pieces) == "".join(pieces).strip()


def test_api_keys_come_from_options_and_a_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# comment\n alpha \n\nbeta\n")
    assert read_keys(("gamma",), keys) == ["gamma", "alpha", "beta"]
    assert read_keys((), None) == []
    keys.write_text("# nothing\n")
    with pytest.raises(ConfigError, match="holds no key"):
        read_keys((), keys)
    with pytest.raises(ConfigError, match="cannot read"):
        read_keys((), tmp_path / "missing")


def test_models_metadata_carries_the_license_attribution() -> None:
    loaded = SimpleNamespace(variant=resolve("llama-3.1-8b-instruct"), context_length=8192, backend="cpu",
                             dtype="bf16")
    meta = model_meta(loaded)
    assert meta["attribution"] == "Built with Llama" and meta["license"] == "llama3.1"
    debug = model_meta(SimpleNamespace(variant=resolve("llama-debug-2-chat"), context_length=512,
                                       backend="cpu", dtype="fp32"))
    assert debug["license"] == "llama-debug" and debug["attribution"] is None


def test_a_busy_port_is_refused_before_anything_loads() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(ConfigError, match=r"cannot listen on 127\.0\.0\.1"):
            check_address("127.0.0.1", busy.getsockname()[1])
    check_address("127.0.0.1", 0)
