"""Web pages of the enterprise workflow: ``/enterprise`` for organisations, ``/admin/enterprise`` for
operators. They call the same functions as the JSON API (llamahub.hub.enterprise), so every step
lands in the audit log the same way.

Signing in means pasting an API token (a user's, or the admin token of ``llamahub hub init``); it
is kept in an HttpOnly, SameSite=Strict cookie. Every POST must come from the hub's own pages:
its Origin header must be present and name the hub (``--public-url``, else the address the hub is
bound to; never the Host header). Every value shown is HTML-escaped. Forms are plain
``application/x-www-form-urlencoded``; no JavaScript.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from html import escape
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from llamahub.errors import LlamahubError
from llamahub.hub import enterprise
from llamahub.hub.context import HubContext
from llamahub.hub.deps import MAX_TOKEN, client_ip, get_ctx, hub_url, origin_of
from llamahub.hub.errors import BadRequestError, ForbiddenError
from llamahub.hub.fields import EARLIEST, LATEST, MAX_MAU, text_problem
from llamahub.hub.ratelimit import RateLimitedError
from llamahub.hub.routes_admin import check_families, grant_window
from llamahub.hub.store import token_hash

router = APIRouter(include_in_schema=False)


@dataclass(frozen=True)
class _Area:
    """One side of the pages: where it lives, whose token signs in, and what a wrong token hears."""

    path: str
    cookie: str
    role: str
    title: str
    token_label: str
    refusal: str
    refusal_hint: str


USERS = _Area("/enterprise", "llamahub_token", "user", "Enterprise license requests",
              "Your API token (from registering or `llamahub login`)", "that is not a live user token",
              "paste the token you got when registering (admins: /admin/enterprise)")
OPERATORS = _Area("/admin/enterprise", "llamahub_admin", "admin", "Review enterprise requests",
                  "The admin token (printed by `llamahub hub init`)", "that is not the admin token",
                  "`llamahub hub init` printed it once; organisations use /enterprise")
STYLE = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
         "table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:.4rem;"
         "text-align:left;vertical-align:top}.error{background:#fee;padding:.6rem}.ok{background:#efe;"
         "padding:.6rem}form.inline{display:inline}label{display:block;margin:.4rem 0}")


# --- plumbing ---------------------------------------------------------------------------------------


def _html(title: str, body: str, status: int = 200) -> HTMLResponse:
    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{escape(title)} · llamahub"
            f"</title><style>{STYLE}</style></head><body><h1>{escape(title)}</h1>{body}</body></html>")
    return HTMLResponse(page, status_code=status)


def _error(e: LlamahubError) -> str:
    hint = f"<br><small>{escape(e.hint)}</small>" if e.hint else ""
    return f"<p class=error role=alert>{escape(e.message)}{hint}</p>"


class FormRefused(ForbiddenError):
    """A form posted from anywhere but the hub's own pages: answered with a page, not JSON."""

    code = "cross_site_form"


async def refused_page(_request: Request, exc: Exception) -> HTMLResponse:
    assert isinstance(exc, FormRefused)
    return _html("Form refused", _error(exc), exc.status)


