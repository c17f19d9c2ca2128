"""Memory plans and backend selection, before any byte is fetched.

Every installed backend plans the variant (host bytes, bytes per device, devices) and says
what it has; the choice is: explicit ``backend=`` > ``select_backend`` hook > the highest
priority backend whose plan fits. A refusal carries the whole table and what would fit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from llamahub import plugins
from llamahub.errors import NoBackendError, PluginError

if TYPE_CHECKING:
    from llamahub.interfaces import Backend, Capacity, LoadOptions, MemoryPlan
    from llamahub.registry import Variant

GIB = 2**30


@dataclass(frozen=True)
class PlanRow:
    """One backend's answer for a variant: its plan, what it has, and why not (None = fits)."""

    backend: str
    dtype: str
    plan: MemoryPlan | None
    capacity: Capacity | None
    refusal: str | None

    @property
    def fits(self) -> bool:
        return self.refusal is None

    def need(self) -> str:
        if self.plan is None:
            return "-"
        return _bytes(self.plan.host_bytes, self.plan.device_bytes, self.plan.devices, self.plan.device)

    def have(self) -> str:
        c = self.capacity
        if c is None:
            return "-"
        return _bytes(c.host_bytes, c.device_bytes, c.devices, c.device)


def _bytes(host: int, per_device: int, devices: int, device: str) -> str:
    if devices:
        return f"{devices} x {per_device / GIB:.1f} GiB {device} + {host / GIB:.1f} GiB host"
    return f"{host / GIB:.1f} GiB"


def _dtype_of(backend: Backend, options: LoadOptions) -> str:
    dtypes = tuple(getattr(backend, "dtypes", ()) or ())
    return options.dtype or (dtypes[0] if dtypes else "")


def plan_row(backend: Backend, variant: Variant, options: LoadOptions) -> PlanRow:
    """``backend``'s plan for ``variant``; a plugin's failing probe becomes a refusal."""
    dtype = _dtype_of(backend, options)
    try:
        why = backend.unavailable_reason() or backend.unsupported_reason(variant, options)
        if why:
            return PlanRow(backend.name, dtype, None, None, why)
        plan, capacity = backend.plan(variant, options), backend.capacity()
    except Exception as e:  # a plugin's probe must not break selection
        return PlanRow(backend.name, dtype, None, None, f"its checks failed: {type(e).__name__}: {e}")
    return PlanRow(backend.name, plan.dtype or dtype, plan, capacity, capacity.shortfall(plan))


def plan_table(variant: Variant, options: LoadOptions) -> list[PlanRow]:
    """Every installed backend's row, highest priority first."""
    installed = sorted(plugins.backends().values(), key=lambda b: -b.priority)
    return [plan_row(b, variant, options) for b in installed]


def alternatives(variant: Variant, options: LoadOptions) -> list[PlanRow]:
    """Rows for every other dtype of every available backend (what would fit instead)."""
    rows = []
    for backend in sorted(plugins.backends().values(), key=lambda b: -b.priority):
        for dtype in getattr(backend, "dtypes", ()) or ():
            if dtype == _dtype_of(backend, options):
                continue
            row = plan_row(backend, variant, replace(options, dtype=dtype, backend=backend.name))
            if row.plan is not None:
                rows.append(row)
    return rows


def format_table(rows: list[PlanRow]) -> str:
    lines = [f"  {'BACKEND':12} {'DTYPE':6} {'NEEDS':>12}  {'AVAILABLE':>12}  FITS"]
    for r in rows:
        # a plan that does not fit is explained by its two columns; other refusals say why
        verdict = "yes" if r.fits else "no" if r.plan is not None else f"no: {r.refusal}"
        lines.append(f"  {r.backend:12} {r.dtype or '-':6} {r.need():>12}  {r.have():>12}  {verdict}")
    return "\n".join(lines)


def suggestion(variant: Variant, options: LoadOptions, rows: list[PlanRow]) -> str:
    """What would fit, e.g. "backend='cpu', dtype='int4' needs 35.8 GiB and fits"; else the
    smallest need of any installed backend and dtype."""
    alts = alternatives(variant, options)
    fitting = [r for r in alts if r.fits]
    if fitting:
        return "; ".join(f"backend={r.backend!r}, dtype={r.dtype!r} needs {r.need()} and fits"
                         for r in fitting[:3])
    planned = [r for r in [*rows, *alts] if r.plan is not None]
    if planned:
        small = min(planned, key=lambda r: _total(r.plan))  # type: ignore[arg-type]
        return (f"nothing installed fits this machine; the smallest is {small.dtype} on "
                f"{small.backend}, which needs {small.need()}")
    return ""


def _total(plan: MemoryPlan) -> int:
    return plan.host_bytes + plan.device_bytes * plan.devices


def refuse(variant: Variant, options: LoadOptions, rows: list[PlanRow]) -> NoBackendError:
    return NoBackendError(variant.name, {r.backend: r.refusal or "fits" for r in rows},
                          table=format_table(rows), instead=suggestion(variant, options, rows))


def choose(variant: Variant, options: LoadOptions) -> Backend:
    installed = plugins.backends()
    rows = plan_table(variant, options)
    if options.backend:
        if options.backend not in installed:
            raise NoBackendError(variant.name, {options.backend: "not installed"} | {
                r.backend: r.refusal or "available" for r in rows})
        (row,) = [r for r in rows if r.backend == options.backend]
        if not row.fits:
            raise refuse(variant, options, [row])
        return installed[options.backend]
    candidates = [installed[r.backend] for r in rows if r.fits]
    if not candidates:
        raise refuse(variant, options, rows)
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
