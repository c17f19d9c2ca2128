"""Make ``data/hub-main-d32997c.db``: a hub database written by the code on main at d32997c (before
organisations were records), for tests/hub/test_migration.py.

Run from the repository: ``python tests/hub/make_legacy_db.py``. It extracts that commit with
``git archive`` into a temporary folder and runs its own store there, so the file holds exactly
what that code writes: users of "MegaCorp" and of the look-alike "  megacorp ", a grant to the
organisation string "MegaCorp", a pending request, a profile and a nameless admin token.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

COMMIT = "d32997c"
HERE = Path(__file__).resolve().parent
OUT = HERE / "data" / f"hub-main-{COMMIT}.db"
SCRIPT = """
import sys
from pathlib import Path
from llamahub.hub import enterprise
from llamahub.hub.store import Store

store = Store.for_dir(Path(sys.argv[1]))
store.create_all()
store.create_admin_token("operator")
mega, _ = store.create_user("ceo@megacorp.example", "CEO", "MegaCorp", "US")
look, _ = store.create_user("eve@example.com", "Eve", "  megacorp ", "US")
other, _ = store.create_user("ada@other.example", "Ada", "Other Ltd", "GB")
store.set_profile(mega["id"], mau=1_500_000_000, intended_uses=["chatbot"], certifications=["SOC 2"],
                  eu_domiciled=False)
store.create_grant("MegaCorp", ["llama-2"], None, "2026-01-01T00:00:00+00:00", None, actor="admin")
enterprise.submit(store, other, ["llama-3.1"], 900_000_000, "a support bot")
store.close()
"""


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src, data = Path(tmp) / "src", Path(tmp) / "data"
        src.mkdir()
        archive = subprocess.run(["git", "archive", COMMIT], cwd=HERE.parents[1], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
        (src / "llamahub_registry").symlink_to(src / "registry")
        subprocess.run([sys.executable, "-c", SCRIPT, str(data)], check=True, cwd=src,
                       env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"})
        OUT.parent.mkdir(exist_ok=True)
        OUT.unlink(missing_ok=True)
        with sqlite3.connect(data / "hub.db") as source, sqlite3.connect(OUT) as target:
            source.backup(target)  # one file, the WAL folded in
        target.close()
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
