"""Shared fixtures. Tests never autoload entry-point plugins: each test registers what it needs.

The ``hub`` fixture is a real hub on 127.0.0.1: `llamahub hub init`, `seed-demo`, `import` and
`serve` run as subprocesses, once per session. It serves the llama-debug variants and
llama-debug-big-25m. Every test makes its own users, so tests do not depend on each other.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest
from hubtest import NO_RATE_LIMITS, Account, Hub, MakeUser, init_hub, run_cli, serving

from llamahub.model.writer import generate_checkpoint
from llamahub.registry import resolve as registry_variant

ROOT = Path(__file__).resolve().parents[1]
LLAMA2_TOKENIZER = ROOT.parent / "shared" / "data" / "llama2-tokenizer.model"


@pytest.fixture
def llama2_tokenizer_path() -> Path:
    """The real Llama 2 SentencePiece model from ../shared/data; skips when it is absent."""
    if not LLAMA2_TOKENIZER.is_file():
        pytest.skip(f"real Llama 2 tokenizer not found at {LLAMA2_TOKENIZER}")
    return LLAMA2_TOKENIZER


@pytest.fixture(scope="session", autouse=True)
def kernel_builds(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One CPU-kernel build folder for every test process (tests/backends/test_kernels.py checks
    the default, ``<cache>/kernels``): each test's own cache would compile it again (a minute).
    pytest's cache dir keeps the build between runs."""
    cache = getattr(request.config, "cache", None)
    folder = cache.mkdir("llamahub-kernels") if cache else tmp_path_factory.mktemp("kernels")
    with pytest.MonkeyPatch.context() as m:
        m.setenv("LLAMAHUB_CPU_KERNEL_DIR", str(folder))
        yield folder


@pytest.fixture(autouse=True)
def llamahub_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own config, data and cache dirs: never the user's, never another test's."""
    for var in ("LLAMAHUB_HUB_URL", "LLAMAHUB_TOKEN", "LLAMAHUB_CACHE", "LLAMAHUB_OFFLINE",
                "LLAMAHUB_HUB_DATA"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path_factory.mktemp("llamahub-home")
    monkeypatch.setenv("LLAMAHUB_HOME", str(home))
    monkeypatch.setenv("LLAMAHUB_PROGRESS", "0")
    return home


@pytest.fixture(autouse=True)
def plugin_manager():
    """A fresh plugin manager per test with the in-tree CPU backend and sources, registered by hand."""
    import llamahub_cpu
    import llamahub_sources

    from llamahub import plugins

    pm = plugins.new_manager()
    pm.register(llamahub_cpu, name="cpu")
    pm.register(llamahub_sources, name="sources")
    plugins.install(pm)
    yield pm
    plugins.install(None)


@pytest.fixture(scope="session")
def debug_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Meta-layout download roots of the llama-debug variants (generated once per session)."""
    import torch

    from llamahub.model.writer import generate_checkpoint
    from llamahub.registry import _builtin

    root = tmp_path_factory.mktemp("debug-meta")
    for name in ("llama-debug-2-chat", "llama-debug-3.1-instruct"):
        generate_checkpoint(_builtin().resolve(name), root / name, dtype=torch.float32)
    return root


@pytest.fixture
def llama2_debug_folder(debug_root: Path) -> Path:
    return debug_root / "llama-debug-2-chat" / "llama-debug-2-chat"


@pytest.fixture
def llama3_debug_folder(debug_root: Path) -> Path:
    return debug_root / "llama-debug-3.1-instruct" / "llama-debug-3.1-instruct"


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    data = tmp_path_factory.mktemp("hub-data")
    admin_token = init_hub(data)
    big = registry_variant("llama-debug-big-25m")
    generate_checkpoint(big, data / "big-src")
    imported = run_cli("hub", "import", str(data / "big-src"), "--variant", big.name, "--data", str(data))
    assert imported.returncode == 0, imported.stderr
    with serving(data, admin_token, *NO_RATE_LIMITS) as (h, _):
        yield h


@pytest.fixture
def make_user(hub: Hub) -> MakeUser:
    """Register a user; by default with a modest profile and the llama-debug license accepted."""

    def make(*, mau: int | None = 1_000, uses: Sequence[str] = ("chatbot",),
             certifications: Sequence[str] = (), accept: Sequence[str] = ("llama-debug",),
             organisation: str | None = None) -> Account:
        tag = uuid.uuid4().hex[:10]
        org = organisation or f"Org {tag}"
        response = httpx.post(f"{hub.url}/api/users", json={
            "email": f"user-{tag}@example.com", "name": f"U {tag}", "organisation": org, "country": "us"})
        assert response.status_code == 201, response.text
        body = response.json()
        account = Account(body["user"]["id"], body["user"]["email"], org, body["token"],
                          hub.client(body["token"]))
        if mau is not None:
            r = account.http.put("/api/profile", json={"mau": mau, "intended_uses": list(uses),
                                                       "certifications": list(certifications)})
            assert r.status_code == 200, r.text
        for license_id in accept:
            r = account.http.post(f"/api/licenses/{license_id}/accept")
            assert r.status_code == 201, r.text
        return account

    return make
