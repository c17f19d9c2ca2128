"""Client configuration: where the hub is, who you are, what you declared, where files go.

Sources, strongest first: environment variables (``LLAMAHUB_HUB_URL``, ``LLAMAHUB_TOKEN``,
``LLAMAHUB_CACHE``, ``LLAMAHUB_OFFLINE``), then ``config.json`` in the platform's config dir
(``platformdirs``; ``llamahub login`` and ``llamahub profile set`` write it). ``LLAMAHUB_HOME``
puts config, data and cache under one folder (handy for tests and throwaway setups).

With no hub URL configured the client uses the embedded hub (see ``llamahub/launcher.py``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from llamahub.errors import ConfigError
from llamahub.fsutil import atomic_write
from llamahub.paths import cache_dir, config_dir, data_dir

HUB_URL_ENV = "LLAMAHUB_HUB_URL"
TOKEN_ENV = "LLAMAHUB_TOKEN"
OFFLINE_ENV = "LLAMAHUB_OFFLINE"
EMBEDDED = "embedded"


def offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class LocalProfile:
    """What the organisation declares: checked locally before any download, and sent to the hub."""

    organisation: str = "Local developer"
    country: str = "US"
    mau: int | None = None  # today's figure; None: not declared (never taken as 0)
    intended_uses: tuple[str, ...] = ()
    eu_domiciled: bool = False
    certifications: tuple[str, ...] = ()
    mau_at: dict[str, int] = field(default_factory=dict)  # license id -> MAU as that version counts it

    def hub_body(self) -> dict[str, Any]:
        return {"mau": self.mau, "mau_at": dict(self.mau_at), "intended_uses": list(self.intended_uses),
                "certifications": list(self.certifications), "eu_domiciled": self.eu_domiciled}


@dataclass(frozen=True)
class ClientConfig:
    hub_url: str | None = None
    token: str | None = None
    email: str | None = None
    profile: LocalProfile = field(default_factory=LocalProfile)
    cache: Path = field(default_factory=cache_dir)
    offline: bool = False

    @property
    def hub_id(self) -> str:
        """A folder name for what this client keeps per hub (pinned keys, receipts)."""
        if self.hub_url is None:
            return EMBEDDED
        safe = "".join(c if c.isalnum() or c in "-." else "_" for c in self.hub_url.split("://")[-1])
        return safe.strip("_") or "hub"

    def hub_state_dir(self) -> Path:
        return data_dir() / "hubs" / self.hub_id


def config_path() -> Path:
    return config_dir() / "config.json"


def _read_file() -> dict[str, Any]:
    path = config_path()
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {path}: {e}",
                          hint=f"fix or delete {path}, then run `llamahub login` again") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path} does not hold a JSON object", hint=f"delete {path} and log in again")
    return data


def _profile(data: dict[str, Any]) -> LocalProfile:
    raw = data.get("profile") or {}
    known = {k: v for k, v in raw.items() if k in LocalProfile.__dataclass_fields__}
    for key in ("intended_uses", "certifications"):
        if key in known:
            known[key] = tuple(known[key])
    if "mau_at" in known:
        known["mau_at"] = dict(known["mau_at"] or {})
    return LocalProfile(**known)


def load_config() -> ClientConfig:
    """The configuration in effect: the file, overridden by environment variables."""
    data = _read_file()
    hub_url = os.environ.get(HUB_URL_ENV) or data.get("hub_url") or None
    token = os.environ.get(TOKEN_ENV) or (data.get("token") if hub_url == data.get("hub_url") else None)
    return ClientConfig(hub_url=hub_url.rstrip("/") if hub_url else None, token=token or None,
                        email=data.get("email"), profile=_profile(data), cache=cache_dir(),
                        offline=offline())


def save_config(cfg: ClientConfig) -> Path:
    """Write hub URL, token, email and profile (owner-only permissions: the token is a secret)."""
    path = config_path()
    profile = asdict(cfg.profile)
    body = {"hub_url": cfg.hub_url, "token": cfg.token, "email": cfg.email, "profile": profile}
    return atomic_write(path, json.dumps(body, indent=2), mode=0o600)


def with_profile(cfg: ClientConfig, **changes: Any) -> ClientConfig:
    return replace(cfg, profile=replace(cfg.profile, **changes))
