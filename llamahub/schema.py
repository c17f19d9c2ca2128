"""Schemas of llamahub's TOML data files (pydantic), and their one error format.

Every data file (``registry/variants``, ``registry/licenses``, ``registry/aup``) is read into
strict pydantic models: unknown keys, missing keys, wrong types and out-of-range values are
refused. Whatever the file, a problem is raised as :class:`~llamahub.errors.DataFileError`
naming the file, the entry and each bad field, with a hint.
"""

from __future__ import annotations

import tomllib
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from llamahub.errors import DataFileError


class DataModel(BaseModel):
    """A table of a data file: exact keys, no type coercion (TOML already has types)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


M = TypeVar("M", bound=DataModel)


@dataclass(frozen=True)
class Problem:
    """One bad field: where (``arch.dim``, ``category[2].group``), what is wrong, and maybe how to fix it."""

    field: str
    message: str
    hint: str | None = None


def _one_line(value: str) -> str:
    if not value.strip() or "\n" in value:
        raise ValueError("must be a non-empty one-line string")
    return value


Line = Annotated[str, AfterValidator(_one_line)]


def _unique(values: list[Any]) -> list[Any]:
    if len(set(values)) != len(values):
        raise ValueError("must not repeat an item")
    return values


Lines = Annotated[list[Line], AfterValidator(_unique)]  # one-line strings, none repeated


def fail(file: str, entry: str, problems: Sequence[Problem], hint: str) -> DataFileError:
    """The error for ``problems`` of one entry; the first problem's own hint wins over ``hint``."""
    own = next((p.hint for p in problems if p.hint), None)
    return DataFileError(file, entry, [(p.field, p.message) for p in problems], hint=own or hint)


def validate(model: type[M], data: Any, *, file: str, entry: str, hint: str, at: str = "") -> M:
    """``data`` as a ``model``, or a DataFileError naming each field that does not fit.

    ``at`` names where the table sits inside the entry (``arch``), so fields read ``arch.dim``.
    """
    if not isinstance(data, dict):
        raise fail(file, entry, [Problem(at or "(table)", f"must be a table, got {_show(data)}")], hint)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise fail(file, entry, [_problem(model, err, at) for err in e.errors()], hint) from None


def check(problems: Sequence[Problem], *, file: str, entry: str, hint: str) -> None:
    """Raise the DataFileError for cross-field ``problems`` found after validation, if any."""
    if problems:
        raise fail(file, entry, problems, hint)


def read_toml(text: str, file: str) -> dict[str, Any]:
    """A data file's tables; a syntax error is a DataFileError like any other problem."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        problem = Problem("(syntax)", f"not valid TOML: {e}")
        raise fail(file, "(file)", [problem], "fix the file's syntax") from None


def _problem(model: type[DataModel], err: Any, at: str) -> Problem:
    loc = tuple(err["loc"])
    where = _field_name((at, *loc) if at else loc)
    kind = err["type"]
    if kind == "missing":
        return Problem(where, "missing (a required key)")
    if kind == "extra_forbidden":
        allowed = _keys_at(model, loc[:-1])
        return Problem(where, "unknown key", f"allowed keys here: {', '.join(allowed)}" if allowed else None)
    # our own validators raise ValueError("must be ..."); pydantic's messages start "Input should ..."
    message = str(err["ctx"]["error"]) if kind == "value_error" else err["msg"][:1].lower() + err["msg"][1:]
    return Problem(where, f"{message}, got {_show(err['input'])}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _field_name(loc: tuple[Any, ...]) -> str:
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        elif not part.startswith(("function-", "literal[")):  # pydantic's own labels of a union member
            name += f".{part}" if name else part
    return name or "(table)"


def _keys_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed in the table at ``loc`` inside ``model`` (empty if it is not a model)."""
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None:
            return []
        if isinstance(part, str):
            info = current.model_fields.get(part)
            current = _model_in(info.annotation) if info else None
    return sorted(current.model_fields) if current else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found:
            return found
    return None
