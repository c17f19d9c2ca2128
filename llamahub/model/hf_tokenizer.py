"""The files ``transformers.AutoTokenizer`` reads beside the weights in Hugging Face's layout: a
``tokenizer.json`` for the ``tokenizers`` library and a ``PreTrainedTokenizerFast`` config, which
tokenize exactly as our tokenizers do (tests/model/test_hf_tokenizer.py).

- SentencePiece (Llama 2): BPE over the pieces, merged by score, with SentencePiece's "▁" in
  front, its words and byte fallback. ``tokenizer.model`` is served beside it as it is.
- tiktoken (Llama 3.x): byte-level BPE with every rank spelled in GPT-2's alphabet and its merge,
  Meta's pre-tokenizer regex and the 256 special tokens.

BOS is added in front of the text, as ``encode(text, bos=True)`` does.

Both configs carry the chat template of the variant's chat format, so ``apply_chat_template``
renders the prompt that ``llamahub.model.chat`` builds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llamahub.model import bpe
from llamahub.model.chat_templates import CHAT_TEMPLATES as TEMPLATES
from llamahub.model.tokenizer import LLAMA3_PATTERN, load_tokenizer

BOS3, EOS3, EOT3 = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"


def tokenizer_files(path: Path, *, chat_format: str | None, context_length: int) -> dict[str, bytes]:
    """``{file name: contents}`` of the HF tokenizer files for the ``tokenizer.model`` at ``path``
    (the SentencePiece model itself is served as it is and is not among them)."""
    tok = load_tokenizer(path)
    if tok.kind == "sentencepiece":
        special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
        tokenizer = _sentencepiece_tokenizer(path)
    else:
        eos = EOT3 if chat_format else EOS3  # what an instruct model ends its turn with
        special = {"bos_token": BOS3, "eos_token": eos}
        tokenizer = _bpe_tokenizer(path, tok)
    # the fast tokenizer reads tokenizer.json; transformers 5's LlamaTokenizer would rebuild a
    # pipeline of its own that treats leading and repeated spaces unlike SentencePiece
    config = {**special, "tokenizer_class": "PreTrainedTokenizerFast",
              "model_input_names": ["input_ids", "attention_mask"], "model_max_length": context_length,
              "clean_up_tokenization_spaces": False}
    if chat_format in TEMPLATES:
        config["chat_template"] = TEMPLATES[chat_format]
    return {"tokenizer.json": _dump(tokenizer), "tokenizer_config.json": _dump(config),
            "special_tokens_map.json": _dump(special)}


def _sentencepiece_tokenizer(path: Path) -> dict[str, Any]:
    """SentencePiece BPE as ``tokenizers`` runs it: always a "▁" in front, spaces as "▁", split
    into SentencePiece's words, pieces merged by score (every split of a piece into two pieces is
    a merge ranked by the piece's score), bytes
    for what the vocabulary lacks."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(path))
    pieces = [sp.id_to_piece(i) for i in range(sp.vocab_size())]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    normal = {p for i, p in enumerate(pieces)
              if not (sp.is_byte(i) or sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i))}
    merges = sorted(((-sp.get_score(vocab[p]), vocab[p], vocab[p[:k]]), (p[:k], p[k:]))
                    for p in normal for k in range(1, len(p)) if p[:k] in normal and p[k:] in normal)
    # Code Llama 70B's <step> takes the spaces around it, as its chat template needs
    added = [{"id": i, "content": p, "single_word": False, "lstrip": p == "<step>", "rstrip": p == "<step>",
              "normalized": False, "special": True}
             for i, p in enumerate(pieces) if sp.is_control(i) or sp.is_unknown(i) or p == "<step>"]
    bos = pieces[sp.bos_id()]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        ]},
        # SentencePiece's words: a run of "▁" and what follows it up to the next "▁"
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "▁*[^▁]+|▁+"},
                          "behavior": "Isolated", "invert": False},
        "post_processor": _bos_in_front(bos, sp.bos_id()),
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ]},
        "model": {"type": "BPE", "dropout": None, "unk_token": pieces[sp.unk_id()],
                  "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": True,
                  "byte_fallback": True, "ignore_merges": False, "vocab": vocab,
                  "merges": [f"{left} {right}" for _, (left, right) in merges]},
    }


def _bos_in_front(bos: str, bos_id: int) -> dict[str, Any]:
    return {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
    }


def _bpe_tokenizer(path: Path, tok: Any) -> dict[str, Any]:
    ordered = bpe.read_ranks(path)
    vocab = {bpe.spell(t): rank for rank, t in enumerate(ordered)}
    specials = [tok.decode([i]) for i in range(len(ordered), tok.n_words)]  # a special decodes to its name
    added = [{"id": len(ordered) + i, "content": name, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, name in enumerate(specials)]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        ]},
        "post_processor": _bos_in_front(BOS3, tok.bos_id),
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": True, "vocab": vocab,
                  "merges": [f"{left} {right}" for left, right in bpe.spelled_merges(ordered)]},
    }


def _dump(data: Any) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
