"""A third-party backend distribution, installed on sys.path with its own entry point, loads a
variant through the public plugin API only (llamahub.plugin), with its own generation loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PLUGIN = '''
"""A third-party backend: the reference model in fp32, sampled by its own greedy loop."""
import llamahub.plugin as lp


class EchoBackend:
    name = "echo"
    priority = 99
    description = "third-party test backend"
    dtypes = ("fp32",)
    devices = ("cpu",)

    def unavailable_reason(self):
        return None

    def unsupported_reason(self, variant, options):
        return None if options.dtype in (None, "fp32") else "fp32 only"

    def plan(self, variant, options):
        return lp.MemoryPlan(host_bytes=variant.param_count() * 4, dtype="fp32")

    def capacity(self):
        return lp.Capacity(host_bytes=2**40)

    def load(self, artifacts, variant, options):
        import torch

        ref = lp.open_reference(artifacts, variant, options)
        model = lp.build_model(ref.args, ref.reader.state_dict(ref.rope_layout), torch.float32,
                               rope_layout=ref.rope_layout)
        calls = []

        def generator(prompts, max_new_tokens, sampling, stop_ids):
            calls.append(len(prompts))
            (ids,) = prompts
            ids = list(ids)
            with torch.inference_mode():
                for _ in range(max_new_tokens):
                    logits = model(torch.tensor([ids]), use_cache=False)[0, -1]
                    tok = int(logits.argmax())
                    ids.append(tok)
                    yield [tok]
                    if tok in stop_ids:
                        return

        return lp.LlamaModel(None, ref.tokenizer, variant, backend=self.name, dtype="fp32",
                             generator=generator, info={"calls": calls})


@lp.hookimpl
def register_backends(register):
    register(EchoBackend())
'''

DRIVER = '''
import json, sys
import llamahub
from llamahub import plugins

folder = sys.argv[1]
m = llamahub.load(folder)  # priority 99: chosen over the in-tree cpu backend
ours = m.generate("Once upon a time", max_new_tokens=6, temperature=0)
ref = llamahub.load(folder, backend="cpu", dtype="fp32").generate("Once upon a time", max_new_tokens=6,
                                                                  temperature=0)
rec = [r.__dict__ for r in plugins.records() if r.name == "echo"]
print(json.dumps({"backend": m.backend, "calls": m.info["calls"], "ours": ours, "ref": ref, "record": rec}))
'''


@pytest.fixture
def site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    (site / "llamahub_echo").mkdir(parents=True)
    (site / "llamahub_echo" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    dist = site / "llamahub_echo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: llamahub-echo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[llamahub]\necho = llamahub_echo\n")
    return site


def test_a_third_party_backend_loads_a_variant_through_its_entry_point(site: Path, tmp_path: Path,
                                                                       llama2_debug_folder: Path) -> None:
    env = os.environ | {"PYTHONPATH": str(site), "LLAMAHUB_HOME": str(tmp_path / "home")}
    env.pop("LLAMAHUB_PLUGINS", None)
    out = subprocess.run([sys.executable, "-c", DRIVER, str(llama2_debug_folder)], capture_output=True,
                         text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["backend"] == "echo" and got["calls"] == [1]  # its own generation loop ran
    assert got["ours"] == got["ref"] and got["ours"]  # the same greedy text as the in-tree backend
    assert got["record"][0]["distribution"] == "llamahub-echo" and got["record"][0]["error"] is None
    listed = subprocess.run([sys.executable, "-m", "llamahub.cli", "plugins", "--json"], capture_output=True,
                            text=True, timeout=120, env=env)
    backends = json.loads(listed.stdout)["backends"]
    assert backends["echo"]["available"] and backends["echo"]["priority"] == 99
