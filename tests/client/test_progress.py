"""The byte progress bar that the download threads share."""

from __future__ import annotations

import threading

import pytest

from llamahub.client.progress import ByteBar


def test_threads_advance_one_bar_to_its_total(capsys: pytest.CaptureFixture[str]) -> None:
    with ByteBar(8 * 1000 * 1024, True, "fetch") as advance:
        workers = [threading.Thread(target=lambda: [advance(1024) for _ in range(1000)]) for _ in range(8)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    err = capsys.readouterr().err
    assert "fetch: 100%" in err and "7.81M/7.81M" in err


def test_a_disabled_bar_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with ByteBar(100, False, "fetch") as advance:
        advance(100)
    assert capsys.readouterr().err == ""
