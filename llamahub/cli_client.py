"""Client commands: ``login``, ``logout``, ``license``, ``enterprise``, ``download``,
``cache``, ``chat``.

``profile`` and ``license check`` are in :mod:`llamahub.cli_compliance`. Only click is imported
at module level; everything else loads inside the commands.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import click

from llamahub.cli_chat import chat
from llamahub.cli_compliance import _license_id, license_check, profile
from llamahub.errors import ConfigError


def _session(cfg: Any = None, *, echo: bool = True) -> Any:
    """A client session that starts the embedded hub when no hub is configured."""
    from llamahub.client.session import Session
    from llamahub.launcher import embedded_hub

    return Session(cfg, echo=(lambda m: click.echo(m, err=True)) if echo else None, embedded=embedded_hub)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


# --- login -----------------------------------------------------------------------------------------
# The hub's own rules for a new account, checked as they are typed so that a wrong answer is asked
# again (the hub checks them once more).


def _email(value: str) -> str:
    if not re.fullmatch(r"[^@\s]{1,64}@[^@\s]+\.[^@\s]+", value.strip()):
        raise click.BadParameter("not an email address (name@example.com)")
    return value.strip()


def _filled(value: str) -> str:
    if not value.strip():
        raise click.BadParameter("must not be blank")
    return value.strip()


def _country(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z]{2}", value.strip()):
        raise click.BadParameter("use a two-letter ISO 3166-1 code, e.g. US or DE (not the name)")
    return value.strip().upper()


def _checked(rule: Any) -> Any:
    return lambda _ctx, _param, value: value if value is None else rule(value)


def _ask(label: str, rule: Any) -> str:
    return str(click.prompt(label, value_proc=rule))


_QUESTIONS = {"email": ("email", _email), "name": ("name", _filled),
              "organisation": ("organisation", _filled),
              "country": ("country (two letters, e.g. US or DE)", _country)}


def _register(hub_url: str, answers: dict[str, str]) -> dict[str, Any]:
    """Register on the hub; an answer the hub refuses is asked again (at a terminal or a pipe)."""
    from llamahub.client.hubapi import HubClient
    from llamahub.errors import HubError

    with HubClient(hub_url) as anonymous:
        while True:
            try:
                return anonymous.register(**answers)
            except HubError as e:
                field = e.message.partition(":")[0]
                if e.code != "invalid_request" or field not in _QUESTIONS:
                    raise
                click.echo(f"Error: {e.message}", err=True)
                answers[field] = _ask(*_QUESTIONS[field])


@click.command()
@click.option("--hub", "hub_url", envvar="LLAMAHUB_HUB_URL", help="the hub's URL")
@click.option("--token", help="an API token you already have (else register a new account)")
@click.option("--email", callback=_checked(_email))
@click.option("--name", callback=_checked(_filled))
@click.option("--organisation", callback=_checked(_filled))
@click.option("--country", callback=_checked(_country), help="two-letter ISO code, e.g. US or DE")
def login(hub_url: str | None, token: str | None, email: str | None, name: str | None,
          organisation: str | None, country: str | None) -> None:
    """Use the hub at --hub: with --token, or by registering an account (prompts for what is missing)."""
    from dataclasses import replace

    from llamahub.client.config import load_config, save_config

    if not hub_url:
        raise ConfigError("which hub?", hint="pass --hub URL (without a hub, llamahub uses its embedded one)")
    cfg = load_config()
    hub_url = hub_url.rstrip("/")
    if not token:
        answers = {"email": email or _ask("email", _email), "name": name or _ask("name", _filled),
                   "organisation": organisation or _ask("organisation", _filled),
                   "country": country or _ask(_QUESTIONS["country"][0], _country)}
        answer = _register(hub_url, answers)
        token = answer["token"]
        click.echo(f"registered {answer['user']['email']} ({answer['user']['id']})")
    cfg = replace(cfg, hub_url=hub_url, token=token)
    with _session(cfg, echo=False) as session:
        user = session.hub.me()["user"]
        remote = session.hub.profile()
    profile = replace(cfg.profile, organisation=user["organisation"], country=user["country"],
                      mau=int(remote.get("mau") or 0), intended_uses=tuple(remote.get("intended_uses") or ()),
                      eu_domiciled=bool(remote.get("eu_domiciled")),
                      certifications=tuple(remote.get("certifications") or ()))
    path = save_config(replace(cfg, email=user["email"], profile=profile))
    click.echo(f"logged in to {hub_url} as {user['email']} ({user['organisation']}); saved to {path}")
    click.echo(f"the hub's keys are pinned in {session.trust.keys_path}")


@click.command()
def logout() -> None:
    """Forget the hub URL and token (back to the embedded hub). Cached models and receipts stay."""
    from dataclasses import replace

    from llamahub.client.config import load_config, save_config

    path = save_config(replace(load_config(), hub_url=None, token=None, email=None))
    click.echo(f"logged out; {path} now points at the embedded hub")


# --- license ---------------------------------------------------------------------------------------


def confirm(question: str, command: str) -> bool:
    """Ask a yes/no question; with no terminal to ask on, say how to answer up front (--yes)."""
    try:
        return click.confirm(question)
    except click.exceptions.Abort:
        if sys.stdin is None or not sys.stdin.isatty():
            raise ConfigError("this needs a yes, and there is no terminal to ask on",
                              hint=f"read the terms above, then run `{command} --yes`") from None
        raise


@click.group()
def license() -> None:
    """Read, accept and check license versions (each version is accepted separately)."""


license.add_command(license_check)


@license.command("show")
@click.argument("name")
def license_show(name: str) -> None:
    """A summary of the terms in llamahub's words, and where the full text is."""
    from llamahub.policy import license_terms
    from llamahub.policy.terms import render_rules, render_terms

    terms = license_terms(_license_id(name))
    click.echo(render_terms(terms), nl=False)
    click.echo(render_rules(terms), nl=False)
    click.echo(f"The exact text an acceptance records is on your hub, at /api/licenses/{terms.id}/text "
               f"(a page to open in a browser). Accept with `llamahub license accept {terms.id}`.")


