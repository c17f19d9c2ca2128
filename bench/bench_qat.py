"""QAT against post-training quantization, both run by the cpu backend's own int8/int4.

For each base -- the random debug model as generated (``debug``), and the same with the outlier
features of trained models (``outliers``: ``tests/plugins/qa_task.outlier_base``) -- a full
fine-tune and a QAT run with the same settings and seed learn the fine-tuning tests' Q&A task.
Then, on the task's records (all of them, and the held-out split alone), three models:

- ``fp32``: the full fine-tune as trained;
- ``ptq``: the cpu backend loading the full fine-tune with ``dtype=int<bits>`` (it quantizes it);
- ``qat``: the cpu backend loading the QAT output with that dtype (it maps the shipped integers);

each with its mean token loss, KL(fp32 || model) and top-1 agreement with fp32. The figures are
losses, deterministic for a seed and a torch build: a busy machine changes only the seconds.

    .venv/bin/python bench/bench_qat.py --out bench/results/qat.jsonl
    .venv/bin/python bench/bench_qat.py --epochs 1 --base debug --out /tmp/qat.jsonl  # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "plugins"))
BASE = "llama-debug-2-chat"


def _batch(folder: Path, data: Path, records: list) -> Any:
    from llamahub_finetune import data as D

    from llamahub.model.checkpoint import open_checkpoint
    from llamahub.model.tokenizer import load_tokenizer

    ckpt = open_checkpoint(folder)
    tok = load_tokenizer(ckpt.tokenizer_path, "sentencepiece")
    enc = D.Encoder(tok, "llama2", 512, truncate=False, where=data)
    return D.padded(D.encode_all(enc, records), tok.eos_id)


def _scores(folder: Path, dtype: str, batch: Any, reference: Any | None) -> tuple[dict[str, Any], Any]:
    import torch
    import torch.nn.functional as F
    from llamahub_finetune.data import IGNORE

    import llamahub

    with llamahub.load(folder, dtype=dtype) as m, torch.no_grad():
        logits = m.decoder(batch.inputs, use_cache=False)
        info = {k: v for k, v in m.info.get("quantized", {}).items() if k in ("built", "shipped")}
        kernel = m.info["kernel"]
    keep = batch.targets != IGNORE
    out: dict[str, Any] = {"loss": F.cross_entropy(logits[keep], batch.targets[keep]).item(),
                           "kernel": kernel, **info}
    if reference is not None:
        ref = reference[keep]
        out["kl"] = F.kl_div(logits[keep].log_softmax(-1), ref.log_softmax(-1), log_target=True,
                             reduction="batchmean").item()
        out["top1"] = (logits[keep].argmax(-1) == ref.argmax(-1)).float().mean().item()
    return out, logits


def measure(opts: argparse.Namespace, base_kind: str, work: Path) -> list[dict[str, Any]]:
    from llamahub_finetune import data as D
    from qa_task import outlier_base, write_dialogs

    import llamahub
    from llamahub.model.writer import generate_checkpoint

    root = work / base_kind
    shutil.rmtree(root, ignore_errors=True)
    import torch

    generate_checkpoint(llamahub.variant(BASE), root / "gen", dtype=torch.float32)
    base = root / "gen" / BASE
    if base_kind == "outliers":
        base = outlier_base(base, root / "outliers", BASE)
    data = write_dialogs(root / "qa.jsonl")
    run = {"lr": opts.lr, "batch_size": 4, "epochs": opts.epochs, "eval_fraction": 0.2, "eval_every": 1000,
           "threads": opts.threads, "seed": opts.seed}
    started = time.perf_counter()
    full = llamahub.finetune(base, method="full", data=data, output=f"bench-full-{base_kind}",
                             progress=False, overwrite=True, **run)
    qat = llamahub.finetune(base, method="qat", data=data, output=f"bench-qat-{base_kind}",
                            progress=False, overwrite=True, bits=opts.bits, **run)
    train_seconds = time.perf_counter() - started
    records = D.read_records(data)
    _, held = D.split(records, 0.2, opts.seed)
    rows = []
    for split, recs in (("all", records), ("heldout", held)):
        batch = _batch(base, data, recs)
        fp32, reference = _scores(full.folder, "fp32", batch, None)
        dtype = f"int{opts.bits}"
        for model, folder, d in (("fp32", full.folder, "fp32"), ("ptq", full.folder, dtype),
                                 ("qat", qat.folder, dtype)):
            scores = fp32 if model == "fp32" else _scores(folder, d, batch, reference)[0]
            rows.append({"base": base_kind, "bits": opts.bits, "split": split, "model": model, **scores,
                         "run": run, "train_seconds": train_seconds})
    return rows


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="debug,outliers", help="comma-separated, of debug, outliers")
    p.add_argument("--bits", type=int, default=4, choices=(4, 8))
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", type=Path, default=HERE / "work" / "qat",
                   help="LLAMAHUB_HOME and checkpoints (kept: the cpu kernel compiles once there)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "qat.jsonl", help="JSON lines, appended")
    opts = p.parse_args()
    opts.work.mkdir(parents=True, exist_ok=True)
    os.environ["LLAMAHUB_HOME"] = str(opts.work / "home")
    import torch

    torch.set_num_threads(opts.threads)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    stamp = {"commit": _commit(), "torch": torch.__version__,
             "machine": platform.processor() or platform.machine()}
    for base_kind in opts.base.split(","):
        for row in measure(opts, base_kind, opts.work):
            with opts.out.open("a") as f:
                f.write(json.dumps(row | stamp) + "\n")
            extra = f" KL {row['kl']:.4f} top-1 {row['top1']:.3f}" if "kl" in row else ""
            print(f"{row['base']:8} int{row['bits']} {row['split']:7} {row['model']:4} "
                  f"loss {row['loss']:.4f}{extra}", flush=True)


if __name__ == "__main__":
    main()
