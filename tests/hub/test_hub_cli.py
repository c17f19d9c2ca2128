"""`llamahub hub init|serve` and `llamahub link` on their error paths (in-process; no server started)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from llamahub import crypto
from llamahub.cli import main


def test_init_creates_an_owner_only_key_and_an_admin_token(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "hub"
    assert main(["hub", "init", "--data", str(data), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    key_file = Path(out["key_file"])
    assert key_file.parent == data / "keys" and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert crypto.key_id(crypto.load_private_key(key_file)) == out["key_id"]
    assert out["admin_token"].startswith("lha_")
    assert out["admin_token"].encode() not in (data / "hub.db").read_bytes()
    assert stat.S_IMODE((data / "hub.db").stat().st_mode) == 0o600  # accounts and token hashes
    assert main(["hub", "init", "--data", str(data)]) == 1
    err = capsys.readouterr().err
    assert "already initialised" in err and "next:" in err


@pytest.mark.parametrize("command", [["serve", "--port", "1"], ["requests", "list"], ["grants", "list"],
                                     ["audit"], ["seed-demo"]])
def test_a_folder_that_is_not_a_hub_is_refused_and_left_alone(tmp_path: Path, command: list[str],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    typo = tmp_path / "typo"
    assert main(["hub", *command, "--data", str(typo)]) == 1
    err = capsys.readouterr().err
    assert f"{typo} is not a hub" in err and f"llamahub hub init --data {typo}" in err
    assert not typo.exists()  # no hub.db, no blobs/ left behind
    existing = tmp_path / "existing"
    existing.mkdir()
    assert main(["hub", *command, "--data", str(existing)]) == 1
    assert list(existing.iterdir()) == []


def test_help_text_of_every_hub_command(capsys: pytest.CaptureFixture[str]) -> None:
    for group in (["hub"], ["hub", "requests"], ["hub", "grants"], ["profile"]):
        assert main([*group, "--help"]) == 0
        listing = capsys.readouterr().out.split("Commands:")[1]
        for line in listing.strip().splitlines():
            assert len(line.split()) > 1, f"{' '.join(group)}: {line.strip()} has no help text"


def test_link_without_a_configured_hub_asks_the_embedded_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["link", "llama-2"]) == 1  # the embedded hub runs the gates: nothing accepted yet
    assert "run `llamahub license accept llama2`" in capsys.readouterr().err
    assert main(["link", "llama-2", "--hub", "http://127.0.0.1:9", "--token", "t"]) == 1
    assert "cannot reach the hub" in capsys.readouterr().err
