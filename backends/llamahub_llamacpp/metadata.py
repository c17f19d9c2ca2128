"""The metadata a GGUF of ours carries: llama.cpp's ``llama.*`` hyperparameters, the
tokenizer (``tokenizer.ggml.*``, the chat template), and where the weights come from
(``general.*`` as llama.cpp's tools read it, ``llamahub.*`` for llamahub itself)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llamahub.plugin import CHAT_TEMPLATES as TEMPLATES
from llamahub_llamacpp.vocab import Vocab, build_vocab

if TYPE_CHECKING:
    from llamahub_llamacpp.convert import Provenance

# keys llamahub reads back (a user's GGUF names its variant with the first)
VARIANT_KEY = "llamahub.variant"
SNAPSHOT_KEY = "llamahub.snapshot"
# llama.cpp needs tokenizer.ggml.merges even for a vocabulary of single bytes (the tiny debug
# models), and the gguf package writes no empty array: this merge joins two strings that never
# occur as symbols (BPE starts from single characters and has no other merge), so it never applies.
INERT_MERGE = "llamahub:no-merge llamahub:no-merge"


def add_metadata(writer: Any, ref: Any, file_type: int, prov: Provenance) -> None:
    a = ref.args
    writer.add_context_length(a.max_seq_len)
    writer.add_embedding_length(a.dim)
    writer.add_block_count(a.n_layers)
    writer.add_feed_forward_length(a.hidden_dim)
    writer.add_rope_dimension_count(a.head_dim)
    writer.add_head_count(a.n_heads)
    writer.add_head_count_kv(a.kv_heads)
    writer.add_layer_norm_rms_eps(a.norm_eps)
    writer.add_rope_freq_base(a.rope_theta)
    writer.add_vocab_size(a.vocab_size)
    writer.add_file_type(file_type)
    add_vocab(writer, build_vocab(ref.tokenizer, chat=prov.chat_format is not None), prov.chat_format)
    add_provenance(writer, prov)


def add_vocab(writer: Any, vocab: Vocab, chat_format: str | None) -> None:
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.merges is not None:
        writer.add_token_merges(vocab.merges or [INERT_MERGE])
    writer.add_bos_token_id(vocab.bos_id)
    writer.add_eos_token_id(vocab.eos_id)
    if vocab.unk_id is not None:
        writer.add_unk_token_id(vocab.unk_id)
    if vocab.pad_id is not None:
        writer.add_pad_token_id(vocab.pad_id)
    if "eot" in vocab.specials:
        writer.add_eot_token_id(vocab.specials["eot"])
    if "eom" in vocab.specials:
        writer.add_eom_token_id(vocab.specials["eom"])
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    if chat_format in TEMPLATES:
        writer.add_chat_template(TEMPLATES[chat_format])


def add_provenance(writer: Any, prov: Provenance) -> None:
    from llamahub_llamacpp.convert import CONVERTER

    writer.add_string("general.name", prov.variant)
    writer.add_string("general.size_label", prov.size)
    writer.add_string("general.license", prov.license)
    if prov.license_title:
        writer.add_string("general.license.name", prov.license_title)
    if prov.license_url:
        writer.add_string("general.license.link", prov.license_url)
    base = prov.base_variant or prov.variant
    writer.add_uint32("general.base_model.count", 1)
    writer.add_string("general.base_model.0.name", base)
    if prov.base_repo:
        writer.add_string("general.base_model.0.repo_url", f"https://huggingface.co/{prov.base_repo}")
    writer.add_string(VARIANT_KEY, prov.variant)
    writer.add_string("llamahub.family", prov.family)
    writer.add_string("llamahub.license", prov.license)
    if prov.attribution:
        writer.add_string("llamahub.attribution", prov.attribution)
    writer.add_string("llamahub.base_variant", base)
    if prov.snapshot:
        writer.add_string(SNAPSHOT_KEY, prov.snapshot)
    if prov.chat_format:
        writer.add_string("llamahub.chat_format", prov.chat_format)
    writer.add_string("llamahub.converter", CONVERTER)
