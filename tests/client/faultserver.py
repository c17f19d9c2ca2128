"""A small HTTP file server on 127.0.0.1 whose faults a test scripts: errors, dropped connections,
ignored ranges, corrupted bytes. It stands in for a remote web server, not for llamahub."""

from __future__ import annotations

import json
import re
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Faults:
    status: list[int] = field(default_factory=list)   # answer these statuses first, one per request
    drop_after: list[int] = field(default_factory=list)  # close after this many body bytes, per request
    ignore_range: bool = False
    corrupt: int = 0  # serve a flipped byte in this many GET responses


class FaultServer:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, Faults] = defaultdict(Faults)
        self.requests: Counter[str] = Counter()
        self.ranges: dict[str, list[str]] = defaultdict(list)
        self.served: Counter[str] = Counter()  # body bytes sent per path
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                         daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/{path}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self._answer(head=True)

            def do_GET(self) -> None:
                self._answer(head=False)

            def _answer(self, head: bool) -> None:
                path = self.path.lstrip("/").split("?")[0]
                with server._lock:
                    f = server.faults[path]
                    if not head:
                        server.requests[path] += 1
                        server.ranges[path].append(self.headers.get("Range", ""))
                    status = f.status.pop(0) if f.status and not head else None
                    drop = f.drop_after.pop(0) if f.drop_after and not head else None
                    corrupt = not head and f.corrupt > 0
                    if corrupt:
                        f.corrupt -= 1
                if path not in server.files:
                    status = status or 404
                if status:
                    body = json.dumps({"error": {"code": "nope", "message": f"status {status} for {path}",
                                                 "hint": "ask the server's operator"}}).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                data = server.files[path]
                start, end = 0, len(data) - 1
                match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                partial = match is not None and not f.ignore_range
                if partial:
                    assert match is not None
                    start = int(match.group(1))
                    end = min(int(match.group(2)), end) if match.group(2) else end
                body = data[start:end + 1]
                if corrupt and body:
                    body = bytes([body[0] ^ 0xFF]) + body[1:]
                self.send_response(206 if partial else 200)
                if partial:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if head:
                    return
                out = body[:drop] if drop is not None else body
                self.wfile.write(out)
                with server._lock:
                    server.served[path] += len(out)
                if drop is not None:
                    self.close_connection = True

        return Handler
