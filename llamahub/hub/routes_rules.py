"""``GET /api/license-check``: the output-use, derivative-name and language rules over HTTP.

The answers come from :mod:`llamahub.policy.rules`, the same pure functions the client and
``llamahub license check`` use; no account is needed (the rules are public license terms).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from llamahub.hub import models as m
from llamahub.hub.deps import Ctx
from llamahub.hub.errors import BadRequestError
from llamahub.hub.fields import MAX_ID, MAX_NAME
from llamahub.policy import rules

router = APIRouter(prefix="/api", tags=["licenses"], responses=m.ERRORS)
Short = Annotated[str | None, Query(min_length=1, max_length=MAX_ID)]
Text = Annotated[str | None, Query(min_length=1, max_length=MAX_NAME)]


@router.get("/license-check", response_model=m.RulingOut)
def license_check(ctx: Ctx, question: Literal["outputs", "name", "language"],
                  variant: Annotated[str, Query(min_length=1, max_length=MAX_ID)],
                  target: Short = None, name: Text = None, language: Text = None) -> dict[str, Any]:
    """May outputs of ``variant`` train ``target`` (none: a non-Llama model)? May a model made from
    it be distributed as ``name``? May it be fine-tuned for ``language``? Answered with the rule,
    the obligations, a note and the license clause."""
    base = ctx.registry.resolve(variant)
    other = ctx.registry.resolve(target) if target else None
    if question == "name" and not (name and name.strip()):
        raise BadRequestError("question=name needs the name to check", code="missing_name",
                              hint="add &name=... (e.g. name=Llama 3 Orca Helper)")
    if question == "language" and not (language and language.strip()):
        raise BadRequestError("question=language needs the language to check", code="missing_language",
                              hint="add &language=... (e.g. language=Portuguese)")
    return rules.ask(question, base, target=other, name=name, language=language).as_dict()
