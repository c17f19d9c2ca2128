"""Dependencies run one way (DESIGN.md): checked over every import statement, lazy ones included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IN_TREE_PLUGINS = ("llamahub_cpu", "llamahub_cuda", "llamahub_llamacpp", "llamahub_tpu", "llamahub_sources",
                   "llamahub_mirrors", "llamahub_finetune")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] in ("backends", "plugins"):
        parts = parts[1:]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module a file imports; ``from llamahub import x`` counts as ``llamahub.x`` when x is
    a submodule, else as the package face ``llamahub``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                is_module = (ROOT / Path(*sub.split("."))).with_suffix(".py").is_file() or \
                    (ROOT / Path(*sub.split("."))).is_dir()
                found.add(sub if is_module else node.module)
    return found


def _graph() -> dict[str, set[str]]:
    files = [*ROOT.glob("llamahub/**/*.py"), *ROOT.glob("backends/*/**/*.py"),
             *ROOT.glob("plugins/*/**/*.py")]
    return {_module_name(p): {i for i in _imports(p) if i.split(".")[0] in ("llamahub", *IN_TREE_PLUGINS)}
            for p in files}


GRAPH = _graph()


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _violations(owner: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(f"{mod} imports {imp}" for mod, imps in GRAPH.items() if _within(mod, owner)
                  for imp in imps if any(_within(imp, f) for f in forbidden))


FACE = ("llamahub.api", "llamahub.cli", "llamahub.cli_client", "llamahub.cli_mirror", "llamahub.cli_serve",
        "llamahub.demo", "llamahub.launcher", "llamahub.finetune", "llamahub.cli_finetune")

RULES = {
    # module (and its submodules) -> what it must never import
    "llamahub.errors": ("llamahub.",),
    "llamahub.crypto": ("llamahub.client", "llamahub.hub", "llamahub.model", "llamahub.registry",
                        "llamahub.policy", "llamahub.plugins", *FACE),
    "llamahub.registry": ("llamahub.plugins", "llamahub.client", "llamahub.hub", "llamahub.policy",
                          "llamahub.model.checkpoint", "llamahub.model.transformer", *FACE),
    "llamahub.policy": ("llamahub.registry", "llamahub.model", "llamahub.client", "llamahub.hub",
                        "llamahub.plugins", *FACE),
    "llamahub.model": ("llamahub.registry", "llamahub.client", "llamahub.hub", "llamahub.policy",
                       "llamahub.plugins", "llamahub.interfaces", *FACE),
    "llamahub.interfaces": ("llamahub.client", "llamahub.hub", *FACE),
    "llamahub.hookspecs": ("llamahub.client", "llamahub.hub", *FACE),
    "llamahub.client": ("llamahub.hub", *FACE),
    "llamahub.hub": ("llamahub.client", *FACE),
    # The OpenAI-compatible server sits on the model layer only: it is handed loaded models by
    # `llamahub serve` (llamahub.cli_serve, part of the face), which loads them through load() and
    # its gates; so the server itself never downloads, never checks a license, never sees the hub.
    "llamahub.serve": ("llamahub.client", "llamahub.hub", "llamahub.registry", "llamahub.policy",
                       "llamahub.plugins", "llamahub.interfaces", *FACE),
}


@pytest.mark.parametrize("owner", sorted(RULES))
def test_dependencies_run_one_way(owner: str) -> None:
    assert any(_within(m, owner) for m in GRAPH), f"no module {owner}: update the rule"
    assert _violations(owner, RULES[owner]) == []


def test_nothing_below_the_face_imports_the_package_face() -> None:
    """`import llamahub` / `from llamahub import load`: only the face itself and tests may."""
    bad = sorted(f"{mod} imports the package face" for mod, imps in GRAPH.items()
                 if "llamahub" in imps and mod not in FACE and mod != "llamahub")
    assert bad == []


def test_the_core_never_imports_an_in_tree_plugin() -> None:
    bad = sorted(f"{mod} imports {imp}" for mod, imps in GRAPH.items() if _within(mod, "llamahub")
                 for imp in imps if imp.split(".")[0] in IN_TREE_PLUGINS)
    assert bad == []


def test_in_tree_plugins_use_only_the_public_plugin_api() -> None:
    allowed = ("llamahub.plugin", "llamahub.errors")
    bad = sorted(f"{mod} imports {imp}" for mod, imps in GRAPH.items()
                 if mod.split(".")[0] in IN_TREE_PLUGINS
                 for imp in imps
                 if imp.split(".")[0] == "llamahub" and not any(_within(imp, a) for a in allowed))
    assert bad == []


def test_the_graph_sees_lazy_imports() -> None:
    """The walk includes imports inside functions: the launcher's import of the hub app is found."""
    assert "llamahub.hub.app" in GRAPH["llamahub.launcher"]
    assert "llamahub.client.session" in GRAPH["llamahub.api"]
