"""Generation shaped for XLA: every step is the same compiled program.

- The KV cache has a fixed size (the whole context) and a batch of 1, 2, 4, 8, ... rows.
- Prompts run as one prefill of a length bucket (16, 32, 64, ... up to the context), padded on
  the right; the padding's cache entries lie beyond every position attended until a decode step
  overwrites them.
- Positions are device tensors, and so are the token buffer, the in-prompt mask and the
  sampling parameters: the host never feeds a Python number that would change the graph.
- Sampling runs on the device (argmax, or temperature, top-k and top-p with a Gumbel-max draw
  from XLA's random generator); the one transfer per step is the sampled ids.

Rows decode in lockstep from the shortest prompt, a longer prompt feeding its own tokens until
it is exhausted (the scheme of ``generate_ids``, so greedy output equals the cpu backend's).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from llamahub.plugin import GenerationError, Sampling, Transformer
from llamahub_tpu.device import sync, xla_device

MIN_BUCKET = 16


def buckets(context: int) -> tuple[int, ...]:
    """Prefill lengths: powers of two from 16, and the context itself."""
    out, n = [], MIN_BUCKET
    while n < context:
        out.append(n)
        n *= 2
    return (*out, context)


def bucket(n: int, sizes: Sequence[int]) -> int:
    return next(s for s in sizes if s >= n)


def batch_bucket(n: int) -> int:
    """Cache rows for a batch of ``n``: the next power of two."""
    return 1 << (n - 1).bit_length()


class XlaGenerator:
    """The backend's ``Generator``: the decode loop over a model on an XLA device."""

    def __init__(self, model: Transformer, context: int,
                 reshard: Callable[[], None] | None = None) -> None:
        self.model = model
        self.context = context
        self.buckets = buckets(context)
        self.device = xla_device()
        self._reshard = reshard  # annotates a new KV cache's sharding (SPMD)
        self.closed = False

    def ensure_cache(self, rows: int) -> None:
        """A fixed-size cache of at least ``rows`` rows (a new one when it must grow)."""
        if self.closed:
            raise GenerationError("this model was closed", hint="load it again with llamahub.load()")
        if self.model.cache_batch >= rows and self.model.cache_len == self.context:
            return
        self.model.reset_cache()
        self.model.setup_cache(rows, self.context)
        if self._reshard is not None:
            self._reshard()
        sync()  # materialise the cache: later programs take it as data, the same each time

    def close(self) -> None:
        self.model.reset_cache()
        self.closed = True

    def __call__(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, sampling: Sampling,
                 stop_ids: frozenset[int]) -> Iterator[list[int | None]]:
        bsz = len(prompts)
        rows = batch_bucket(bsz)
        self.ensure_cache(rows)
        lens = [len(p) for p in prompts]
        total, first = max(lens) + max_new_tokens, min(lens)
        if total > self.context:
            raise GenerationError(f"{total} tokens exceed the {self.context}-token context",
                                  hint="shorten the prompt or lower max_new_tokens")
        tokens = torch.zeros((rows, self.context), dtype=torch.long)
        in_prompt = torch.ones((rows, self.context), dtype=torch.bool)  # padding rows: all prompt
        for i, p in enumerate(prompts):
            tokens[i, : len(p)] = torch.tensor(p, dtype=torch.long)
            in_prompt[i, len(p):] = False
        return self._steps(_Buffers(tokens, in_prompt, self.device), lens, first, total,
                           max_new_tokens, _DeviceSampler(sampling, self.device), stop_ids)

    def _steps(self, buf: _Buffers, lens: list[int], first: int, total: int, max_new_tokens: int,
               sampler: _DeviceSampler, stop_ids: frozenset[int]) -> Iterator[list[int | None]]:
        bsz = len(lens)
        produced, done = [0] * bsz, [False] * bsz
        cur = torch.tensor([first], dtype=torch.long, device=self.device)
        for step in range(first, total):
            with torch.no_grad():
                if step == first:  # prefill: the shortest prompt, padded to its bucket
                    size = bucket(first, self.buckets)
                    logits = self.model(buf.tokens[:, :size], cur.new_zeros(()))
                    logits = logits.index_select(1, cur - 1)[:, 0]
                else:
                    logits = self.model(buf.tokens.index_select(1, cur), cur[0])[:, 0]
                    cur = cur + 1
                nxt = buf.choose(sampler(logits), cur)
                sync()
                ids = nxt.cpu().tolist()
            out: list[int | None] = [None] * bsz
            for i in range(bsz):
                if done[i] or step < lens[i]:
                    continue
                out[i] = ids[i]
                produced[i] += 1
                done[i] = produced[i] >= max_new_tokens or ids[i] in stop_ids
            if any(t is not None for t in out):
                yield out
            if all(done):
                return


