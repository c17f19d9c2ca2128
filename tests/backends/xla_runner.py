"""Runs the tpu backend in a process of its own (SPMD mode is process-wide in torch_xla) and
saves what the tests compare: logits, greedy generations, compile counts, shardings.

    python xla_runner.py SPEC.json OUT.pt

SPEC: {"devices": N, "dtype": "fp32", "folders": {variant: folder}, "batches": [[B, T], ...],
"prompts": [...]}. Loads through ``llamahub.load(folder, device="xla")`` with the installed
entry points, as a user would.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

import llamahub


def logits_of(model: Any, batches: list[list[int]], vocab: int) -> list[dict[str, torch.Tensor]]:
    """For each [B, T]: a prefill at 0, then 3 single-token steps, with seeded random tokens."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for bsz, length in batches:
        tokens = torch.randint(0, vocab, (bsz, length), generator=gen)
        steps = torch.randint(0, vocab, (bsz, 3), generator=gen)
        logits = [model.decoder(tokens, 0)]
        logits += [model.decoder(steps[:, i:i + 1], length + i) for i in range(3)]
        out.append({"tokens": tokens, "steps": steps, "logits": torch.cat(logits, dim=1)})
    return out


def generations(model: Any, prompts: list[str]) -> dict[str, Any]:
    greedy = {"max_new_tokens": 12, "temperature": 0}
    return {"single": [model.generate(p, **greedy) for p in prompts],
            "batch": model.generate(prompts, **greedy),
            "stream": "".join(model.generate(prompts[0], stream=True, **greedy)),
            "chat": model.chat([{"role": "user", "content": prompts[0]}], **greedy)}


def compiles(model: Any) -> dict[str, Any]:
    """Compile counts after warm-up: more tokens, other prompts of the same bucket, other seeds
    and temperatures must compile nothing new."""
    from llamahub_tpu.device import compile_count

    sampled = {"temperature": 0.8, "top_p": 0.9}
    model.generate("warm up", max_new_tokens=4, temperature=0)
    model.generate("warm up", max_new_tokens=4, seed=1, **sampled)
    warm = compile_count()
    model.generate("another one", max_new_tokens=40, temperature=0)
    model.generate("x", max_new_tokens=30, seed=7, temperature=0.5, top_p=0.7)
    again = [model.generate("the same", max_new_tokens=8, seed=5, **sampled) for _ in range(2)]
    other = model.generate("the same", max_new_tokens=8, seed=6, **sampled)
    lengths = [len(model.tokenizer.encode(p, bos=True)) for p in ("warm up", "another one", "x")]
    return {"warm": warm, "after": compile_count(), "seeded": again, "other_seed": other,
            "prompt_lengths": lengths}


def shardings(model: Any) -> dict[str, str]:
    from llamahub_tpu.device import sharding_of

    m = model.generator.model
    layer = m.layers[0]
    return {"wq": sharding_of(layer.attention.wq.weight), "wo": sharding_of(layer.attention.wo.weight),
            "w1": sharding_of(layer.feed_forward.w1.weight), "w2": sharding_of(layer.feed_forward.w2.weight),
            "norm": sharding_of(layer.attention_norm.weight), "cache": sharding_of(layer.attention.cache.k)}


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    results: dict[str, Any] = {}
    for name, folder in spec["folders"].items():
        model = llamahub.load(Path(folder), device="xla", dtype=spec["dtype"], devices=spec["devices"])
        vocab = model.variant.arch.vocab_size
        results[name] = {"info": model.info, "logits": logits_of(model, spec["batches"], vocab),
                         "generations": generations(model, spec["prompts"]),
                         "compiles": compiles(model), "shardings": shardings(model)}
        model.close()
    results["other_mode"] = other_mode(Path(folder), spec["devices"])
    torch.save(results, sys.argv[2])


def other_mode(folder: Path, devices: int) -> str:
    """What loading with the other mode (sharded vs one device) says in this process."""
    from llamahub.errors import BackendError

    try:
        llamahub.load(folder, device="xla", dtype="fp32", devices=2 if devices == 1 else 1)
    except BackendError as e:
        return str(e)
    return "loaded"


if __name__ == "__main__":
    main()
