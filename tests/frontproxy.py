"""A tiny load balancer on 127.0.0.1 for the replica tests: each new connection goes to the next
hub replica in turn (round robin), skipping one that refuses connections, as nginx's upstream does;
with ``failover=True`` every connection goes to the first replica that accepts (nginx's ``backup``).
It records the first bytes of each request with the replica it went to (``requests``).

Downstream bytes can be throttled (``rate`` bytes/s per connection) so a download is still under
way when a test kills a replica. It relays bytes only: nothing of llamahub is replaced by it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Sequence

RECORD = 16 << 10  # bytes of each connection's requests kept


class RoundRobinFront:
    def __init__(self, upstream_ports: Sequence[int], rate: float | None = None, *,
                 failover: bool = False) -> None:
        self.upstreams = list(upstream_ports)
        self.rate = rate
        self.failover = failover
        self.requests: list[tuple[int, bytearray]] = []  # (upstream port, first bytes sent), in order
        self._next = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def _connect(self) -> socket.socket | None:
        """A connection to the next upstream that accepts one (None if none does)."""
        with self._lock:
            start = 0 if self.failover else self._next
            self._next = (self._next + 1) % len(self.upstreams)
        for i in range(len(self.upstreams)):
            port = self.upstreams[(start + i) % len(self.upstreams)]
            try:
                upstream = socket.create_connection(("127.0.0.1", port), timeout=2)
            except OSError:
                continue
            upstream.settimeout(None)
            return port, upstream
        return None

    def sent_to(self, port: int) -> str:
        """What clients sent to the upstream on ``port`` (the first bytes of each connection)."""
        with self._lock:
            return "".join(bytes(b).decode("latin-1") for p, b in self.requests if p == port)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            chosen = self._connect()
            if chosen is None:
                client.close()
                continue
            port, upstream = chosen
            record = bytearray()
            with self._lock:
                self.requests.append((port, record))
            threading.Thread(target=_pipe, args=(client, upstream, None, record), daemon=True).start()
            threading.Thread(target=_pipe, args=(upstream, client, self.rate), daemon=True).start()


def _pipe(src: socket.socket, dst: socket.socket, rate: float | None,
          record: bytearray | None = None) -> None:
    started, moved = time.monotonic(), 0
    try:
        while data := src.recv(65536):
            if record is not None and len(record) < RECORD:
                record += data[:RECORD - len(record)]
            dst.sendall(data)
            moved += len(data)
            if rate is not None and (ahead := moved / rate - (time.monotonic() - started)) > 0:
                time.sleep(ahead)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
