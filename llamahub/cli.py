"""The ``llamahub`` command line: a thin layer over the SDK. Errors are reported in one place."""

from __future__ import annotations

import difflib
import json
import sys
from pathlib import Path
from typing import Any

import click

from llamahub import cli_client, cli_mirror, plugins
from llamahub.cli_finetune import finetune_cmd
from llamahub.cli_options import load_options, parse_options
from llamahub.cli_serve import serve
from llamahub.errors import LlamahubError, RegistryError
from llamahub.hub import cli as hub_cli
from llamahub.registry import Variant


@click.group()
@click.version_option(package_name="llamahub")
def cli() -> None:
    """Load and run Llama models, with license compliance built in."""


@cli.command("list")
@click.option("--family", help="only this family, e.g. llama-3.1")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def list_cmd(family: str | None, as_json: bool) -> None:
    """Every registered variant."""
    every = plugins.variants()
    wanted = _family(family, every) if family else None
    rows = [v for v in every if wanted in (None, v.family)]
    if as_json:
        click.echo(json.dumps([v.summary() for v in rows], indent=2))
        return
    name_w = max([len("NAME"), *(len(v.name) for v in rows)])
    family_w = max([len("FAMILY"), *(len(v.family) for v in rows)])
    click.echo(f"{'NAME':{name_w}} {'FAMILY':{family_w}} {'SIZE':6} {'KIND':5} {'PARAMS':>8} {'CONTEXT':>8}"
               "  LICENSE")
    for v in rows:
        tag = "  (debug: random weights)" if v.debug else ""
        click.echo(f"{v.name:{name_w}} {v.family:{family_w}} {v.size:6} {v.kind:5} "
                   f"{_human(v.param_count()):>8} {v.context_length:>8}  {v.license}{tag}")


def _family(name: str, every: list[Variant]) -> str:
    """A family name as the registry spells it, also from the license's spelling (llama2, llama3.1)."""
    families = sorted({v.family for v in every})
    plain = {f.replace("-", ""): f for f in families}
    found = plain.get(name.lower().replace("-", "").replace("_", ""))
    if found:
        return found
    close = difflib.get_close_matches(name.lower(), families, n=3, cutoff=0.5)
    raise RegistryError(f"no family named {name!r}",
                        hint=(f"did you mean {', '.join(close)}? " if close else "")
                        + f"families: {', '.join(families)}")


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _human(n: float) -> str:
    for unit in ("", "K", "M", "B", "T"):
        if n < 1000:
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}P"


@cli.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def info(name: str, as_json: bool) -> None:
    """Details of one variant: architecture, files, memory, license, and which backends fit here."""
    from llamahub import selection
    from llamahub.interfaces import LoadOptions

    v = plugins.resolve(name)
    rows = selection.plan_table(v, LoadOptions())
    rows += selection.alternatives(v, LoadOptions())
    data: dict[str, Any] = v.summary() | {"architecture": v.arch.as_dict(),
                                          "ffn_hidden_dim": v.arch.hidden_dim,
                                          "memory_bf16": v.memory_estimate("bf16"),
                                          "memory_fp32": v.memory_estimate("fp32"),
                                          "meta_files": v.meta_files(),
                                          "plans": [_plan_json(r) for r in rows]}
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"{v.name}  ({v.family_title}, {v.kind}, {_human(v.param_count())} parameters)")
    if v.debug:
        click.echo("  NOT A REAL MODEL: tiny random weights for demos and tests")
    a = v.arch
    click.echo(f"  architecture  dim {a.dim}, {a.n_layers} layers, {a.n_heads} heads, "
               f"{a.kv_heads} kv heads, ffn {a.hidden_dim}, vocab {a.vocab_size}")
    scaling = f", scaled x{a.rope_scaling.factor:g}" if a.rope_scaling else ""
    click.echo(f"  rope          theta {a.rope_theta:g}{scaling}; context {v.context_length} tokens")
    click.echo(f"  tokenizer     {v.tokenizer}; chat format {v.chat_format or '-'}")
    click.echo(f"  memory        {_bytes(data['memory_bf16'])} bf16, "
               f"{_bytes(data['memory_fp32'])} fp32 (weights + full-context KV cache)")
    click.echo(f"  license       {v.license} (released {v.release_date})")
    click.echo(f"  aliases       {', '.join(v.aliases) or '-'}")
    if v.hf_repo:
        click.echo(f"  hugging face  {v.hf_repo}")
    click.echo(f"  meta layout   {v.shards} shard(s) in {v.meta_folder}/")
    click.echo("  on this machine (full context):")
    click.echo(selection.format_table(rows).replace("\n", "\n  ").join(["  ", ""]))


