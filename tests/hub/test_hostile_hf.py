"""Hostile requests to the Hugging Face protocol routes of a running hub, sent as raw bytes over a
socket (no client normalises them): traversal, encodings, junk revisions and ranges, odd tokens.
Each gets a 4xx with the header the HF client maps (never a 5xx, never a byte outside a repo)."""

from __future__ import annotations

import socket

import pytest
from hubtest import Hub, MakeUser

REPO = "llamahub/llama-debug-2-chat"
FILE = f"/{REPO}/resolve/main/config.json"


def raw_request(hub: Hub, method: str, target: bytes,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    lines = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += [f"{k}: {v}".encode("latin-1") for k, v in (headers or {}).items()]
    with socket.create_connection(("127.0.0.1", hub.port), timeout=30) as s:
        s.sendall(b"\r\n".join(lines) + b"\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    found = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), found, body


TRAVERSALS = [
    f"/{REPO}/resolve/main/../../../etc/passwd",
    f"/{REPO}/resolve/main/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    f"/{REPO}/resolve/main/original%2F..%2F..%2Fkeys",
    f"/{REPO}/resolve/main/original/../config.json",
    f"/{REPO}/resolve/main//etc/passwd",
    f"/{REPO}/resolve/main/config.json%00",
    f"/{REPO}/resolve/main/%ff%fe",
    f"/{REPO}/resolve/main/%ZZ",
    f"/{REPO}/resolve/..%2F..%2F/config.json",
    "/%00/resolve/main/config.json",
    "/a/b/resolve",
    "/a/b/resolve/",
    "/x/resolve/main",
    "/" + "a" * 3000 + "/resolve/main/x",
    f"/{REPO}/resolve/main/" + "x/" * 2000,
]
API = [
    "/api/models/", "/api/models/%00", "/api/models/a--b/../c", "/api/models/x/y/z/w/v",
    f"/api/models/{REPO}/tree/main/%2e%2e", f"/api/models/{REPO}/tree/main/../../..",
    f"/api/models/{REPO}/revision/", f"/api/models/{REPO}/revision/main/extra",
    f"/api/models/{REPO}/tree/refs%2Fpr%2F1", f"/api/models/{REPO}/tree/%ff", "/api/models/" + "b" * 5000,
]
ANSWERED = [f"/api/models/{REPO}/tree/main?recursive=%00", f"/api/models/{REPO}?expand[]=%ff&blobs=%ff"]
UNROUTED = ["/llamahub/..%2Fllama-debug-2-chat/resolve/main/config.json"]  # a plain 404: no HF route


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_junk_paths_are_4xx_with_an_hf_error_code(hub: Hub, make_user: MakeUser, method: str) -> None:
    auth = {"Authorization": f"Bearer {make_user().token}"}
    for target in TRAVERSALS + API + UNROUTED:
        status, headers, body = raw_request(hub, method, target.encode(), auth)
        slash_redirect = status == 307 and target.endswith("/resolve")  # Starlette adds the slash
        assert 400 <= status < 500 or slash_redirect, (target, status, body[:300])
        assert b"root:" not in body and b"PRIVATE KEY" not in body
        if status == 404 and target not in UNROUTED:
            codes = ("RepoNotFound", "RevisionNotFound", "EntryNotFound")
            assert headers.get("x-error-code") in codes, target


def test_junk_query_strings_are_ignored(hub: Hub) -> None:
    for target in ANSWERED:
        status, headers, body = raw_request(hub, "GET", target.encode())
        assert status == 200 and headers["content-type"] == "application/json", (target, body[:300])


def test_non_ascii_bytes_in_the_path_are_refused(hub: Hub) -> None:
    for target in (b"/llamahub/\xff\xfe/resolve/main/config.json", b"/api/models/\xc3\xa9/x"):
        status, _, _ = raw_request(hub, "GET", target)
        assert 400 <= status < 500


@pytest.mark.parametrize("value", ["bytes=999999999999999999999999-", "bytes=-0", "bytes=5-2", "bytes=abc",
                                   "bytes=0-1,5-9", "items=0-5", "bytes=" + "9" * 400, "bytes=100000000-"])
def test_junk_ranges_never_fail_the_hub(hub: Hub, make_user: MakeUser, value: str) -> None:
    auth = {"Authorization": f"Bearer {make_user().token}", "Range": value}
    status, headers, _ = raw_request(hub, "GET", FILE.encode(), auth)
    assert status in (200, 206, 416), (value, status)
    if status == 416:
        assert headers["content-range"].startswith("bytes */")


@pytest.mark.parametrize("authorization", ["Bearer " + "t" * 10_000, "Basic dXNlcjpwYXNz", "Bearer",
                                           "bearer  lha_" + "x" * 40, "Token abc", "Bearer \t"])
def test_odd_tokens_are_401_not_500(hub: Hub, authorization: str) -> None:
    status, headers, _ = raw_request(hub, "HEAD", FILE.encode(), {"Authorization": authorization})
    assert status == 401
    assert "x-error-message" in headers


def test_other_methods_on_resolve_are_405(hub: Hub) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, _, _ = raw_request(hub, method, FILE.encode(), {"Content-Length": "0"})
        assert status == 405, method