@license.command("accept")
@click.argument("name")
@click.option("--yes", is_flag=True, help="accept without asking (scripts)")
def license_accept(name: str, yes: bool) -> None:
    """Accept a license version on the hub; keeps the hub's signed receipt for offline use."""
    import hashlib

    from llamahub.policy import license_terms
    from llamahub.policy.terms import render_terms

    terms = license_terms(_license_id(name))
    with _session() as session:
        session.require_account()
        text = session.hub.license_text(terms.id)
        click.echo(render_terms(terms), nl=False)
        question = f"Do you accept the {terms.title} on behalf of {session.cfg.profile.organisation}?"
        if not yes and not confirm(question, f"llamahub license accept {terms.id}"):
            click.echo("not accepted; nothing was sent to the hub")
            raise SystemExit(1)
        done = session.accept(terms.id, hashlib.sha256(text.encode("utf-8")).hexdigest())
    receipt = done["receipt"]
    verb = "accepted" if done["created"] else "already accepted"
    click.echo(f"{verb} {terms.title} at {receipt['accepted_at']}; signed receipt "
               f"{receipt['acceptance_id']} stored in {session.trust.receipt_path(terms.id)}")


@license.command("status")
@click.option("--json", "as_json", is_flag=True)
def license_status(as_json: bool) -> None:
    """Which license versions you accepted (receipts verified against the hub's pinned keys)."""
    from llamahub.errors import HubUnreachableError, OfflineError
    from llamahub.policy import load_licenses

    with _session(echo=False) as session:
        try:
            session.sync_receipts()
            where = "hub and local receipts"
        except (HubUnreachableError, OfflineError):
            where = "local receipts only (hub not reachable)"
        accepted = session.trust.accepted()
        hub = session.cfg.hub_url or "the embedded hub (not logged in to any hub)"
        elsewhere = _accepted_elsewhere(session.trust.root)
    rows = [{"id": t.id, "title": t.title, "accepted_at": accepted.get(t.id),
             "accepted_on_other_hubs": elsewhere.get(t.id, [])} for t in load_licenses().values()]
    if as_json:
        click.echo(json.dumps({"hub": hub, "source": where, "licenses": rows}, indent=2))
        return
    click.echo(f"receipts of {hub} ({where})")
    for r in rows:
        state = f"accepted {r['accepted_at']}" if r["accepted_at"] else "not accepted"
        click.echo(f"  {r['id']:12} {state:40} {r['title']}")
        if not r["accepted_at"] and r["accepted_on_other_hubs"]:
            click.echo(f"  {'':12} (accepted on {', '.join(r['accepted_on_other_hubs'])}: "
                       "`llamahub login --hub URL` uses that hub again)")