async def _posted(request: Request) -> dict[str, list[str]]:
    """The posted form, after checking that it comes from this hub's own pages.

    The Origin header must be present, not ``null``, and name the hub's public URL (``--public-url``,
    else the address the hub is bound to); the Host header plays no part.
    """
    origin = request.headers.get("origin")
    ours = origin_of(hub_url(request, get_ctx(request)))
    if not origin or origin.strip() == "null":
        raise FormRefused("this form came without an Origin header (or with Origin: null), so the hub "
                          "cannot tell that it was posted from its own pages",
                          hint=f"open the form at {ours} in a browser and submit it there")
    if origin_of(origin.strip()) != ours:
        raise FormRefused(f"this form was posted from {origin[:100]}, not from this hub's pages",
                          hint=f"use the hub's own pages at {ours}")
    form = parse_qs((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
    for values in form.values():
        for value in values:
            if text_problem(value):
                raise BadRequestError(f"a form field {text_problem(value)}", code="invalid_request",
                                      hint="type the values again")
    return form


# Handlers take the form through this dependency and stay sync, so their database work runs in
# the thread pool, never on the event loop.
PostedForm = Annotated[dict[str, list[str]], Depends(_posted)]


def _one(form: dict[str, list[str]], name: str) -> str:
    return (form.get(name) or [""])[0].strip()


def _int(form: dict[str, list[str]], name: str, label: str) -> int | None:
    """A whole number from 1 to the API's MAU limit, in ASCII digits (with , or _ between)."""
    raw = _one(form, name).replace(",", "").replace("_", "")
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > len(str(MAX_MAU)) or not 1 <= int(raw) <= MAX_MAU:
        raise BadRequestError(f"{label} must be a whole number from 1 to {MAX_MAU:,}", code="invalid_request",
                              hint=f"write {label} like 800000000")
    return int(raw)


def _last_day(form: dict[str, list[str]]) -> dt.datetime | None:
    """The end of the form's ``expires`` day (UTC): the grant lasts through that whole day."""
    raw = _one(form, "expires")
    if not raw:
        return None
    try:
        day = dt.date.fromisoformat(raw) if len(raw) <= 10 else None
    except ValueError:
        day = None
    if day is None or not EARLIEST.date() <= day < LATEST.date() - dt.timedelta(days=1):
        raise BadRequestError(f"{raw[:40]!r} is not a day between 2000 and 2199", code="invalid_request",
                              hint="pick a day, like 2027-06-30")
    return dt.datetime.combine(day, dt.time(), dt.UTC) + dt.timedelta(days=1)


def _redirect(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303)


def _set_cookie(response: Response, request: Request, name: str, value: str | None) -> Response:
    if value is None:
        response.delete_cookie(name, path="/")
    else:
        response.set_cookie(name, value, httponly=True, samesite="strict", path="/",
                            secure=request.url.scheme == "https")
    return response


def _signed_in(request: Request, ctx: HubContext, area: _Area) -> dict[str, Any] | None:
    """The owner of the area's cookie token when it has the area's role: a user row, or {} (admin)."""
    token = request.cookies.get(area.cookie)
    owner = ctx.store.token_owner(token) if token else None
    return (owner[1] or {}) if owner is not None and owner[0] == area.role else None


def _sign_in_page(area: _Area, error: str = "", status: int = 200) -> HTMLResponse:
    return _html(area.title, f"{error}<form method=post action='{area.path}/sign-in'><label>"
                 f"{escape(area.token_label)} <input type=password name=token required autocomplete=off>"
                 "</label><button>Sign in</button></form>", status)


def _sign_in(request: Request, form: dict[str, list[str]], area: _Area) -> Response:
    token = _one(form, "token")[:MAX_TOKEN]
    ctx = get_ctx(request)
    try:
        ctx.limiter.check("sign-in", ip=client_ip(request), token=token_hash(token) if token else None)
    except RateLimitedError as e:
        page = _sign_in_page(area, _error(e), e.status)
        page.headers.update(e.headers)
        return page
    owner = ctx.store.token_owner(token) if token else None
    if owner is None or owner[0] != area.role:
        return _sign_in_page(area, _error(BadRequestError(area.refusal, hint=area.refusal_hint)), 401)
    return _set_cookie(_redirect(area.path), request, area.cookie, token)


def _families(values: list[str]) -> str:
    return escape(", ".join(values))


# --- organisations ------------------------------------------------------------------------------------


@router.get("/enterprise", response_class=HTMLResponse)
def user_page(request: Request, notice: str = "") -> HTMLResponse:
    ctx = get_ctx(request)
    user = _signed_in(request, ctx, USERS)
    if user is None:
        return _sign_in_page(USERS)
    return _html(USERS.title, _user_body(ctx, user, notice=notice))


def _user_body(ctx: HubContext, user: dict[str, Any], *, notice: str = "", error: str = "") -> str:
    mine = enterprise.listing(ctx.store, user_id=user["id"])
    rows = "".join(
        f"<tr data-id='{escape(r['id'])}'><td>{escape(r['id'])}</td><td>{_families(r['families'])}</td>"
        f"<td>{r['mau']:,}</td><td class=status>{escape(r['status'])}</td><td>{escape(r['created_at'][:19])}"
        f"</td><td>{escape(r['decision_note'] or '')}{_grant_cell(r)}{_question_cell(r)}</td>"
        f"<td>{_withdraw_button(r)}</td></tr>"
        for r in mine)
    table = (f"<table><tr><th>request</th><th>families</th><th>MAU</th><th>status</th><th>submitted</th>"
             f"<th>decision</th><th></th></tr>{rows}</table>" if rows else "<p>No requests yet.</p>")
    mau = ctx.store.get_profile(user["id"])["mau"] or ""
    boxes = "".join(f"<label><input type=checkbox name=family value='{escape(f)}'> {escape(f)}</label>"
                    for f in sorted({v.family for v in ctx.registry}))
    done = ""
    if notice in {r["id"] for r in mine}:
        done = f"<p class=ok role=status>Submitted {escape(notice)}; an operator reviews it.</p>"
    if notice.startswith("answered:") and notice[9:] in {r["id"] for r in mine}:
        done = f"<p class=ok role=status>Answered; {escape(notice[9:])} is back with the reviewer.</p>"
    return (f"<p>Signed in as {escape(user['email'])} ({escape(user['organisation'])}). "
            "<form class=inline method=post action='/enterprise/sign-out'><button>Sign out</button>"
            "</form></p>"
            f"{done}{error}<h2>Your requests</h2>{table}<h2>New request</h2>"
            "<p>Above a license's monthly-active-user threshold you need an enterprise grant.</p>"
            f"<form method=post action='/enterprise/requests'><fieldset><legend>Families</legend>{boxes}"
            f"</fieldset><label>Monthly active users <input name=mau inputmode=numeric value='{mau}' "
            "required>"
            "</label><label>What the models are for<br><textarea name=note rows=3 cols=60></textarea></label>"
            "<button>Submit request</button></form>")


def _grant_cell(r: dict[str, Any]) -> str:
    return f"<br>grant <code>{escape(r['grant_id'])}</code>" if r["grant_id"] else ""


def _question_cell(r: dict[str, Any]) -> str:
    """The reviewer's question: with a form to answer it while it is open, else with the answer."""
    if not r.get("info_request"):
        return ""
    asked = f"<div class=question><strong>The reviewer asks:</strong> {escape(r['info_request'])}</div>"
    if r["status"] != enterprise.NEEDS_INFO:
        answer = escape(r["info_answer"] or "")
        return f"{asked}<div class=answer><strong>You answered:</strong> {answer}</div>"
    return (f"{asked}<form method=post action='/enterprise/requests/{escape(r['id'])}/answer'><label>Your "
            "answer<br><textarea name=answer rows=3 cols=50 required></textarea></label>"
            "<button>Send answer</button></form>")


def _withdraw_button(r: dict[str, Any]) -> str:
    if r["status"] not in enterprise.OPEN:
        return ""
    return (f"<form class=inline method=post action='/enterprise/requests/{escape(r['id'])}/withdraw'>"
            "<button>Withdraw</button></form>")


@router.post("/enterprise/sign-in", response_class=HTMLResponse)
def user_sign_in(request: Request, form: PostedForm) -> Response:
    return _sign_in(request, form, USERS)


@router.post("/enterprise/sign-out")
def user_sign_out(request: Request, form: PostedForm) -> Response:
    return _set_cookie(_redirect(USERS.path), request, USERS.cookie, None)


@router.post("/enterprise/requests", response_class=HTMLResponse)
def user_submit(request: Request, form: PostedForm) -> Response:
    ctx = get_ctx(request)
    user = _signed_in(request, ctx, USERS)
    if user is None:
        return _redirect(USERS.path)
    try:
        families = [f.strip() for f in form.get("family", []) if f.strip()]
        if not families:
            raise BadRequestError("choose at least one family", code="invalid_request",
                                  hint="tick the families the grant should cover")
        check_families(ctx, families)
        mau = _int(form, "mau", "monthly active users")
        if mau is None:
            raise BadRequestError("how many monthly active users?", code="invalid_request",
                                  hint="write the number the grant should cover")
        done = enterprise.submit(ctx.store, user, families, mau, _one(form, "note")[:4000])
    except LlamahubError as e:
        status = getattr(e, "status", 400)
        return _html(USERS.title, _user_body(ctx, user, error=_error(e)), status)
    return _redirect(f"/enterprise?notice={done['id']}")


@router.post("/enterprise/requests/{request_id}/answer", response_class=HTMLResponse)
def user_answer(request: Request, request_id: str, form: PostedForm) -> Response:
    ctx = get_ctx(request)
    user = _signed_in(request, ctx, USERS)
    if user is None:
        return _redirect(USERS.path)
    try:
        text = _one(form, "answer")
        if not text:
            raise BadRequestError("the answer is empty", code="invalid_request",
                                  hint="write what the reviewer asked for")
        enterprise.answer(ctx.store, request_id, user, text[:4000])
    except LlamahubError as e:
        return _html(USERS.title, _user_body(ctx, user, error=_error(e)), getattr(e, "status", 400))
    return _redirect(f"/enterprise?notice=answered:{request_id}")


@router.post("/enterprise/requests/{request_id}/withdraw", response_class=HTMLResponse)
def user_withdraw(request: Request, request_id: str, form: PostedForm) -> Response:
    ctx = get_ctx(request)
    user = _signed_in(request, ctx, USERS)
    if user is None:
        return _redirect(USERS.path)
    try:
        enterprise.withdraw(ctx.store, request_id, user)
    except LlamahubError as e:
        return _html(USERS.title, _user_body(ctx, user, error=_error(e)),
                     getattr(e, "status", 400))
    return _redirect(USERS.path)


# --- operators ----------------------------------------------------------------------------------------


@router.get("/admin/enterprise", response_class=HTMLResponse)
def admin_page(request: Request) -> HTMLResponse:
    ctx = get_ctx(request)
    if _signed_in(request, ctx, OPERATORS) is None:
        return _sign_in_page(OPERATORS)
    return _html(OPERATORS.title, _admin_body(ctx))


def _admin_body(ctx: HubContext, error: str = "") -> str:
    requests = enterprise.listing(ctx.store)
    pending = [r for r in requests if r["status"] in enterprise.OPEN]
    decided = [r for r in requests if r["status"] not in enterprise.OPEN]
    return ("<form class=inline method=post action='/admin/enterprise/sign-out'><button>Sign out</button>"
            f"</form>{error}<h2>Open</h2>{''.join(_pending_card(r) for r in pending) or '<p>None.</p>'}"
            f"<h2>Decided</h2>{_decided_table(decided)}<h2>Grants</h2>{_grants_table(ctx)}"
            f"<h2>Audit log (latest)</h2>{_audit_table(ctx)}")


def _pending_card(r: dict[str, Any]) -> str:
    base = f"/admin/enterprise/requests/{escape(r['id'])}"
    return (f"<section data-id='{escape(r['id'])}'><h3>{escape(r['organisation'])}: "
            f"{_families(r['families'])}"
            f"</h3><p>{r['mau']:,} monthly active users · {escape(r['id'])} · submitted "
            f"{escape(r['created_at'][:19])} · <span class=status>{escape(r['status'])}</span></p>"
            f"<blockquote>{escape(r['note'])}</blockquote>{_exchange(r)}"
            f"<form method=post action='{base}/approve'><label>Up to MAU "
            f"<input name=max_mau value='{r['mau']}'>"
            "</label><label>Last day (UTC, optional) <input type=date name=expires></label><label>Note "
            "<input name=note></label><button>Approve</button></form>"
            f"<form method=post action='{base}/deny'><label>Reason <input name=reason required></label>"
            f"<button>Deny</button></form><form method=post action='{base}/needs-info'><label>Question for "
            "the requester <input name=question required></label><button>Ask for information</button>"
            "</form></section>")


def _exchange(r: dict[str, Any]) -> str:
    """The operator's question and where its answer stands."""
    if not r.get("info_request"):
        return ""
    if r["status"] == enterprise.NEEDS_INFO:
        answer = "<p class=waiting><em>Waiting for the requester's answer.</em></p>"
    else:
        answer = f"<p class=answer><strong>Answer:</strong> {escape(r['info_answer'] or '')}</p>"
    return f"<p class=question><strong>You asked:</strong> {escape(r['info_request'])}</p>{answer}"


def _decided_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>None.</p>"
    body = "".join(f"<tr data-id='{escape(r['id'])}'><td>{escape(r['id'])}</td>"
                   f"<td>{escape(r['organisation'])}</td><td>{_families(r['families'])}</td><td>{r['mau']:,}</td>"
                   f"<td class=status>{escape(r['status'])}</td>"
                   f"<td>{escape(r['decision_note'] or '')}{_grant_cell(r)}</td></tr>" for r in rows)
    return ("<table><tr><th>request</th><th>organisation</th><th>families</th><th>MAU</th><th>status</th>"
            f"<th>decision</th></tr>{body}</table>")


def _grants_table(ctx: HubContext) -> str:
    rows = []
    for g in ctx.store.grants():
        state = f"revoked {escape(g['revoked_at'][:19])}" if g["revoked_at"] else (
            f"<form class=inline method=post action='/admin/enterprise/grants/{escape(g['id'])}/revoke'>"
            "<button>Revoke</button></form>")
        limit = f"{g['max_mau']:,}" if g["max_mau"] else "no limit"
        rows.append(f"<tr data-id='{escape(g['id'])}'><td>{escape(g['id'])}</td>"
                    f"<td>{escape(g['organisation'])}</td><td>{_families(g['families'])}</td><td>{limit}</td><td>"
                    f"{escape(g['expires'] or 'never')}</td><td>{state}</td></tr>")
    if not rows:
        return "<p>None.</p>"
    return ("<table><tr><th>grant</th><th>organisation</th><th>families</th><th>MAU</th><th>expires</th>"
            f"<th></th></tr>{''.join(rows)}</table>")


def _audit_table(ctx: HubContext) -> str:
    rows = ctx.store.latest_audit(("request.", "grant."), limit=20)
    body = "".join(f"<tr><td>{escape(a['at'][:19])}</td><td>{escape(a['actor'])}</td>"
                   f"<td>{escape(a['action'])}</td><td>{escape(a['target'] or '')}</td></tr>" for a in rows)
    return f"<table><tr><th>at</th><th>who</th><th>what</th><th>on</th></tr>{body}</table>"


@router.post("/admin/enterprise/sign-in", response_class=HTMLResponse)
def admin_sign_in(request: Request, form: PostedForm) -> Response:
    return _sign_in(request, form, OPERATORS)


@router.post("/admin/enterprise/sign-out")
def admin_sign_out(request: Request, form: PostedForm) -> Response:
    return _set_cookie(_redirect(OPERATORS.path), request, OPERATORS.cookie, None)


@router.post("/admin/enterprise/{kind}/{item_id}/{action}", response_class=HTMLResponse)
def admin_decide(request: Request, kind: str, item_id: str, action: str, form: PostedForm) -> Response:
    ctx = get_ctx(request)
    operator = _signed_in(request, ctx, OPERATORS)
    if operator is None:
        return _redirect(OPERATORS.path)
    actor = f"operator:{operator.get('name') or 'admin'}"
    try:
        if (kind, action) == ("requests", "approve"):
            not_before, until = grant_window(ctx, None, _last_day(form))
            enterprise.approve(ctx.store, item_id, max_mau=_int(form, "max_mau", "the MAU limit"),
                               not_before=not_before, expires=until, note=_one(form, "note")[:4000],
                               actor=actor)
        elif (kind, action) == ("requests", "deny"):
            if not _one(form, "reason"):
                raise BadRequestError("a denial needs a reason", code="invalid_request",
                                      hint="the requester sees it; say what would change the answer")
            enterprise.deny(ctx.store, item_id, reason=_one(form, "reason")[:4000], actor=actor)
        elif (kind, action) == ("requests", "needs-info"):
            if not _one(form, "question"):
                raise BadRequestError("the question is empty", code="invalid_request",
                                      hint="write what you need to know before deciding")
            enterprise.ask_info(ctx.store, item_id, question=_one(form, "question")[:4000], actor=actor)
        elif (kind, action) == ("grants", "revoke"):
            ctx.store.revoke_grant(item_id, actor)
        else:
            return _html("Not found", "<p>No such action.</p>", 404)
    except LlamahubError as e:
        return _html(OPERATORS.title, _admin_body(ctx, _error(e)), getattr(e, "status", 400))
    return _redirect(OPERATORS.path)
