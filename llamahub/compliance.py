"""``llamahub.license_check``: ask the license rules a question about a variant by name.

A thin layer over :mod:`llamahub.policy.rules` (the same functions the hub answers
``GET /api/license-check`` with) that resolves names in the catalogue; it needs no network.
"""

from __future__ import annotations

from llamahub.plugins import resolve
from llamahub.policy.rules import Ruling, ask


def license_check(variant: str, *, outputs_to: str | None = None, train_other: bool = False,
                  name: str | None = None, language: str | None = None) -> Ruling:
    """Answer one question about ``variant``:

    - ``train_other=True``: may its outputs train a model under another license (a non-Llama
      model)? ``outputs_to="llama-2-7b"``: may they train that variant?
    - ``name="Orca Helper"``: may a model made from it be distributed under that name?
    - ``language="Portuguese"``: may it be fine-tuned or used for that language?

    Exactly one question per call; the :class:`Ruling` holds the rule, the obligations, a note
    and the license clause.
    """
    asked = [q for q, given in (("outputs", train_other or outputs_to is not None),
                                ("name", name is not None), ("language", language is not None)) if given]
    if len(asked) != 1:
        raise TypeError("ask exactly one of train_other=True, outputs_to=, name= or language=")
    base = resolve(variant)
    target = resolve(outputs_to) if outputs_to else None
    return ask(asked[0], base, target=target, name=name, language=language)
