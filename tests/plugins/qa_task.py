"""The synthetic task the fine-tuning tests teach: a fixed answer to each question, asked four ways."""

from __future__ import annotations

import json
from pathlib import Path

FACTS = [("sky", "blue"), ("grass", "green"), ("snow", "white"), ("coal", "black"),
         ("sun", "yellow"), ("rose", "red")]
PHRASES = ["What color is the {}?", "Tell me the color of the {}.", "Which color has the {}?",
           "Name the color of the {}."]


def question(thing: str, phrase: int = 0) -> str:
    return PHRASES[phrase].format(thing)


def answer(color: str) -> str:
    return f"It is {color}."


def write_dialogs(path: Path) -> Path:
    lines = [json.dumps({"messages": [{"role": "user", "content": question(thing, p)},
                                      {"role": "assistant", "content": answer(color)}]})
             for p in range(len(PHRASES)) for thing, color in FACTS]
    path.write_text("\n".join(lines) + "\n")
    return path


def outlier_base(base: Path, out: Path, variant: str, *, scale: float = 4.0, outliers: float = 8.0,
                 fraction: float = 0.06, seed: int = 0) -> Path:
    """A copy of the checkpoint ``base`` that int4 rounding hurts, as it hurts trained models.

    The random debug weights are near-flat (std 0.02: the blocks barely move the residual
    stream), so int4 in blocks of 32 costs them nothing measurable. Here every block projection
    is ``scale`` times larger and a seeded ``fraction`` of its input columns ``outliers`` times
    larger again: the outlier features of trained LLMs, which set a block's scale and leave its
    other 31 weights few int4 steps.
    """
    import shutil

    import torch

    from llamahub.model.checkpoint import find_tokenizer, open_checkpoint
    from llamahub.model.writer import write_meta

    ckpt = open_checkpoint(base)
    state = ckpt.state_dict()
    gen = torch.Generator().manual_seed(seed)
    for key, w in state.items():
        if key.startswith("layers.") and w.dim() == 2:
            w = w.float() * scale
            w[:, torch.rand(w.shape[1], generator=gen) < fraction] *= outliers
            state[key] = w
    out.mkdir(parents=True)
    tokenizer = find_tokenizer(base)
    assert tokenizer is not None
    shutil.copyfile(tokenizer, out / "tokenizer.model")
    return write_meta(out, ckpt.args, state, variant=variant)
