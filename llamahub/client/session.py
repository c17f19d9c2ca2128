"""One client session: the configuration, the hub (configured or embedded), pinned keys, receipts,
and the local license gates.

The local gates run the same pure policy functions as the hub, on the licenses whose receipts
verify and the organisation's signed grants, before any download starts. Online they take the
local profile, and a monthly-active-users refusal is left to the hub to confirm. Every online
session refreshes the hub-signed profile, grants and revocation list
(:mod:`llamahub.client.credentials`); offline the gates take that signed profile, never the local
one, so a local edit cannot lift a refusal the hub would give.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from llamahub.client.config import ClientConfig, LocalProfile, load_config
from llamahub.client.credentials import Credentials
from llamahub.client.hubapi import HubClient
from llamahub.client.trust import TrustStore
from llamahub.errors import AuthenticationError, HubError, HubUnreachableError, OfflineError, ReceiptError
from llamahub.interfaces import HubAccess
from llamahub.policy import Decision, Profile, check
from llamahub.registry import Variant

# Left to the hub when online: it knows the organisation's enterprise grants.
HUB_DECIDES = frozenset({"mau_over_threshold"})


# Starts an embedded hub for a profile and returns (url, token); given by the layer above.
EmbeddedStarter = Callable[[LocalProfile, Callable[[str], None]], tuple[str, str]]


class Session:
    """``embedded`` starts a hub when none is configured (the launcher above the client and the
    hub passes it); without it an unconfigured session says how to configure one."""

    def __init__(self, cfg: ClientConfig | None = None, *, echo: Callable[[str], None] | None = None,
                 embedded: EmbeddedStarter | None = None) -> None:
        self.cfg = cfg or load_config()
        self.echo = echo or (lambda _m: None)
        self.trust = TrustStore(self.cfg.hub_state_dir())
        self._embedded = embedded
        self._hub: HubClient | None = None

    @property
    def embedded(self) -> bool:
        return self.cfg.hub_url is None

    def close(self) -> None:
        if self._hub is not None:
            self._hub.close()
            self._hub = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the hub -----------------------------------------------------------------------------------

    @property
    def hub(self) -> HubClient:
        """The hub client; starts the embedded hub if none is configured. Never in offline mode."""
        if self._hub is None:
            if self.cfg.offline:
                raise OfflineError("offline mode is on (LLAMAHUB_OFFLINE=1) and this needs the hub",
                                   hint="unset LLAMAHUB_OFFLINE to go online")
            if self.embedded:
                url, token = self._start_embedded()
                self._hub = HubClient(url, token)
            else:
                assert self.cfg.hub_url is not None
                self._hub = HubClient(self.cfg.hub_url, self.cfg.token)
            self.trust.pin(self._hub.keys())
            if self.embedded:
                self._sync_embedded_profile()
            self.sync_credentials()
        return self._hub

    def credentials(self) -> Credentials:
        return Credentials(self.cfg.hub_state_dir(), self.trust.public_keys())

    def sync_credentials(self) -> None:
        """Keep the hub-signed profile, grants and revocations (an older hub without them is skipped)."""
        assert self._hub is not None
        if not self.embedded and not self.cfg.token:
            return
        try:
            self.credentials().save(self._hub.credentials())
        except (HubError, ReceiptError) as e:
            self.echo(f"note: signed profile and grants not refreshed: {e.message}")

    def _start_embedded(self) -> tuple[str, str]:
        if self._embedded is None:
            raise HubUnreachableError("no hub is configured",
                                      hint="run `llamahub login --hub URL` or set LLAMAHUB_HUB_URL")
        return self._embedded(self.cfg.profile, self.echo)

    def access(self) -> HubAccess:
        """The narrow view of the hub that download sources get."""
        return _SessionHub(self)

    def require_account(self) -> None:
        if not self.embedded and not self.cfg.token:
            raise AuthenticationError(f"no API token for the hub at {self.cfg.hub_url}",
                                      hint="run `llamahub login` (or set LLAMAHUB_TOKEN)")

    def _sync_embedded_profile(self) -> None:
        """The local profile is the truth for the embedded hub: push it when they differ."""
        assert self._hub is not None
        want = self.cfg.profile.hub_body()
        have = self._hub.profile()
        if any(have.get(k) != v for k, v in want.items()):
            self._hub.set_profile(want)

    # --- receipts and gates --------------------------------------------------------------------

    def sync_receipts(self) -> dict[str, dict[str, Any]]:
        """Fetch this account's acceptances from the hub and keep their verified receipts."""
        self.require_account()
        status = self.hub.license_status()
        out = {}
        for item in status["licenses"]:
            if item.get("receipt"):
                out[item["id"]] = self.trust.save_receipt(item["receipt"])
        return out

    def accept(self, license_id: str, text_sha256: str | None = None) -> dict[str, Any]:
        self.require_account()
        answer = self.hub.accept(license_id, text_sha256)
        payload = self.trust.save_receipt(answer["receipt"])
        return {"created": answer["created"], "receipt": payload}

    def profile(self, accepted: dict[str, str]) -> Profile:
        """Online: the local profile (the hub checks its own copy). Offline: the hub-signed one."""
        if self.cfg.offline:
            signed = self.credentials().profile(accepted)
            if signed is None:
                raise ReceiptError("no hub-signed profile is stored on this machine, so the license gates "
                                   "cannot run offline", hint="go online once (`llamahub license status`)")
            return signed
        p = self.cfg.profile
        return Profile(organisation=p.organisation, mau=p.mau, intended_uses=p.intended_uses,
                       accepted=accepted, country=p.country, eu_domiciled=p.eu_domiciled,
                       certifications=p.certifications, mau_at=p.mau_at)

    def gate(self, variant: Variant) -> Decision:
        """The local license decision for ``variant``; raises the LicenseError of a refusal.

        Receipts stored on this machine count as acceptances; online, a missing receipt is first
        looked up on the hub. A refusal the hub may overrule (MAU with a grant) is returned, not
        raised, when online, so that the hub decides.
        """
        now, grants = dt.datetime.now(dt.UTC), self.credentials().grants()
        decision = check(self.profile(self.trust.accepted()), variant, grants, now)
        if decision.code == "license_not_accepted":
            if self.cfg.offline:
                self.trust.receipt(variant.license)  # raises ReceiptError saying what is wrong with it
            self.sync_receipts()
            decision = check(self.profile(self.trust.accepted()), variant, self.credentials().grants(), now)
        if not decision.allowed and not (decision.code in HUB_DECIDES and not self.cfg.offline):
            decision.raise_if_denied()
        return decision


class _SessionHub:
    """``HubAccess`` over a session: the hub starts (or is contacted) on first use."""

    def __init__(self, session: Session) -> None:
        self._session = session

    @property
    def url(self) -> str:
        return self._session.hub.url

    @property
    def embedded(self) -> bool:
        return self._session.embedded

    def require_account(self) -> None:
        self._session.require_account()

    def issue_link(self, variant: str) -> dict[str, Any]:
        return self._session.hub.issue_link(variant)

    def manifest(self, link_url: str) -> dict[str, Any]:
        return self._session.hub.manifest(link_url)
