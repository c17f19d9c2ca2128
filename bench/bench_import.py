"""Hub import of a real-shaped llama-2-7b: shapes checked from headers, files hashed once.

Writes a Meta download root of ``llama-2-7b`` (one 13.5 GB ``consolidated.00.pth`` of random
bf16 weights with the real shapes, params.json, checklists, the real Llama 2 tokenizer when
``../shared/data`` has it) into ``bench/work`` once, then in fresh processes:

1. ``sha256sum`` over every file of the download (the yardstick: one hashing pass);
2. ``llamahub hub import`` of the folder into an empty hub (shape check from the headers,
   streaming copy into the blob store with sha256 and md5, checklist verification).

Peak RSS of the import process comes from ``/usr/bin/time``-style ``wait4`` rusage. Page cache:
every run reads the files once first (warm), so both sides hash from memory.

    .venv/bin/python bench/bench_import.py [--runs 3] [--out bench/results/import.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VARIANT = "llama-2-7b"
TOKENIZER = ROOT.parent / "shared" / "data" / "llama2-tokenizer.model"
LLAMAHUB = Path(sys.executable).parent / "llamahub"


def write_download(root: Path) -> Path:
    """The Meta download root of llama-2-7b with random bf16 weights (written once)."""
    from llamahub.model import convert
    from llamahub.model.tokenizer import train_sentencepiece
    from llamahub.model.writer import PLACEHOLDER_LICENSE, PLACEHOLDER_USE_POLICY, write_checklist
    from llamahub.registry import resolve

    v = resolve(VARIANT)
    folder = root / v.meta_folder
    done = root / "bench.json"
    if done.is_file():
        return root
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in convert.expected_shapes(v.arch).items():
        t = torch.empty(shape, dtype=torch.bfloat16)
        t.normal_(0.0, 0.02, generator=gen) if len(shape) > 1 else t.fill_(1.0)
        state[key] = t
    print(f"writing {sum(t.numel() * 2 for t in state.values()) / 1e9:.1f} GB to {folder}", file=sys.stderr)
    torch.save(state, folder / "consolidated.00.pth")
    del state
    params = v.arch.to_params(llama2_vocab=v.meta_llama2_vocab)
    (folder / "params.json").write_text(json.dumps(params))
    write_checklist(folder, ["consolidated.00.pth", "params.json"])
    if TOKENIZER.is_file():
        shutil.copy(TOKENIZER, root / "tokenizer.model")
    else:
        train_sentencepiece(root / "tokenizer.model", v.arch.vocab_size)
    write_checklist(root, ["tokenizer.model"], "tokenizer_checklist.chk")
    (root / "LICENSE").write_text(PLACEHOLDER_LICENSE)
    (root / "USE_POLICY.md").write_text(PLACEHOLDER_USE_POLICY)
    done.write_text(json.dumps({"variant": VARIANT, "seed": 0}))
    return root


def files_of(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != "bench.json")


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB of the child, stdout) of one fresh process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    out, err = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd[0]} failed: {err}")
    return seconds, usage.ru_maxrss / 1024, out


def warm(files: list[Path]) -> None:
    for p in files:
        with p.open("rb") as f:
            while f.read(1 << 24):
                pass


def report(r: dict) -> str:
    m = r["machine"]
    rows = [f"| {i + 1} | {s:.1f} | {imp['seconds']:.1f} | {imp['seconds'] / s:.2f} | "
            f"{imp['peak_rss_mib']:.0f} |"
            for i, (s, imp) in enumerate(zip(r["sha256sum_seconds"], r["import"], strict=True))]
    return "\n".join([
        "# Hub import of a real-shaped llama-2-7b", "",
        "Written by `bench/bench_import.py`; do not edit by hand.", "",
        f"- {m['cpu']}, {m['nproc']} cores; Python {m['python']}, torch {m['torch']}; {m['date']}; "
        f"1-minute load average after the runs {m['loadavg']:.2f}.",
        f"- {r['files']} files, {r['bytes'] / 1e9:.2f} GB (Meta's layout: one consolidated.00.pth of random "
        "bf16 weights in the real shapes, params.json, checklists, tokenizer, LICENSE, USE_POLICY.md), "
        "page cache warm before each timed process.",
        "- Yardstick: `sha256sum` over the same files (one hashing pass). The import checks the tensor "
        "shapes from the checkpoint's headers, copies every file into the blob store while hashing "
        "sha256 and md5, fsyncs, and verifies Meta's checklists.", "",
        f"Command: `{r['command']}`", "",
        "| run | sha256sum, s | import, s | import ÷ sha256sum | import peak RSS, MiB |",
        "|---|---|---|---|---|", *rows, "",
        f"Median import ÷ sha256sum: **{r['import_over_sha256']:.2f}** (target ≤ 1.3); "
        f"peak RSS **{r['peak_rss_mib']:.0f} MiB** (target < 1024).", ""])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--work", type=Path, default=HERE / "work" / "import")
    p.add_argument("--out", type=Path, default=HERE / "results" / "import.json")
    opts = p.parse_args()
    root = write_download(opts.work / VARIANT)
    files = files_of(root)
    total = sum(f.stat().st_size for f in files)
    sha_runs, imports = [], []
    for run in range(opts.runs):
        warm(files)
        seconds, _, _ = timed(["sha256sum", *map(str, files)])
        sha_runs.append(seconds)
        warm(files)
        with tempfile.TemporaryDirectory(dir=opts.work, prefix="hub-") as data:
            env = os.environ | {"LLAMAHUB_PROGRESS": "0"}
            subprocess.run([str(LLAMAHUB), "hub", "init", "--data", data], check=True, capture_output=True)
            seconds, rss, out = timed([str(LLAMAHUB), "hub", "import", str(root), "--variant", VARIANT,
                                       "--data", data], env)
            imports.append({"seconds": seconds, "peak_rss_mib": rss, "output": out.strip()})
        print(f"run {run + 1}: sha256sum {sha_runs[-1]:.1f} s, import {seconds:.1f} s, "
              f"peak RSS {rss:.0f} MiB", file=sys.stderr)
    sha = statistics.median(sha_runs)
    imp = statistics.median(r["seconds"] for r in imports)
    rss = max(r["peak_rss_mib"] for r in imports)
    result = {
        "variant": VARIANT, "files": len(files), "bytes": total, "runs": opts.runs,
        "sha256sum_seconds": sha_runs, "import": imports,
        "import_over_sha256": imp / sha, "peak_rss_mib": rss,
        "targets": {"peak_rss_mib": 1024, "import_over_sha256": 1.3},
        "machine": {"cpu": platform.processor() or platform.machine(), "nproc": os.cpu_count(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                    "loadavg": os.getloadavg()[0]},
        "command": " ".join([os.path.relpath(sys.executable), *sys.argv]),
    }
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(result, indent=2) + "\n")
    opts.out.with_suffix(".md").write_text(report(result))
    print(f"import {imp:.1f} s = {imp / sha:.2f}x sha256sum ({sha:.1f} s) of {total / 1e9:.1f} GB; "
          f"peak RSS {rss:.0f} MiB", file=sys.stderr)


if __name__ == "__main__":
    main()