class _Buffers:
    """The token buffer and in-prompt mask of a generation, on the device."""

    def __init__(self, tokens: torch.Tensor, in_prompt: torch.Tensor, device: torch.device) -> None:
        self.tokens = tokens.to(device)
        self.in_prompt = in_prompt.to(device)

    def choose(self, sampled: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
        """The token at position ``cur``: the prompt's own while in it, else ``sampled``; stored."""
        keep = self.in_prompt.index_select(1, cur)[:, 0]
        nxt = torch.where(keep, self.tokens.index_select(1, cur)[:, 0], sampled)
        self.tokens.index_copy_(1, cur, nxt[:, None])
        return nxt


class _DeviceSampler:
    """``Sampling`` on the device; temperature and top-p travel as one device tensor, so changing
    them compiles nothing new (a 0-d tensor of a value torch_xla deems special, such as 0.5,
    would be folded into the program as a constant). Greedy, top-k on or off, and each k are
    programs of their own."""

    def __init__(self, s: Sampling, device: torch.device) -> None:
        import torch_xla.core.xla_model as xm

        self.greedy = s.temperature == 0
        self.top_k = s.top_k
        params = torch.tensor([max(s.temperature, 1e-6), s.top_p], dtype=torch.float32)
        self.params = params.to(device)
        seed = s.seed if s.seed is not None else int(torch.randint(0, 2**31 - 1, ()))
        if not self.greedy:
            xm.set_rng_state(seed, device=device)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.greedy:
            return logits.argmax(dim=-1)
        temperature, top_p = self.params[0], self.params[1]
        logits = logits / temperature
        if self.top_k:
            kth = torch.topk(logits, min(self.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        sorted_p, order = torch.sort(probs, dim=-1, descending=True)
        beyond = (torch.cumsum(sorted_p, dim=-1) - sorted_p) > top_p
        sorted_p = sorted_p.masked_fill(beyond, 0.0)
        uniform = torch.rand(sorted_p.shape, device=sorted_p.device).clamp(1e-20, 1.0)
        gumbel = -torch.log(-torch.log(uniform))
        choice = torch.argmax(torch.log(sorted_p) + gumbel, dim=-1, keepdim=True)
        return order.gather(-1, choice).squeeze(-1)


class XlaDecoder:
    """The ``(tokens, start) -> logits`` decoder of the same model, for scoring and parity
    checks: tokens at ``start``.. through the fixed cache; logits come back to the host."""

    def __init__(self, generator: XlaGenerator) -> None:
        self.generator = generator

    def __call__(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        g = self.generator
        bsz, seqlen = tokens.shape
        if start + seqlen > g.context:
            raise GenerationError(f"positions up to {start + seqlen} exceed the {g.context}-token context",
                                  hint="shorten the input")
        g.ensure_cache(batch_bucket(bsz))
        with torch.no_grad():
            logits = g.model(tokens.to(g.device), torch.tensor(start, device=g.device))
            sync()
            return logits.cpu()
