"""Compliance commands: ``profile show/set`` (MAU today and per license version, uses,
certifications) and ``license check`` (the output-use, naming and language rules).

Only click is imported at module level; everything else loads inside the commands.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

import click

from llamahub.errors import ConfigError


def _license_id(name: str) -> str:
    """A license id from a license id, a family or a variant name."""
    from llamahub.errors import RegistryError, UnknownVariantError
    from llamahub.policy import load_licenses
    from llamahub.registry import default_registry

    licenses = load_licenses()
    if name in licenses:
        return name
    for terms in licenses.values():
        if terms.covers(name):
            return terms.id
    try:
        return default_registry().resolve(name).license
    except UnknownVariantError:
        close = difflib.get_close_matches(name, sorted(licenses), n=3, cutoff=0.5)
        raise RegistryError(f"no license, family or variant named {name!r}",
                            hint=(f"did you mean {', '.join(close)}? " if close else "")
                            + f"licenses: {', '.join(sorted(licenses))}") from None


def _dated(values: tuple[str, ...]) -> dict[str, int]:
    """``--mau-at LICENSE=N`` values as {license id: N} (a family or variant names its license)."""
    out = {}
    for value in values:
        name, sep, figure = value.partition("=")
        if not sep or not figure.strip().replace("_", "").isdigit():
            raise ConfigError(f"--mau-at {value!r} is not LICENSE=N",
                              hint="e.g. --mau-at llama2=500000000 (users in the calendar month before "
                                   "that version's release date)")
        out[_license_id(name.strip())] = int(figure.strip().replace("_", ""))
    return out


@click.group()
def profile() -> None:
    """The organisation profile the license gates check (MAU, intended uses, certifications)."""


@profile.command("show")
@click.option("--json", "as_json", is_flag=True)
def profile_show(as_json: bool) -> None:
    """The profile saved locally: organisation, country, MAU (today and per license), uses."""
    from dataclasses import asdict

    from llamahub.client.config import load_config
    from llamahub.policy import license_terms

    p = asdict(load_config().profile)
    if as_json:
        click.echo(json.dumps(p, indent=2))
        return
    dated = p.pop("mau_at")
    for key, value in p.items():
        shown = "not declared" if value is None else value
        click.echo(f"{key:15} {', '.join(value) if isinstance(value, list | tuple) else shown}")
    for license_id, mau in sorted(dated.items()):
        click.echo(f"{'mau at':15} {license_id}: {mau:,} (the calendar month before "
                   f"{license_terms(license_id).mau_measured_on.isoformat()})")


def _changes(mau: int | None, mau_at: tuple[str, ...], uses: tuple[str, ...], certifications: tuple[str, ...],
             eu: bool | None) -> dict[str, Any]:
    from llamahub.policy import validate_uses

    given = {"mau": mau, "mau_at": _dated(mau_at) if mau_at else None,
             "intended_uses": validate_uses(uses) if uses else None,
             "certifications": tuple(certifications) if certifications else None, "eu_domiciled": eu}
    return {k: v for k, v in given.items() if v is not None}


@profile.command("set")
@click.option("--mau", type=click.IntRange(0), help="monthly active users of your products and services "
              "today")
@click.option("--mau-at", "mau_at", multiple=True, metavar="LICENSE=N",
              help="users over the calendar month before that license version's release date, which is "
                   "what its MAU clause counts (repeat; a family or variant names its license)")
@click.option("--use", "uses", multiple=True, help="an intended use id (repeat); replaces the list")
@click.option("--certification", "certifications", multiple=True,
              help="a certification the organisation holds (repeat); replaces the list")
@click.option("--organisation")
@click.option("--country", help="two-letter ISO code")
@click.option("--eu/--no-eu", "eu", default=None, help="the organisation is domiciled in the EU")
def profile_set(mau: int | None, mau_at: tuple[str, ...], uses: tuple[str, ...],
                certifications: tuple[str, ...], organisation: str | None, country: str | None,
                eu: bool | None) -> None:
    """Change the fields given, and only those; saved locally and sent to the hub (every change is
    recorded there)."""
    from llamahub.cli_client import _session
    from llamahub.client.config import load_config, save_config, with_profile
    from llamahub.errors import HubUnreachableError

    sent = _changes(mau, mau_at, uses, certifications, eu)
    local = dict(sent)
    cfg = load_config()
    if "mau_at" in local:
        local["mau_at"] = {**cfg.profile.mau_at, **local["mau_at"]}
    if organisation:
        local["organisation"] = organisation
    if country:
        local["country"] = country.upper()
    cfg = with_profile(cfg, **local)
    save_config(cfg)
    shown = "not declared" if cfg.profile.mau is None else f"{cfg.profile.mau:,}"
    dated = "".join(f"; {k}: {v:,}" for k, v in sorted(cfg.profile.mau_at.items()))
    click.echo(f"profile: MAU {shown}{dated}; uses {', '.join(cfg.profile.intended_uses) or 'none'}")
    if cfg.offline or not sent:
        return
    try:
        with _session(cfg, echo=False) as session:
            if not session.embedded:
                session.require_account()
                body = {k: list(v) if isinstance(v, tuple) else v for k, v in sent.items()}
                session.hub.update_profile(body)
                session.sync_credentials()  # the hub-signed profile the offline gates use
            else:
                session.hub.profile()  # starting the embedded hub syncs it
        click.echo(f"sent to the hub ({'embedded' if cfg.hub_url is None else cfg.hub_url})")
    except HubUnreachableError as e:
        click.echo(f"warning: saved locally only: {e.message}", err=True)


@click.command("check")
@click.argument("variant")
@click.option("--train-other", is_flag=True, help="may its outputs train a model under another license "
              "(e.g. a non-Llama model)?")
@click.option("--outputs-to", metavar="VARIANT", help="may its outputs train this variant?")
@click.option("--name", help="may a model made from it be distributed under this name?")
@click.option("--language", help="may it be fine-tuned or used for this language?")
@click.option("--json", "as_json", is_flag=True)
def license_check(variant: str, train_other: bool, outputs_to: str | None, name: str | None,
                  language: str | None, as_json: bool) -> None:
    """Ask the license rules one question; exits 1 when the answer is no."""
    from llamahub.compliance import license_check as ask

    try:
        ruling = ask(variant, train_other=train_other, outputs_to=outputs_to, name=name, language=language)
    except TypeError:
        raise ConfigError("ask exactly one question",
                          hint="give one of --train-other, --outputs-to VARIANT, --name NAME, "
                               "--language LANGUAGE") from None
    if as_json:
        click.echo(json.dumps(ruling.as_dict(), indent=2))
    else:
        click.echo(f"{ruling.asked}\n{'yes' if ruling.allowed else 'no'}: {ruling.rule} "
                   f"({ruling.license}, clause {ruling.clause or 'not named'})")
        for duty in ruling.obligations:
            click.echo(f"  obligation: {duty}")
        if ruling.note:
            click.echo(f"  note: {ruling.note}")
        if ruling.suggestion:
            click.echo(f"  suggestion: {ruling.suggestion}")
    if not ruling.allowed:
        raise SystemExit(1)
