"""Command line of the hub: ``llamahub hub init|serve|import|seed-demo|requests|grants|audit`` and
``llamahub link``.

Only click is imported here; the server, the store and httpx are imported inside the commands so
that ``llamahub --help`` stays fast.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

DATA_ENV = "LLAMAHUB_HUB_DATA"
KEYS_ENV = "LLAMAHUB_HUB_KEYS"  # every hub command reads it; init, serve and keys rotate also take --keys-dir


def default_data_dir() -> Path:
    from llamahub.paths import data_dir

    return data_dir() / "hub"


def _data(data: Path | None) -> Path:
    return (data or default_data_dir()).expanduser().resolve()


@contextmanager
def _opened(data: Path | None, database_url: str | None,
            blobs_url: str | None = None) -> Iterator[tuple[Any, Any]]:
    """(store, blobs) of the hub in ``data``, closed afterwards (keys: LLAMAHUB_HUB_KEYS, if set)."""
    import os

    from llamahub.hub.context import open_store

    keys_dir = os.environ.get(KEYS_ENV) or None
    store, blobs, _ = open_store(_data(data), database_url, blobs_url=blobs_url,
                                 keys_dir=Path(keys_dir) if keys_dir else None)
    try:
        yield store, blobs
    finally:
        store.close()


data_option = click.option("--data", type=click.Path(file_okay=False, path_type=Path), envvar=DATA_ENV,
                           help=f"the hub's data directory (default: the user data dir; env {DATA_ENV})")
db_option = click.option("--database-url", envvar="LLAMAHUB_HUB_DATABASE_URL", metavar="URL",
                         help="SQLAlchemy URL: postgresql+psycopg://user@host/db (pip install "
                              "'llamahub[postgres]'); default: sqlite in --data "
                              "(env LLAMAHUB_HUB_DATABASE_URL)")
blobs_option = click.option("--blobs", "blobs_url", envvar="LLAMAHUB_HUB_BLOBS", metavar="URL",
                            help="where file contents live: s3://bucket/prefix (boto3's credentials and "
                                 "AWS_ENDPOINT_URL; pip install 'llamahub[s3]'); default: --data's blobs/ "
                                 "(env LLAMAHUB_HUB_BLOBS)")

keys_option = click.option("--keys-dir", type=click.Path(file_okay=False, path_type=Path),
                           envvar=KEYS_ENV,
                           help="the signing keys' folder, shared by every replica of the hub (read-only "
                                "is fine for serving); default: --data's keys/ (env LLAMAHUB_HUB_KEYS)")


@click.group("hub")
def hub() -> None:
    """Run a hub: accounts, license gates and signed download links in Meta's layout."""


@hub.command("init")
@data_option
@db_option
@blobs_option
@keys_option
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def init_cmd(data: Path | None, database_url: str | None, blobs_url: str | None, keys_dir: Path | None,
             as_json: bool) -> None:
    """Create the signing key (Ed25519) and an admin token, printed once."""
    from llamahub.hub.context import init_hub, keys_folder

    data_dir = _data(data)
    kid, token = init_hub(data_dir, database_url, blobs_url, keys_dir)
    key_file = keys_folder(data_dir, keys_dir) / f"{kid}.pem"
    if as_json:
        click.echo(json.dumps({"data": str(data_dir), "key_id": kid, "key_file": str(key_file),
                               "admin_token": token}))
        return
    click.echo(f"initialised hub in {data_dir}")
    click.echo(f"signing key  {kid}  ({key_file}, mode 0600)")
    click.echo(f"admin token  {token}")
    click.echo("  (shown once: the hub stores only its sha256; keep it somewhere safe)")
    click.echo(f"next: llamahub hub seed-demo --data {data_dir} && llamahub hub serve --data {data_dir}")


