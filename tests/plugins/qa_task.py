"""The synthetic task the fine-tuning tests teach: a fixed answer to each question, asked four ways."""

from __future__ import annotations

import json
from pathlib import Path

FACTS = [("sky", "blue"), ("grass", "green"), ("snow", "white"), ("coal", "black"),
         ("sun", "yellow"), ("rose", "red")]
PHRASES = ["What color is the {}?", "Tell me the color of the {}.", "Which color has the {}?",
           "Name the color of the {}."]


def question(thing: str, phrase: int = 0) -> str:
    return PHRASES[phrase].format(thing)


def answer(color: str) -> str:
    return f"It is {color}."


def write_dialogs(path: Path) -> Path:
    lines = [json.dumps({"messages": [{"role": "user", "content": question(thing, p)},
                                      {"role": "assistant", "content": answer(color)}]})
             for p in range(len(PHRASES)) for thing, color in FACTS]
    path.write_text("\n".join(lines) + "\n")
    return path