def _plan_json(row: Any) -> dict[str, Any]:
    plan, cap = row.plan, row.capacity
    return {"backend": row.backend, "dtype": row.dtype, "fits": row.fits, "refusal": row.refusal,
            "host_bytes": plan.host_bytes if plan else None,
            "device_bytes": plan.device_bytes if plan else None, "devices": plan.devices if plan else None,
            "available_host_bytes": cap.host_bytes if cap else None}


@cli.command()
@click.argument("model")
@click.argument("prompt")
@click.option("--variant", help="registry name of a local folder that is not recognised")
@load_options
@click.option("--threads", type=click.IntRange(1), help="CPU threads")
@click.option("-n", "--max-new-tokens", type=click.IntRange(1), default=128, show_default=True)
@click.option("-t", "--temperature", type=click.FloatRange(0), default=0.6, show_default=True)
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=0.9, show_default=True)
@click.option("--seed", type=int)
@click.option("--chat", "as_chat", is_flag=True, help="send PROMPT as a user message in the chat format")
@click.option("--save", type=click.Path(dir_okay=False), help="append the exchange to this JSONL file, "
              "with the model as its source_model (training data keeps its provenance)")
def run(model: str, prompt: str, variant: str | None, backend: str | None, dtype: str | None,
        device: str | None, context_length: int | None, backend_options: tuple[str, ...],
        threads: int | None, max_new_tokens: int, temperature: float, top_p: float,
        seed: int | None, as_chat: bool, save: str | None) -> None:
    """Generate from MODEL (a name, or a folder written as a path: ./folder), streaming to stdout."""
    from llamahub.api import load

    m = load(model, variant=variant, backend=backend, dtype=dtype, device=device, threads=threads,
             context_length=context_length, **parse_options(backend_options))
    kw = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
              stream=True)
    printed = False
    try:
        # both check their arguments (lengths, sampling) before returning the stream
        if as_chat:
            pieces = m.chat([{"role": "user", "content": prompt}], **kw)
        else:
            pieces = m.generate(prompt, **kw)
            click.echo(prompt, nl=False)
            printed = True
        said = []
        for piece in pieces:
            said.append(piece)
            click.echo(piece, nl=False)
            printed = True
        click.echo()
        printed = False
        if save:
            _save(save, prompt, "".join(said), as_chat, m.variant.name)
    finally:
        if printed:  # stopped mid-line (Ctrl-C): the line ends before any message
            click.echo()
        m.close()


def _save(path: str, prompt: str, output: str, as_chat: bool, source: str) -> None:
    from llamahub.derivatives import save_output

    answer = {"role": "assistant", "content": output.strip()}
    question = {"role": "user", "content": prompt}
    record = {"messages": [question, answer]} if as_chat else {"text": prompt + output}
    save_output(Path(path), record, source)


