"""The Jinja chat templates (written into GGUF files and HF tokenizer configs) render exactly the
prompt ``llamahub.model.chat`` builds."""

from __future__ import annotations

import jinja2
import pytest

from llamahub.model.chat import format_prompt
from llamahub.model.chat_templates import CHAT_TEMPLATES as TEMPLATES

DIALOGS = [
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " What is a llama? "}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "a"},
     {"role": "assistant", "content": "b "}, {"role": "user", "content": "c"}],
]


@pytest.mark.parametrize("fmt", ["llama2", "llama3"])
@pytest.mark.parametrize("dialog", DIALOGS)
def test_chat_templates_render_our_prompt(fmt: str, dialog: list[dict[str, str]]) -> None:
    bos, eos = ("<s>", "</s>") if fmt == "llama2" else ("<|begin_of_text|>", "<|end_of_text|>")
    rendered = jinja2.Environment().from_string(TEMPLATES[fmt]).render(
        messages=dialog, bos_token=bos, eos_token=eos, add_generation_prompt=True)
    assert rendered == format_prompt(dialog, fmt)
