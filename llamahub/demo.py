"""`llamahub demo`: the whole local path on a tiny random-weight llama-debug checkpoint."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import platformdirs

from llamahub import registry

DEMO_VARIANT = "llama-debug-2-chat"


def demo_dir() -> Path:
    return Path(platformdirs.user_data_dir("llamahub")) / "demo"


def run_demo(workdir: Path | None = None, *, max_new_tokens: int = 24,
             echo: Callable[[str], None] = print) -> str:
    """Generate (once), load and chat; returns the generated text."""
    from llamahub.api import load
    from llamahub.model.checkpoint import MARKER
    from llamahub.model.writer import generate_checkpoint

    v = registry.resolve(DEMO_VARIANT)
    root = workdir or demo_dir()
    folder = root / v.meta_folder
    echo(f"1. variant   {v.name}: {v.family_title}")
    if not (folder / MARKER).is_file():
        t = time.perf_counter()
        generate_checkpoint(v, root)
        echo(f"2. generate  wrote a random {v.shards}-shard Meta-format checkpoint to {folder} "
             f"({time.perf_counter() - t:.1f}s)")
    else:
        echo(f"2. generate  reusing the checkpoint in {folder}")
    t = time.perf_counter()
    model = load(folder, dtype="fp32")
    echo(f"3. load      backend {model.backend}, {model.dtype}, {time.perf_counter() - t:.2f}s")
    dialog = [{"role": "system", "content": "You are a terse assistant."},
              {"role": "user", "content": "Say hello to the new llamahub user."}]
    echo(f"4. chat      {dialog[-1]['content']!r} (random weights: expect gibberish)")
    pieces = []
    for piece in model.chat(dialog, max_new_tokens=max_new_tokens, temperature=0.8, seed=0, stream=True):
        pieces.append(piece)
    text = "".join(pieces)
    echo(f"   answer    {text!r}")
    model.close()
    echo("done. Next: `llamahub list` shows the real variants; `llamahub info llama-2-7b-chat`.")
    return text
