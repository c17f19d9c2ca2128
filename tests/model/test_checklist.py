"""Meta's checklist.chk: parsed as md5sum writes it; anything else is refused with its line."""

from __future__ import annotations

import pytest

from llamahub.model.checklist import parse_checklist


def test_md5sum_lines_in_text_and_binary_mode() -> None:
    text = f"0123456789ABCDEF0123456789abcdef  consolidated.00.pth\n\n{'f' * 32} *./params.json\n"
    assert parse_checklist(text, "llama-2-7b/") == {
        "llama-2-7b/consolidated.00.pth": "0123456789abcdef0123456789abcdef",
        "llama-2-7b/params.json": "f" * 32,
    }


@pytest.mark.parametrize("line", ["not a checksum  file", "0123  short.pth", f"{'a' * 32}  ../escape.pth",
                                  f"{'a' * 32}  sub/dir.pth"])
def test_other_lines_are_refused_with_their_number(line: str) -> None:
    with pytest.raises(ValueError, match="line 2 is not"):
        parse_checklist(f"{'b' * 32}  ok.pth\n{line}\n")
