"""Chat prompt formats of the Llama family: "llama2" (Llama 2 chat and Code Llama 7B-34B Instruct),
"llama3" (Llama 3.x instruct) and "codellama70b" (Code Llama 70B Instruct).

A dialog is a list of messages, ``{"role": ..., "content": ...}``. :func:`encode_dialog` turns a
valid dialog into the prompt tokens after which the assistant answers; :func:`format_prompt`
renders the same prompt as text for display. Both are built from one list of prompt parts (plain
text, or a special token), so what is shown is what is encoded. Special tokens are always
inserted by id, never by encoding their text, and text a user types is always plain text.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from llamahub.errors import ChatFormatError, ContextLengthError, TokenizerError
from llamahub.model.tokenizer import Tokenizer

__all__ = [
    "FORMATS",
    "Message",
    "chat_stop_ids",
    "encode_dialog",
    "fit_dialog",
    "format_prompt",
    "validate_dialog",
]

Message = dict[str, str]

FORMATS = ("llama2", "llama3", "codellama70b")
ROLES: dict[str, tuple[str, ...]] = {
    "llama2": ("system", "user", "assistant"),
    "llama3": ("system", "user", "assistant", "ipython"),
    "codellama70b": ("system", "user", "assistant"),
}
_TOKENIZER_KIND = {"llama2": "sentencepiece", "llama3": "tiktoken", "codellama70b": "sentencepiece"}

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
LLAMA2_TAGS = (B_INST, E_INST, "<<SYS>>", "<</SYS>>")
LLAMA3_STOPS = ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>")
STEP = "<step>"  # Code Llama 70B Instruct: ends every turn, the assistant's included


@dataclass(frozen=True)
class _Special:
    """A special token in a prompt: ``name`` is its text; ``attr`` names a tokenizer attribute."""

    name: str
    attr: str | None = None

    def token_id(self, tokenizer: Tokenizer) -> int:
        if self.attr is not None:
            return int(getattr(tokenizer, self.attr))
        return tokenizer.special_id(self.name)


_Part = str | _Special
_BOS, _EOS = _Special("<s>", "bos_id"), _Special("</s>", "eos_id")
_BEGIN, _EOT = _Special("<|begin_of_text|>"), _Special("<|eot_id|>")
_START_HEADER, _END_HEADER = _Special("<|start_header_id|>"), _Special("<|end_header_id|>")
_STEP = _Special(STEP)


# --- validation -----------------------------------------------------------------------------


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ChatFormatError(
            f"unknown chat format {fmt!r}",
            hint="use 'llama2' for Llama 2 chat models, 'llama3' for Llama 3.x instruct models or "
                 "'codellama70b' for Code Llama 70B Instruct",
        )


def _check_message(index: int, message: object, fmt: str) -> None:
    if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
        raise ChatFormatError(
            f"message {index} is not a {{'role': ..., 'content': ...}} mapping: {message!r}",
            hint='write each message as {"role": "user", "content": "..."}',
        )
    role, roles = message["role"], ROLES[fmt]
    if role not in roles:
        extra = "; 'ipython' (tool output) needs a Llama 3.1+ model and fmt='llama3'"
        extra = extra if role == "ipython" else ""
        raise ChatFormatError(
            f"message {index} has unknown role {role!r} for the {fmt} format",
            hint=f"use one of the roles {', '.join(roles)}{extra}",
        )
    if not isinstance(message["content"], str):
        raise ChatFormatError(
            f"message {index} ({role}) has content of type {type(message['content']).__name__}",
            hint="content must be a string; join or str() it before sending",
        )


def _check_messages(messages: object, fmt: str) -> None:
    if isinstance(messages, str | bytes | Mapping) or not isinstance(messages, Sequence):
        raise ChatFormatError(
            f"a dialog must be a list of messages, got {type(messages).__name__}",
            hint='pass [{"role": "user", "content": "..."}]',
        )
    if not messages:
        raise ChatFormatError("the dialog is empty", hint="add at least one user message")
    for index, message in enumerate(messages):
        _check_message(index, message, fmt)


def _check_system_first(messages: Sequence[Mapping[str, str]]) -> None:
    for index, message in enumerate(messages):
        if message["role"] == "system" and index > 0:
            raise ChatFormatError(
                f"message {index} is a system message; only the first message may be one",
                hint="merge the system instructions into one system message at the start",
            )


def _check_llama2_turns(messages: Sequence[Mapping[str, str]]) -> None:
    offset = 1 if messages[0]["role"] == "system" else 0
    turns = messages[offset:]
    if not turns:
        raise ChatFormatError(
            "the dialog has a system message but no user message",
            hint="add the user message the assistant should answer after the system message",
        )
    for index, message in enumerate(turns):
        expected = "user" if index % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise ChatFormatError(
                f"message {index + offset} is from {message['role']}, expected {expected}",
                hint="Llama 2 chat needs user and assistant turns strictly alternating, starting with user",
            )
    if turns[-1]["role"] != "user":
        raise ChatFormatError(
            "the dialog ends with an assistant message",
            hint="end the dialog with the user message the assistant should answer",
        )


def _check_tags(messages: Sequence[Mapping[str, str]], tags: Sequence[str]) -> None:
    for index, message in enumerate(messages):
        found = [tag for tag in tags if tag in message["content"]]
        if found:
            raise ChatFormatError(
                f"message {index} contains the prompt tag {found[0]!r}",
                hint=f"remove {', '.join(tags)} from messages; the chat format adds them itself",
            )


def _check_llama3_end(messages: Sequence[Mapping[str, str]]) -> None:
    last = messages[-1]["role"]
    if last not in ("user", "ipython"):
        raise ChatFormatError(
            f"the dialog ends with a {last} message",
            hint="end the dialog with a user (or ipython tool-output) message for the assistant to answer",
        )


def validate_dialog(messages: Sequence[Mapping[str, str]], fmt: str) -> None:
    """Raise :class:`ChatFormatError` unless ``messages`` is a dialog that ``fmt`` can encode."""
    _check_format(fmt)
    _check_messages(messages, fmt)
    _check_system_first(messages)
    if fmt == "llama3":
        _check_llama3_end(messages)
    else:  # llama2 and codellama70b: user and assistant alternate, the user speaks last
        _check_llama2_turns(messages)
        _check_tags(messages, LLAMA2_TAGS if fmt == "llama2" else (STEP,))


# --- prompt parts ---------------------------------------------------------------------------


def _llama2_turn_texts(messages: Sequence[Mapping[str, str]]) -> list[str]:
    """User/assistant contents in order, with the system prompt folded into the first user turn."""
    if messages[0]["role"] != "system":
        return [m["content"] for m in messages]
    first_user = B_SYS + messages[0]["content"] + E_SYS + messages[1]["content"]
    return [first_user, *(m["content"] for m in messages[2:])]


def _llama2_parts(messages: Sequence[Mapping[str, str]]) -> list[_Part]:
    texts = _llama2_turn_texts(messages)
    parts: list[_Part] = []
    for user, answer in zip(texts[:-1:2], texts[1::2], strict=True):
        parts += [_BOS, f"{B_INST} {user.strip()} {E_INST} {answer.strip()} ", _EOS]
    return [*parts, _BOS, f"{B_INST} {texts[-1].strip()} {E_INST}"]


def _llama3_header(role: str) -> list[_Part]:
    return [_START_HEADER, role, _END_HEADER, "\n\n"]


def _llama3_parts(messages: Sequence[Mapping[str, str]]) -> list[_Part]:
    parts: list[_Part] = [_BEGIN]
    for message in messages:
        parts += [*_llama3_header(message["role"]), message["content"].strip(), _EOT]
    return parts + _llama3_header("assistant")


def _codellama70b_parts(messages: Sequence[Mapping[str, str]]) -> list[_Part]:
    """Code Llama 70B Instruct: ``<s>Source: {role}\n\n {content} <step> ...`` then the reply header.

    As the HF chat template of codellama/CodeLlama-70b-Instruct-hf renders it, with ``<step>``
    taking the spaces on both sides (its reference tokens, which equal those of Meta's
    ``dialog_prompt_tokens`` in meta-llama/codellama llama/generation.py, have none there). An
    empty message keeps only its header, as in Meta's code. Unlike Meta's code no empty system
    turn is added when there is none: that is what the HF template (transformers, TGI, vLLM) does.
    """
    parts: list[_Part] = [_BOS]
    for message in messages:
        parts += [f"Source: {message['role']}\n\n {message['content'].strip()}".rstrip(), _STEP]
    return [*parts, "Source: assistant\nDestination: user\n\n "]


def _prompt_parts(messages: Sequence[Mapping[str, str]], fmt: str) -> list[_Part]:
    validate_dialog(messages, fmt)
    build = {"llama2": _llama2_parts, "llama3": _llama3_parts, "codellama70b": _codellama70b_parts}[fmt]
    return build(messages)


# --- public encoders ------------------------------------------------------------------------


def _check_tokenizer(tokenizer: Tokenizer, fmt: str) -> None:
    _check_format(fmt)
    kind, wanted = getattr(tokenizer, "kind", None), _TOKENIZER_KIND[fmt]
    if kind != wanted:
        raise ChatFormatError(
            f"the {fmt} chat format needs a {wanted} tokenizer, got {kind}",
            hint="use the tokenizer.model that came with the model, and the chat format of its family",
        )


def _special_ids(tokenizer: Tokenizer, names: Sequence[str], fmt: str) -> list[int]:
    try:
        return [tokenizer.special_id(name) for name in names]
    except TokenizerError as exc:
        raise ChatFormatError(
            f"the tokenizer lacks a special token the {fmt} format needs: {exc.message}",
            hint="use the tokenizer.model that came with the model",
        ) from exc


def encode_dialog(tokenizer: Tokenizer, messages: Sequence[Mapping[str, str]], fmt: str) -> list[int]:
    """Prompt token ids for ``messages`` in chat format ``fmt``, ready for the assistant's answer."""
    _check_tokenizer(tokenizer, fmt)
    parts = _prompt_parts(messages, fmt)
    _special_ids(tokenizer, [p.name for p in parts if isinstance(p, _Special) and p.attr is None], fmt)
    ids: list[int] = []
    for part in parts:
        if isinstance(part, _Special):
            ids.append(part.token_id(tokenizer))
        else:
            ids += tokenizer.encode(part)
    return ids


