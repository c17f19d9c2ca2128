"""A GGUF file run by llama.cpp, through llama-cpp-python's C bindings (no high-level wrapper).

``Runtime`` owns one model and one context; ``steps()`` is one row's generation loop with our
``Sampling`` as a llama.cpp sampler chain (temperature, then top-k, then top-p on what is left,
then a seeded draw; greedy when the temperature is 0). ``VocabTokenizer`` is the file's own
vocabulary behind llamahub's ``Tokenizer`` protocol, for GGUF files that come without a
tokenizer.model.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from llamahub.errors import BackendError, GenerationError, TokenizerError

_init_lock = threading.Lock()
_initialised = False
_callback: Any = None


_log = logging.getLogger("llamahub.llamacpp")
_ERROR = 4  # ggml_log_level: 1 debug, 2 info, 3 warn, 4 error, 5 continuation


def _to_logging(level: int, text: bytes, _: Any) -> None:
    """llama.cpp's log lines go to Python logging: errors as errors, the rest at debug level
    (llama-cpp-python would print every line of a model load to stderr)."""
    _log.log(logging.ERROR if level == _ERROR else logging.DEBUG,
             (text or b"").decode("utf-8", "replace").rstrip())


def llama_lib() -> Any:
    """The llama_cpp module, initialised once, its log lines routed to Python logging."""
    global _initialised, _callback
    import llama_cpp

    with _init_lock:
        if not _initialised:
            _callback = llama_cpp.llama_log_callback(_to_logging)  # kept alive: C holds the pointer
            llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
            llama_cpp.llama_backend_init()
            _initialised = True
    return llama_cpp


def has_amx() -> bool:
    """Whether the CPU has AMX. llama-cpp-python 0.3.36's AMX weight buffers (llama.cpp's "extra
    buffer types") crash the process on the first quantized matmul on such a Xeon (checked with
    llama.cpp's own q8_0 and q4_0 files), so they are left off there; elsewhere they stay on (the
    AVX2 repacking of q4_0 weights is one of them)."""
    try:
        return "amx_int8" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


class Runtime:
    """One GGUF model and a context of ``n_ctx`` tokens (KV cache f16, or f32 with ``kv_f32``).

    ``flash_attn``: llama.cpp's own default is "auto", which turns flash attention on for a CPU;
    llama-cpp-python's ``Llama`` turns it off unless ``flash_attn=True``. The two compute
    attention differently (flash attention multiplies Q and K in f16 and accumulates the softmax
    as it goes), so their logits differ in the third or fourth digit and greedy tokens part at
    the first near-tie. With the same setting our tokens equal ``Llama.generate``'s exactly.
    The exact mode (``kv_f32``) defaults to "off".
    """

    def __init__(self, path: Path, *, n_ctx: int, threads: int, kv_f32: bool = False,
                 flash_attn: str | None = None) -> None:
        lc = llama_lib()
        self.lc = lc
        self.path = path
        mparams = lc.llama_model_default_params()
        mparams.use_extra_bufts = not has_amx()
        self.model = lc.llama_model_load_from_file(str(path).encode(), mparams)
        if not self.model:
            raise BackendError(f"llama.cpp could not load {path}",
                               hint="the file may be truncated or not a llama GGUF: make it again")
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = cparams.n_ubatch = min(n_ctx, 512)
        cparams.n_seq_max = 1
        cparams.n_threads = cparams.n_threads_batch = threads
        if kv_f32:  # the exact mode: an f32 cache, and attention without flash attention's f16 steps
            cparams.type_k = cparams.type_v = lc.GGML_TYPE_F32
        fa = flash_attn or ("off" if kv_f32 else "auto")
        cparams.flash_attn_type = {"auto": lc.LLAMA_FLASH_ATTN_TYPE_AUTO,
                                   "off": lc.LLAMA_FLASH_ATTN_TYPE_DISABLED,
                                   "on": lc.LLAMA_FLASH_ATTN_TYPE_ENABLED}[fa]
        self.ctx = lc.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            lc.llama_model_free(self.model)
            self.model = None
            raise BackendError(f"llama.cpp could not make a {n_ctx}-token context for {path.name}",
                               hint="ask for a shorter context_length")
        self.n_ctx = n_ctx
        self.flash_attn = fa
        self.n_batch = min(n_ctx, 512)
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)
        self.epoch = 0  # bumped by every new generation: a suspended older one then refuses to go on
        # one token's batch, made once: each decode step only writes the token into it
        self._one = (lc.llama_token * 1)()
        self._one_batch = lc.llama_batch_get_one(self._one, 1)

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(4096)
        n = self.lc.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    # --- evaluation -----------------------------------------------------------------------

    def reset(self) -> int:
        self.lc.llama_memory_clear(self.lc.llama_get_memory(self.ctx), True)
        self.epoch += 1
        return self.epoch

    def feed(self, tokens: Sequence[int]) -> None:
        """Decode ``tokens`` after what the context holds (in batches); logits of the last one."""
        for i in range(0, len(tokens), self.n_batch):
            chunk = tokens[i:i + self.n_batch]
            arr = (self.lc.llama_token * len(chunk))(*chunk)
            rc = self.lc.llama_decode(self.ctx, self.lc.llama_batch_get_one(arr, len(chunk)))
            if rc != 0:
                self._failed(rc)

    def _failed(self, rc: int) -> None:
        raise BackendError(f"llama.cpp failed to decode (code {rc})",
                           hint="the context may be full: shorten the prompt or max_new_tokens")

    def last_logits(self) -> list[float]:
        ptr = self.lc.llama_get_logits_ith(self.ctx, -1)
        return ptr[: self.n_vocab]

    def steps(self, prompt: Sequence[int], max_new_tokens: int, sampling: Any,
              stop_ids: frozenset[int]) -> Iterator[int]:
        """One row's new tokens; ends after ``max_new_tokens`` or a stop token (yielded)."""
        if not prompt:
            raise GenerationError("an empty prompt", hint="give at least one token (the BOS)")
        if max_new_tokens < 1:
            return
        epoch = self.reset()
        chain = self._sampler(sampling)
        # the per-token path: C calls bound once, the token written into a batch made once
        # (the Python around the two C calls is ~1% of a token of a 2-layer toy, py-spy)
        decode, sample, ctx = self.lc.llama_decode, self.lc.llama_sampler_sample, self.ctx
        one, batch = self._one, self._one_batch
        try:
            self.feed(prompt)
            tok = int(sample(chain, ctx, -1))
            yield tok
            # the previous token goes in only when another one is wanted: a full context
            # (prompt + max_new_tokens == n_ctx) never overflows
            for _ in range(max_new_tokens - 1):
                if tok in stop_ids:
                    return
                if self.epoch != epoch:  # the context holds another generation's tokens now
                    raise GenerationError("another generation started on this model while this one "
                                          "was paused", hint="finish one stream before starting another")
                one[0] = tok
                rc = decode(ctx, batch)
                if rc != 0:
                    self._failed(rc)
                tok = int(sample(chain, ctx, -1))
                yield tok
        finally:
            self.lc.llama_sampler_free(chain)

    def _sampler(self, s: Any) -> Any:
        lc = self.lc
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        if s.temperature == 0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
            return chain
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(s.temperature))
        if s.top_k:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_k(s.top_k))
        if s.top_p < 1.0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(s.top_p, 1))
        seed = lc.LLAMA_DEFAULT_SEED if s.seed is None else s.seed & 0xFFFFFFFF
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(seed))
        return chain

    def close(self) -> None:
        if getattr(self, "ctx", None):
            self.lc.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            self.lc.llama_model_free(self.model)
            self.model = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: the library may be gone
            self.close()