def _accepted_elsewhere(current: Any) -> dict[str, list[str]]:
    """{license id: [hub folder names]} of verified receipts kept for other hubs than ``current``."""
    from llamahub.client.trust import TrustStore

    out: dict[str, list[str]] = {}
    for folder in sorted(current.parent.iterdir()) if current.parent.is_dir() else []:
        if folder != current and folder.is_dir():
            for license_id in TrustStore(folder).accepted():
                out.setdefault(license_id, []).append(folder.name)
    return out


# --- enterprise requests ------------------------------------------------------------------------------


@click.group()
def enterprise() -> None:
    """Ask the hub for an enterprise grant above a license's monthly-active-user threshold."""


@enterprise.command("request")
@click.option("--family", "families", multiple=True, required=True,
              help="a model family, e.g. llama-2 (repeat for more)")
@click.option("--mau", type=click.IntRange(1), help="monthly active users to cover (default: your profile's)")
@click.option("--note", default="", help="what the models are for, for the reviewer")
@click.option("--use", "uses", multiple=True, help="a prohibited or unclear AUP category to ask an exception "
              "for (research, public interest; repeat)")
def enterprise_request(families: tuple[str, ...], mau: int | None, note: str, uses: tuple[str, ...]) -> None:
    """Submit a request; an operator of the hub approves or denies it (or asks for more information)."""
    with _session(echo=False) as session:
        session.require_account()
        mau = mau or session.cfg.profile.mau
        if not mau:
            raise ConfigError("how many monthly active users should the grant cover?",
                              hint="pass --mau N, or declare it with `llamahub profile set --mau N`")
        request = session.hub.request_enterprise(list(families), mau, note, list(uses))["request"]
    click.echo(f"submitted {request['id']}: {', '.join(request['families'])} for {request['organisation']}, "
               f"up to {request['mau']:,} monthly active users")
    click.echo("an operator of the hub reviews it; `llamahub enterprise status` shows the decision")


@enterprise.command("status")
@click.option("--json", "as_json", is_flag=True)
def enterprise_status(as_json: bool) -> None:
    """Your requests and their decisions."""
    with _session(echo=False) as session:
        session.require_account()
        rows = session.hub.enterprise_requests()["requests"]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no enterprise requests; `llamahub enterprise request --family F --mau N` submits one")
    for r in rows:
        click.echo(f"{r['id']}  {r['status']:9}  {', '.join(r['families'])}  up to {r['mau']:,} MAU  "
                   f"(submitted {r['created_at'][:19]})")
        if r["grant_id"]:
            click.echo(f"    grant {r['grant_id']}: downloads above the threshold work now")
        if r["decision_note"]:
            click.echo(f"    {r['decision_note']}")
        if r.get("status") == "needs_info":
            click.echo(f"    the reviewer asks: {r.get('info_request')}  "
                       f"(`llamahub enterprise answer {r['id']} \"...\"`)")


@enterprise.command("answer")
@click.argument("request_id")
@click.argument("answer")
def enterprise_answer(request_id: str, answer: str) -> None:
    """Answer the reviewer's question on a request (its status is needs_info)."""
    with _session(echo=False) as session:
        session.require_account()
        session.hub.answer_enterprise(request_id, answer)
    click.echo(f"answered; {request_id} is back with the reviewer")


