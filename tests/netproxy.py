"""A throttling TCP relay on 127.0.0.1 for tests: slows a real hub down so a download can be
interrupted mid-way, and records what clients sent (request lines and headers).

It stands in for a slow network between a client and a real server; nothing of llamahub is
replaced by it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class ThrottledProxy:
    def __init__(self, target_port: int, rate: float, *, cut_after: int | None = None) -> None:
        """Relay to 127.0.0.1:``target_port``, at most ``rate`` bytes/s per connection downstream;
        after ``cut_after`` bytes sent upstream, the relay goes away (connections cut, no new ones):
        a server that becomes unreachable mid-transfer."""
        self.target_port = target_port
        self.rate = rate
        self.cut_after = cut_after
        self.sent = bytearray()  # everything clients sent upstream, in order
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests_text(self) -> str:
        with self._lock:
            return self.sent.decode("latin-1")

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pipe, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, self.rate), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, rate: float | None) -> None:
        started, moved = time.monotonic(), 0
        try:
            while data := src.recv(65536):
                if rate is None:
                    with self._lock:
                        self.sent += data
                    if self.cut_after is not None and len(self.sent) > self.cut_after:
                        self.close()
                        return
                dst.sendall(data)
                moved += len(data)
                if rate is not None:
                    ahead = moved / rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
