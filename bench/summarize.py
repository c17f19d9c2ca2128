"""Turn bench_cpu.py's JSON lines into bench/results/cpu-decode.md.

    python bench/summarize.py bench/results/cpu.jsonl [--out bench/results/cpu-decode.md]

The file is appended to by every run; for each (config, dtype, engine, layout) the last line
wins. Meta-layout runs (``--layout meta1,meta2,meta4``) appear as engines ``llamahub-metaN``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SPEEDUP_TARGET = {"110m": 2.0, "1b": 1.3}  # llamahub decode tok/s over transformers'
LOAD_TARGET = 1.3  # load time over the time to read the files once
RSS_TARGET = 1.15  # (peak RSS - fixed overhead) over the weight bytes
ORDER = ["tiny", "110m", "1b"]
SHARD_ENGINES = ("llamahub-meta1", "llamahub-meta2", "llamahub-meta4")
Rec = dict[str, Any]


def latest(lines: list[Rec]) -> dict[tuple[str, str], dict[str, Rec]]:
    """{(config, dtype): {engine: last record}}, configs in size order."""
    groups: dict[tuple[str, str], dict[str, Rec]] = {}
    for r in lines:
        layout = r.get("layout", "hf")
        engine = r["engine"] if layout == "hf" else f"{r['engine']}-{layout}"
        groups.setdefault((r["config"], r["dtype"]), {})[engine] = r
    rank = {c: i for i, c in enumerate(ORDER)} | {"fp32": 0, "bf16": 1}
    return dict(sorted(groups.items(), key=lambda kv: (rank.get(kv[0][0], 9), rank.get(kv[0][1], 9), kv[0])))


def spread(s: dict[str, Any], fmt: str = ".1f") -> str:
    return f"{s['median']:{fmt}} ({s['min']:{fmt}}–{s['max']:{fmt}})"


def verdict(value: float | None, target: float, higher_is_better: bool) -> str:
    if value is None:
        return "–"
    ok = value >= target if higher_is_better else value <= target
    return "yes" if ok else "**no**"


def speedup(group: dict[str, Rec]) -> float | None:
    if "llamahub" not in group or "transformers" not in group:
        return None
    return group["llamahub"]["decode_tok_s"]["median"] / group["transformers"]["decode_tok_s"]["median"]


def overhead(r: Rec) -> float:
    """The stated fixed overhead: RSS after imports plus the working allowance (0 in old records)."""
    return r["rss_after_imports_mib"] + r.get("working_overhead_mib", 0)


def rss_extra(r: Rec) -> float:
    return r["peak_rss_mib"] - overhead(r)


def agreement(group: dict[str, Rec]) -> str:
    if "llamahub" not in group or "transformers" not in group:
        return "–"
    a, b = group["llamahub"]["tokens"], group["transformers"]["tokens"]
    same = sum(x == y for x, y in zip(a, b, strict=False))
    prefix = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return f"{same}/{len(b)} equal, first {prefix} identical"


def summary_table(groups: dict[tuple[str, str], dict[str, Rec]]) -> list[str]:
    out = ["| config | dtype | llamahub tok/s | transformers tok/s | speedup | target | met | "
           "llamahub % of ceiling | llamahub load ÷ read-once (≤ 1.3) | "
           "llamahub (peak − fixed overhead) ÷ weights (≤ 1.15) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for (config, dtype), g in groups.items():
        s, target = speedup(g), SPEEDUP_TARGET.get(config)
        lh, hf = g.get("llamahub"), g.get("transformers")
        cells = [config, dtype,
                 f"{lh['decode_tok_s']['median']:.1f}" if lh else "–",
                 f"{hf['decode_tok_s']['median']:.1f}" if hf else "–",
                 f"{s:.2f}×" if s is not None else "–",
                 f"≥ {target}×" if target else "–",
                 verdict(s, target, True) if target else "–",
                 f"{lh['fraction_of_ceiling']:.0%}" if lh else "–",
                 f"{lh['load_over_read_once']:.2f} {verdict(lh['load_over_read_once'], LOAD_TARGET, False)}"
                 if lh else "–",
                 f"{lh['rss_over_weights']:.2f} {verdict(lh['rss_over_weights'], RSS_TARGET, False)}"
                 if lh else "–"]
        out.append("| " + " | ".join(cells) + " |")
    return out


def shards_table(groups: dict[tuple[str, str], dict[str, Rec]]) -> list[str]:
    """Meta's consolidated.NN.pth layout: merging N shards at load, against one HF file."""
    out = ["| config | dtype | layout | load, s | load ÷ read-once (≤ 1.3) | "
           "(peak − fixed overhead) ÷ weights (≤ 1.15) | decode tok/s |", "|---|---|---|---|---|---|---|"]
    for (config, dtype), g in groups.items():
        for engine in ("llamahub", *SHARD_ENGINES):
            r = g.get(engine)
            if r is None:
                continue
            layout = r.get("layout", "hf")
            label = "HF, 1 file" if layout == "hf" else f"Meta, {layout.removeprefix('meta')} shard(s)"
            out.append(f"| {config} | {dtype} | {label} | {r['load_s']['median']:.3f} | "
                       f"{r['load_over_read_once']:.2f} "
                       f"{verdict(r['load_over_read_once'], LOAD_TARGET, False)} | "
                       f"{r['rss_over_weights']:.2f} {verdict(r['rss_over_weights'], RSS_TARGET, False)} | "
                       f"{r['decode_tok_s']['median']:.1f} |")
    return out


