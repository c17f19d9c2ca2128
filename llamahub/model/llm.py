"""The object ``llamahub.load`` returns: generate, stream, chat, over any backend's decoder."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch

from llamahub.errors import ChatFormatError, ContextLengthError, GenerationError
from llamahub.model.chat import Message, chat_stop_ids, encode_dialog, validate_dialog
from llamahub.model.generation import Decoder, DecoderLoop, Generator, Sampling, TextStream

if TYPE_CHECKING:
    from llamahub.model.batching import SlotDecoder
    from llamahub.model.tokenizer import Tokenizer


class ModelCard(Protocol):
    """What a model needs to know of its variant (a registry ``Variant`` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def context_length(self) -> int: ...

    @property
    def chat_format(self) -> str | None: ...


class LlamaModel:
    """A loaded model. Backends build it from a decoder callable (tokens, start) -> logits, or
    from their own ``Generator`` loop, and a tokenizer.

    ``context_length`` (default: the variant's) is the longest prompt + generation accepted;
    ``threads`` sets torch's thread count while this model generates, and restores it after.
    ``slot_decoder(n)``, when the backend gives one, decodes n sequences in KV slots of their own
    (continuous batching in ``llamahub serve``).
    """

    def __init__(self, decoder: Decoder | None, tokenizer: Tokenizer, variant: ModelCard, *,
                 backend: str, dtype: str, close: Callable[[], None] | None = None,
                 info: dict[str, Any] | None = None, generator: Generator | None = None,
                 context_length: int | None = None, threads: int | None = None,
                 slot_decoder: Callable[[int], SlotDecoder] | None = None) -> None:
        if generator is None and decoder is None:
            raise ValueError("a LlamaModel needs a decoder or a generator")
        self.decoder = decoder
        self.generator: Generator = generator or DecoderLoop(decoder)  # type: ignore[arg-type]
        self.tokenizer = tokenizer
        self.variant = variant
        self.backend = backend
        self.dtype = dtype
        self.threads = threads
        self.info = dict(info or {})
        self._context_length = context_length
        self._close = close
        self.closed = False
        self.slot_decoder = slot_decoder

    def __repr__(self) -> str:
        return f"<LlamaModel {self.variant.name} backend={self.backend} dtype={self.dtype}>"

    @property
    def context_length(self) -> int:
        return self._context_length or self.variant.context_length

    # --- plain completion -------------------------------------------------------------------

    def generate(self, prompt: str | list[str], *, max_new_tokens: int = 128,
                 temperature: float = 0.6, top_p: float = 0.9, top_k: int = 0,
                 seed: int | None = None, stop: Sequence[str] = (), stream: bool = False,
                 ) -> str | list[str] | Iterator[str]:
        """Continue ``prompt`` (or each prompt of a list). ``stream=True`` yields text pieces."""
        sampling = Sampling(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise GenerationError("no prompt given", hint="pass a string or a non-empty list")
        ids = [self.tokenizer.encode(p, bos=True) for p in prompts]
        return self._run(ids, max_new_tokens, sampling, self.tokenizer.stop_ids, stop,
                         stream=stream, single=isinstance(prompt, str))

    # --- chat -------------------------------------------------------------------------------

    def chat(self, messages: list[Message], *, max_new_tokens: int = 256, temperature: float = 0.6,
             top_p: float = 0.9, top_k: int = 0, seed: int | None = None, stop: Sequence[str] = (),
             stream: bool = False) -> str | Iterator[str]:
        """Answer a dialog (system/user/assistant messages) in the variant's chat format."""
        fmt = self._chat_format()
        validate_dialog(messages, fmt)
        ids = encode_dialog(self.tokenizer, messages, fmt)
        sampling = Sampling(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
        out = self._run([ids], max_new_tokens, sampling, chat_stop_ids(self.tokenizer, fmt), stop,
                        stream=stream, single=True)
        return out if stream else str(out).strip()

    def chat_tokens(self, messages: list[Message]) -> int:
        """How many prompt tokens ``messages`` take in the variant's chat format."""
        return len(encode_dialog(self.tokenizer, messages, self._chat_format()))

    def _chat_format(self) -> str:
        fmt = self.variant.chat_format
        if fmt is None:
            raise ChatFormatError(f"{self.variant.name} is a base model with no chat format",
                                  hint="load the chat/instruct variant, or use generate()")
        return fmt

    # --- shared -----------------------------------------------------------------------------

    def _run(self, ids: list[list[int]], max_new_tokens: int, sampling: Sampling,
             stop_ids: frozenset[int], stop: Sequence[str], *, stream: bool,
             single: bool) -> str | list[str] | Iterator[str]:
        if self.closed:
            raise GenerationError("this model was closed", hint="load it again with llamahub.load()")
        self._check_lengths(ids, max_new_tokens)
        if stream:
            if not single:
                raise GenerationError("stream=True takes one prompt", hint="stream prompts one at a time")
            return self._stream(ids[0], max_new_tokens, sampling, stop_ids, stop)
        streams = [TextStream(self.tokenizer.decode, stop) for _ in ids]
        for step in self._steps(ids, max_new_tokens, sampling, stop_ids):
            for ts, tok in zip(streams, step, strict=True):
                if tok is not None and tok not in stop_ids:
                    ts.push(tok)
            if all(ts.stopped for ts in streams):
                break
        texts = [ts.text for ts in streams]
        return texts[0] if single else texts

    def _stream(self, ids: list[int], max_new_tokens: int, sampling: Sampling,
                stop_ids: frozenset[int], stop: Sequence[str]) -> Iterator[str]:
        ts = TextStream(self.tokenizer.decode, stop)
        for (tok,) in self._steps([ids], max_new_tokens, sampling, stop_ids):
            if tok is None or tok in stop_ids:
                break
            if piece := ts.push(tok):
                yield piece
            if ts.stopped:
                return
        if rest := ts.flush():
            yield rest

    def _steps(self, ids: list[list[int]], max_new_tokens: int, sampling: Sampling,
               stop_ids: frozenset[int]) -> Iterator[list[int | None]]:
        """The generator's steps, each computed with this model's thread count."""
        steps = self.generator(ids, max_new_tokens, sampling, stop_ids)
        while True:
            before = torch.get_num_threads()
            if self.threads and self.threads != before:
                torch.set_num_threads(self.threads)
            try:
                step = next(steps, None)
            finally:
                if torch.get_num_threads() != before:
                    torch.set_num_threads(before)
            if step is None:
                return
            yield step

    def _check_lengths(self, ids: list[list[int]], max_new_tokens: int) -> None:
        if max_new_tokens < 1:
            raise GenerationError(f"max_new_tokens must be >= 1, got {max_new_tokens}",
                                  hint="ask for at least one token")
        longest = max(len(i) for i in ids)
        limit = self.context_length
        if longest + max_new_tokens > limit:
            room = limit - longest
            hint = (f"lower max_new_tokens to {room} or shorten the prompt" if room > 0
                    else "shorten the prompt")
            raise ContextLengthError(
                f"prompt of {longest} tokens + {max_new_tokens} new tokens exceeds the "
                f"{limit}-token context of {self.variant.name}", hint=hint)

    def close(self) -> None:
        if not self.closed and self._close is not None:
            self._close()
        self.closed = True

    def __enter__(self) -> LlamaModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