@hub.command("migrate")
@data_option
@db_option
def migrate_cmd(data: Path | None, database_url: str | None) -> None:
    """Upgrade the hub's database schema in place to this version's (every start does it too)."""
    from llamahub.hub.context import is_hub
    from llamahub.hub.errors import NotInitialisedError
    from llamahub.hub.store import Store

    data_dir = _data(data)
    if not is_hub(data_dir, database_url):
        raise NotInitialisedError(f"{data_dir} is not a hub", hint="check --data and --database-url")
    store = Store(database_url) if database_url else Store.for_dir(data_dir)
    try:
        before, after = store.create_all()
    finally:
        store.close()
    click.echo(f"database at revision {after} (was {before or 'made before Alembic'})")


@hub.command("serve")
@data_option
@db_option
@blobs_option
@keys_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="worker processes on this port (uvicorn's); they share the data, keys and blobs "
                   "like replicas do (rate limits are per process: see the README)")
@click.option("--public-url", help="the URL links, receipts and forms name (behind a proxy); "
                                  "default: the address the hub is bound to")
@click.option("--link-ttl", default=24 * 3600, show_default=True, type=click.IntRange(1, 7 * 24 * 3600),
              help="seconds a link stays valid")
@click.option("--max-downloads", default=5, show_default=True, type=click.IntRange(1),
              help="downloads per file per link")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@click.option("--rate-limit", "rate_limits", multiple=True, metavar="NAME=COUNT/SECONDS",
              help="change a rate limit (or NAME=off); defaults: register.ip=20/60, link.token=60/60, "
                   "link.ip=300/60, sign-in.ip=10/60, sign-in.token=10/60")
def serve_cmd(data: Path | None, database_url: str | None, blobs_url: str | None, keys_dir: Path | None,
              host: str, port: int, workers: int, public_url: str | None,
              link_ttl: int, max_downloads: int, log_level: str, rate_limits: tuple[str, ...]) -> None:
    """Serve the hub with uvicorn (one process, or --workers processes on one port)."""
    import os

    import uvicorn

    from llamahub.hub.app import SERVE_ENV, create_app
    from llamahub.hub.ratelimit import parse_limits

    settings = {"data_dir": str(_data(data)), "public_url": public_url, "database_url": database_url,
                "blobs_url": blobs_url, "keys_dir": str(keys_dir) if keys_dir else None,
                "link_ttl": link_ttl, "max_downloads": max_downloads}
    app = create_app(**settings, rate_limits=parse_limits(rate_limits))
    if workers == 1:
        uvicorn.run(app, host=host, port=port, log_level=log_level)
        return
    app.state.hub.store.close()  # checked here; each worker opens its own (llamahub.hub.app.app_from_env)
    os.environ[SERVE_ENV] = json.dumps({**settings, "rate_limits": list(rate_limits)})
    uvicorn.run("llamahub.hub.app:app_from_env", factory=True, workers=workers, host=host, port=port,
                log_level=log_level)


@hub.command("import")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--variant", "variant_name", required=True, help="registry name, e.g. llama-2-13b-chat")
@click.option("--no-convert", is_flag=True, help="serve only the folder's own layout (Meta or HF), "
              "not the other one converted from it")
@data_option
@db_option
@blobs_option
def import_cmd(folder: Path, variant_name: str, no_convert: bool, data: Path | None,
               database_url: str | None, blobs_url: str | None) -> None:
    """Import a Meta download (root or model folder) or an HF folder, after checking it; the other
    layout is converted from it and served too (unless --no-convert)."""
    from llamahub.hub.importer import import_folder
    from llamahub.plugins import resolve  # shipped and plugin variants alike

    variant = resolve(variant_name)
    with _opened(data, database_url, blobs_url) as (store, blobs):
        report = import_folder(store, blobs, folder, variant, convert=not no_convert)
    click.echo(f"imported {report.variant} ({report.format}): {len(report.files)} files, "
               f"{report.bytes:,} bytes ({report.new_blobs} new blobs); "
               f"{len(report.converted)} files converted to the other layout")


