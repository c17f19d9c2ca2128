"""Column types that are native on PostgreSQL and stay as they were on SQLite.

The store's Python side is the same for both: times are ISO-8601 strings (``2026-12-02T06:51:22.
123456+00:00``), JSON columns hold JSON text. On PostgreSQL they are stored as ``timestamptz`` and
``jsonb``; on SQLite (which has neither) as the text they always were, so an existing SQLite hub
needs no conversion. Surrogate keys are 64-bit on PostgreSQL and SQLite's rowid on SQLite.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sqlalchemy import BigInteger, DateTime, Dialect, Integer, String, Text, TypeDecorator
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeEngine

# an autoincrementing 64-bit key (SQLite's rowid is already 64-bit, and only INTEGER aliases it)
Id64 = BigInteger().with_variant(Integer(), "sqlite")


class UtcTime(TypeDecorator[str]):
    """An ISO-8601 time with its offset: ``timestamptz`` on PostgreSQL, the string on SQLite."""

    impl = String(32)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(DateTime(timezone=True))
        return dialect.type_descriptor(String(32))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None or dialect.name != "postgresql":
            return value
        when = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(value)
        if when.tzinfo is None:
            raise ValueError(f"a time without a UTC offset: {value!r}")
        return when

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        if isinstance(value, dt.datetime):
            return value.astimezone(dt.UTC).isoformat()
        return value


class JsonText(TypeDecorator[str]):
    """JSON held as its text in Python: ``jsonb`` on PostgreSQL, ``TEXT`` on SQLite.

    Read back from PostgreSQL it is dumped with sorted keys, as the store writes it.
    """

    impl = Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(JSONB(none_as_null=True))
        return dialect.type_descriptor(Text())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None or dialect.name != "postgresql":
            return value
        return json.loads(value) if isinstance(value, str) else value

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        if value is None or (isinstance(value, str) and dialect.name != "postgresql"):
            return value
        return json.dumps(value, sort_keys=True)
