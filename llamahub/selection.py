"""Backend selection: explicit choice > ``select_backend`` hook > best available that fits."""

from __future__ import annotations

from typing import TYPE_CHECKING

import psutil

from llamahub import plugins
from llamahub.errors import NoBackendError, PluginError

if TYPE_CHECKING:
    from llamahub.interfaces import Backend, LoadOptions
    from llamahub.registry import Variant


def refusal(backend: Backend, variant: Variant, options: LoadOptions, available: int) -> str | None:
    """Why ``backend`` will not run ``variant`` here (None when it will)."""
    try:
        why = backend.unavailable_reason() or backend.unsupported_reason(variant, options)
        if why:
            return why
        need = backend.memory_estimate(variant, options)
    except Exception as e:  # a plugin's probe must not break selection
        return f"its checks failed: {type(e).__name__}: {e}"
    if need > available:
        return f"needs {need / 2**30:.1f} GiB of memory, {available / 2**30:.1f} GiB available"
    return None


def choose(variant: Variant, options: LoadOptions, *, available: int | None = None) -> Backend:
    installed = plugins.backends()
    free = psutil.virtual_memory().available if available is None else available
    reasons = {name: refusal(b, variant, options, free) for name, b in installed.items()}
    if options.backend:
        if options.backend not in installed:
            raise NoBackendError(variant.name, {options.backend: "not installed"} | {
                n: r or "available" for n, r in reasons.items()})
        why = reasons[options.backend]
        if why:
            raise NoBackendError(variant.name, {options.backend: why})
        return installed[options.backend]
    candidates = [installed[n] for n, r in reasons.items() if r is None]
    if not candidates:
        raise NoBackendError(variant.name, {n: r or "" for n, r in reasons.items()})
    picked = plugins.manager().hook.select_backend(variant=variant, options=options,
                                                   candidates=candidates)
    if picked is not None:
        name = picked if isinstance(picked, str) else getattr(picked, "name", None)
        match = [b for b in candidates if b.name == name]
        if not match:
            raise PluginError(f"select_backend returned {picked!r}, which is not a candidate",
                              hint="a select_backend hook must return one of its candidates")
        return match[0]
    return max(candidates, key=lambda b: b.priority)
