"""What a new user trips over (issue 21), each checked with the real ``llamahub`` command against a
real hub: chat past the context, argument checks before output, Ctrl-C at the chat prompt."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from clienttest import Client, MakeClient
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


def _clean_env(client: Client, **extra: str) -> dict[str, str]:
    """The client's home but no hub or token from the environment (what `login` saved is used)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LLAMAHUB_")}
    return clean | {"LLAMAHUB_HOME": str(client.home), "LLAMAHUB_PROGRESS": "0"} | extra


def _run(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=180, env=env,
                          input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL)


def test_login_asks_a_bad_answer_again_with_the_rule(make_client: MakeClient) -> None:
    client = make_client()
    env = _clean_env(client)
    email = f"again-{os.getpid()}-{time.monotonic_ns()}@example.com"
    answers = ["not-an-email", email, " ", "Ada", "Acme", "Germany", "ZZ", "de"]  # ZZ: the hub's list
    login = _run(env, "login", "--hub", client.hub.url, stdin="\n".join(answers) + "\n")
    assert login.returncode == 0, login.stdout + login.stderr
    said = login.stdout + login.stderr
    assert "not an email address" in said and "must not be blank" in said
    assert "two-letter ISO 3166-1 code" in said and f"registered {email}" in login.stdout
    assert "Error: country: 'ZZ'" in said  # refused by the hub, then asked again
    bad_flag = _run(env, "login", "--hub", client.hub.url, "--country", "Germany")
    assert bad_flag.returncode == 2 and "two-letter" in bad_flag.stderr


def test_hub_refusals_are_worded_for_the_cli(make_client: MakeClient) -> None:
    from llamahub.client.hubapi import HubClient
    from llamahub.errors import HubError

    client = make_client()
    with HubClient(client.hub.url) as hub:
        try:
            hub.register("x@example.com", "A", "B", "Germany")
        except HubError as e:
            assert e.message.startswith("country: ") and "body." not in e.message, e.message
            assert "/docs" not in (e.hint or "") and "--help" in (e.hint or "")
        else:
            raise AssertionError("the hub took a country name")
        try:
            hub._call("GET", "/api/no-such-route", "testing")
        except HubError as e:
            assert "/docs" not in (e.hint or "") and "LLAMAHUB_HUB_URL" in (e.hint or "")


def test_receipts_and_cache_say_which_hub_they_are_from(make_client: MakeClient) -> None:
    client = make_client()  # accepted llama-debug on the hub
    env = _clean_env(client)
    login = _run(env, "login", "--hub", client.hub.url, "--token", client.account.token)
    assert login.returncode == 0, login.stderr
    status = _run(env, "license", "status")
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith(f"receipts of {client.hub.url} (hub and local receipts)")
    assert any(line.split()[:2] == ["llama-debug", "accepted"] for line in status.stdout.splitlines())

    done = _run(env, "download", "llama-debug-2")
    assert done.returncode == 0, done.stderr
    listed = _run(env, "cache", "ls")
    assert f"hub {client.hub.url}" in listed.stdout

    # the --from path is checked before the cached copy is reported as fine
    wrong = _run(env, "download", "llama-debug-2", "--from", "/no/such/path")
    assert wrong.returncode == 1 and "--from /no/such/path is not a folder" in wrong.stderr

    assert _run(env, "logout").returncode == 0
    after = _run(env | {"LLAMAHUB_OFFLINE": "1"}, "license", "status")
    assert after.returncode == 0, after.stderr
    assert "receipts of the embedded hub (not logged in to any hub)" in after.stdout
    hub_folder = client.hub.url.split("://")[1].replace(":", "_")
    assert f"(accepted on {hub_folder}: `llamahub login --hub URL` uses that hub again)" in after.stdout


def test_license_accept_without_a_terminal_names_yes(make_client: MakeClient) -> None:
    client = make_client(accept=())
    refused = client.cli("license", "accept", "llama-debug")
    assert refused.returncode == 1, refused.stderr
    assert "no terminal to ask on" in refused.stderr
    assert "`llamahub license accept llama-debug --yes`" in refused.stderr
    assert "aborted" not in refused.stderr
    declined = subprocess.run([*CLI, "license", "accept", "llama-debug"], input="n\n", capture_output=True,
                              text=True, timeout=120, env=os.environ | client.env)
    assert declined.returncode == 1 and "not accepted; nothing was sent" in declined.stdout
    assert client.cli("license", "accept", "llama-debug", "--yes").returncode == 0


def test_wget_users_can_read_why_a_link_was_refused(make_client: MakeClient, tmp_path: Path) -> None:
    client = make_client()
    link = client.cli("link", "llama-debug")
    assert link.returncode == 0, link.stderr
    tampered = re.sub(r"Signature=[^&]{4}", "Signature=AAAA", link.stdout.strip()).replace("*", "LICENSE", 1)
    got = subprocess.run(["wget", "--server-response", "-O", str(tmp_path / "LICENSE"), tampered],
                         capture_output=True, text=True, timeout=60)
    assert got.returncode == 8  # the server answered with an error
    reason = re.search(r"(?i)X-Llamahub-Error: (.+)", got.stderr)
    assert reason and "signature" in reason.group(1).lower(), got.stderr