@enterprise.command("withdraw")
@click.argument("request_id")
def enterprise_withdraw(request_id: str) -> None:
    """Withdraw a request that is still pending."""
    with _session(echo=False) as session:
        session.require_account()
        session.hub.withdraw_enterprise(request_id)
    click.echo(f"withdrew {request_id}")


# --- download and cache ------------------------------------------------------------------------------


@click.command()
@click.argument("name")
@click.option("--source", help="hub (default), meta-url, local, or a plugin's source (`llamahub plugins`)")
@click.option("--meta-url", help="a presigned URL with '*', as Meta emails it (implies --source meta-url)")
@click.option("--from", "folder", help="a local folder or file:// URL (implies --source local), or a mirror "
                                       "such as s3://BUCKET/PREFIX or az://ACCOUNT/CONTAINER/PREFIX")
@click.option("--force", is_flag=True, help="fetch again even if an intact copy is cached")
@click.option("--trust-unverified", is_flag=True,
              help="accept files the source has no checksum for (the cache records them as unverified)")
@click.option("--no-progress", is_flag=True, help="no progress bar")
def download(name: str, source: str | None, meta_url: str | None, folder: str | None, force: bool,
             trust_unverified: bool, no_progress: bool) -> None:
    """Fetch a variant into the cache (after the license gates) and verify it."""
    from llamahub.api import progress_default
    from llamahub.client.fetch import FetchReport, ensure, source_for
    from llamahub.registry import resolve

    if meta_url and folder:
        raise ConfigError("give either --meta-url or --from, not both", hint="pick one source")
    mirror = folder is not None and source_for(folder) is not None
    if not mirror:
        _check_location(meta_url, folder)
    source = source or ("meta-url" if meta_url else "local" if folder and not mirror else None)
    variant = resolve(name)
    report = FetchReport()
    with _session() as session:
        try:
            snap = ensure(variant, session, source=source, location=meta_url or folder,
                          progress=not no_progress and progress_default(), force=force, report=report,
                          trust_unverified=trust_unverified)
        except KeyboardInterrupt:
            click.echo(f"\ninterrupted: what arrived is kept; `llamahub download {name}` resumes", err=True)
            raise
    if report.cached:
        click.echo(f"{variant.name} is cached and intact: {snap.root}")
        return
    resumed = f"{_human(report.resumed_bytes)} resumed from an earlier run, " if report.resumed_bytes else ""
    unverified = snap.origin.get("unverified")
    checked = f"{len(unverified)} file(s) UNVERIFIED (--trust-unverified)" if unverified else "verified"
    click.echo(f"{variant.name}: downloaded {_human(report.downloaded_bytes)} ({resumed}"
               f"{report.reused_files} files reused from the cache), {checked}: {snap.root}")


def _check_location(meta_url: str | None, folder: str | None) -> None:
    """Refuse a source location that cannot work before anything else (even a cached copy) is used."""
    from pathlib import Path
    from urllib.parse import unquote, urlsplit

    if folder is not None:
        path = Path(unquote(urlsplit(folder).path)) if folder.startswith("file://") else Path(folder)
        if not path.exists():
            raise ConfigError(f"--from {folder} is not a folder: nothing is there",
                              hint="give the folder of a Meta or Hugging Face download")
    if meta_url is not None and (not meta_url.startswith(("http://", "https://")) or "*" not in meta_url):
        raise ConfigError(f"--meta-url has no '*' to replace with a file path, or is not http(s): {meta_url}",
                          hint="paste the whole URL from Meta's email, quoted, '*' and all")


@click.group()
def cache() -> None:
    """The local cache of downloaded variants (LLAMAHUB_CACHE)."""


def _cache() -> Any:
    from llamahub.client.cache import Cache
    from llamahub.client.config import load_config

    return Cache(load_config().cache)


