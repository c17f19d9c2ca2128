"""Downloads across processes: a killed download resumes, two processes share one download, and
the meta-url and local sources. The hub is slowed down by a throttling relay so that a download
is still running when the test acts."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from clienttest import Client, MakeClient
from hubtest import NO_RATE_LIMITS, free_port, serving
from netproxy import ThrottledProxy

BIG = "llama-debug-big-25m"  # two shards of ~13 MB


@contextmanager
def relayed_hub(client: Client, log: Path, rate: float) -> Iterator[ThrottledProxy]:
    """A throttling relay in front of a second hub process on the client's hub data: links name a
    hub's public URL, never the Host header a request came with, so that hub's --public-url is the
    relay and every byte of a download crosses it."""
    port = free_port()
    proxy = ThrottledProxy(port, rate=rate)
    try:
        with serving(client.hub.data, client.hub.admin_token, "--public-url", proxy.url, *NO_RATE_LIMITS,
                     port=port, log=log):
            yield proxy
    finally:
        proxy.close()


@pytest.fixture
def slow_hub(make_client: MakeClient, tmp_path: Path) -> Iterator[tuple[Client, ThrottledProxy]]:
    client = make_client()
    with relayed_hub(client, tmp_path / "relayed-hub.log", rate=6e6) as proxy:  # 6 MB/s per connection
        yield client, proxy


def _start_download(client: Client, proxy: ThrottledProxy, staged: int) -> subprocess.Popen:
    """A ``llamahub download`` through the relay, once it has staged ``staged`` bytes."""
    proc = client.popen("download", BIG, "--no-progress", hub_url=proxy.url)
    deadline = time.monotonic() + 60
    while _staged_bytes(client) < staged:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "download did not start"
        time.sleep(0.02)
    return proc


def _staged_bytes(client: Client) -> int:
    folder = client.cache / "staging" / BIG
    return sum(p.stat().st_size for p in folder.glob("*.part")) if folder.is_dir() else 0


def _on_disk(client: Client) -> int:
    """Bytes staging really holds (a pre-sized part is sparse until filled)."""
    folder = client.cache / "staging" / BIG
    return sum(p.stat().st_blocks * 512 for p in folder.glob("*.part")) if folder.is_dir() else 0


def _range_starts(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"(?i)^range: bytes=(\d+)-", text, flags=re.MULTILINE)]


def test_killed_download_resumes_and_verifies(slow_hub: tuple[Client, ThrottledProxy]) -> None:
    client, proxy = slow_hub
    proc = _start_download(client, proxy, 4_000_000)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (client.cache / "variants" / BIG).exists()  # nothing half-done is ever a snapshot
    partial = _staged_bytes(client)
    assert partial >= 4_000_000

    before = len(proxy.requests_text())
    done = client.cli("download", BIG, "--no-progress", LLAMAHUB_HUB_URL=proxy.url)
    assert done.returncode == 0, done.stderr
    resumed = _range_starts(proxy.requests_text()[before:])
    assert any(start > 0 for start in resumed), "the second run did not resume with a Range request"
    assert client.cli("cache", "verify", BIG).returncode == 0
    run = client.cli("run", BIG, "Hello", "-n", "4", "--seed", "0")
    assert run.returncode == 0, run.stderr


def test_two_processes_download_once(slow_hub: tuple[Client, ThrottledProxy]) -> None:
    client, proxy = slow_hub
    procs = [client.popen("download", BIG, "--no-progress", hub_url=proxy.url) for _ in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    assert len(client.links()) == 1  # one of them downloaded; the other waited and found the copy
    texts = [out for out, _ in outs]
    assert sum("downloaded" in t for t in texts) == 1
    assert sum("cached and intact" in t for t in texts) == 1
    assert client.cli("cache", "verify").returncode == 0


def test_meta_url_source(make_client: MakeClient) -> None:
    client = make_client()
    link = client.cli("link", "llama-debug")
    assert link.returncode == 0, link.stderr
    url = link.stdout.strip()
    assert "/dl/llama-debug/*?Policy=" in url
    done = client.cli("download", "llama-debug-2", "--meta-url", url, "--no-progress")
    assert done.returncode == 0, done.stderr
    listed = client.cli("cache", "ls", "--json")
    assert '"source": "meta-url"' in listed.stdout
    run = client.cli("run", "llama-debug-2", "Hello", "-n", "4", "--seed", "0")
    assert run.returncode == 0, run.stderr


def test_meta_url_without_star_is_refused(make_client: MakeClient) -> None:
    client = make_client()
    bad = client.cli("download", "llama-debug-2", "--meta-url", f"{client.hub.url}/dl/llama-debug/LICENSE")
    assert bad.returncode == 1
    assert "no '*'" in bad.stderr and "next:" in bad.stderr


def test_local_source(make_client: MakeClient, debug_root: Path) -> None:
    client = make_client()
    done = client.cli("download", "llama-debug-2-chat", "--from", str(debug_root / "llama-debug-2-chat"),
                      "--no-progress")
    assert done.returncode == 0, done.stderr
    assert client.links() == []  # nothing came from the hub
    listed = client.cli("cache", "ls", "--json")
    assert '"source": "local"' in listed.stdout


def test_ctrl_c_stops_the_download_at_once_and_the_rerun_resumes(make_client: MakeClient,
                                                                 tmp_path: Path) -> None:
    client = make_client()
    # 1 MB/s per connection: ~13 s for a shard
    with relayed_hub(client, tmp_path / "relayed-hub.log", rate=1e6) as proxy:
        proc = _start_download(client, proxy, 2_000_000)
        at_signal = _on_disk(client)
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        _out, err = proc.communicate(timeout=30)
        to_exit = time.monotonic() - sent
        staged = _on_disk(client)
        assert proc.returncode == 130, err
        assert "interrupted" in err and f"llamahub download {BIG}` resumes" in err
        assert to_exit < 3.0, f"{to_exit:.2f} s from SIGINT to exit"
        # what the connections carried while it stopped, plus what already sat in socket buffers
        # (a client slowed by a busy machine lags behind the relay): megabytes, not the rest
        assert staged - at_signal < 2e6 * to_exit + 3_000_000, (at_signal, staged)
        assert staged < 12_000_000  # of about 26 MB: the transfer did not run on
        time.sleep(1)
        assert _on_disk(client) == staged  # and nothing writes after the exit
        assert not (client.cache / "variants" / BIG).exists()
        print(f"SIGINT at {at_signal:,} staged bytes; exit after {to_exit:.2f} s with {staged:,} staged")

        done = client.cli("download", BIG, "--no-progress")
        assert done.returncode == 0, done.stderr
        fetched = re.search(r"downloaded ([\d.]+) MiB \(([\d.]+) MiB resumed from an earlier", done.stdout)
        assert fetched, done.stdout
        total = sum(p.stat().st_size for p in (client.cache / "blobs").iterdir())
        assert abs(float(fetched.group(1)) + float(fetched.group(2)) - total / 2**20) < 0.2
        assert float(fetched.group(2)) * 2**20 >= staged - 2**20
