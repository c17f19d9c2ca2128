"""`llamahub demo`: the whole path of ``llamahub.load(name)`` on the embedded hub, step by step.

license summary → acceptance (signed receipt) → profile → signed link → verified download into
the cache → load on the CPU → chat. The variant is ``llama-debug-2-chat``: tiny random weights
(it talks gibberish), generated and imported by the embedded hub on first use.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from llamahub import plugins
from llamahub.errors import LicenseNotAcceptedError

DEMO_VARIANT = "llama-debug-2-chat"
DEMO_USE = "research"


def run_demo(*, yes: bool, confirm: Callable[[str], bool] | None = None, max_new_tokens: int = 24,
             progress: bool = True, echo: Callable[[str], None] = print) -> str:
    """Run every step on the embedded hub; returns the generated text."""
    from llamahub.api import load_snapshot
    from llamahub.client.config import load_config, save_config, with_profile
    from llamahub.client.fetch import FetchReport, ensure
    from llamahub.client.session import Session
    from llamahub.launcher import embedded_hub
    from llamahub.policy import license_terms
    from llamahub.policy.terms import render_terms

    v = plugins.resolve(DEMO_VARIANT)
    terms = license_terms(v.license)
    cfg = replace(load_config(), hub_url=None, token=None)  # the demo always runs on the embedded hub
    echo(f"1. variant    {v.name}: {v.family_title} ({v.param_count():,} parameters, random weights)")
    echo("2. license    " + render_terms(terms).strip().replace("\n", "\n             "))
    if not cfg.profile.intended_uses or cfg.profile.mau is None:
        uses = cfg.profile.intended_uses or (DEMO_USE,)
        cfg = with_profile(cfg, intended_uses=uses, mau=cfg.profile.mau or 0)
        save_config(replace(load_config(), profile=cfg.profile))
        echo(f"3. profile    declared intended use {uses[0]!r}, {cfg.profile.mau:,} monthly active users "
             "(change with `llamahub profile set`)")
    else:
        echo(f"3. profile    {cfg.profile.organisation}: {cfg.profile.mau or 0:,} MAU, uses "
             f"{', '.join(cfg.profile.intended_uses)}")
    with Session(cfg, echo=lambda m: echo(f"             {m}"), embedded=embedded_hub) as session:
        t = time.perf_counter()
        hub = session.hub
        echo(f"4. hub        embedded hub at {hub.url} ({time.perf_counter() - t:.1f}s), keys pinned")
        if not session.trust.accepted().get(terms.id):
            if not yes and not (confirm and confirm(f"Accept the {terms.title}?")):
                raise LicenseNotAcceptedError(f"the {terms.title} was not accepted",
                                              hint="run `llamahub demo --yes` to accept it")
            session.accept(terms.id)
        receipt = session.trust.receipt(terms.id)
        echo(f"5. accept     {terms.title} accepted at {receipt['accepted_at']}; signed receipt verified "
             "with the hub's pinned key")
        link = hub.issue_link(v.name)
        echo(f"6. link       {link['url'][:88]}…")
        echo(f"             (Meta's shape; expires {link['expires']}, "
             f"{link['max_downloads']} downloads per file)")
        report = FetchReport()
        snap = ensure(v, session, progress=progress, report=report)
    if report.cached:
        echo(f"7. download   already cached and intact: {snap.root}")
    else:
        echo(f"7. download   {report.downloaded_bytes:,} bytes, sha256 verified, cached in {snap.root} "
             f"({report.steps.get('download and verify', 0):.2f}s)")
    t = time.perf_counter()
    model = load_snapshot(snap, v)
    echo(f"8. load       backend {model.backend}, {model.dtype}, {time.perf_counter() - t:.2f}s")
    dialog = [{"role": "system", "content": "You are a terse assistant."},
              {"role": "user", "content": "Say hello to the new llamahub user."}]
    text = "".join(model.chat(dialog, max_new_tokens=max_new_tokens, temperature=0.8, seed=0, stream=True))
    model.close()
    echo(f"9. chat       {dialog[-1]['content']!r} → {text!r} (random weights: gibberish)")
    echo("done. Next: `llamahub list`; `llamahub license show llama2`; "
         "`llamahub.load('llama-debug-3.1-instruct')` in Python.")
    return text
