"""Meta's checklist files (``checklist.chk``): ``<md5>  <file>`` per line, as ``md5sum`` writes them."""

from __future__ import annotations

import re

_LINE = re.compile(r"^([0-9a-fA-F]{32})\s+\*?(?:\./)?(\S.*)$")


def parse_checklist(text: str, prefix: str = "") -> dict[str, str]:
    """``{prefix + file: md5}``. A line that is not ``<md5>  <file>``, or names a file outside the
    checklist's own folder, raises ValueError naming the line."""
    out = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = _LINE.match(line.strip())
        if match is None or "/" in match.group(2) or match.group(2) in (".", ".."):
            raise ValueError(f"line {number} is not a '<md5>  <file>' line of this folder")
        out[prefix + match.group(2)] = match.group(1).lower()
    return out
