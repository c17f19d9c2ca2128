"""llamahub.testing: the conformance checks pass on the in-tree plugins and catch broken ones."""

from __future__ import annotations

from pathlib import Path

import llamahub_cpu
import llamahub_sources
import pytest

from llamahub.interfaces import LoadOptions
from llamahub.testing import FakeHub, check_backend, check_source, tiny_artifacts


@pytest.mark.parametrize("fmt", ["meta", "hf"])
def test_cpu_backend_conforms(tmp_path: Path, fmt: str) -> None:
    artifacts, variant = tiny_artifacts(tmp_path, fmt=fmt)
    assert artifacts.formats >= {fmt, "tokenizer"}
    check_backend(llamahub_cpu.CpuBackend(), artifacts, variant)


def test_a_backend_breaking_the_contract_is_named(tmp_path: Path) -> None:
    class Sloppy(llamahub_cpu.CpuBackend):
        name = "sloppy"
        dtypes = ()

        def unsupported_reason(self, variant, options: LoadOptions) -> str | None:
            return None

        def unavailable_reason(self) -> str | None:
            raise RuntimeError("probing crashed")

    with pytest.raises(AssertionError) as e:
        check_backend(Sloppy())
    text = str(e.value)
    assert "'sloppy'" in text and "dtypes" in text and "never raise" in text and "unknown dtype" in text


def test_in_tree_sources_conform(tmp_path: Path) -> None:
    artifacts, variant = tiny_artifacts(tmp_path)
    hub = FakeHub(artifacts.root)
    sources = {}
    llamahub_sources.register_sources(lambda s: sources.setdefault(s.name, s))
    plan = check_source(sources["hub"], variant, hub)
    assert hub.issued == [variant.name]
    assert {f.path for f in plan.files} >= set(variant.meta_files()) - {"LICENSE", "USE_POLICY.md"}
    assert all(f.sha256 and f.size for f in plan.files)
    local = check_source(sources["local"], variant, hub, str(artifacts.root))
    assert {f.path for f in local.files} == set(variant.meta_files())
    assert [s.name for s in sources.values() if s.default] == ["hub"]
    assert [s.name for s in sources.values() if s.works_offline] == ["local"]


def test_the_in_tree_cuda_backend_meets_the_static_contract() -> None:
    import llamahub_cuda

    backends: list = []
    llamahub_cuda.register_backends(backends.append)
    for backend in backends:
        check_backend(backend)  # no artifacts: it runs only when asked for (device='cuda' or tp=N)
