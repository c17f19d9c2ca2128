"""``llamahub chat``: an interactive chat that survives its own length.

When the dialog outgrows the model's context, the oldest exchanges are left out (the system
prompt stays) or the answer is shortened, with a note on stderr; a message too long to answer is
refused and the chat goes on. Ctrl-C during an answer stops that answer; at the prompt it ends
the chat (exit code 130). An empty line or Ctrl-D ends it normally.
"""

from __future__ import annotations

from typing import Any

import click

from llamahub.cli_options import DtypeType
from llamahub.errors import ContextLengthError


def _read(prompt: str) -> str | None:
    """A line typed at the prompt; None at end of input. Ctrl-C leaves the line before raising."""
    try:
        return input(prompt)
    except EOFError:
        click.echo()
        return None
    except KeyboardInterrupt:
        click.echo()
        raise


def _answer(m: Any, dialog: list[dict[str, str]], max_new_tokens: int, **sampling: Any) -> str:
    """Stream the model's answer to stdout; Ctrl-C cuts it short and keeps what came."""
    from llamahub.model.chat import fit_dialog

    fitted = fit_dialog(dialog, m.chat_tokens, m.context_length, max_new_tokens)
    if fitted.dropped:
        click.echo(f"(the dialog outgrew the {m.context_length}-token context: left out its "
                   f"{fitted.dropped} oldest messages)", err=True)
        dialog[:] = fitted.messages
    if fitted.max_new_tokens < max_new_tokens:
        click.echo(f"(this answer is limited to {fitted.max_new_tokens} tokens to fit the context)", err=True)
    pieces = []
    click.echo("model> ", nl=False)
    try:
        for piece in m.chat(dialog, max_new_tokens=fitted.max_new_tokens, stream=True, **sampling):
            pieces.append(piece)
            click.echo(piece, nl=False)
    except KeyboardInterrupt:
        click.echo(" (stopped)", nl=False)
    click.echo()
    return "".join(pieces)


@click.command()
@click.argument("model")
@click.option("--system", help="a system prompt")
@click.option("--dtype", type=DtypeType(), help="weights dtype (the installed backends' choices)")
@click.option("-n", "--max-new-tokens", type=click.IntRange(1), default=256, show_default=True)
@click.option("-t", "--temperature", type=click.FloatRange(0), default=0.6, show_default=True)
@click.option("--seed", type=int)
@click.option("--save", type=click.Path(dir_okay=False), help="append the dialog to this JSONL file at the "
              "end, with the model as its source_model (training data keeps its provenance)")
def chat(model: str, system: str | None, dtype: str | None, max_new_tokens: int, temperature: float,
         seed: int | None, save: str | None) -> None:
    """An interactive chat with MODEL (a name or a folder). Empty line or Ctrl-D ends it.

    When the dialog outgrows the context, the oldest exchanges are left out (a note says so).
    """
    from llamahub.api import load

    m = load(model, dtype=dtype)
    dialog = [{"role": "system", "content": system}] if system else []
    click.echo(f"chatting with {model} ({m.backend}, {m.dtype}, {m.context_length}-token context); "
               "an empty line ends", err=True)
    try:
        while (line := _read("you> ")) and line.strip():
            dialog.append({"role": "user", "content": line})
            try:
                reply = _answer(m, dialog, max_new_tokens, temperature=temperature, seed=seed)
            except ContextLengthError as e:
                dialog.pop()
                click.echo(f"error: {e.message}\n  next: {e.hint}", err=True)
                continue
            dialog.append({"role": "assistant", "content": reply})
    finally:
        m.close()
        if save and any(msg["role"] == "assistant" for msg in dialog):
            from pathlib import Path

            from llamahub.derivatives import save_output

            save_output(Path(save), {"messages": dialog}, m.variant.name)
