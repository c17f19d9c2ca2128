"""Every hook a llamahub plugin can implement. One module; hooks only ever gain arguments.

A plugin is a module (registered through the ``llamahub`` entry-point group) with functions
decorated by ``llamahub.hookimpl``. Registration hooks hand objects to a ``register``
callback; llamahub owns the collections. An implementation may take fewer arguments than the
spec (pluggy passes only the ones it names).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from llamahub.interfaces import Backend, Finetuner, LoadOptions, Source
    from llamahub.registry import Variant

hookspec = pluggy.HookspecMarker("llamahub")
hookimpl = pluggy.HookimplMarker("llamahub")


@hookspec
def register_backends(register: Callable[[Backend], None]) -> None:
    """Register backends (objects following ``llamahub.interfaces.Backend``). All impls run."""


@hookspec
def register_sources(register: Callable[[Source], None]) -> None:
    """Register download sources (``llamahub.interfaces.Source``). All impls run."""


@hookspec
def register_finetuners(register: Callable[[Finetuner], None]) -> None:
    """Register fine-tuning methods (``llamahub.interfaces.Finetuner``). All impls run."""


@hookspec
def register_variants(register: Callable[[Variant], None]) -> None:
    """Register extra variants (e.g. a fine-tune) next to the shipped registry. All impls run."""


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add subcommands to the ``llamahub`` command line. All impls run."""


@hookspec(firstresult=True)
def select_backend(variant: Variant, options: LoadOptions, candidates: Sequence[Backend]) -> Any:
    """Pick a backend among ``candidates`` (all available and able to run ``variant``).

    Stops at the first non-None result, which must be one of ``candidates`` (or its name).
    Returning None leaves the choice to llamahub (highest priority whose memory estimate fits).
    An explicit ``backend=`` from the user always wins over this hook.
    """
