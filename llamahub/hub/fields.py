"""Bounded input at the hub's edge: every string has a length limit and is valid Unicode, every
integer and date has a range, countries are ISO 3166-1 alpha-2 codes from a list.

Request bodies derive from :class:`Input`: unknown fields are refused and any string anywhere in
the body holding a lone UTF-16 surrogate (``"\\ud800"`` is legal JSON, but not text) or a NUL
character is refused with 422 before a handler sees it, so nothing the store or the audit log
keeps can fail to encode later.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any

from fastapi import Path
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

MAX_MAU = 10**13  # monthly active users: far above any real audience, far below int64
MAX_ID = 64  # ids, license ids, family and variant names, key ids
MAX_NAME = 200  # names, organisations, certifications
MAX_NOTE = 4000  # free text: notes and reasons
MAX_ROW_ID = 2**53  # audit row ids in queries
EARLIEST = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
LATEST = dt.datetime(2200, 1, 1, tzinfo=dt.UTC)
_NOT_TEXT = re.compile("[\x00\ud800-\udfff]")

# ISO 3166-1 alpha-2: the 249 officially assigned codes.
_ISO_3166_1 = """
AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV
BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES
ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE
IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY
MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU
NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM
SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE
VG VI VN VU WF WS YE YT ZA ZM ZW
"""
COUNTRIES = frozenset(_ISO_3166_1.split())


def text_problem(value: str) -> str | None:
    """Why ``value`` is not storable text (a lone surrogate or a NUL), or None."""
    bad = _NOT_TEXT.search(value)
    if bad is None:
        return None
    char = bad.group(0)
    what = "a NUL character" if char == "\x00" else f"a lone UTF-16 surrogate U+{ord(char):04X}"
    return f"holds {what} at position {bad.start()}; send valid Unicode text"


def _check_text(value: Any, where: str) -> None:
    if isinstance(value, str):
        problem = text_problem(value)
        if problem:
            raise ValueError(f"{where or 'the body'} {problem}")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, f"{where}.{key}" if where else "a key")
            _check_text(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_text(item, f"{where}[{i}]")


class Input(BaseModel):
    """A request body: unknown fields refused, every string checked to be real text."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _only_text(cls, data: Any) -> Any:
        _check_text(data, "")
        return data


def country_code(value: str) -> str:
    code = value.strip().upper()
    if code not in COUNTRIES:
        raise ValueError(f"{value[:8]!r} is not an ISO 3166-1 alpha-2 country code; "
                         "use one like US, DE or JP")
    return code


def bounded_time(value: dt.datetime | None) -> dt.datetime | None:
    """A timezone-aware time between 2000 and 2200 (naive times are refused by the routes)."""
    if value is None or value.tzinfo is None:
        return value
    if not EARLIEST <= value < LATEST:
        raise ValueError("give a time between 2000-01-01 and 2199-12-31")
    return value


Country = Annotated[str, Field(min_length=2, max_length=8, description="ISO 3166-1 alpha-2 code, e.g. DE"),
                    AfterValidator(country_code)]
Mau = Annotated[int, Field(ge=0, le=MAX_MAU, description="monthly active users")]
PositiveMau = Annotated[int, Field(ge=1, le=MAX_MAU, description="monthly active users")]
Ident = Annotated[str, Field(min_length=1, max_length=MAX_ID)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME)]
Note = Annotated[str, Field(max_length=MAX_NOTE)]
When = Annotated[dt.datetime, Field(description="ISO 8601 with a timezone, 2000..2199"),
                 AfterValidator(bounded_time)]
IdPath = Annotated[str, Path(min_length=1, max_length=MAX_ID, description="an id (at most 64 characters)")]
