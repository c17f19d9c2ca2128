"""The hub's front door (`/`) and its API docs (`/docs`), in a real browser with the network
blocked: every asset must come from the hub itself."""

from __future__ import annotations

import re
from typing import Any

import httpx
from hubtest import Hub, MakeUser


def offline_page(browser: Any, hub: Hub) -> tuple[Any, list[str], list[str]]:
    """A page that may reach only the hub: (page, URLs fetched from the hub, URLs refused)."""
    context = browser.new_context()
    served: list[str] = []
    refused: list[str] = []

    def only_the_hub(route: Any) -> None:
        url = route.request.url
        if url.startswith(hub.url + "/"):
            served.append(url)
            route.continue_()
        else:
            refused.append(url)
            route.abort()

    context.route("**/*", only_the_hub)
    return context.new_page(), served, refused


def test_docs_render_with_the_network_blocked(hub: Hub, browser: Any) -> None:
    page, served, refused = offline_page(browser, hub)
    page.goto(f"{hub.url}/docs")
    page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
    assert "llamahub hub" in page.inner_text(".swagger-ui .info .title")
    page.wait_for_selector(".opblock")
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert any("/api/links" in p for p in paths) and any("/api/health" in p for p in paths)
    assert refused == []
    assert {f"{hub.url}/docs/assets/swagger-ui-bundle.js", f"{hub.url}/docs/assets/swagger-ui.css",
            f"{hub.url}/openapi.json"} <= set(served)


def test_landing_page_says_what_the_hub_serves_and_links_to_its_pages(hub: Hub, browser: Any) -> None:
    page, _served, refused = offline_page(browser, hub)
    page.goto(f"{hub.url}/")
    assert page.inner_text("h1") == "llamahub hub"
    body = page.inner_text("body")
    assert hub.url in body and f"llamahub login --hub {hub.url}" in body
    table = page.inner_text("table")
    assert "llama-debug" in table and "llama-debug-2-chat" in table and "llama-debug-big-25m" in table
    for path in ("/enterprise", "/admin/enterprise", "/docs", "/.well-known/llamahub-keys.json"):
        assert page.locator(f"a[href='{path}']").count() == 1, path
    page.click("a[href='/enterprise']")
    page.wait_for_url(f"{hub.url}/enterprise")
    assert page.locator("input[name=token]").count() == 1  # its sign-in form
    page.go_back()
    page.click("a[href='/admin/enterprise']")
    assert "admin token" in page.inner_text("body")
    assert refused == []


def test_docs_assets_are_served_by_the_hub(hub: Hub) -> None:
    html = httpx.get(f"{hub.url}/docs").text
    assert not re.search(r"""(src|href)=["']?https?://""", html)  # no CDN
    assert "https://" not in html
    for name, kind in (("swagger-ui-bundle.js", "javascript"), ("swagger-ui.css", "text/css")):
        r = httpx.get(f"{hub.url}/docs/assets/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"] and len(r.content) > 10_000
        assert httpx.head(f"{hub.url}/docs/assets/{name}").status_code == 200
    missing = httpx.get(f"{hub.url}/docs/assets/..%2Fconsts.py")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert httpx.get(f"{hub.url}/redoc").status_code == 404  # it would load from a CDN
    assert httpx.get(f"{hub.url}/", headers={"accept": "text/html"}).status_code == 200


def test_the_reason_header_survives_any_input(hub: Hub, make_user: MakeUser) -> None:
    user = make_user()
    r = user.http.post("/api/links", json={"variant": "no\x0bsuch\u2713\nvariant"})
    assert r.status_code == 404, r.text
    header = r.headers["x-llamahub-error"]
    assert header.startswith("unknown_variant: unknown variant 'no") and "such?" in header
    assert all(" " <= c <= "~" for c in header)
