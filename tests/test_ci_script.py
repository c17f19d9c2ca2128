"""The CI script (.ci/run): valid bash, installs without upgrading, cleans up the demo's home."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / ".ci" / "run"


def test_ci_script_parses() -> None:
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


def test_apt_installs_do_not_upgrade() -> None:
    installs = [line for line in SCRIPT.read_text().splitlines() if "apt-get install" in line]
    assert installs and all("--no-upgrade" in line for line in installs)


def test_the_demo_home_is_removed_on_exit() -> None:
    text = SCRIPT.read_text()
    made = re.search(r'^(\w+)="\$\(mktemp -d\)"$', text, flags=re.MULTILINE)
    assert made, "the demo's home should be a named temporary folder"
    name = made.group(1)
    assert f"trap 'rm -rf \"${name}\"' EXIT" in text
    assert f'LLAMAHUB_HOME="${name}"' in text and text.index("trap") < text.index("demo --yes")
