"""``llamahub mirror``: fill an organisation's own mirror (S3, Azure Blob, a plugin's) from the cache."""

from __future__ import annotations

import click


@click.group()
def mirror() -> None:
    """Your organisation's mirrors of the weights (S3 buckets, Azure containers)."""


@mirror.command("push")
@click.argument("name")
@click.argument("location")
@click.option("--source", help="the mirror source to use (default: the one for LOCATION's scheme)")
@click.option("--no-progress", is_flag=True, help="no progress bar while the variant is fetched")
def push(name: str, location: str, source: str | None, no_progress: bool) -> None:
    """Upload a cached, verified variant (fetched first if needed) to LOCATION in Meta's layout.

    LOCATION is e.g. s3://BUCKET/PREFIX or az://ACCOUNT/CONTAINER/PREFIX; the mirror gets Meta's
    checklists too, so `llamahub download NAME --from LOCATION` verifies it even without a hub.
    """
    from llamahub.api import progress_default
    from llamahub.cli_client import _human, _session
    from llamahub.client.mirror import push as push_variant
    from llamahub.registry import resolve

    variant = resolve(name)
    with _session() as session:
        sent = push_variant(variant, session, location, source=source, echo=click.echo,
                            progress=not no_progress and progress_default())
    click.echo(f"{variant.name}: {_human(sent)} pushed to {location.partition('?')[0]}")