@cli.command()
@click.argument("name")
@click.option("--format", "fmt", default="gguf", show_default=True, help="the file format to write")
@click.option("--quant", help="gguf: f32, f16 (default), q8_0, q4_0 or q4_k_m")
@click.option("--out", default=".", show_default=True, help="the file to write, or a folder for it")
@click.option("--variant", help="registry name of a local folder that is not recognised")
@click.option("--no-progress", is_flag=True, help="no progress bar")
def export(name: str, fmt: str, quant: str | None, out: str, variant: str | None, no_progress: bool) -> None:
    """Write NAME (gated and fetched like `download`, or a folder as ./PATH) as a GGUF file."""
    import time

    from llamahub.api import export as export_model

    started = time.perf_counter()
    path = export_model(name, fmt=fmt, quant=quant, out=out, variant=variant,
                        progress=False if no_progress else None)
    click.echo(f"wrote {path} ({_bytes(path.stat().st_size)}, {time.perf_counter() - started:.1f} s)")


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def plugins_cmd(as_json: bool) -> None:
    """Installed plugins, where they come from, and which backends can run here."""
    recs = plugins.records()
    backends = plugins.backends()
    sources = plugins.sources()
    status = {n: b.unavailable_reason() for n, b in backends.items()}
    if as_json:
        click.echo(json.dumps({
            "plugins": [r.__dict__ for r in recs],
            "backends": {n: {"priority": b.priority, "description": b.description,
                             "available": status[n] is None, "reason": status[n]}
                         for n, b in backends.items()},
            "sources": {n: src.description for n, src in sources.items()},
        }, indent=2))
        return
    click.echo("plugins (entry-point group 'llamahub'):")
    for r in recs:
        where = f"{r.distribution} {r.version}" if r.distribution else "?"
        state = f"FAILED: {r.error}" if r.error else "ok"
        click.echo(f"  {r.name:14} {r.module:28} from {where:20} {state}")
    if not recs:
        click.echo(f"  (none loaded; check {plugins.ALLOWLIST_ENV})")
    click.echo("backends:")
    for n, b in sorted(backends.items(), key=lambda kv: -kv[1].priority):
        state = "available" if status[n] is None else f"unavailable: {status[n]}"
        click.echo(f"  {n:14} priority {b.priority:<4} {state}  - {b.description}")
    click.echo("download sources:")
    for n, src in sorted(sources.items()):
        click.echo(f"  {n:14} {src.description}")
    click.echo("fine-tuning methods:")
    for n, method in sorted(plugins.finetuners().items()):
        click.echo(f"  {n:14} {method.description}")


@cli.command()
@click.option("--yes", is_flag=True, help="accept the demo variant's license without asking")
@click.option("-n", "--max-new-tokens", default=24, show_default=True)
@click.option("--no-progress", is_flag=True, help="no progress bar")
def demo(yes: bool, max_new_tokens: int, no_progress: bool) -> None:
    """The whole path on the embedded hub: license, profile, signed link, download, load, chat."""
    from llamahub.api import progress_default
    from llamahub.demo import run_demo

    run_demo(yes=yes, confirm=lambda q: cli_client.confirm(q, "llamahub demo"), max_new_tokens=max_new_tokens,
             progress=not no_progress and progress_default(), echo=click.echo)


# The hub server (llamahub.hub.cli imports only click; the server loads lazily), and the user's
# commands (login, profile, license, download, cache, chat, link).
cli.add_command(hub_cli.hub)
cli.add_command(cli_mirror.mirror)
cli.add_command(finetune_cmd)
for _command in cli_client.COMMANDS:
    cli.add_command(_command)
cli.add_command(serve)  # the OpenAI-compatible server (llamahub.serve, loaded when it runs)


def _add_plugin_commands() -> None:
    try:
        plugins.manager().hook.register_commands(cli=cli)
    except LlamahubError:
        raise
    except Exception as e:  # a plugin's command must not break the CLI
        click.echo(f"warning: a plugin failed to add commands: {e}", err=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and turn llamahub errors into a message and exit code 1."""
    try:
        _add_plugin_commands()
        cli.main(args=argv, prog_name="llamahub", standalone_mode=False)
    except LlamahubError as e:
        click.echo(f"error: {e.message}", err=True)
        if e.hint:
            click.echo(f"  next: {e.hint}", err=True)
        return 1
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
