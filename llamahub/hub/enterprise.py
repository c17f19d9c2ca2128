"""Enterprise license requests: an organisation asks to go over a license's MAU threshold, or for
an exception to the acceptable use policy (Meta's case-by-case license for research or public
interest uses that are prohibited or unclear).

An active member of an organisation record submits a request (families or variants, monthly
active users, AUP categories asked for, a note on the use); it stays ``pending`` until an operator
approves it, which creates the organisation's grant with that scope in the same transaction, or
denies it with a reason. The operator may ask for more information first (``needs_info``, with
the question); the requester's answer puts it back to ``pending``. The requester may withdraw it
while it is open. Every step, note, question and answer included, appends to the audit log, which
names the operator; a decided request never changes again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert, select, update

from llamahub.hub import schema as t
from llamahub.hub.errors import ConflictError, ForbiddenError, NotFoundError
from llamahub.hub.store import Store, new_id, utcnow

PENDING, APPROVED, DENIED, WITHDRAWN = "pending", "approved", "denied", "withdrawn"
NEEDS_INFO = "needs_info"
STATUSES = (PENDING, NEEDS_INFO, APPROVED, DENIED, WITHDRAWN)
OPEN = (PENDING, NEEDS_INFO)
_table = t.enterprise_requests


def _org_of(store: Store, user: dict[str, Any]) -> dict:
    member = store.membership(user["id"])
    if member is None or member["status"] != "active":
        raise ForbiddenError(f"you are not yet an approved member of {user['organisation']}",
                             code="membership_pending",
                             hint="ask your organisation's admin (or the hub's operator) to approve you, or "
                                  "register with an invitation from them")
    return member


def submit(store: Store, user: dict[str, Any], families: Sequence[str], mau: int, note: str, *,
           uses: Sequence[str] = (), variants: Sequence[str] = ()) -> dict:
    """A new pending request from ``user``'s organisation; 409 while one for a family is open."""
    families = sorted(set(families))
    member = _org_of(store, user)
    row = {"id": new_id("er_"), "user_id": user["id"], "organisation": member["org_name"],
           "org_id": member["org_id"], "families": json.dumps(families), "mau": mau, "note": note,
           "uses": json.dumps(sorted(set(uses))), "variants": json.dumps(sorted(set(variants))),
           "status": PENDING, "created_at": utcnow(), "decided_at": None, "decision_note": None,
           "grant_id": None, "info_request": None, "info_answer": None}
    with store.write() as conn:
        open_rows = conn.execute(select(_table).where(_table.c.user_id == user["id"],
                                                      _table.c.status.in_(OPEN)))
        for other in open_rows:
            overlap = sorted(set(json.loads(other.families)) & set(families))
            if overlap:
                raise ConflictError(f"request {other.id} for {', '.join(overlap)} is still pending",
                                    code="request_pending",
                                    hint="wait for its review (`llamahub enterprise status`), or withdraw "
                                         f"it with `llamahub enterprise withdraw {other.id}`")
        conn.execute(insert(_table).values(**row))
        store.audit(conn, "user:" + user["id"], "request.submit", row["id"], organisation=row["organisation"],
                    org_id=row["org_id"], families=families, mau=mau, uses=json.loads(row["uses"]),
                    variants=json.loads(row["variants"]), note=note)
    return _as_dict(row)


def ask_info(store: Store, request_id: str, *, question: str, actor: str) -> dict:
    """The reviewer needs more information: the request waits for the requester's answer."""
    with store.write() as conn:
        row = _open(conn, request_id)
        values = {"status": NEEDS_INFO, "info_request": question}
        conn.execute(update(_table).where(_table.c.id == request_id).values(**values))
        store.audit(conn, actor, "request.needs_info", request_id, question=question)
    return _as_dict(row | values)


