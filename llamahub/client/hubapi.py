"""A small typed client of the hub's JSON API (httpx). Hub errors become llamahub errors."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import httpx

from llamahub.errors import AuthenticationError, HubError, HubUnreachableError, LlamahubError
from llamahub.policy.gates import error_class


def hub_error(response: httpx.Response, doing: str) -> LlamahubError:
    """The llamahub error for a hub's error answer (its code, message and hint kept)."""
    try:
        body = response.json()
    except ValueError:
        body = {}
    error = body.get("error", {}) if isinstance(body, dict) else {}
    code = error.get("code") or f"http_{response.status_code}"
    message = error.get("message") or f"the hub answered HTTP {response.status_code} while {doing}"
    hint = error.get("hint")
    if code in ("invalid_request", "not_found", "method_not_allowed") and "/docs" in (hint or ""):
        message, hint = _in_cli_words(response, message)
    if response.status_code == 401:
        cls: type[LlamahubError] = AuthenticationError
        hint = "run `llamahub login` for a new token (or set LLAMAHUB_TOKEN)"
    else:
        cls = error_class(code) or HubError  # a license refusal keeps its own class
    failure = cls(message, hint=hint)
    failure.code = code
    return failure


def _in_cli_words(response: httpx.Response, message: str) -> tuple[str, str]:
    """An API-worded refusal ("body.country: Value error, ...; see /docs") as the CLI says it."""
    message = re.sub(r"\b(body|query|path|header)\.", "", message).replace("Value error, ", "")
    if response.status_code in (404, 405):
        base = f"{response.request.url.scheme}://{response.request.url.netloc.decode()}"
        return message, (f"the hub at {base} does not know this request: check that --hub / "
                         "LLAMAHUB_HUB_URL names a llamahub hub of this version")
    return message, "correct the value named above; `--help` on the command says what each option takes"


class HubClient:
    """The hub's API for one account (``token`` may be None for public routes)."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> HubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, doing: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise HubUnreachableError(
                f"cannot reach the hub at {self.url} while {doing}: {e}",
                hint="check that the hub is running and LLAMAHUB_HUB_URL / `llamahub login --hub` "
                     "point at it, or set LLAMAHUB_OFFLINE=1 to use only what is cached") from e
        if response.status_code >= 400:
            raise hub_error(response, doing)
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text

    # --- public ------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/api/health", "checking the hub's health")

    def keys(self) -> dict[str, Any]:
        return self._call("GET", "/.well-known/llamahub-keys.json", "fetching the hub's public keys")

    def register(self, email: str, name: str, organisation: str, country: str) -> dict[str, Any]:
        body = {"email": email, "name": name, "organisation": organisation, "country": country}
        return self._call("POST", "/api/users", "registering", json=body)

    def licenses(self) -> dict[str, Any]:
        return self._call("GET", "/api/licenses", "reading the hub's licenses")

    def license(self, license_id: str) -> dict[str, Any]:
        return self._call("GET", f"/api/licenses/{license_id}", f"reading license {license_id}")

    def license_text(self, license_id: str) -> str:
        return self._call("GET", f"/api/licenses/{license_id}/text", f"reading the {license_id} text")

    # --- an account ----------------------------------------------------------------------------

    def me(self) -> dict[str, Any]:
        return self._call("GET", "/api/users/me", "checking your token")

    def profile(self) -> dict[str, Any]:
        return self._call("GET", "/api/profile", "reading your profile")

    def set_profile(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("PUT", "/api/profile", "updating your profile", json=body)

    def update_profile(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Change only the fields in ``changes`` (PATCH)."""
        return self._call("PATCH", "/api/profile", "updating your profile", json=changes)

    def accept(self, license_id: str, text_sha256: str | None = None) -> dict[str, Any]:
        return self._call("POST", f"/api/licenses/{license_id}/accept", f"accepting {license_id}",
                          json={"text_sha256": text_sha256})

    def credentials(self) -> dict[str, Any]:
        """The hub-signed profile, the organisation's grant documents and the revocation list."""
        return self._call("GET", "/api/credentials", "fetching your signed profile and grants")

    def license_status(self) -> dict[str, Any]:
        return self._call("GET", "/api/licenses/status", "reading your license acceptances")

    def issue_link(self, variant: str | None = None, family: str | None = None) -> dict[str, Any]:
        """A signed link for one variant, or for every variant of a family you may get."""
        body = {"variant": variant} if variant else {"family": family}
        return self._call("POST", "/api/links", f"requesting a download link for {variant or family}",
                          json=body)

    def manifest(self, link_url: str) -> dict[str, Any]:
        query = urlsplit(link_url).query
        return self._call("GET", f"/api/links/manifest?{query}", "reading the link's manifest")

    def request_enterprise(self, families: list[str], mau: int, note: str,
                           uses: list[str] | None = None) -> dict[str, Any]:
        body = {"families": families, "mau": mau, "note": note, "uses": uses or []}
        return self._call("POST", "/api/enterprise/requests", "submitting an enterprise request", json=body)

    def enterprise_requests(self) -> dict[str, Any]:
        return self._call("GET", "/api/enterprise/requests", "reading your enterprise requests")

    def answer_enterprise(self, request_id: str, answer: str) -> dict[str, Any]:
        return self._call("POST", f"/api/enterprise/requests/{request_id}/answer",
                          f"answering the reviewer of {request_id}", json={"answer": answer})

    def withdraw_enterprise(self, request_id: str) -> dict[str, Any]:
        return self._call("POST", f"/api/enterprise/requests/{request_id}/withdraw",
                          f"withdrawing enterprise request {request_id}")
