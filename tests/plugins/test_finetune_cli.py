"""``llamahub finetune`` and ``llamahub plugins`` in-process: output, errors and exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from llamahub.cli import main


def test_plugins_lists_the_methods(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "fine-tuning methods:" in out
    for name in ("lora", "full", "qat"):
        assert f"  {name} " in out


def test_finetune_command(llama2_debug_folder: Path, qa_data: Path, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text('method = "lora"\nrank = 4\nmax_steps = 3\nbatch_size = 4\nthreads = 1\n')
    code = main(["finetune", str(llama2_debug_folder), "--data", str(qa_data), "--output", "cli-tune",
                 "--config", str(config), "-s", "targets=q_proj,v_proj", "-s", "eval_every=1",
                 "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "over 3 steps" in out and "eval loss" in out
    assert "cli-tune: a lora fine-tune of llama-debug-2-chat (license llama-debug)" in out
    import llamahub
    from llamahub import derivatives

    assert llamahub.variant("cli-tune").license == "llama-debug"
    lineage = derivatives.lineage("cli-tune")
    assert lineage is not None
    assert lineage["config"]["rank"] == 4 and lineage["config"]["targets"] == ["wq", "wv"]


@pytest.mark.parametrize(("args", "message"), [
    (["--method", "qlora"], "no fine-tuning method named 'qlora'"),
    (["-s", "rank=zero"], "bad lora config"),
    (["--output", "Bad Name"], "'Bad Name' cannot name a variant"),
    (["--data", "/nonexistent.jsonl"], "no training data at /nonexistent.jsonl"),
])
def test_finetune_command_errors(llama2_debug_folder: Path, qa_data: Path, args: list[str],
                                 message: str, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["finetune", str(llama2_debug_folder), "--data", str(qa_data), "--output", "x-tune"]
    code = main(base + args)
    err = capsys.readouterr().err
    assert code == 1
    assert f"error: {message}" in err and "next:" in err
