"""``llamahub serve``: load models through ``llamahub.load`` (gates and all) and serve them with the
OpenAI API (``llamahub.serve``)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import click

from llamahub.cli_options import load_options, parse_options
from llamahub.errors import ConfigError


def read_keys(keys: tuple[str, ...], keys_file: Path | None) -> list[str]:
    """API keys from ``--api-key`` and a file of one key per line (blank lines and # comments skipped)."""
    found = [k.strip() for k in keys if k.strip()]
    if keys_file is not None:
        try:
            lines = keys_file.read_text().splitlines()
        except OSError as e:
            raise ConfigError(f"cannot read the API keys file {keys_file}: {e.strerror}",
                              hint="pass a readable file with one key per line") from e
        found += [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        if not found:
            raise ConfigError(f"the API keys file {keys_file} holds no key",
                              hint="write one key per line, or leave out --api-keys-file")
    return found


def check_address(host: str, port: int) -> None:
    """Refuse early (before any model loads) when ``host:port`` cannot be listened on."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(infos[0][4])
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}",
                          hint="pass another --port (or --host), or stop what is using it") from e


def model_meta(model: Any) -> dict[str, Any]:
    """What /v1/models shows of a loaded model: its license and the attribution the license asks for."""
    from llamahub.policy.terms import license_terms

    variant = model.variant
    license_id = getattr(variant, "license", None)
    try:
        attribution = license_terms(license_id).attribution if license_id else None
    except Exception:  # a local variant whose license the registry does not know
        attribution = None
    return {"variant": variant.name, "license": license_id, "attribution": attribution,
            "context_length": model.context_length, "chat_format": variant.chat_format,
            "backend": model.backend, "dtype": model.dtype}


@click.command()
@click.argument("names", nargs=-1, required=True)
@load_options
@click.option("--threads", type=click.IntRange(1), help="CPU threads")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--slots", type=click.IntRange(1, 256), default=8, show_default=True,
              help="sequences decoded together per model (continuous batching)")
@click.option("--api-key", "api_keys", multiple=True, help="a key clients must send (repeatable)")
@click.option("--api-keys-file", type=click.Path(path_type=Path, dir_okay=False),
              help="a file of keys, one per line")
def serve(names: tuple[str, ...], backend: str | None, dtype: str | None, device: str | None,
          context_length: int | None, backend_options: tuple[str, ...], threads: int | None, host: str,
          port: int, slots: int, api_keys: tuple[str, ...], api_keys_file: Path | None) -> None:
    """Serve NAME... with the OpenAI API (/v1/chat/completions, /v1/completions, /v1/models)."""
    import uvicorn

    from llamahub.api import load
    from llamahub.serve.app import Served, create_app
    from llamahub.serve.engine import make_engine

    keys = read_keys(api_keys, api_keys_file)
    check_address(host, port)
    served: list[Served] = []
    aliases: dict[str, str] = {}
    try:
        for name in dict.fromkeys(names):
            model = load(name, backend=backend, dtype=dtype, device=device, threads=threads,
                         context_length=context_length, **parse_options(backend_options))
            served.append(Served(model.variant.name, model, make_engine(model, model.variant.name, slots),
                                 model_meta(model)))
            aliases[name] = model.variant.name
        app = create_app(served, api_keys=keys, aliases=aliases)
        for s in served:
            click.echo(f"serving {s.name} ({s.model.backend}, {s.model.dtype}, {s.engine.kind}) "
                       f"at http://{host}:{port}/v1", err=True)
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        for s in served:
            s.engine.close()
            s.model.close()