@hub.command("seed-demo")
@data_option
@db_option
@blobs_option
def seed_demo_cmd(data: Path | None, database_url: str | None, blobs_url: str | None) -> None:
    """Generate and import the tiny random-weight llama-debug variants."""
    from llamahub.hub.importer import seed_demo

    with _opened(data, database_url, blobs_url) as (store, blobs), \
            tempfile.TemporaryDirectory(dir=_data(data), prefix="seed-") as work:
        seed_demo(store, blobs, Path(work), echo=click.echo)


@hub.group("keys")
def keys_group() -> None:
    """Signing keys: rotate where the keys folder is writable (replicas may mount it read-only)."""


@keys_group.command("rotate")
@data_option
@db_option
@keys_option
def keys_rotate(data: Path | None, database_url: str | None, keys_dir: Path | None) -> None:
    """A new signing key signs from now on (every replica, once it sees the file); older keys keep
    verifying until revoked (POST /api/admin/keys/{kid}/revoke)."""
    from llamahub.hub.context import open_store

    store, _, keys = open_store(_data(data), database_url, keys_dir=keys_dir)
    try:
        kid = keys.create(_me())
    finally:
        store.close()
    click.echo(f"signing key {kid} ({keys.key_dir / (kid + '.pem')}) signs from now on")


# --- enterprise requests (operator side) -----------------------------------------------------------


@hub.group("requests")
def requests_group() -> None:
    """Review enterprise license requests: list, ask for information, approve (creates the grant), deny."""



@requests_group.command("list")
@click.option("--status", type=click.Choice(["pending", "needs_info", "approved", "denied", "withdrawn"]))
@click.option("--json", "as_json", is_flag=True)
@data_option
@db_option
def requests_list(status: str | None, as_json: bool, data: Path | None, database_url: str | None) -> None:
    """Every request (oldest first), or those of one status."""
    from llamahub.hub import enterprise

    with _opened(data, database_url) as (store, _):
        rows = enterprise.listing(store, status=status)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no enterprise requests" + (f" with status {status}" if status else ""))
    for r in rows:
        click.echo(f"{r['id']}  {r['status']:9}  {r['organisation']}: {', '.join(r['families'])}, "
                   f"up to {r['mau']:,} MAU  (submitted {r['created_at'][:19]})")
        if r["note"]:
            click.echo(f"    {r['note']}")
        if r.get("uses"):
            click.echo(f"    exception asked for: {', '.join(r['uses'])}")
        if r.get("info_request"):
            click.echo(f"    asked: {r['info_request']}  answer: {r.get('info_answer') or '(none yet)'}")


@requests_group.command("approve")
@click.argument("request_id")
@click.option("--max-mau", type=click.IntRange(1), help="default: what the request asked for")
@click.option("--expires", type=click.DateTime(["%Y-%m-%d"]),
              help="last day (UTC) of the grant; default: never")
@click.option("--note", default="", help="a note for the requester")
@data_option
@db_option
def requests_approve(request_id: str, max_mau: int | None, expires: Any, note: str, data: Path | None,
                     database_url: str | None) -> None:
    """Approve a pending request: its organisation gets an enterprise grant for those families."""
    import datetime as dt

    from llamahub.hub import enterprise

    now = dt.datetime.now(dt.UTC)
    end = expires.replace(tzinfo=dt.UTC) + dt.timedelta(days=1) if expires else None
    if end is not None and end <= now:
        raise click.BadParameter("that day is over", param_hint="--expires")
    with _opened(data, database_url) as (store, _):
        done = enterprise.approve(store, request_id, max_mau=max_mau, not_before=now.isoformat(),
                                  expires=end.isoformat() if end else None, note=note, actor=_me())
    grant = done["grant"]
    limit = f"up to {grant['max_mau']:,} MAU" if grant["max_mau"] else "no MAU limit"
    click.echo(f"approved {request_id}: grant {grant['id']} for {grant['organisation']} "
               f"({', '.join(grant['families'])}, {limit}, expires {grant['expires'] or 'never'})")


@requests_group.command("deny")
@click.argument("request_id")
@click.option("--reason", required=True, help="shown to the requester")
@data_option
@db_option
def requests_deny(request_id: str, reason: str, data: Path | None, database_url: str | None) -> None:
    """Deny a pending request, with a reason the requester sees."""
    from llamahub.hub import enterprise

    with _opened(data, database_url) as (store, _):
        enterprise.deny(store, request_id, reason=reason, actor=_me())
    click.echo(f"denied {request_id}")


