"""Repo ids, raw-path splitting and file identities of the HF protocol (llamahub/hub/hf_repos.py)."""

from __future__ import annotations

import hashlib

import pytest

from llamahub.hub.hf_repos import RepoFile, repo_ids, segments, split_repo
from llamahub.registry import shipped


def test_repo_ids_come_from_the_registry() -> None:
    llama2 = shipped().resolve("llama-2-7b-chat")
    assert repo_ids(llama2) == {"meta-llama/Llama-2-7b-chat-hf": "hf", "meta-llama/Llama-2-7b-chat": "meta"}
    llama31 = shipped().resolve("llama-3.1-8b-instruct")
    assert repo_ids(llama31) == {"meta-llama/Llama-3.1-8B-Instruct": "hf"}  # Meta's files under original/
    assert repo_ids(shipped().resolve("llama-debug-2")) == {"llamahub/llama-debug-2": "hf"}


@pytest.mark.parametrize(("raw", "parts"), [
    ("a/b/resolve/refs%2Fpr%2F1/sub%20dir/x.bin", ["a", "b", "resolve", "refs/pr/1", "sub dir", "x.bin"]),
    ("a//b", None), ("a/%00/b", None), ("a/%ff", None), ("", None),
])
def test_segments_are_split_before_decoding(raw: str, parts: list[str] | None) -> None:
    assert segments(raw) == parts


@pytest.mark.parametrize(("parts", "found"), [
    (["ns", "name"], ("ns/name", None, [])),
    (["gpt2"], ("gpt2", None, [])),
    (["ns", "name", "tree", "main", "original"], ("ns/name", "tree", ["main", "original"])),
    (["gpt2", "revision", "main"], ("gpt2", "revision", ["main"])),
    (["ns", "na me", "tree", "main"], None), (["a", "b", "c"], None), (["..", "x"], None),
    (["a--b", "c"], None),
])
def test_repo_ids_are_one_or_two_segments(parts: list[str], found: tuple | None) -> None:
    assert split_repo(parts, ("tree", "revision")) == found


def test_a_file_is_presented_as_git_lfs_does() -> None:
    f = RepoFile("model.safetensors", "ab" * 32, "0" * 32, 1234)
    assert f.pointer == f"version https://git-lfs.github.com/spec/v1\noid sha256:{'ab' * 32}\nsize 1234\n"
    pointer = f.pointer.encode()
    assert f.oid == hashlib.sha1(b"blob %d\0" % len(pointer) + pointer).hexdigest()
