"""What a new user trips over (issue 21), each checked with the real ``llamahub`` command against a
real hub: chat past the context, argument checks before output, Ctrl-C at the chat prompt."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from conftest import Client, MakeClient
from hubtest import CLI

CHAT = "llama-debug-2-chat"  # a 512-token context


def _chat(client: Client, *args: str) -> subprocess.Popen:
    return subprocess.Popen([*CLI, "chat", CHAT, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=os.environ | client.env)


def test_chat_drops_old_turns_when_the_dialog_outgrows_the_context(make_client: MakeClient) -> None:
    client = make_client()
    turns = [" ".join(["the"] * 150) + f" turn {i}" for i in range(3)]  # ~160 tokens each
    huge = " ".join(["the"] * 700)  # more than the whole context
    lines = [*turns, huge, "short one", ""]
    proc = _chat(client, "--system", "Be brief.", "-n", "100", "--seed", "0", "-t", "0")
    out, err = proc.communicate("\n".join(lines) + "\n", timeout=300)
    assert proc.returncode == 0, err
    assert out.count("model> ") == 4  # three long turns and the short one; the huge one refused
    assert "oldest messages)" in err and "outgrew the 512-token context" in err
    assert "no room left for an answer" in err and "next: send a shorter message" in err
    assert "Traceback" not in err


def test_ctrl_c_at_the_chat_prompt_ends_the_line_and_says_so(make_client: MakeClient) -> None:
    client = make_client()
    proc = _chat(client)
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + 120
    while not seen.endswith("you> "):
        assert time.monotonic() < deadline and proc.poll() is None, seen
        seen += proc.stdout.read(1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert (seen + out).endswith("you> \n")
    assert "aborted" in err


def test_run_checks_its_arguments_before_printing(make_client: MakeClient) -> None:
    client = make_client()
    long_prompt = " ".join(["llama"] * 600)
    too_long = client.cli("run", CHAT, long_prompt, "-n", "4")
    assert too_long.returncode == 1
    assert too_long.stdout == ""  # the prompt is not echoed
    assert too_long.stderr.startswith("error: prompt of") and "next: " in too_long.stderr
    for args in (["-n", "0"], ["--threads", "0"], ["-t", "-1"]):
        bad = client.cli("run", CHAT, "hi", *args)
        assert bad.returncode == 2 and bad.stdout == "", (args, bad.stdout)
        assert "Invalid value" in bad.stderr and "range" in bad.stderr
    ok = client.cli("run", CHAT, "hi", "-n", "3", "--seed", "0")
    assert ok.returncode == 0 and ok.stdout.startswith("hi") and ok.stdout.endswith("\n"), ok.stderr
