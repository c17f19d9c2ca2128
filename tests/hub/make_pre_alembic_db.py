"""Make ``data/hub-main-7e6b78a.db``: a hub database written by the code on main at 7e6b78a, the last
hub before Alembic, for tests/hub/test_alembic.py.

Run from the repository: ``python tests/hub/make_pre_alembic_db.py``. It extracts that commit with
``git archive`` into a temporary folder and runs its own store there, so the file holds exactly what
that code writes: an operator, users of one organisation (a founder and a pending look-alike), a
profile with MAU over 2^31, an acceptance, a grant, a pending request, an imported variant with a
file over 2 GiB, a link with bytes served, and their audit rows.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

COMMIT = "7e6b78a"
HERE = Path(__file__).resolve().parent
OUT = HERE / "data" / f"hub-main-{COMMIT}.db"
SCRIPT = """
import sys
from pathlib import Path
from llamahub.hub import enterprise
from llamahub.hub.store import FileRecord, Store

store = Store.for_dir(Path(sys.argv[1]))
store.create_all()
store.create_admin_token("admin")
store.add_key("k1", "-----BEGIN PUBLIC KEY-----\\nnot a real key\\n-----END PUBLIC KEY-----\\n")
mega, _ = store.create_user("ceo@megacorp.example", "CEO", "MegaCorp", "US")
look, _ = store.create_user("eve@example.com", "Eve", "  megacorp ", "US")
store.set_profile(mega["id"], {"mau": 3_000_000_000, "intended_uses": ["chatbot"],
                               "certifications": ["SOC 2"], "mau_at": {"llama2": 2_500_000_000}},
                  as_of={"llama2": "2023-07-18"})
store.accept_license(mega["id"], "llama2", "ab" * 32)
org = store.membership(mega["id"])["org_id"]
grant = store.create_grant(org, ["llama-2"], 5_000_000_000, "2026-01-01T00:00:00+00:00",
                           "2027-01-01T00:00:00+00:00", actor="operator:admin", uses=["research"])
enterprise.submit(store, mega, ["llama-3.1"], 900_000_000, "a support bot")
big = FileRecord("llama-2-70b/consolidated.00.pth", "cd" * 32, "ef" * 16, 17_246_588_928)
store.record_variant("llama-2-70b", "llama-2", "llama2", "meta", [big])
policy = {"v": 1, "link_id": "l1", "resource": "https://hub/dl/llama-2/*", "expires": 4_102_444_800}
store.create_link("l1", mega["id"], "llama-2", "k1", policy, 4_102_444_800, 5, grants=[grant["id"]])
store.reserve_bytes("l1", big.path, 3_000_000_000, need=3_000_000_000, allowance=5 * big.size)
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
