"""The download engine's HTTP client: the same httpx client, reading the socket 256 KiB at a time.

httpx's HTTP/1.1 layer (httpcore) asks the socket for 64 KiB per read. Each piece of a body is
copied a few times on its way out of httpcore and h11, then written and hashed: 256 KiB pieces
cost 4x fewer trips through Python and still stay in a core's L2 cache through all of that,
which larger ones do not (bench/results/download.md). httpcore takes a network backend per
connection pool, so the engine's own pool gets one whose reads are wider; no other client in
the process is touched.
"""

from __future__ import annotations

import ssl
import urllib.request
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

NETWORK_READ = 256 << 10  # bytes per socket read


class _WideStream(httpcore.NetworkStream):
    """A connection whose reads ask the socket for at least NETWORK_READ bytes."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max(max_bytes, NETWORK_READ), timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, timeout)

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _WideStream(self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _WideBackend(httpcore.NetworkBackend):
    """httpcore's own socket backend, handing out :class:`_WideStream` connections."""

    def __init__(self) -> None:
        self._backend = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        return _WideStream(self._backend.connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        return _WideStream(self._backend.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class WideReadTransport(httpx.HTTPTransport):
    """httpx's transport over a connection pool of :class:`_WideBackend` connections.

    httpx's constructor takes no network backend, so this replaces the pool it built (its
    ``_pool``, on this instance only). Should httpx rename that, reads are 64 KiB again and
    nothing else changes.
    """

    def __init__(self, limits: httpx.Limits) -> None:
        super().__init__(limits=limits)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(), max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry, network_backend=_WideBackend())


def download_client(*, timeout: float, max_connections: int) -> httpx.Client:
    """A client that follows redirects with wide reads; with a proxy set in the environment
    (``HTTPS_PROXY``, ...) httpx's own transport, which routes through it."""
    limits = httpx.Limits(max_connections=max_connections)
    if urllib.request.getproxies():
        return httpx.Client(timeout=timeout, follow_redirects=True, limits=limits)
    return httpx.Client(timeout=timeout, follow_redirects=True, transport=WideReadTransport(limits))
