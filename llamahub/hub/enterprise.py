"""Enterprise license requests: an organisation asks to go over a license's MAU threshold.

A user submits a request (families, monthly active users, a note on the use); it stays
``pending`` until an operator approves it, which creates the enterprise grant in the same
transaction, or denies it with a reason. The requester may withdraw it while it is pending.
Every step appends to the audit log; a decided request never changes again (a grant made from
it is revoked as any grant is).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert, select, update

from llamahub.hub import schema as t
from llamahub.hub.errors import ConflictError, NotFoundError
from llamahub.hub.store import Store, new_id, utcnow

PENDING, APPROVED, DENIED, WITHDRAWN = "pending", "approved", "denied", "withdrawn"
STATUSES = (PENDING, APPROVED, DENIED, WITHDRAWN)
_table = t.enterprise_requests


def submit(store: Store, user: dict[str, Any], families: Sequence[str], mau: int, note: str) -> dict:
    """A new pending request from ``user``'s organisation; 409 while one for a family is pending."""
    families = sorted(set(families))
    row = {"id": new_id("er_"), "user_id": user["id"], "organisation": user["organisation"],
           "families": json.dumps(families), "mau": mau, "note": note, "status": PENDING,
           "created_at": utcnow(), "decided_at": None, "decision_note": None, "grant_id": None}
    with store.write() as conn:
        open_rows = conn.execute(select(_table).where(_table.c.user_id == user["id"],
                                                      _table.c.status == PENDING))
        for other in open_rows:
            overlap = sorted(set(json.loads(other.families)) & set(families))
            if overlap:
                raise ConflictError(f"request {other.id} for {', '.join(overlap)} is still pending",
                                    code="request_pending",
                                    hint="wait for its review (`llamahub enterprise status`), or withdraw "
                                         f"it with `llamahub enterprise withdraw {other.id}`")
        conn.execute(insert(_table).values(**row))
        store.audit(conn, "user:" + user["id"], "request.submit", row["id"], organisation=row["organisation"],
                    families=families, mau=mau)
    return _as_dict(row)


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
        row = _pending(conn, request_id, user_id=user["id"])
        values = {"status": WITHDRAWN, "decided_at": utcnow()}
        conn.execute(update(_table).where(_table.c.id == row["id"]).values(**values))
        store.audit(conn, "user:" + user["id"], "request.withdraw", request_id)
    return _as_dict(row | values)


def approve(store: Store, request_id: str, *, max_mau: int | None, not_before: str, expires: str | None,
            note: str, actor: str = "admin") -> dict:
    """Approve a pending request: the grant and the decision land together or not at all."""
    with store.write() as conn:
        row = _pending(conn, request_id)
        grant = store.insert_grant(conn, row["organisation"], json.loads(row["families"]),
                                   max_mau if max_mau is not None else row["mau"], not_before, expires, actor)
        values = {"status": APPROVED, "decided_at": utcnow(), "decision_note": note, "grant_id": grant["id"]}
        conn.execute(update(_table).where(_table.c.id == request_id).values(**values))
        store.audit(conn, actor, "request.approve", request_id, grant=grant["id"], note=note)
    return _as_dict(row | values) | {"grant": grant}


def deny(store: Store, request_id: str, *, reason: str, actor: str = "admin") -> dict:
    with store.write() as conn:
        row = _pending(conn, request_id)
        values = {"status": DENIED, "decided_at": utcnow(), "decision_note": reason}
        conn.execute(update(_table).where(_table.c.id == request_id).values(**values))
        store.audit(conn, actor, "request.deny", request_id, reason=reason)
    return _as_dict(row | values)


def _pending(conn: Any, request_id: str, user_id: str | None = None) -> dict:
    row = conn.execute(select(_table).where(_table.c.id == request_id)).first()
    if row is None or (user_id is not None and row.user_id != user_id):
        raise NotFoundError(f"no enterprise request {request_id}", code="unknown_request",
                            hint="`llamahub enterprise status` lists yours; operators: "
                                 "`llamahub hub requests list`")
    if row.status != PENDING:
        raise ConflictError(f"request {request_id} is already {row.status}", code="request_decided",
                            hint="a decided request does not change; submit a new one if needed")
    return dict(row._mapping)


def _as_dict(row: Any) -> dict:
    out = dict(row)
    out["families"] = json.loads(out["families"])
    return out
