"""The command line, run as a user runs it (a real subprocess of the installed entry point)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXE = shutil.which("llamahub") or str(Path(sys.executable).parent / "llamahub")


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=300, env=env)


def test_list_shows_every_family() -> None:
    out = run("list")
    assert out.returncode == 0
    for name in ("llama-2-70b-chat", "llama-3-8b-instruct", "llama-3.1-405b", "llama-3.2-1b-instruct"):
        assert name in out.stdout
    assert "debug: random weights" in out.stdout
    rows = json.loads(run("list", "--json", "--family", "llama-2").stdout)
    assert {r["family"] for r in rows} == {"llama-2"} and len(rows) == 6


def test_info() -> None:
    out = run("info", "llama-2-70b-chat")
    assert out.returncode == 0
    assert "8 kv heads" in out.stdout and "ffn 28672" in out.stdout and "8 shard" in out.stdout
    data = json.loads(run("info", "llama2:70b-chat", "--json").stdout)
    assert data["name"] == "llama-2-70b-chat" and data["architecture"]["dim"] == 8192


def test_unknown_name_is_a_clean_error() -> None:
    out = run("info", "llama-2-13-chat")
    assert out.returncode == 1
    assert "unknown variant" in out.stderr and "llama-2-13b-chat" in out.stderr
    assert "Traceback" not in out.stderr


def test_run_streams_generation(llama2_debug_folder: Path) -> None:
    out = run("run", str(llama2_debug_folder), "Once upon a time", "-n", "8", "--seed", "1",
              "--dtype", "fp32")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Once upon a time") and len(out.stdout) > len("Once upon a time\n")


def test_run_on_a_bad_folder(tmp_path: Path) -> None:
    out = run("run", str(tmp_path), "hi")
    assert out.returncode == 1 and "not a Llama checkpoint" in out.stderr and "next:" in out.stderr


def test_plugins_lists_in_tree_backend() -> None:
    out = run("plugins")
    assert out.returncode == 0
    assert "cpu" in out.stdout and "llamahub_cpu" in out.stdout and "available" in out.stdout
    data = json.loads(run("plugins", "--json").stdout)
    assert data["backends"]["cpu"]["available"] is True
    assert set(data["sources"]) == {"hub", "meta-url", "local", "huggingface", "s3", "azure-blob"}
    only_cpu = json.loads(run("plugins", "--json", env={**os.environ, "LLAMAHUB_PLUGINS": "cpu"}).stdout)
    assert only_cpu["sources"] == {} and "cpu" in only_cpu["backends"]


@pytest.mark.parametrize("allow", ["", "nothing"])
def test_plugins_allowlist_from_environment(allow: str) -> None:
    import os

    out = run("plugins", "--json", env={**os.environ, "LLAMAHUB_PLUGINS": allow})
    assert json.loads(out.stdout) == {"plugins": [], "backends": {}, "sources": {}}


def test_info_shows_what_fits_on_this_machine() -> None:
    out = run("info", "llama-2-70b")
    assert out.returncode == 0
    assert "on this machine" in out.stdout and "AVAILABLE" in out.stdout
    plans = json.loads(run("info", "llama-2-70b", "--json").stdout)["plans"]
    assert {(p["backend"], p["dtype"]) for p in plans} >= {("cpu", "bf16"), ("cpu", "fp32")}
    assert not any(p["fits"] for p in plans)  # 129 GiB in bf16 does not fit a 24 GiB machine
    small = json.loads(run("info", "llama-debug-2", "--json").stdout)["plans"]
    planned = [p for p in small if p["host_bytes"] is not None]  # the others say why not
    assert planned and all(p["fits"] and p["host_bytes"] < 2**30 for p in planned)
    assert all(p["refusal"] for p in small if p["host_bytes"] is None)


def test_dtype_choices_come_from_the_installed_backends() -> None:
    out = run("run", "llama-debug-2", "hi", "--dtype", "int9")
    assert out.returncode == 2 and "bf16, fp32" in out.stderr
    # cpu's, then llamacpp's, then cuda's (priority order)
    assert "[bf16|fp32|int8|int4|q8_0|fp16|q4_0|q4_k_m]" in run("run", "--help").stdout
    bad = run("run", "llama-debug-2", "hi", "-o", "tp")
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr


def test_a_backend_option_no_backend_takes_is_refused_before_any_download(tmp_path: Path) -> None:
    env = os.environ | {"LLAMAHUB_HOME": str(tmp_path), "LLAMAHUB_PROGRESS": "0"}
    out = run("run", "llama-debug-2", "hi", "-o", "flash=2", env=env)  # (tp=2 is the cuda backend's)
    assert out.returncode == 1 and "no options flash" in out.stderr and "no option flash" in out.stderr
    assert not (tmp_path / "cache" / "blobs").exists()


def test_a_name_is_never_read_as_a_folder_in_the_working_directory(tmp_path: Path,
                                                                   llama2_debug_folder: Path) -> None:
    shutil.copytree(llama2_debug_folder, tmp_path / "llama-debug-2-chatx")
    shutil.copy(llama2_debug_folder.parent / "tokenizer.model", tmp_path / "tokenizer.model")
    out = subprocess.run([EXE, "run", "llama-debug-2-chatx", "hi", "-n", "2"], capture_output=True,
                         text=True, timeout=300, cwd=tmp_path,
                         env=os.environ | {"LLAMAHUB_HOME": str(tmp_path / "home")})
    assert out.returncode == 1 and "unknown variant" in out.stderr and "./llama-debug-2-chatx" in out.stderr
    ok = subprocess.run([EXE, "run", "./llama-debug-2-chatx", "hi", "-n", "2", "-t", "0"],
                        capture_output=True, text=True, timeout=300, cwd=tmp_path,
                        env=os.environ | {"LLAMAHUB_HOME": str(tmp_path / "home")})
    assert ok.returncode == 0, ok.stderr


def test_list_takes_the_license_spelling_of_a_family_and_suggests_close_ones() -> None:
    by_license = run("list", "--family", "llama2")
    assert by_license.returncode == 0, by_license.stderr
    names = [line.split()[0] for line in by_license.stdout.splitlines()[1:]]
    assert len(names) == 6 and all(n.startswith("llama-2-") for n in names)
    assert run("list", "--family", "llama3.1", "--json").stdout.count('"family": "llama-3.1"') > 0
    typo = run("list", "--family", "lama-2")
    assert typo.returncode == 1 and "did you mean llama-2" in typo.stderr
    nope = run("list", "--family", "nope")
    assert nope.returncode == 1 and "no family named 'nope'" in nope.stderr
    assert "families: llama-2, llama-3" in nope.stderr and nope.stdout == ""


def test_list_columns_line_up_for_every_family() -> None:
    lines = run("list").stdout.splitlines()
    header = lines[0]
    for column in ("FAMILY", "SIZE", "KIND"):
        at = header.index(column)
        assert all(line[at - 1] == " " and line[at] != " " for line in lines[1:]), column


def test_info_shows_the_memory_of_tiny_variants() -> None:
    out = run("info", "llama-debug-2").stdout
    assert "0.0 GiB" not in out and "KiB bf16" in out
    assert "GiB bf16" in run("info", "llama-2-7b").stdout


def test_license_words_and_suggestions() -> None:
    shown = run("license", "show", "llama2")
    assert shown.returncode == 0 and ".." not in shown.stdout and "Meta Platforms, Inc." in shown.stdout
    unknown = run("license", "show", "llama9")
    assert unknown.returncode == 1
    assert "no license, family or variant named 'llama9'" in unknown.stderr
    assert "did you mean llama3, llama2" in unknown.stderr
    assert "licenses: llama-debug, llama2" in unknown.stderr
