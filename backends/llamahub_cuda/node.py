"""The launcher of another node's ranks: ``python -m llamahub_cuda.node``, torchrun-style.

On node 0 the caller's ``llamahub.load(name, tp=N, nnodes=M)`` starts ranks 0..N/M-1 and
drives them. Each other node runs this launcher with the same MASTER_ADDR and MASTER_PORT and
its node rank; its ranks read what to load from the rendezvous, load their slices (from the
same path, or ``--folder``), and serve until the driver closes the model. Ctrl-C stops them.

    MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 python -m llamahub_cuda.node --nnodes 2 --node-rank 1
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
from multiprocessing.connection import wait

from llamahub_cuda.worker import Rendezvous, main


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m llamahub_cuda.node", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nnodes", type=int, required=True, help="number of nodes (the driver's is 0)")
    p.add_argument("--node-rank", type=int, required=True, help="this node's rank, 1..nnodes-1")
    p.add_argument("--nproc-per-node", type=int, default=1, help="ranks on this node (tp / nnodes)")
    p.add_argument("--master-addr", default=os.environ.get("MASTER_ADDR"), help="default: $MASTER_ADDR")
    p.add_argument("--master-port", type=int, default=os.environ.get("MASTER_PORT"),
                   help="default: $MASTER_PORT")
    p.add_argument("--folder", help="the checkpoint folder on this node, if not at the driver's path")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the driver")
    args = p.parse_args(argv)
    if not args.master_addr or not args.master_port:
        p.error("set MASTER_ADDR and MASTER_PORT (or --master-addr/--master-port) as on node 0")
    if not 0 < args.node_rank < args.nnodes:
        p.error(f"--node-rank must be 1..{args.nnodes - 1} (node 0 is the driver's)")
    return args


def run(argv: list[str] | None = None) -> int:
    """Start this node's ranks and wait for them; the exit code is the worst of theirs."""
    args = parse(argv)
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["llamahub_cuda.worker"])
    first = args.node_rank * args.nproc_per_node
    procs = []
    for rank in range(first, first + args.nproc_per_node):
        rdzv = Rendezvous(args.master_addr, int(args.master_port), rank, args.timeout, args.folder)
        proc = ctx.Process(target=main, args=(rdzv, None, None), name=f"llamahub-tp-rank{rank}")
        proc.start()
        procs.append(proc)
    try:
        while any(p.exitcode is None for p in procs):
            wait([p.sentinel for p in procs if p.exitcode is None])
            if any(p.exitcode not in (None, 0) for p in procs):
                break  # one rank failed: the group is broken, stop the others
    except KeyboardInterrupt:
        pass
    for p in procs:
        if p.exitcode is None:
            p.terminate()
        p.join()
    return max(abs(p.exitcode or 0) for p in procs)


if __name__ == "__main__":
    sys.exit(run())