ROWS: list[tuple[str, Callable[[Rec], str]]] = [
    ("decode tok/s, median (min–max)", lambda r: spread(r["decode_tok_s"])),
    ("fraction of bandwidth ceiling", lambda r: f"{r['fraction_of_ceiling']:.0%}"),
    ("effective weight GB/s", lambda r: f"{r['decode_tok_s']['median'] * r['bytes_per_token'] / 1e9:.1f}"),
    ("prefill 32 tokens, s", lambda r: spread(r["prefill_s"], ".3f")),
    ("load, s, median (min–max) over fresh processes",
     lambda r: f"{spread(r['load_s'], '.3f')}, n={r['load_s']['processes']}"),
    ("first 1-token forward after load, s", lambda r: spread(r["first_forward_s"], ".3f")),
    ("load ÷ read-once (target ≤ 1.3)",
     lambda r: f"{r['load_over_read_once']:.2f} {verdict(r['load_over_read_once'], LOAD_TARGET, False)}"),
    ("(load + first forward) ÷ read-once", lambda r: f"{r['load_first_forward_over_read_once']:.2f}"),
    ("peak RSS, MiB", lambda r: f"{r['peak_rss_mib']:.0f}"),
    ("RSS after imports, MiB", lambda r: f"{r['rss_after_imports_mib']:.0f}"),
    ("fixed overhead (imports + working allowance), MiB", lambda r: f"{overhead(r):.0f}"),
    ("peak − fixed overhead, MiB", lambda r: f"{rss_extra(r):.0f}"),
    ("(peak − overhead) ÷ weights (target ≤ 1.15)",
     lambda r: f"{r['rss_over_weights']:.2f} {verdict(r['rss_over_weights'], RSS_TARGET, False)}"),
    ("implementation", lambda r: r["impl"]),
    ("1-min load average before", lambda r: f"{r['loadavg_before']:.2f}"),
]


