"""Command-line options whose choices come from the installed plugins (read when used, not at import)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from llamahub import plugins


def installed_dtypes() -> list[str]:
    """Every dtype some installed backend accepts, in backend priority order."""
    seen: dict[str, None] = {}
    for backend in sorted(plugins.backends().values(), key=lambda b: -b.priority):
        for dtype in getattr(backend, "dtypes", ()) or ():
            seen.setdefault(dtype, None)
    return list(seen)


class DtypeType(click.ParamType):
    name = "dtype"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "[" + "|".join(installed_dtypes()) + "]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        known = installed_dtypes()
        if value not in known:
            self.fail(f"{value!r} is not a dtype of any installed backend (choose from "
                      f"{', '.join(known) or 'none: no backend is installed'})", param, ctx)
        return str(value)


def parse_options(values: tuple[str, ...]) -> dict[str, Any]:
    """``-o tp=2 -o flash=true`` → {"tp": 2, "flash": True} (ints, floats, booleans, else strings)."""
    out: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="'-o' / '--option'")
        out[key.strip()] = _value(raw.strip())
    return out


def _value(raw: str) -> Any:
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def load_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options every command that loads a model shares."""
    for option in reversed((
        click.option("--backend", help="backend to use (see `llamahub plugins`)"),
        click.option("--dtype", type=DtypeType(), help="weights dtype (the installed backends' choices)"),
        click.option("--device", help="device to run on, e.g. cpu (backends say which they take)"),
        click.option("--context-length", type=click.IntRange(min=1),
                     help="longest prompt + answer (default: the variant's context)"),
        click.option("-o", "--option", "backend_options", multiple=True, metavar="KEY=VALUE",
                     help="a backend option, e.g. -o tp=2 (repeatable)"),
    )):
        f = option(f)
    return f