def chat_stop_ids(tokenizer: Tokenizer, fmt: str) -> frozenset[int]:
    """Token ids that end the assistant's turn: EOS for llama2; eot, eom and end_of_text for llama3;
    ``<step>`` (where Meta's code stops) and EOS for codellama70b."""
    _check_tokenizer(tokenizer, fmt)
    if fmt == "llama2":
        return frozenset({tokenizer.eos_id})
    if fmt == "codellama70b":
        return frozenset({tokenizer.eos_id, *_special_ids(tokenizer, [STEP], fmt)})
    return frozenset(_special_ids(tokenizer, LLAMA3_STOPS, fmt))


def format_prompt(messages: Sequence[Mapping[str, str]], fmt: str) -> str:
    """The prompt of :func:`encode_dialog` as text, special tokens shown by name.

    Display only (``--verbose`` output, docs): encoding this string would turn the special-token
    names into plain text, which is not the prompt the model expects. Use :func:`encode_dialog`.
    """
    return "".join(p.name if isinstance(p, _Special) else p for p in _prompt_parts(messages, fmt))


# --- a dialog that outgrows the context ------------------------------------------------------


@dataclass(frozen=True)
class FittedDialog:
    messages: list[Message]
    max_new_tokens: int
    dropped: int  # how many of the oldest messages were left out


def fit_dialog(messages: Sequence[Message], count: Callable[[list[Message]], int], limit: int,
               max_new_tokens: int) -> FittedDialog:
    """The newest part of a dialog whose prompt plus an answer fits a ``limit``-token context.

    The oldest exchanges go first, whole (a user message and what answered it); the system prompt
    stays. If the newest message alone leaves less room than ``max_new_tokens``, the answer is
    shortened to the room left; if there is no room at all, ContextLengthError.
    """
    head = list(messages[:1]) if messages and messages[0]["role"] == "system" else []
    body = list(messages[len(head):])
    dropped = 0
    used = count(head + body)
    while used + max_new_tokens > limit and len(body) > 1:
        body.pop(0)
        dropped += 1
        while len(body) > 1 and body[0]["role"] != "user":
            body.pop(0)
            dropped += 1
        used = count(head + body)
    room = limit - used
    if room < 1:
        raise ContextLengthError(f"the last message takes {used} of the {limit}-token context "
                                 "with no room left for an answer", hint="send a shorter message")
    return FittedDialog(head + body, min(max_new_tokens, room), dropped)
