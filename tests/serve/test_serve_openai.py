"""``llamahub serve`` through the official ``openai`` client: chat and completions, streaming and
not, stop strings, seeds, usage, errors in OpenAI's shape, and answers equal to the SDK's own."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
from servetest import API_KEYS, Server

import llamahub

CHAT2, CHAT3 = "llama-debug-2-chat", "llama-debug-3.1-instruct"
DIALOG = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a llama?"}]


def _local(server: Server, name: str) -> llamahub.LlamaModel:
    return llamahub.load(Path(server.folders[name]), dtype="fp32")


def _stream_text(chunks: openai.Stream) -> tuple[str, str | None]:
    text, reason = "", None
    for chunk in chunks:
        for choice in chunk.choices:
            piece = choice.delta.content if hasattr(choice, "delta") else choice.text
            text += piece or ""
            reason = choice.finish_reason or reason
    return text, reason


def test_models_are_listed_with_their_license(server: Server) -> None:
    models = server.client().models.list()
    assert sorted(m.id for m in models.data) == [CHAT2, CHAT3]
    meta = models.data[0].model_extra["llamahub"]
    assert meta["license"] == "llama-debug"
    assert meta["context_length"] == 512 and meta["backend"] == "cpu" and meta["dtype"] == "fp32"
    assert meta["engine"] == "continuous-batching"
    assert "attribution" in meta
    assert server.client().models.retrieve(CHAT3).id == CHAT3


@pytest.mark.parametrize("name", [CHAT2, CHAT3])
def test_greedy_chat_equals_the_sdk_chat(server: Server, name: str) -> None:
    client = server.client()
    reply = client.chat.completions.create(model=name, messages=DIALOG, temperature=0, max_tokens=40)
    with _local(server, name) as model:
        expected = model.chat(DIALOG, temperature=0, max_new_tokens=40)
    [choice] = reply.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == expected
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens == model.chat_tokens(DIALOG)
    assert 1 <= reply.usage.completion_tokens <= 40
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    streamed = client.chat.completions.create(model=name, messages=DIALOG, temperature=0, max_tokens=40,
                                              stream=True)
    assert _stream_text(streamed) == (expected, choice.finish_reason)


def test_greedy_completion_equals_the_sdk_generate(server: Server) -> None:
    client = server.client()
    reply = client.completions.create(model=CHAT2, prompt="Once upon a time", temperature=0, max_tokens=24,
                                      extra_body={"ignore_eos": True})
    with _local(server, CHAT2) as model:
        expected = model.generate("Once upon a time", temperature=0, max_new_tokens=24)
        prompt_tokens = len(model.tokenizer.encode("Once upon a time", bos=True))
    assert reply.choices[0].text == expected
    assert reply.choices[0].finish_reason == "length"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (prompt_tokens, 24)
    chunks = list(client.completions.create(model=CHAT2, prompt="Once upon a time", temperature=0,
                                            max_tokens=24, stream=True, extra_body={"ignore_eos": True},
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
    assert chunks[-1].usage.completion_tokens == 24 and chunks[-1].choices == []


def test_a_stop_string_ends_the_answer(server: Server) -> None:
    client = server.client()
    args = dict(model=CHAT2, prompt="The llama", temperature=0, max_tokens=48,
                extra_body={"ignore_eos": True})
    full = client.completions.create(**args).choices[0].text
    stop = full[len(full) // 2:len(full) // 2 + 3]
    assert stop.strip(), full  # the gibberish has some text to cut at
    cut = full[:full.index(stop)]
    reply = client.completions.create(**args, stop=[stop, "never-there"])
    assert (reply.choices[0].text, reply.choices[0].finish_reason) == (cut, "stop")
    assert reply.usage.completion_tokens < 48
    assert _stream_text(client.completions.create(**args, stop=stop, stream=True)) == (cut, "stop")


def test_seeds_make_sampling_reproducible(server: Server) -> None:
    client = server.client()

    def sampled(seed: int, n: int = 1) -> list[str]:
        reply = client.chat.completions.create(model=CHAT3, messages=DIALOG, temperature=1.0, top_p=0.95,
                                               max_tokens=30, seed=seed, n=n)
        return [c.message.content for c in sorted(reply.choices, key=lambda c: c.index)]

    first = sampled(7)
    assert sampled(7) == first
    assert sampled(8) != first
    two = sampled(7, n=2)
    assert two[0] == first[0] and len(two) == 2 and two[1] != two[0]


def _error(excinfo: pytest.ExceptionInfo) -> dict:
    body = excinfo.value.body
    assert set(body) >= {"message", "type", "code"}, body
    return body


def test_errors_come_in_openai_shape(server: Server) -> None:
    client = server.client()
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=DIALOG)
    assert _error(e)["code"] == "model_not_found" and CHAT2 in _error(e)["message"]
    long = "llama " * 600
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=CHAT2, prompt=long, max_tokens=8)
    assert _error(e)["code"] == "context_length_exceeded"
    assert "512-token context" in _error(e)["message"] and "shorten the prompt" in _error(e)["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=CHAT2, prompt="hi", max_tokens=600)
    assert "lower max_tokens" in _error(e)["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=CHAT2, messages=[{"role": "assistant", "content": "hi"}])
    assert "expected user" in _error(e)["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=CHAT2, messages=DIALOG, temperature=5)
    assert _error(e)["param"] == "temperature"
    with pytest.raises(openai.AuthenticationError) as e:
        server.client(key="wrong").models.list()
    assert _error(e)["code"] == "invalid_api_key"


@pytest.mark.parametrize("body", [
    b"{not json", b"[]", b'{"model": 3}', b'{"model": "llama-debug-2-chat"}',
    b'{"model": "llama-debug-2-chat", "messages": []}',
    b'{"model": "llama-debug-2-chat", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}',
    b'{"model": "llama-debug-2-chat", "messages": [{"role": "user", "content": "x"}], "n": 100}',
    b'{"model": "llama-debug-2-chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}',
    b'{"model": "llama-debug-2-chat", "messages": [{"role": "user", "content": "x"}], "stop": [1]}',
    b'{"model": "llama-debug-2-chat", "messages": [{"role": "user", "content": "\\ud800"}]}',
    b'"just a string"',
    b'{"model": "llama-debug-2-chat", "messages": [{"role": "user", "content": "x"}], "seed": 1e30}',
    b'{"model": "llama-debug-2-chat", "messages": [{"role": "user", "content": "x"}], "seed": %d}' % 2**63,
    b'{"model": "\\udfff", "messages": [{"role": "user", "content": "x"}]}',
])
def test_malformed_bodies_get_400_never_5xx(server: Server, body: bytes) -> None:
    headers = {"Authorization": f"Bearer {API_KEYS[0]}", "Content-Type": "application/json"}
    response = httpx.post(f"{server.url}/v1/chat/completions", content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_token_prompts_and_missing_keys(server: Server) -> None:
    bad = httpx.post(f"{server.url}/v1/completions", json={"model": CHAT2, "prompt": [1, 99999]},
                     headers={"Authorization": f"Bearer {API_KEYS[0]}"})
    assert bad.status_code == 400 and "ids in 0..511" in bad.json()["error"]["message"]
    assert httpx.get(f"{server.url}/v1/models").status_code == 401
    assert httpx.get(f"{server.url}/v1/nowhere").json()["error"]["code"] == "404"


@pytest.mark.parametrize("extra", [{"temperature": 1e-300}, {"top_p": 1e-300, "temperature": 2},
                                   {"seed": 2**63 - 1, "n": 3, "temperature": 1}, {"stop": ["", "x"]},
                                   {"prompt": ""}, {"prompt": [1]}, {"prompt": ["a", "b"], "n": 2}])
def test_extreme_but_valid_requests_are_answered(server: Server, extra: dict) -> None:
    body = {"model": CHAT2, "prompt": "Hi", "max_tokens": 3} | extra
    response = httpx.post(f"{server.url}/v1/completions", json=body,
                          headers={"Authorization": f"Bearer {API_KEYS[0]}"})
    assert response.status_code == 200, response.text
    choices = response.json()["choices"]
    assert len(choices) == len(body["prompt"] if isinstance(body["prompt"], list) and
                               isinstance(body["prompt"][0], str) else [0]) * body.get("n", 1)
