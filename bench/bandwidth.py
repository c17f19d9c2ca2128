"""Memory bandwidth and the time to read a checkpoint folder once, on this machine.

- copy: ``dst.copy_(src)`` on 1 GiB fp32 tensors, N threads, 7 timed runs after one untimed
  copy that faults the pages in. GB/s counts read + write bytes (2 x size), not write-allocate
  traffic, as in /work/shared/reference/cpu-baselines.md section 1.
- sum: ``src.sum()`` on the same tensor (read bytes only), for context; the decode ceiling
  uses the copy figure.
- read once: every file of a folder read sequentially with 64 MiB ``readinto`` calls into one
  reused buffer. One untimed pass warms the page cache, then the timed passes follow, so this
  is the cost of touching every byte once from a warm cache: the reference for "load time".

    python bench/bandwidth.py --threads 2 [--read-once FOLDER]

prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

CHUNK = 64 << 20


def stats(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "values": values}


def memory_bandwidth(threads: int, size_mib: int = 1024, runs: int = 7) -> dict[str, Any]:
    """Copy (read + write bytes) and sum (read bytes) bandwidth in GB/s."""
    import torch

    torch.set_num_threads(threads)
    nbytes = size_mib << 20
    src = torch.full((nbytes // 4,), 1.5, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)  # fault dst in; not timed
    copy, reads = [], []
    for _ in range(runs):
        t = time.perf_counter()
        dst.copy_(src)
        copy.append(2 * nbytes / (time.perf_counter() - t) / 1e9)
    for _ in range(runs):
        t = time.perf_counter()
        src.sum()
        reads.append(nbytes / (time.perf_counter() - t) / 1e9)
    return {"threads": torch.get_num_threads(), "size_mib": size_mib, "runs": runs,
            "copy_GBps": stats(copy), "sum_GBps": stats(reads)}


def folder_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


def read_files(files: list[Path], buf: bytearray) -> int:
    view = memoryview(buf)
    total = 0
    for path in files:
        with path.open("rb", buffering=0) as f:
            while n := f.readinto(view):
                total += n
    return total


def warm(folder: Path, chunk: int = 4 << 20) -> int:
    """Read every file of ``folder`` once so that its pages are in the page cache.

    The buffer is small because bench_cpu.py calls this in the process whose peak RSS it reports.
    """
    return read_files(folder_files(folder), bytearray(chunk))


def read_once(folder: Path, runs: int = 3) -> dict[str, Any]:
    """Seconds to read all files of ``folder`` once, page cache warm (median of ``runs``)."""
    files = folder_files(folder)
    buf = bytearray(CHUNK)
    total = read_files(files, buf)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        read_files(files, buf)
        times.append(time.perf_counter() - t)
    return {"folder": str(folder), "files": [p.name for p in files], "bytes": total,
            "seconds": stats(times), "GBps": total / statistics.median(times) / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size-mib", type=int, default=1024, help="tensor size (default 1 GiB)")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--read-once", type=Path, help="also time reading this folder once")
    parser.add_argument("--read-runs", type=int, default=3)
    args = parser.parse_args()
    out: dict[str, Any] = {"memory": memory_bandwidth(args.threads, args.size_mib, args.runs)}
    if args.read_once is not None:
        out["read_once"] = read_once(args.read_once, args.read_runs)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
