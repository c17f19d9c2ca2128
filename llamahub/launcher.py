"""Starts the embedded hub for the client: the one place that knows both.

The client receives only a URL and a token (``Session(embedded=embedded_hub)``); the hub
knows nothing of the client.
"""

from __future__ import annotations

from collections.abc import Callable

from llamahub.client.config import LocalProfile


def embedded_hub(profile: LocalProfile, echo: Callable[[str], None]) -> tuple[str, str]:
    """(URL, token) of this process's embedded hub, started on first use."""
    from llamahub.client.embedded import start_embedded

    running = start_embedded(profile, echo)
    return running.url, running.token
