"""The hub's front door: a landing page at ``/`` and the API docs at ``/docs``, both served whole
by the hub itself.

Swagger UI's script and style come from the installed ``fastapi-offline`` distribution (which
ships Swagger UI 5, able to show OpenAPI 3.1) and are served under ``/docs/assets/``, so the docs
work where the public internet is out of reach. The landing page says what this hub serves and
links to every page a person uses.
"""

from __future__ import annotations

from collections import defaultdict
from html import escape
from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from llamahub.hub.deps import Ctx
from llamahub.hub.errors import NotFoundError
from llamahub.hub.pages import STYLE
from llamahub.version import __version__

router = APIRouter(include_in_schema=False)

ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon.png": "image/png"}
LINKS = (
    ("/enterprise", "Enterprise license requests", "organisations above a license's user threshold "
                                                   "ask for a grant (sign in with your API token)"),
    ("/admin/enterprise", "Review requests", "the operator approves or denies them and revokes "
                                             "grants (sign in with the admin token)"),
    ("/docs", "API documentation", "every route of the JSON API, to read and to try"),
    ("/.well-known/llamahub-keys.json", "Public keys", "verify links, receipts and grants offline"),
    ("/api/health", "Health", "is the hub up"),
)


def _assets() -> Path:
    return Path(str(files("fastapi_offline") / "static"))


@router.api_route("/docs/assets/{name}", methods=["GET", "HEAD"])
def docs_asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise NotFoundError(f"no docs asset named {name!r}", hint="the API documentation is at /docs")
    return FileResponse(_assets() / name, media_type=ASSETS[name],
                        headers={"Cache-Control": "public, max-age=86400"})


@router.get("/docs")
def docs(request: Request) -> HTMLResponse:
    base = "/docs/assets"
    return get_swagger_ui_html(openapi_url=request.app.openapi_url, title="llamahub hub · API",
                               swagger_js_url=f"{base}/swagger-ui-bundle.js",
                               swagger_css_url=f"{base}/swagger-ui.css",
                               swagger_favicon_url=f"{base}/favicon.png",
                               swagger_ui_parameters={"validatorUrl": None})


def _served(imported: list[dict]) -> str:
    by_family: dict[str, list[dict]] = defaultdict(list)
    for row in imported:
        by_family[row["family"]].append(row)
    if not by_family:
        return ("<p>No model is imported yet. The operator adds them with <code>llamahub hub import"
                "</code> (or <code>llamahub hub seed-demo</code> for the tiny demo variants).</p>")
    rows = "".join(f"<tr><td>{escape(family)}</td><td>{escape(', '.join(r['name'] for r in rows))}</td>"
                   f"<td>{escape(rows[0]['license_id'])}</td></tr>"
                   for family, rows in sorted(by_family.items()))
    return f"<table><tr><th>family</th><th>variants</th><th>license</th></tr>{rows}</table>"


@router.get("/")
def landing(request: Request, ctx: Ctx) -> HTMLResponse:
    url = ctx.public_url or str(request.base_url).rstrip("/")
    imported = ctx.store.imported()
    first = imported[0] if imported else {"name": "NAME", "license_id": "LICENSE"}
    links = "".join(f"<li><a href='{path}'>{escape(name)}</a> — {escape(what)}</li>"
                    for path, name, what in LINKS)
    body = (f"<p>A llamahub hub (version {escape(__version__)}) at <code>{escape(url)}</code>: accounts, "
            "license acceptance, and signed download links in the shape of Meta's.</p>"
            f"<h2>What it serves</h2>{_served(imported)}"
            "<h2>Get started</h2><pre>"
            f"llamahub login --hub {escape(url)}\n"
            f"llamahub license accept {escape(first['license_id'])}\n"
            f"llamahub download {escape(first['name'])}</pre>"
            f"<h2>Pages</h2><ul>{links}</ul>")
    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>llamahub hub</title>"
            f"<style>{STYLE}</style></head><body><h1>llamahub hub</h1>{body}</body></html>")
    return HTMLResponse(page)
