"""Client configuration: file, environment overrides, owner-only permissions."""

from __future__ import annotations

from pathlib import Path

import pytest

from llamahub.client.config import EMBEDDED, LocalProfile, load_config, save_config, with_profile
from llamahub.errors import ConfigError


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("LLAMAHUB_HUB_URL", "LLAMAHUB_TOKEN", "LLAMAHUB_CACHE", "LLAMAHUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LLAMAHUB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_defaults_mean_the_embedded_hub(home: Path) -> None:
    cfg = load_config()
    assert cfg.hub_url is None and cfg.token is None and cfg.hub_id == EMBEDDED
    assert cfg.cache == home / "cache" and not cfg.offline


def test_saved_config_round_trips_with_owner_only_permissions(home: Path) -> None:
    cfg = with_profile(load_config(), mau=12, intended_uses=("chatbot",))
    from dataclasses import replace

    path = save_config(replace(cfg, hub_url="http://hub.example:8000", token="lh_secret"))
    assert path.stat().st_mode & 0o777 == 0o600
    again = load_config()
    assert again.hub_url == "http://hub.example:8000" and again.token == "lh_secret"
    assert again.profile == LocalProfile(mau=12, intended_uses=("chatbot",))
    assert again.hub_id == "hub.example_8000"


def test_environment_wins(home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from dataclasses import replace

    save_config(replace(load_config(), hub_url="http://a:1", token="lh_a"))
    monkeypatch.setenv("LLAMAHUB_HUB_URL", "http://b:2/")
    monkeypatch.setenv("LLAMAHUB_CACHE", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("LLAMAHUB_OFFLINE", "1")
    cfg = load_config()
    assert cfg.hub_url == "http://b:2"
    assert cfg.token is None  # the saved token belongs to another hub
    assert cfg.cache == tmp_path / "elsewhere" and cfg.offline
    monkeypatch.setenv("LLAMAHUB_TOKEN", "lh_b")
    assert load_config().token == "lh_b"


def test_broken_config_file_is_a_clear_error(home: Path) -> None:
    (home / "config").mkdir(parents=True)
    (home / "config" / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read") as e:
        load_config()
    assert "llamahub login" in (e.value.hint or "")
