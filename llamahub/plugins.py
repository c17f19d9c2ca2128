"""The plugin manager: entry-point group ``llamahub``, an allowlist, loaded once and lazily.

In-tree plugins (``backends/``, ``plugins/``) are found exactly like third-party ones: through
their entry points. ``LLAMAHUB_PLUGINS=cpu,hub`` loads only the named entry points;
``LLAMAHUB_PLUGINS=`` (empty) loads none. A plugin that fails to import is reported by
``llamahub plugins`` instead of crashing the program.
"""

from __future__ import annotations

import importlib.metadata as md
import logging
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pluggy

from llamahub import hookspecs
from llamahub.errors import PluginError

if TYPE_CHECKING:
    from llamahub.interfaces import Backend, Finetuner, Source
    from llamahub.registry import Registry, Variant

GROUP = "llamahub"
ALLOWLIST_ENV = "LLAMAHUB_PLUGINS"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PluginRecord:
    name: str
    module: str
    distribution: str | None
    version: str | None
    error: str | None = None


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pm: pluggy.PluginManager | None = None
        self.records: list[PluginRecord] = []
        self.catalogue: tuple[frozenset[object], Registry] | None = None


_state = _State()


def new_manager() -> pluggy.PluginManager:
    """An empty manager with llamahub's hookspecs and no plugins (tests register their own)."""
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    return pm


def _allowlist() -> set[str] | None:
    raw = os.environ.get(ALLOWLIST_ENV)
    if raw is None:
        return None
    return {n.strip() for n in raw.split(",") if n.strip()}


def load_entry_points(pm: pluggy.PluginManager) -> list[PluginRecord]:
    """Import and register every allowed entry point of the group; record failures."""
    allowed = _allowlist()
    records = []
    for ep in sorted(md.entry_points(group=GROUP), key=lambda e: e.name):
        if allowed is not None and ep.name not in allowed:
            continue
        dist = ep.dist.name if ep.dist else None
        version = ep.dist.version if ep.dist else None
        try:
            plugin = ep.load()
            if pm.get_plugin(ep.name) is None:
                pm.register(plugin, name=ep.name)
            records.append(PluginRecord(ep.name, ep.value, dist, version))
        except Exception as e:  # a broken plugin must not take llamahub down
            log.warning("plugin %s failed to load: %s", ep.name, e)
            records.append(PluginRecord(ep.name, ep.value, dist, version, error=f"{type(e).__name__}: {e}"))
    return records


def manager() -> pluggy.PluginManager:
    """The process-wide manager; entry points are loaded on first use, once."""
    with _state.lock:
        if _state.pm is None:
            pm = new_manager()
            _state.records = load_entry_points(pm)
            _state.pm = pm
        return _state.pm


def install(pm: pluggy.PluginManager | None, records: list[PluginRecord] | None = None) -> None:
    """Replace the process-wide manager (tests use this; None means "load again lazily")."""
    with _state.lock:
        _state.pm = pm
        _state.records = list(records or [])
        _state.catalogue = None


def records() -> list[PluginRecord]:
    manager()
    return list(_state.records)


def _collect(hook_name: str) -> list[Any]:
    items: list[Any] = []
    getattr(manager().hook, hook_name)(register=items.append)
    return items


def _by_name(items: list[Any], kind: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        name = getattr(item, "name", None)
        if not isinstance(name, str):
            raise PluginError(f"a plugin registered a {kind} without a name: {item!r}",
                              hint="give the object a `name` string attribute")
        if name in out:
            raise PluginError(f"two plugins registered a {kind} named {name!r}",
                              hint=f"uninstall one, or limit plugins with {ALLOWLIST_ENV}")
        out[name] = item
    return out


def backends() -> dict[str, Backend]:
    return _by_name(_collect("register_backends"), "backend")


def sources() -> dict[str, Source]:
    return _by_name(_collect("register_sources"), "source")


def finetuners() -> dict[str, Finetuner]:
    return _by_name(_collect("register_finetuners"), "finetuner")


def plugin_variants() -> list[Variant]:
    from llamahub.registry import validate

    return [validate(v, "a plugin's variants") for v in _collect("register_variants")]


def catalogue() -> Registry:
    """The shipped variants, every plugin's (validated alike) and the local derivatives (fine-tunes
    made here), built once per plugin set and derivative records."""
    from llamahub import derivatives
    from llamahub.registry import Registry, shipped

    # changes when plugins or derivative records do
    key = frozenset([*(id(p) for p in manager().get_plugins()), derivatives.stamp()])
    cached = _state.catalogue
    if cached is not None and cached[0] == key:
        return cached[1]
    reg = Registry(shipped())
    for v in plugin_variants():
        reg.add(v)
    for v in derivatives.variants():
        if v.name not in {x.name for x in reg}:
            reg.add(v)
    _state.catalogue = (key, reg)
    return reg


def resolve(name: str) -> Variant:
    """A variant by name, alias or Hugging Face repo id, among shipped and plugin variants."""
    return catalogue().resolve(name)


def variants() -> list[Variant]:
    return list(catalogue())


def plugin_names() -> dict[str, str]:
    """name -> module of every registered plugin."""
    pm = manager()
    return {name: getattr(p, "__name__", repr(p)) for name, p in pm.list_name_plugin() if p is not None}