@cache.command("ls")
@click.option("--json", "as_json", is_flag=True)
def cache_ls(as_json: bool) -> None:
    """Cached variants: snapshot, size, where they came from."""
    c = _cache()
    snaps = c.snapshots()
    if as_json:
        click.echo(json.dumps([{"variant": s.variant, "snapshot": s.id, "bytes": s.bytes, "path": str(s.root),
                                "origin": s.origin, "created_at": s.created_at,
                                "unverified": s.origin.get("unverified", [])} for s in snaps], indent=2))
        return
    click.echo(f"cache: {c.root}")
    for s in snaps:
        where = s.origin.get("hub") or s.origin.get("url") or s.origin.get("folder") or ""
        unverified = "  UNVERIFIED" if s.origin.get("unverified") else ""
        click.echo(f"  {s.variant:32} {s.id}  {_human(s.bytes):>10}  {s.created_at}  "
                   f"{s.origin.get('source', '?')} {where}".rstrip() + unverified)
    if not snaps:
        click.echo("  (empty; `llamahub download NAME` fills it)")


@cache.command("rm")
@click.argument("names", nargs=-1, required=True)
def cache_rm(names: tuple[str, ...]) -> None:
    """Remove variants (and the blobs no other cached variant shares)."""
    from llamahub.registry import resolve

    c = _cache()
    for name in names:
        variant = resolve(name).name
        if c.current(variant) is None:
            raise ConfigError(f"{variant} is not cached", hint="`llamahub cache ls` lists what is")
        click.echo(f"removed {variant}: freed {_human(c.remove(variant))}")


@cache.command("verify")
@click.argument("names", nargs=-1)
def cache_verify(names: tuple[str, ...]) -> None:
    """Re-hash every cached file; damaged blobs are deleted so the next download fetches them again."""
    from llamahub.errors import CacheError
    from llamahub.registry import resolve

    c = _cache()
    wanted = {resolve(n).name for n in names}
    snaps = [s for s in c.snapshots() if not wanted or s.variant in wanted]
    bad = 0
    for s in snaps:
        problems = c.check(s, full=True)
        bad += len(problems)
        click.echo(f"{s.variant}: {'ok' if not problems else f'{len(problems)} damaged'} "
                   f"({len(s.files)} files, {_human(s.bytes)})")
        for p in problems:
            click.echo(f"  {p.path}: {p.reason}")
        c.discard(problems)
    if bad:
        raise CacheError(f"{bad} damaged file(s) found and removed from the cache",
                         hint="run `llamahub download NAME` online to fetch them again")


# --- link ---------------------------------------------------------------------------------------------


@click.command("link")
@click.argument("family")
@click.option("--variant", is_flag=True, help="FAMILY names one variant rather than a family")
@click.option("--hub", "hub_url", envvar="LLAMAHUB_HUB_URL", help="the hub's URL (env LLAMAHUB_HUB_URL)")
@click.option("--token", envvar="LLAMAHUB_TOKEN", help="your API token (env LLAMAHUB_TOKEN)")
@click.option("--json", "as_json", is_flag=True, help="the hub's whole answer, as JSON")
def link(family: str, variant: bool, hub_url: str | None, token: str | None, as_json: bool) -> None:
    """Print a signed download link for FAMILY, as Meta's email does.

    Uses --hub/--token when given, else the configured hub (`llamahub login`), else the embedded one.
    """
    from dataclasses import replace

    from llamahub.client.config import load_config

    cfg = load_config()
    if hub_url:
        cfg = replace(cfg, hub_url=hub_url.rstrip("/"), token=token or cfg.token)
    with _session(cfg, echo=False) as session:
        session.require_account()
        data = session.hub.issue_link(**{"variant" if variant else "family": family})
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(data["url"])
    click.echo(f"# {', '.join(data['variants'])}; expires {data['expires']}; {data['max_downloads']} "
               "downloads per file. Replace * with a file path, e.g. LICENSE.", err=True)


COMMANDS = (login, logout, profile, license, enterprise, download, cache, chat, link)
