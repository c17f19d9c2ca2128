"""The tensor-parallel split of the reference transformer: one piece of code for every device.

Applied on the meta device, before the rank's weights are assigned (Meta's split rules, the
same ones ``CheckpointReader.shard`` cuts by):

- column-parallel (rows split, no communication): wq, wk, wv, w1, w3 and the output head;
- row-parallel (columns split, partial sums all-reduced): wo, w2;
- the embedding as the checkpoint splits it: on dim 1 (Llama 2) each rank looks up its slice of
  the features and the slices are all-gathered; on dim 0 (Llama 3) each rank looks up the tokens
  in its vocabulary range and the partial embeddings are all-reduced;
- attention modules keep their local head counts, so the KV cache holds local kv heads.

The output head returns this rank's slice of the vocabulary; the worker gathers the slices.
With a world of one the communication is skipped and the model is the reference model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llamahub.errors import CheckpointError
from llamahub.plugin import Transformer


class Group:
    """The ranks of one model: this rank's index, their number, and the two collectives used."""

    def __init__(self, rank: int = 0, world: int = 1) -> None:
        self.rank = rank
        self.world = world
        self.comm_s = 0.0  # wall time spent in collectives (on GPUs: launching them)

    def timed(self, op: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return op(*args, **kwargs)
        finally:
            self.comm_s += time.perf_counter() - started

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            import torch.distributed as dist

            self.timed(dist.all_reduce, t)
        return t

    def all_gather_last(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's ``t`` joined along the last dimension, in rank order."""
        if self.world == 1:
            return t
        import torch.distributed as dist

        parts = [torch.empty_like(t) for _ in range(self.world)]
        self.timed(dist.all_gather, parts, t.contiguous())
        return torch.cat(parts, dim=-1)


class RowParallelLinear(nn.Linear):
    """A linear holding a slice of the input features; the partial outputs are summed."""

    def __init__(self, in_features: int, out_features: int, group: Group) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.group = group

    def reset_parameters(self) -> None:
        """No init: the weights come from the checkpoint."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.all_reduce(F.linear(x, self.weight))


class ColumnParallelLinear(nn.Linear):
    """A linear holding a slice of the output features (a plain linear; no communication)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)

    def reset_parameters(self) -> None:
        """No init: the weights come from the checkpoint."""


class OutputHead(ColumnParallelLinear):
    """The column-parallel output head; with ``last_only`` set it scores the last position only
    (all a generation step needs: a long prompt's prefill skips T-1 rows of the vocabulary)."""

    last_only = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x[:, -1:] if self.last_only else x)


class FeatureParallelEmbedding(nn.Embedding):
    """The embedding split on dim 1 (Llama 2): local features, all-gathered."""

    def __init__(self, vocab: int, local_dim: int, group: Group) -> None:
        super().__init__(vocab, local_dim)
        self.group = group

    def reset_parameters(self) -> None:
        """No init: the weights come from the checkpoint."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.group.all_gather_last(super().forward(tokens))


class VocabParallelEmbedding(nn.Embedding):
    """The embedding split on dim 0 (Llama 3): a masked local lookup, all-reduced."""

    def __init__(self, local_vocab: int, dim: int, group: Group) -> None:
        super().__init__(local_vocab, dim)
        self.group = group
        self.first = group.rank * local_vocab

    def reset_parameters(self) -> None:
        """No init: the weights come from the checkpoint."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        local = tokens - self.first
        outside = (local < 0) | (local >= self.num_embeddings)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        return self.group.all_reduce(out.masked_fill(outside[..., None], 0.0))


def split_reason(args: object, world: int) -> str | None:
    """Why a model of ``args`` cannot be split between ``world`` ranks (None when it can)."""
    sizes = {"heads": args.n_heads, "kv heads": args.kv_heads,  # type: ignore[attr-defined]
             "hidden dim": args.hidden_dim, "vocabulary": args.vocab_size,  # type: ignore[attr-defined]
             "dim": args.dim}  # type: ignore[attr-defined]
    bad = [f"{name} ({n})" for name, n in sizes.items() if n % world]
    if bad:
        return f"{', '.join(bad)} not divisible by tp={world}"
    return None


def split_model(model: Transformer, group: Group, embedding_dim: int) -> Transformer:
    """Swap the meta model's modules for this rank's parallel ones (no memory is touched)."""
    w = group.world
    why = split_reason(model.args, w)
    if why:
        raise CheckpointError(f"cannot split {model.args.n_layers}-layer model: {why}",
                              hint="use a tp that divides the heads, kv heads and feature sizes")
    model.tp_group = group  # type: ignore[assignment]
    if w == 1:
        return model
    args = model.args
    with torch.device("meta"):
        for layer in model.layers:
            attn, ffn = layer.attention, layer.feed_forward
            attn.n_heads, attn.n_kv_heads = attn.n_heads // w, attn.n_kv_heads // w
            for name in ("wq", "wk", "wv"):
                old = getattr(attn, name)
                setattr(attn, name, ColumnParallelLinear(old.in_features, old.out_features // w))
            attn.wo = RowParallelLinear(attn.wo.in_features // w, args.dim, group)
            ffn.w1 = ColumnParallelLinear(args.dim, args.hidden_dim // w)
            ffn.w3 = ColumnParallelLinear(args.dim, args.hidden_dim // w)
            ffn.w2 = RowParallelLinear(args.hidden_dim // w, args.dim, group)
        model.output = OutputHead(args.dim, args.vocab_size // w)
        if embedding_dim == 1:
            model.tok_embeddings = FeatureParallelEmbedding(args.vocab_size, args.dim // w, group)
        else:
            model.tok_embeddings = VocabParallelEmbedding(args.vocab_size // w, args.dim, group)
    return model