def answer(store: Store, request_id: str, user: dict[str, Any], text: str) -> dict:
    """The requester answers the reviewer's question; the request is pending review again."""
    with store.write() as conn:
        row = _open(conn, request_id, user_id=user["id"])
        if row["status"] != NEEDS_INFO:
            raise ConflictError(f"request {request_id} has no open question", code="no_question",
                                hint="answer only when the reviewer asked (status needs_info)")
        values = {"status": PENDING, "info_answer": text}
        conn.execute(update(_table).where(_table.c.id == request_id).values(**values))
        store.audit(conn, "user:" + user["id"], "request.answer", request_id, answer=text)
    return _as_dict(row | values)


def listing(store: Store, *, user_id: str | None = None, status: str | None = None) -> list[dict]:
    """Requests, oldest first: one user's, or all of them (operators), optionally of one status."""
    query = select(_table).order_by(_table.c.created_at)
    if user_id is not None:
        query = query.where(_table.c.user_id == user_id)
    if status is not None:
        query = query.where(_table.c.status == status)
    with store.read() as conn:
        return [_as_dict(r._mapping) for r in conn.execute(query)]


def withdraw(store: Store, request_id: str, user: dict[str, Any]) -> dict:
    with store.write() as conn:
        row = _open(conn, request_id, user_id=user["id"])
        values = {"status": WITHDRAWN, "decided_at": utcnow()}
        conn.execute(update(_table).where(_table.c.id == row["id"]).values(**values))
        store.audit(conn, "user:" + user["id"], "request.withdraw", request_id)
    return _as_dict(row | values)


def approve(store: Store, request_id: str, *, max_mau: int | None, not_before: str, expires: str | None,
            note: str, actor: str = "operator") -> dict:
    """Approve an open request: the grant (the request's scope) and the decision land together or
    not at all. The grant goes to the organisation record the requester is an active member of."""
    with store.write() as conn:
        row = _open(conn, request_id)
        member = conn.execute(select(t.memberships).where(t.memberships.c.user_id == row["user_id"])).first()
        if member is None or member.status != "active" or member.org_id != row["org_id"]:
            raise ConflictError(f"the requester is not an active member of {row['organisation']}",
                                code="requester_not_member",
                                hint="deny it, or approve the membership first")
        grant = store.insert_grant(conn, row["org_id"], json.loads(row["families"]),
                                   max_mau if max_mau is not None else row["mau"], not_before, expires, actor,
                                   variants=json.loads(row["variants"] or "[]"),
                                   uses=json.loads(row["uses"] or "[]"), note=note)
        values = {"status": APPROVED, "decided_at": utcnow(), "decision_note": note, "grant_id": grant["id"]}
        conn.execute(update(_table).where(_table.c.id == request_id).values(**values))
        store.audit(conn, actor, "request.approve", request_id, grant=grant["id"], note=note)
    return _as_dict(row | values) | {"grant": grant}


def deny(store: Store, request_id: str, *, reason: str, actor: str = "operator") -> dict:
    with store.write() as conn:
        row = _open(conn, request_id)
        values = {"status": DENIED, "decided_at": utcnow(), "decision_note": reason}
        conn.execute(update(_table).where(_table.c.id == request_id).values(**values))
        store.audit(conn, actor, "request.deny", request_id, reason=reason)
    return _as_dict(row | values)


def _open(conn: Any, request_id: str, user_id: str | None = None) -> dict:
    row = conn.execute(select(_table).where(_table.c.id == request_id)).first()
    if row is None or (user_id is not None and row.user_id != user_id):
        raise NotFoundError(f"no enterprise request {request_id}", code="unknown_request",
                            hint="`llamahub enterprise status` lists yours; operators: "
                                 "`llamahub hub requests list`")
    if row.status not in OPEN:
        raise ConflictError(f"request {request_id} is already {row.status}", code="request_decided",
                            hint="a decided request does not change; submit a new one if needed")
    return dict(row._mapping)


def _as_dict(row: Any) -> dict:
    out = dict(row)
    for key in ("families", "uses", "variants"):
        out[key] = json.loads(out.get(key) or "[]")
    return out
