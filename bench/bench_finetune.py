"""Training tokens/s: llamahub's fine-tuning loop (lora, full, qat) next to transformers + peft.

Both engines train the same random weights on the same token batches (random ids drawn with a
seed, every token a target), with AdamW at the same learning rate and LoRA on the same
projections (rank 8, alpha 16, no dropout), in one run of this script. A step is forward,
backward, gradient clipping and the optimizer step. Figures are input tokens per second over the
timed steps, after untimed warm-up steps. ``qat`` (llamahub only: transformers has no QAT of the
cpu backend's scheme) is ``full`` with every block projection and the head fake-quantized in the
cpu backend's int4, the embedding in bfloat16: what its rounding costs per step.

    .venv/bin/python bench/bench_finetune.py --config 110m --out bench/results/finetune.jsonl
    .venv/bin/python bench/bench_finetune.py --config tiny --steps 2 --warmup 1 --out /tmp/ft.jsonl  # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from llamahub.model.args import ModelArgs
from llamahub.model.convert import meta_to_hf
from llamahub.model.transformer import assign_weights, build_meta
from llamahub.model.writer import random_state_dict

HERE = Path(__file__).resolve().parent
CONFIGS = {
    "tiny": ModelArgs(dim=64, n_layers=2, n_heads=4, vocab_size=512, multiple_of=32, max_seq_len=512),
    "110m": ModelArgs(dim=768, n_layers=12, n_heads=12, vocab_size=32000, max_seq_len=1024,
                      multiple_of=256),
}
TARGETS = ("wq", "wk", "wv", "wo")
HF_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
Step = Callable[[torch.Tensor], float]


def batches(args: ModelArgs, n: int, batch: int, seq: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(3, args.vocab_size, (batch, seq + 1), generator=gen) for _ in range(n)]


def llamahub_step(args: ModelArgs, method: str, lr: float) -> Step:
    from llamahub_finetune import lora as L
    from llamahub_finetune.config import LoraConfig
    from llamahub_finetune.data import Batch
    from llamahub_finetune.train import batch_loss

    state = random_state_dict(args)
    model = build_meta(args)
    if method == "lora":
        L.add_lora(model, LoraConfig(rank=8, alpha=16.0, targets=TARGETS))
        state |= L.initial_adapter(model, 0)
        assign_weights(model, state)
        for name, p in model.named_parameters():
            p.requires_grad_(".lora_" in name)
    else:
        if method == "qat":
            from llamahub_cpu.prequant import CpuQuantizer
            from llamahub_finetune.qat import add_fake_quant

            add_fake_quant(model, ("wq", "wk", "wv", "wo", "w1", "w2", "w3"), CpuQuantizer("int4"))
        assign_weights(model, state, trainable=True)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)

    def step(tokens: torch.Tensor) -> float:
        batch = Batch(tokens[:, :-1], tokens[:, 1:], None)
        opt.zero_grad()
        loss = batch_loss(model, batch, torch.device("cpu")) / batch.n_targets
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return float(loss.detach())

    return step


def transformers_step(args: ModelArgs, method: str, lr: float) -> Step:
    import peft
    import transformers

    config = transformers.LlamaConfig(**{k: v for k, v in args.to_hf_config().items()
                                         if k not in ("architectures", "torch_dtype", "dtype")})
    model = transformers.LlamaForCausalLM(config)
    model.load_state_dict(meta_to_hf(random_state_dict(args), args), strict=False)
    if method == "lora":
        model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                           target_modules=HF_TARGETS, task_type="CAUSAL_LM"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)

    def step(tokens: torch.Tensor) -> float:
        opt.zero_grad()
        logits = model(input_ids=tokens[:, :-1]).logits  # the same targets as ours, the same loss
        loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return float(loss.detach())

    return step


ENGINES = {"llamahub": llamahub_step, "transformers": transformers_step}


def measure(opts: argparse.Namespace, config: str, method: str, engine: str) -> dict[str, Any]:
    args = CONFIGS[config]
    step = ENGINES[engine](args, method, 1e-3 if method == "lora" else 1e-4)
    data = batches(args, opts.warmup + opts.steps, opts.batch, opts.seq)
    for tokens in data[:opts.warmup]:
        step(tokens)
    started = time.perf_counter()
    losses = [step(tokens) for tokens in data[opts.warmup:]]
    seconds = time.perf_counter() - started
    tokens = opts.steps * opts.batch * opts.seq
    return {"config": config, "method": method, "engine": engine, "threads": opts.threads,
            "batch": opts.batch, "seq": opts.seq, "steps": opts.steps, "seconds": seconds,
            "tokens_per_s": tokens / seconds, "losses": losses, "load1": os.getloadavg()[0],
            "torch": torch.__version__, "machine": platform.processor() or platform.machine()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="110m", choices=sorted(CONFIGS))
    p.add_argument("--method", default="lora,full,qat", help="comma-separated, of lora, full, qat")
    p.add_argument("--engine", default="llamahub,transformers", help="comma-separated")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=HERE / "results" / "finetune.jsonl",
                   help="JSON lines, appended")
    opts = p.parse_args()
    torch.set_num_threads(opts.threads)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    for method in opts.method.split(","):
        for engine in opts.engine.split(","):
            if method == "qat" and engine != "llamahub":
                continue
            record = measure(opts, opts.config, method, engine)
            with opts.out.open("a") as f:
                f.write(json.dumps(record) + "\n")
            print(f"{opts.config} {method:5} {engine:12} {record['tokens_per_s']:9.1f} tok/s "
                  f"(loss {record['losses'][0]:.3f} -> {record['losses'][-1]:.3f})", flush=True)


if __name__ == "__main__":
    main()
