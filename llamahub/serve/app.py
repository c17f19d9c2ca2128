"""The OpenAI-compatible app: /v1/models, /v1/chat/completions, /v1/completions (+ /stats).

Errors take OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``: an unknown
model is 404, a bad body or a prompt over the context 400, a missing or wrong API key 401.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from llamahub.errors import BackendError, ContextLengthError, LlamahubError
from llamahub.model.chat import chat_stop_ids, encode_dialog
from llamahub.model.generation import Sampling
from llamahub.model.llm import LlamaModel
from llamahub.serve.engine import BatchEngine, Done, Event, Failed, Job, SerialEngine
from llamahub.serve.schema import ChatRequest, CompletionRequest
from llamahub.serve.text import Trimmed

ROLE_NAMES = {"developer": "system", "tool": "ipython"}
# Below this a temperature is greedy: dividing logits by it would overflow to inf (and NaN odds).
GREEDY_BELOW = 1e-5


@dataclass
class Served:
    """A model the server answers for: its engine and what /v1/models shows of it."""

    name: str
    model: LlamaModel
    engine: BatchEngine | SerialEngine
    meta: dict[str, Any] = field(default_factory=dict)
    created: int = field(default_factory=lambda: int(time.time()))


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.param = status, message, kind, code, param


def _error(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
           param: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


def _from_llamahub(e: LlamahubError) -> ApiError:
    text = f"{e.message}; {e.hint}" if e.hint else e.message
    if isinstance(e, BackendError):
        return ApiError(503, text, kind="server_error", code="backend_error")
    code = "context_length_exceeded" if isinstance(e, ContextLengthError) else type(e).__name__
    return ApiError(400, text, code=code)


def create_app(models: Sequence[Served], *, api_keys: Sequence[str] = (),
               aliases: dict[str, str] | None = None) -> FastAPI:
    """The app over ``models`` (engines started); ``api_keys`` empty means no key is needed."""
    by_name = {m.name: m for m in models}
    names = {**{m.name: m.name for m in models}, **(aliases or {})}
    keys = [k.encode() for k in api_keys]
    app = FastAPI(title="llamahub serve", version="1", docs_url=None, redoc_url=None)

    async def authorized(request: Request) -> None:
        if not keys:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not any(hmac.compare_digest(given.strip().encode(), k)
                                                 for k in keys):
            raise ApiError(401, "missing or wrong API key; send 'Authorization: Bearer <key>' with one "
                           "of the keys the server was started with", code="invalid_api_key")

    def served(name: str) -> Served:
        if name not in names:
            raise ApiError(404, f"the model {name!r} is not served here; served: "
                           f"{', '.join(sorted(by_name))} (GET /v1/models)", code="model_not_found",
                           param="model")
        return by_name[names[name]]

    _install_error_handlers(app)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_entry(m) for m in models]}

    @app.get("/v1/models/{name:path}", dependencies=[Depends(authorized)])
    async def get_model(name: str) -> dict[str, Any]:
        return _model_entry(served(name))

    @app.get("/stats", dependencies=[Depends(authorized)])
    async def stats() -> dict[str, Any]:
        return {"models": {m.name: m.engine.snapshot() for m in models}}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorized)], response_model=None)
    async def chat(body: ChatRequest, request: Request) -> JSONResponse | StreamingResponse:
        target = served(body.model)
        prompt, stop_ids = _chat_prompt(target.model, body)
        return await _answer(request, target, body, [prompt], stop_ids, chat=True)

    @app.post("/v1/completions", dependencies=[Depends(authorized)], response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> JSONResponse | StreamingResponse:
        target = served(body.model)
        prompts = [_encode(target.model, p) for p in body.prompts()]
        return await _answer(request, target, body, prompts, target.model.tokenizer.stop_ids, chat=False)

    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return _error(e.status, e.message, e.kind, e.code, e.param)

    @app.exception_handler(LlamahubError)
    async def llamahub_error(request: Request, e: LlamahubError) -> JSONResponse:
        return await api_error(request, _from_llamahub(e))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        where = [str(p) for p in first.get("loc", ()) if p != "body"]
        if first.get("type") == "json_invalid":
            return _error(400, "the request body is not valid JSON", code="invalid_json")
        message = f"{'.'.join(where) or 'body'}: {first.get('msg', 'invalid request')}"
        return _error(400, message, param=".".join(where) or None)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        return _error(e.status_code, str(e.detail), code=str(e.status_code))


def _model_entry(m: Served) -> dict[str, Any]:
    return {"id": m.name, "object": "model", "created": m.created, "owned_by": "llamahub",
            "llamahub": {**m.meta, "engine": m.engine.snapshot()["engine"]}}


def _chat_prompt(model: LlamaModel, body: ChatRequest) -> tuple[list[int], frozenset[int]]:
    fmt = model.variant.chat_format
    if fmt is None:
        raise ApiError(400, f"{model.variant.name} is a base model with no chat format; use "
                       "/v1/completions, or serve its chat variant", code="no_chat_format", param="model")
    dialog = [{"role": ROLE_NAMES.get(m.role, m.role), "content": m.text()} for m in body.messages]
    return encode_dialog(model.tokenizer, dialog, fmt), chat_stop_ids(model.tokenizer, fmt)


def _encode(model: LlamaModel, prompt: str | list[int]) -> list[int]:
    if isinstance(prompt, str):
        return model.tokenizer.encode(prompt, bos=True)
    vocab = model.tokenizer.n_words
    if not prompt or any(not 0 <= t < vocab for t in prompt):
        raise ApiError(400, f"a token prompt must be a non-empty list of ids in 0..{vocab - 1}",
                       param="prompt")
    return prompt


def _max_tokens(model: LlamaModel, prompts: list[list[int]], asked: int | None) -> int:
    longest, limit = max(len(p) for p in prompts), model.context_length
    room = limit - longest
    if asked is None and room >= 1:
        return room
    asked = asked or 1
    if longest + asked > limit:
        hint = f"lower max_tokens to {room} or shorten the prompt" if room > 0 else "shorten the prompt"
        raise ContextLengthError(f"prompt of {longest} tokens + {asked} new tokens exceeds the "
                                 f"{limit}-token context of {model.variant.name}", hint=hint)
    return asked


async def _answer(request: Request, target: Served, body: ChatRequest | CompletionRequest,
                  prompts: list[list[int]], stop_ids: frozenset[int], *, chat: bool,
                  ) -> JSONResponse | StreamingResponse:
    max_tokens = _max_tokens(target.model, prompts, body.limit())
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
    jobs: list[Job] = []
    for p, prompt in enumerate(prompts):
        for i in range(body.n):
            index = p * body.n + i
            seed = None if body.seed is None else body.seed + i
            temperature = 0.0 if body.temperature < GREEDY_BELOW else body.temperature
            sampling = Sampling(temperature=temperature, top_p=body.top_p, seed=seed)
            jobs.append(Job(prompt, max_tokens, sampling, stop_ids, _sink(loop, events, index),
                            stop=body.stops(), ignore_eos=body.ignore_eos))
    for job in jobs:
        target.engine.submit(job)
    usage_prompt = sum(len(p) for p in prompts)
    reply = _Reply(target.name, chat, len(jobs), usage_prompt)
    if body.stream:
        return StreamingResponse(_stream(reply, events, jobs, body.include_usage()),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    return JSONResponse(await _collect(request, reply, events, jobs))


def _sink(loop: asyncio.AbstractEventLoop, events: asyncio.Queue[tuple[int, Event]],
          index: int) -> Callable[[Event], None]:
    def emit(event: Event) -> None:
        with contextlib.suppress(RuntimeError):  # shutting down: nobody is listening any more
            loop.call_soon_threadsafe(events.put_nowait, (index, event))
    return emit


class _Reply:
    """Builds the response objects of one request (chat or completion; whole or chunks)."""

    def __init__(self, model: str, chat: bool, choices: int, prompt_tokens: int) -> None:
        self.model, self.chat = model, chat
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.texts = [""] * choices
        self.trims = [Trimmed() if chat else None for _ in range(choices)]
        self.finish: list[str | None] = [None] * choices
        self.completion_tokens = 0
        self.prompt_tokens = prompt_tokens

    def take(self, index: int, event: Event) -> str:
        """Record an event; the text it adds to the choice (chat answers are trimmed as chat() does)."""
        if isinstance(event, Failed):
            raise event.error
        trim = self.trims[index]
        if isinstance(event, Done):
            self.finish[index] = event.reason
            self.completion_tokens += event.completion_tokens
            return ""
        text = trim.push(event.text) if trim else event.text
        self.texts[index] += text
        return text

    @property
    def done(self) -> bool:
        return all(f is not None for f in self.finish)

    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}

    def whole(self) -> dict[str, Any]:
        choices = []
        for i, (text, reason) in enumerate(zip(self.texts, self.finish, strict=True)):
            part = {"message": {"role": "assistant", "content": text}} if self.chat else {"text": text}
            choices.append({"index": i, **part, "finish_reason": reason, "logprobs": None})
        kind = "chat.completion" if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "choices": choices, "usage": self.usage()}

    def chunk(self, index: int, text: str | None, reason: str | None = None,
              role: bool = False) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if text:
                delta["content"] = text
            choice: dict[str, Any] = {"index": index, "delta": delta}
        else:
            choice = {"index": index, "text": text or ""}
        choice |= {"finish_reason": reason, "logprobs": None}
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "choices": [choice]}

    def usage_chunk(self) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "choices": [], "usage": self.usage()}


async def _collect(request: Request, reply: _Reply, events: asyncio.Queue[tuple[int, Event]],
                   jobs: list[Job]) -> dict[str, Any]:
    try:
        while not reply.done:
            try:
                index, event = await asyncio.wait_for(events.get(), timeout=0.5)
            except TimeoutError:
                if await request.is_disconnected():
                    raise ApiError(499, "the client went away") from None
                continue
            reply.take(index, event)
        return reply.whole()
    finally:
        _cancel(jobs)


async def _stream(reply: _Reply, events: asyncio.Queue[tuple[int, Event]], jobs: list[Job],
                  include_usage: bool) -> AsyncIterator[str]:
    try:
        if reply.chat:
            for i in range(len(jobs)):
                yield _sse(reply.chunk(i, None, role=True))
        while not reply.done:
            index, event = await events.get()
            try:
                text = reply.take(index, event)
            except LlamahubError as e:
                err = _from_llamahub(e)
                yield _sse({"error": {"message": err.message, "type": err.kind, "param": None,
                                      "code": err.code}})
                return
            if text:
                yield _sse(reply.chunk(index, text))
            if isinstance(event, Done):
                yield _sse(reply.chunk(index, None, event.reason))
        if include_usage:
            yield _sse(reply.usage_chunk())
        yield "data: [DONE]\n\n"
    finally:  # a client that went away cancels what is still running: its slots are freed
        _cancel(jobs)


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _cancel(jobs: list[Job]) -> None:
    for job in jobs:
        job.cancelled = True
