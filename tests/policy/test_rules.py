"""The output-use, derivative-name and language rules, as a table over Llama 2 / 3 / 3.1 / 3.2."""

from __future__ import annotations

import pytest

import llamahub
from llamahub.policy import rules

# (variant, may outputs train a non-Llama model?, attribution owed, clause)
OUTPUTS = [
    ("llama-2-7b", False, None, "1.b.v"),
    ("llama-3-8b", False, None, "1.b.v"),
    ("llama-3.1-8b", True, "Built with Llama", "1.b.i"),
    ("llama-3.2-1b", True, "Built with Llama", "1.b.i"),
]


@pytest.mark.parametrize(("name", "allowed", "attribution", "clause"), OUTPUTS)
def test_outputs_training_a_non_llama_model(name: str, allowed: bool, attribution: str | None,
                                            clause: str) -> None:
    ruling = llamahub.license_check(name, train_other=True)
    assert (ruling.allowed, ruling.clause, ruling.question) == (allowed, clause, "outputs")
    owed = " ".join(ruling.obligations)
    if attribution:
        assert f'"{attribution}"' in owed and 'begins with "Llama"' in owed
    else:
        assert ruling.obligations == () and "only models under the same license" in ruling.rule


def test_outputs_may_improve_the_same_license() -> None:
    ruling = llamahub.license_check("llama-3-8b-instruct", outputs_to="llama-3-70b")
    assert ruling.allowed and '"Built with Meta Llama 3"' in " ".join(ruling.obligations)
    assert not llamahub.license_check("llama-2-7b-chat", outputs_to="llama-3-8b").allowed
    assert llamahub.license_check("llama-3.1-8b", outputs_to="llama-2-7b").allowed


# (base, name, allowed, suggestion, clause)
NAMES = [
    ("llama-2-13b", "Orca Helper", True, None, "1.b.i"),
    ("llama-3-70b", "Orca Helper", False, "Llama 3 Orca Helper", "1.b.i"),
    ("llama-3-70b", "Llama 3 Orca Helper", True, None, "1.b.i"),
    ("llama-3-70b", "Llama Orca", False, "Llama 3 Orca", "1.b.i"),
    ("llama-3-70b", "llama-30-orca", False, "llama-3-30-orca", "1.b.i"),
    ("llama-3.1-8b", "Orca Helper", False, "Llama Orca Helper", "1.b.i"),
    ("llama-3.1-8b", "Llama-Orca", True, None, "1.b.i"),
    ("llama-3.2-3b", "llama-orca", True, None, "1.b.i"),
    ("llama-3.2-3b", "Llamas Orca", False, "Llama Llamas Orca", "1.b.i"),
]


@pytest.mark.parametrize(("base", "name", "allowed", "suggestion", "clause"), NAMES)
def test_derivative_names(base: str, name: str, allowed: bool, suggestion: str | None, clause: str) -> None:
    ruling = llamahub.license_check(base, name=name)
    assert (ruling.allowed, ruling.suggestion, ruling.clause) == (allowed, suggestion, clause)


# (base, language, tuned for it?, the languages the note names)
LANGUAGES = [
    ("llama-2-13b", "Portuguese", False, "English"),
    ("llama-3-8b", "Portuguese", False, "English"),
    ("llama-3.1-70b", "portuguese", True, "Thai"),
    ("llama-3.2-1b", "Swahili", False, "Hindi"),
]


@pytest.mark.parametrize(("base", "language", "tuned", "listed"), LANGUAGES)
def test_languages(base: str, language: str, tuned: bool, listed: str) -> None:
    ruling = llamahub.license_check(base, language=language)
    assert ruling.allowed and ruling.clause == "model card" and listed in (ruling.note or "")
    assert ("is one of them" in (ruling.note or "")) == tuned
    assert ("only" in (ruling.note or "")) == (not tuned)


def test_one_question_per_call() -> None:
    with pytest.raises(TypeError):
        llamahub.license_check("llama-2-7b", name="x", language="German")
    with pytest.raises(TypeError):
        llamahub.license_check("llama-2-7b")
    with pytest.raises(ValueError, match="needs a name"):
        rules.ask("name", llamahub.variant("llama-2-7b"), name=" ")
