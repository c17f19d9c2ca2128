"""Output-use, derivative-name, attribution and language rules: pure functions over license data.

Each question is answered with a :class:`Ruling`: whether it is allowed, the rule in our own
words, what it obliges you to do (attribution line, name prefix, notice), a note (e.g. the
languages the model was tuned for) and the clause of the license the rule comes from. The hub,
the client, the CLI (``llamahub license check``) and fine-tuning all call these functions.

Like the gates, nothing here reads a clock, a file other than the registry data, or the network;
variants come in through :class:`~llamahub.policy.gates.VariantLike`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from llamahub.errors import DerivativeNameError, FinetuneError, OutputUseError
from llamahub.policy.gates import VariantLike
from llamahub.policy.terms import LicenseTerms, license_terms

QUESTIONS = ("outputs", "name", "language")
VARIANT_NAME = re.compile(r"^[a-z0-9][a-z0-9.\-]{0,99}$")


@dataclass(frozen=True)
class Ruling:
    """One answer of the rules: ``allowed`` plus the rule, the obligations, a note and the clause."""

    question: str
    asked: str
    variant: str
    license: str
    allowed: bool
    rule: str
    obligations: tuple[str, ...] = ()
    note: str | None = None
    clause: str | None = None
    suggestion: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["obligations"] = list(self.obligations)
        return out


def _distribution_duties(terms: LicenseTerms) -> tuple[str, ...]:
    duties = []
    if terms.attribution:
        duties.append(f"display \"{terms.attribution}\" in the product, its website or its documentation")
    if terms.derivative_name_prefix:
        duties.append(f"name a distributed model so that it begins with \"{terms.derivative_name_prefix}\"")
    return tuple(duties)


# --- may outputs train another model? -----------------------------------------------------------


def outputs_rule(source: VariantLike, target: VariantLike | None = None) -> Ruling:
    """May outputs (or the weights) of ``source`` train ``target`` (None: a model under no Llama
    license of the same version, e.g. a non-Llama model)?"""
    terms = license_terms(source.license)
    what = target.name if target is not None else "a model under another license (e.g. a non-Llama model)"
    question = f"may outputs of {source.name} train {what}?"
    clause = terms.clause("outputs")
    if target is not None and target.license == source.license:
        return Ruling("outputs", question, source.name, terms.id, True,
                      f"outputs of a model may improve models under the same license ({terms.title})",
                      _distribution_duties(terms), clause=clause)
    if not terms.outputs_may_train_other_models:
        return Ruling("outputs", question, source.name, terms.id, False,
                      f"the {terms.title} lets its materials and their outputs improve only models "
                      "under the same license, not any other large language model",
                      clause=clause, note="train a model under the same license instead, or use a version "
                                          "whose license allows it (Llama 3.1 and later)")
    condition = terms.outputs_training_condition or "none"
    return Ruling("outputs", question, source.name, terms.id, True,
                  f"the {terms.title} lets outputs train other models on a condition: {condition}",
                  _distribution_duties(terms), clause=clause)


def check_output_source(source: VariantLike, base: VariantLike) -> str | None:
    """May outputs of ``source`` train ``base``? Raises OutputUseError when not; returns the
    attribution the derivative must carry (None when none)."""
    ruling = outputs_rule(source, base)
    if not ruling.allowed:
        raise OutputUseError(
            f"training data comes from {source.name}, whose {license_terms(source.license).title} lets "
            f"its outputs improve only models under the same license, and {base.name} is under "
            f"{base.license} (clause {ruling.clause})",
            hint=f"drop the records whose source_model is {source.name}, or fine-tune a "
                 f"{source.license} model instead")
    return license_terms(source.license).attribution


# --- may a derivative carry this name? ----------------------------------------------------------


def _words(text: str) -> str:
    return re.sub(r"[\s_\-]+", "-", text.strip().lower())


def name_prefix(terms: LicenseTerms) -> str | None:
    """The license's derivative prefix as a variant name begins ("Llama 3" -> "llama-3")."""
    return _words(terms.derivative_name_prefix) if terms.derivative_name_prefix else None


