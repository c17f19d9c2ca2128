"""Streaming text the way ``LlamaModel.chat`` returns it whole: without surrounding whitespace."""

from __future__ import annotations


class Trimmed:
    """Pieces of an answer with leading whitespace dropped and trailing whitespace held back
    until more text follows it, so the pieces join to ``answer.strip()``."""

    def __init__(self) -> None:
        self.started = False
        self.held = ""

    def push(self, piece: str) -> str:
        if not self.started:
            piece = piece.lstrip()
            if not piece:
                return ""
            self.started = True
        text = self.held + piece
        body = text.rstrip()
        self.held = text[len(body):]
        return body
