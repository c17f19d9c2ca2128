"""``llamahub finetune``: a base, a method plugin and a JSONL file → a local derivative variant."""

from __future__ import annotations

from pathlib import Path

import click

from llamahub.cli_options import parse_options


@click.command("finetune")
@click.argument("base")
@click.option("--method", default="lora", show_default=True,
              help="a fine-tuning method (`llamahub plugins`)")
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help='JSONL of {"messages": [...]} dialogs or {"text": ...} records')
@click.option("--output", required=True,
              help="the new variant's name (the base license's naming rule applies)")
@click.option("--config", "config", type=click.Path(path_type=Path),
              help="a TOML file of the method's settings")
@click.option("-s", "--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="a setting that overrides the config, e.g. -s rank=16 (repeatable)")
@click.option("--context-length", type=click.IntRange(min=1), help="train for this context (beyond the "
              "base's needs --rope-factor)")
@click.option("--rope-factor", type=click.FloatRange(min=1.0, min_open=True),
              help="stretch RoPE positions by this factor for a longer context")
@click.option("--overwrite", is_flag=True, help="replace a fine-tune of the same name")
@click.option("--no-progress", is_flag=True, help="no progress bar")
def finetune_cmd(base: str, method: str, data: Path, output: str, config: Path | None,
                 settings: tuple[str, ...], context_length: int | None, rope_factor: float | None,
                 overwrite: bool, no_progress: bool) -> None:
    """Fine-tune BASE (a name, or a folder written as a path) into the local variant OUTPUT."""
    from llamahub.finetune import finetune

    values = parse_options(settings)
    for key, value in values.items():  # lists are written comma-separated: -s targets=wq,wv
        if isinstance(value, str) and "," in value:
            values[key] = [v.strip() for v in value.split(",") if v.strip()]
    done = finetune(base, method=method, data=data, output=output, config=config,
                    context_length=context_length,
                    rope_scaling={"factor": rope_factor} if rope_factor else None,
                    overwrite=overwrite, progress=False if no_progress else None, **values)
    train, held = done.metrics.get("train_loss") or [], done.metrics.get("eval_loss") or []
    if train:
        click.echo(f"train loss {train[0][1]:.4f} -> {train[-1][1]:.4f} over {train[-1][0]} steps")
    if held:
        click.echo(f"eval loss  {held[0][1]:.4f} -> {held[-1][1]:.4f}")
    click.echo(f"{done.name}: a {method} fine-tune of {done.lineage['base']} "
               f"(license {done.variant.license}), in {done.folder}")
    click.echo(f"run it: llamahub run {done.name} \"...\"  (NOTICE and lineage.json are next to the weights)")