@requests_group.command("ask")
@click.argument("request_id")
@click.option("--question", required=True, help="what you need to know before deciding (the requester "
              "sees it and answers with `llamahub enterprise answer`)")
@data_option
@db_option
def requests_ask(request_id: str, question: str, data: Path | None, database_url: str | None) -> None:
    """Ask the requester for more information; the request waits for the answer (needs_info)."""
    from llamahub.hub import enterprise

    if not question.strip():
        raise click.BadParameter("the question is empty", param_hint="--question")
    with _opened(data, database_url) as (store, _):
        enterprise.ask_info(store, request_id, question=question.strip(), actor=_me())
    click.echo(f"asked; {request_id} waits for the requester's answer")


def _me() -> str:
    """The audit log's name for the operator at this terminal (LLAMAHUB_OPERATOR, else the login)."""
    import getpass
    import os

    return f"operator:{os.environ.get('LLAMAHUB_OPERATOR') or getpass.getuser()}"


@hub.command("operator-add")
@click.argument("name")
@click.option("--email")
@data_option
@db_option
def operator_add(name: str, email: str | None, data: Path | None, database_url: str | None) -> None:
    """A named operator account; prints its admin token once (the audit log names it)."""
    with _opened(data, database_url) as (store, _):
        operator, token = store.create_operator(name, email, by=_me())
    click.echo(f"operator {operator['name']} ({operator['id']}); admin token: {token}")


@hub.group("grants")
def grants_group() -> None:
    """Enterprise grants: list them, revoke one."""


@grants_group.command("list")
@click.option("--organisation", help="only this organisation's")
@click.option("--json", "as_json", is_flag=True)
@data_option
@db_option
def grants_list(organisation: str | None, as_json: bool, data: Path | None, database_url: str | None) -> None:
    """Every enterprise grant: organisation, families, MAU limit, expiry or revocation."""
    with _opened(data, database_url) as (store, _):
        org = store.org_named(organisation) if organisation else None
        rows = store.grants(org["id"] if org else organisation)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no grants")
    for g in rows:
        limit = f"up to {g['max_mau']:,} MAU" if g["max_mau"] else "no MAU limit"
        state = f"revoked {g['revoked_at'][:19]}" if g["revoked_at"] else f"expires {g['expires'] or 'never'}"
        click.echo(f"{g['id']}  {g['organisation']}: {', '.join(g['families'])}, {limit}, {state}")


@grants_group.command("revoke")
@click.argument("grant_id")
@data_option
@db_option
def grants_revoke(grant_id: str, data: Path | None, database_url: str | None) -> None:
    """Revoke a grant: from now on its organisation is held to the license threshold again."""
    with _opened(data, database_url) as (store, _):
        grant = store.revoke_grant(grant_id, actor=_me())
    click.echo(f"revoked {grant['id']} ({grant['organisation']}) at {grant['revoked_at']}")


@hub.command("audit")
@click.option("--action", help="only actions starting so, e.g. request. or grant.revoke")
@click.option("--after", type=click.IntRange(0), help="the rows after this id (default: the latest ones)")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@data_option
@db_option
def audit_cmd(action: str | None, after: int | None, limit: int, as_json: bool, data: Path | None,
              database_url: str | None) -> None:
    """The append-only audit log: the latest --limit rows, or those after --after; oldest first."""
    with _opened(data, database_url) as (store, _):
        if after is None:
            rows = store.latest_audit((action or "",), limit=limit)[::-1]
        else:
            rows = store.audit_log(after=after, limit=limit, action=action)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        detail = " ".join(f"{k}={v}" for k, v in row["detail"].items())
        click.echo(f"{row['id']:>6}  {row['at'][:19]}  {row['actor']:<24}  {row['action']:<18} "
                   f"{row['target'] or ''}  {detail}".rstrip())