class VocabFile:
    """A GGUF opened for its vocabulary only (``vocab_only``: no weights, no context)."""

    def __init__(self, path: Path) -> None:
        lc = llama_lib()
        self.lc = lc
        mparams = lc.llama_model_default_params()
        mparams.vocab_only = True
        self.model = lc.llama_model_load_from_file(str(path).encode(), mparams)
        if not self.model:
            raise BackendError(f"llama.cpp could not read the vocabulary of {path}",
                               hint="make the file again")
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)

    def close(self) -> None:
        if self.model:
            self.lc.llama_model_free(self.model)
            self.model = None


class RuntimeGenerator:
    """llamahub's ``Generator`` over a ``Runtime``: one prompt streams step by step; a batch runs
    its rows one after another (llama.cpp's context holds one sequence here) and then yields."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def __call__(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, sampling: Any,
                 stop_ids: frozenset[int]) -> Iterator[list[int | None]]:
        if len(prompts) == 1:
            return ([t] for t in self.runtime.steps(prompts[0], max_new_tokens, sampling, stop_ids))
        rows = [list(self.runtime.steps(p, max_new_tokens, sampling, stop_ids)) for p in prompts]
        longest = max(len(r) for r in rows)
        return ([r[i] if i < len(r) else None for r in rows] for i in range(longest))


class VocabTokenizer:
    """The GGUF's own vocabulary as a llamahub ``Tokenizer`` (llama.cpp tokenizes and decodes)."""

    def __init__(self, runtime: Runtime | VocabFile) -> None:
        lc = runtime.lc
        self._lc, self._vocab = lc, runtime.vocab
        spm = lc.llama_vocab_type(self._vocab) == lc.LLAMA_VOCAB_TYPE_SPM
        self.kind = "sentencepiece" if spm else "tiktoken"
        self.n_words = runtime.n_vocab
        self.bos_id = lc.llama_vocab_bos(self._vocab)
        self.eos_id = lc.llama_vocab_eos(self._vocab)
        self.pad_id = -1
        names = ((self.decode([i]), i) for i in range(self.n_words) if self.is_special(i))
        self._names = {name: i for name, i in names if name}
        if self.kind == "tiktoken":
            self.pad_id = self._names.get("<|finetune_right_pad_id|>", -1)
            stops = ("<|end_of_text|>", "<|eot_id|>", "<|eom_id|>")
            self.stop_ids = frozenset({self.eos_id, *(self._names[n] for n in stops if n in self._names)})
        else:
            self._names.update({"<s>": self.bos_id, "</s>": self.eos_id})
            self.stop_ids = frozenset({self.eos_id})

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        while True:
            buf = (self._lc.llama_token * cap)()
            n = self._lc.llama_tokenize(self._vocab, data, len(data), buf, cap, False, False)
            if n >= 0:
                break
            cap = -n
        ids = list(buf[:n])
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids: Sequence[int]) -> str:
        if any(not 0 <= int(i) < self.n_words for i in ids):
            raise TokenizerError(f"cannot decode token ids outside 0..{self.n_words - 1}",
                                 hint="were they produced by a different tokenizer?")
        arr = (self._lc.llama_token * max(1, len(ids)))(*ids)
        spm = self.kind == "sentencepiece"
        cap = 16 * len(ids) + 16
        while True:
            buf = ctypes.create_string_buffer(cap)
            n = self._lc.llama_detokenize(self._vocab, arr, len(ids), buf, cap, spm, not spm)
            if n >= 0:
                return buf.raw[:n].decode("utf-8", "replace")
            cap = -n

    def special_id(self, name: str) -> int:
        if name not in self._names:
            raise TokenizerError(f"unknown special token {name!r}",
                                 hint=f"use one of {', '.join(list(self._names)[:12])}")
        return self._names[name]

    def is_special(self, id: int) -> bool:
        return 0 <= id < self.n_words and bool(self._lc.llama_vocab_is_control(self._vocab, id))