def _begins_with(name: str, prefix: str) -> bool:
    words = _words(name)
    return words == prefix or (words.startswith(prefix) and not words[len(prefix)].isalnum())


def suggest_name(name: str, terms: LicenseTerms) -> str:
    """``name`` with the license's prefix in front, written the way ``name`` is (a variant id or
    free text), without repeating the words of the prefix it already starts with."""
    slug = bool(VARIANT_NAME.match(name))
    prefix = _words(terms.derivative_name_prefix or "") if slug else (terms.derivative_name_prefix or "")
    words = name.split("-") if slug else name.split()
    head = _words(prefix).split("-")
    while words and head and words[0].lower() == head[0]:
        words.pop(0)
        head.pop(0)
    if not words:
        words = ["fine-tune" if slug else "Fine-Tune"]
    return ("-" if slug else " ").join([prefix, *words])


def name_rule(base: VariantLike, name: str) -> Ruling:
    """May a model made from ``base`` be distributed under ``name`` (free text or a variant id)?"""
    terms = license_terms(base.license)
    question = f"may a model made from {base.name} be distributed as {name!r}?"
    prefix = name_prefix(terms)
    clause = terms.clause("naming") or terms.clause("redistribution")
    if prefix is None:
        return Ruling("name", question, base.name, terms.id, True,
                      f"the {terms.title} sets no naming rule for derivatives",
                      _distribution_duties(terms), clause=clause)
    rule = (f"the {terms.title} asks that a model made with its materials and distributed carries a "
            f"name beginning with \"{terms.derivative_name_prefix}\"")
    if _begins_with(name, prefix):
        return Ruling("name", question, base.name, terms.id, True, rule, _distribution_duties(terms),
                      clause=clause)
    return Ruling("name", question, base.name, terms.id, False, rule, _distribution_duties(terms),
                  clause=clause, suggestion=suggest_name(name, terms))


def check_derivative_name(name: str, base: VariantLike) -> None:
    """Refuse a derivative variant name that is malformed or breaks the base license's naming rule."""
    if not VARIANT_NAME.match(name):
        raise FinetuneError(f"{name!r} cannot name a variant",
                            hint="use lower-case letters, digits, '.' and '-', e.g. llama-3-my-helper")
    ruling = name_rule(base, name)
    if not ruling.allowed:
        terms = license_terms(base.license)
        raise DerivativeNameError(
            f"{terms.title} asks that a model built from {base.name} carries a name beginning with "
            f"{terms.derivative_name_prefix!r} (clause {ruling.clause}); {name!r} does not",
            hint=f"name it {ruling.suggestion}")


# --- languages ----------------------------------------------------------------------------------


def language_rule(base: VariantLike, language: str) -> Ruling:
    """May ``base`` be used (or fine-tuned) for ``language``? Always yes under the license; the
    note says whether the model was tuned for it."""
    terms = license_terms(base.license)
    question = f"may {base.name} be fine-tuned or used for {language.strip()}?"
    supported = [lang for lang in terms.languages if lang.casefold() == language.strip().casefold()]
    listed = ", ".join(terms.languages)
    rule = (f"the {terms.title} does not restrict languages; use or fine-tuning in any language stays "
            "under the license and its acceptable use policy")
    if supported:
        note = f"{base.name} was tuned for {listed}; {supported[0]} is one of them"
    else:
        note = (f"{base.name} was tuned for {listed} only; {language.strip()} may work less well, and "
                "making it safe for that language is on you (evaluate before you ship)")
    return Ruling("language", question, base.name, terms.id, True, rule, _distribution_duties(terms),
                  note=note, clause=terms.clause("languages"))


def ask(question: str, variant: VariantLike, *, target: VariantLike | None = None,
        name: str | None = None, language: str | None = None) -> Ruling:
    """One entry point for the CLI and the hub: ``question`` is one of :data:`QUESTIONS`."""
    if question == "outputs":
        return outputs_rule(variant, target)
    if question == "name" and name and name.strip():
        return name_rule(variant, name)
    if question == "language" and language and language.strip():
        return language_rule(variant, language)
    raise ValueError(f"question {question!r} needs " + {"name": "a name", "language": "a language"}.get(
        question, f"to be one of {', '.join(QUESTIONS)}"))