def group_section(config: str, dtype: str, g: dict[str, Rec]) -> list[str]:
    any_rec = next(iter(g.values()))
    engines = [e for e in ("llamahub", "transformers", *SHARD_ENGINES) if e in g]
    bw = any_rec["copy_GBps"]
    out = [f"## {config} {dtype}", "",
           f"- Weights {any_rec['weight_bytes'] / 1e6:.1f} MB ({any_rec['params'] / 1e6:.2f} M params); "
           f"read per token {any_rec['bytes_per_token'] / 1e6:.1f} MB; "
           f"1.15 × weights = {RSS_TARGET * any_rec['weight_bytes'] / 2**20:.0f} MiB.",
           f"- Copy bandwidth {spread(bw)} GB/s (read + write bytes) → ceiling "
           f"{any_rec['ceiling_tok_s']:.1f} tok/s; read-only sum {any_rec['sum_GBps']:.1f} GB/s.",
           f"- Reading the {any_rec['file_bytes'] / 1e6:.1f} MB of files once (page cache warm): "
           f"{any_rec['read_once_s']:.3f} s.", ""]
    s, target = speedup(g), SPEEDUP_TARGET.get(config)
    if s is not None:
        out += [f"Speedup llamahub ÷ transformers: **{s:.2f}×**"
                + (f" (target ≥ {target}×: {verdict(s, target, True)})." if target else "."), ""]
    out += ["| | " + " | ".join(engines) + " |", "|---|" + "---|" * len(engines)]
    out += ["| " + name + " | " + " | ".join(fn(g[e]) for e in engines) + " |" for name, fn in ROWS]
    out += ["", f"Greedy tokens, llamahub vs transformers: {agreement(g)}.", ""]
    return out


def header(records: list[Rec], source: Path) -> list[str]:
    first = records[-1]
    m = first["machine"]
    commands = list(dict.fromkeys(r["command"] for r in records))
    dates = sorted({r["machine"]["date"] for r in records})
    return [
        "# CPU decode: llamahub vs transformers", "",
        f"Generated by `bench/summarize.py {source}`; do not edit by hand.", "",
        "## Machine and method", "",
        f"- CPU: {m['cpu']}, {m['nproc']} cores available; {first['threads']} threads used.",
        f"- Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}, "
        f"llamahub {m['git']}; measured {dates[0]}" + (f" to {dates[-1]}." if len(dates) > 1 else "."),
        f"- Batch 1, greedy, {first['prompt_tokens']}-token random prompt (ids drawn with seed 0), "
        f"{first['new_tokens']} new tokens, no EOS stop. Decode tok/s = 127 ÷ (t[token 128] − t[token 1]); "
        f"median (min–max) of {first['runs']} runs after {first['warmup']} warm-up, "
        "each (config, dtype, engine) in its own process. Prefill = call to first token.",
        "- Load = `open_checkpoint` + `build_decoder` (llamahub: build on meta, swap in the decode "
        "kernel, assign the memory-mapped weights; Meta shards merged tensor by tensor) or "
        "`from_pretrained` (transformers), "
        "page cache warm, one load per fresh process; the first 1-token forward is shown apart. "
        "Imports are not timed (for llamahub they include loading the decode kernel's shared "
        "library, about 0.06 s once per process; transformers' imports take seconds).",
        "- Ceiling = measured copy bandwidth ÷ weight bytes read per token (a tied embedding counts "
        "once, as the output head; KV-cache reads not counted).",
        "- Peak RSS = `VmHWM` (/proc/self/status) of the decode process (load, warm-up and runs). "
        "The fixed overhead is that process's RSS after `import torch, llamahub` and the engine's "
        "modules (before loading), plus a stated 64 MiB working allowance (KV cache for 160 positions, "
        "activations, per-thread allocator arenas, GEMM buffers) that does not grow with the weights.",
        "- Each process runs a full garbage collection after its imports, before anything is timed: "
        "the first full collection of the objects imports leave (~75 ms with torch) belongs to them.",
        "", "Commands:", "", "```",
        *commands, f".venv/bin/python bench/summarize.py {source}", "```", "",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("jsonl", type=Path)
    p.add_argument("--out", type=Path, default=HERE / "results" / "cpu-decode.md")
    opts = p.parse_args()
    records = [json.loads(ln) for ln in opts.jsonl.read_text().splitlines() if ln.strip()]
    if not records:
        raise SystemExit(f"{opts.jsonl} holds no results")
    groups = latest(records)
    kept = [r for g in groups.values() for r in g.values()]
    lines = [*header(kept, opts.jsonl), "## Summary", "", *summary_table(groups), ""]
    if any(e in g for g in groups.values() for e in SHARD_ENGINES):
        lines += ["## Checkpoint layouts (llamahub)", "", *shards_table(groups), ""]
    for (config, dtype), g in groups.items():
        lines += group_section(config, dtype, g)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text("\n".join(lines).rstrip() + "\n")
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
