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


def test_run_save_records_provenance(llama2_debug_folder: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    import json

    import llamahub
    from llamahub.errors import OutputUseError
    from llamahub.finetune import check_data

    saved = tmp_path / "out.jsonl"
    for extra in ([], ["--chat"]):
        code = main(["run", str(llama2_debug_folder), "hello", "-n", "3", "-t", "0", "--save", str(saved),
                     *extra])
        assert code == 0, capsys.readouterr().err
    text, dialog = (json.loads(line) for line in saved.read_text().splitlines())
    assert text["source_model"] == dialog["source_model"] == "llama-debug-2-chat"
    assert text["text"].startswith("hello") and dialog["messages"][0]["content"] == "hello"
    assert check_data(saved, llamahub.variant("llama-3-8b")) == []  # the debug license lets outputs train
    saved.write_text(json.dumps({**text, "source_model": "llama-3-8b-instruct"}) + "\n")
    with pytest.raises(OutputUseError):
        check_data(saved, llamahub.variant("llama-2-7b"))


def test_chat_save_records_the_dialog(llama2_debug_folder: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import json

    saved = tmp_path / "chat.jsonl"
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\nagain\n\n"))
    args = ["chat", str(llama2_debug_folder), "-n", "3", "--system", "be brief", "--save", str(saved)]
    assert main(args) == 0
    [record] = [json.loads(line) for line in saved.read_text().splitlines()]
    assert record["source_model"] == "llama-debug-2-chat"
    assert [m["role"] for m in record["messages"]] == ["system", "user", "assistant", "user", "assistant"]
