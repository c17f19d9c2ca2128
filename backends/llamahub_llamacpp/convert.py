"""Our checkpoints as GGUF files, with our own converter on the ``gguf`` package.

``write_gguf`` streams the reference checkpoint (Meta or Hugging Face, any shard count, merged by
``CheckpointReader``) into a GGUF with llama.cpp's tensor names and ``llama.*`` metadata, our
tokenizer as its vocabulary, the chat template, and the license and lineage in ``general.*``
and ``llamahub.*`` keys. It writes f32, f16 and q8_0 itself (1-D tensors stay f32, as llama.cpp
wants); q4_0 and q4_k_m are made from an f16 file by llama.cpp's own quantizer (``quantize``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamahub.errors import BackendError, ConfigError

WRITTEN = ("f32", "f16", "q8_0")  # by this converter
QUANTIZED = ("q4_0", "q4_k_m")  # by llama.cpp's quantizer, from an f16 file
QUANTS = (*WRITTEN, *QUANTIZED)
# llama.cpp's llama_ftype numbers (general.file_type)
FILE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7, "q4_k_m": 15}
# bytes per weight, for memory plans before a file exists (q4_k_m: a mix of q4_K and q6_K)
BYTES_PER_WEIGHT = {"f32": 4.0, "f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_k_m": 0.61}
CONVERTER = "llamahub-gguf/2"  # bump when what is written changes: derived files are made again

_LAYER_NAMES = {
    "attention_norm.weight": "attn_norm.weight",
    "attention.wq.weight": "attn_q.weight",
    "attention.wk.weight": "attn_k.weight",
    "attention.wv.weight": "attn_v.weight",
    "attention.wo.weight": "attn_output.weight",
    "ffn_norm.weight": "ffn_norm.weight",
    "feed_forward.w1.weight": "ffn_gate.weight",
    "feed_forward.w3.weight": "ffn_up.weight",
    "feed_forward.w2.weight": "ffn_down.weight",
}
_TOP_NAMES = {"tok_embeddings.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
              "output.weight": "output.weight"}


def gguf_name(key: str) -> str:
    """llama.cpp's name for a tensor in Meta naming (``layers.3.attention.wq.weight`` →
    ``blk.3.attn_q.weight``)."""
    if key in _TOP_NAMES:
        return _TOP_NAMES[key]
    _, layer, rest = key.split(".", 2)
    return f"blk.{layer}.{_LAYER_NAMES[rest]}"


def check_quant(quant: str) -> str:
    q = {"fp16": "f16", "fp32": "f32"}.get(quant.lower(), quant.lower())
    if q not in QUANTS:
        raise ConfigError(f"unknown GGUF quantization {quant!r}", hint=f"use one of {', '.join(QUANTS)}")
    return q


@dataclass(frozen=True)
class Provenance:
    """What the file says about where it comes from (``general.*`` and ``llamahub.*`` keys)."""

    variant: str
    family: str
    size: str
    license: str
    license_url: str | None = None
    license_title: str | None = None
    attribution: str | None = None
    base_variant: str | None = None
    base_repo: str | None = None
    snapshot: str | None = None
    chat_format: str | None = None


# --- writing ------------------------------------------------------------------------------------


def write_gguf(ref: Any, out: Path, quant: str, prov: Provenance) -> Path:
    """Write the reference checkpoint ``ref`` (``llamahub.plugin.Reference``) to ``out`` as f32,
    f16 or q8_0, atomically; one converted tensor in memory at a time beyond what is mapped."""
    import gguf

    from llamahub_llamacpp.metadata import add_metadata

    if quant not in WRITTEN:
        raise ConfigError(f"the converter writes {', '.join(WRITTEN)}, not {quant}",
                          hint="q4_0 and q4_k_m are made with quantize() from an f16 file")
    writer = gguf.GGUFWriter(None, "llama")
    add_metadata(writer, ref, FILE_TYPES[quant], prov)
    state = ref.reader.state_dict("interleaved")  # llama.cpp rotates interleaved pairs, as Meta does
    tensors = list(_tensors(state, ref.args, quant))
    for name, t, kind in tensors:
        writer.add_tensor_info(name, *_info(t, kind))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    try:
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for _, t, kind in tensors:
            writer.write_tensor_data(_encode(t, kind))
        writer.close()
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _tensors(state: Mapping[str, Any], args: Any, quant: str) -> Iterator[tuple[str, Any, str]]:
    """(GGUF name, tensor, how it is stored): 1-D tensors in f32, matrices in ``quant`` (f16 when
    a row does not split into q8_0's blocks of 32)."""
    def kind(t: Any) -> str:
        if t.dim() == 1:
            return "f32"
        return "f16" if quant == "q8_0" and t.shape[-1] % 32 else quant

    if args.rope_scaling is not None:
        yield "rope_freqs.weight", rope_factors(args), "f32"
    for key in ("tok_embeddings.weight", "norm.weight", "output.weight"):
        if key in state:
            yield gguf_name(key), state[key], kind(state[key])
    for layer in range(args.n_layers):
        for rest in _LAYER_NAMES:
            t = state[f"layers.{layer}.{rest}"]
            yield gguf_name(f"layers.{layer}.{rest}"), t, kind(t)


def rope_factors(args: Any) -> Any:
    """Llama 3.1's RoPE scaling as llama.cpp takes it: a divisor per frequency (rope_freqs)."""
    from llamahub.plugin import rope_frequencies

    plain = rope_frequencies(args.head_dim, args.rope_theta, None).double()
    scaled = rope_frequencies(args.head_dim, args.rope_theta, args.rope_scaling).double()
    return (plain / scaled).float()


def _info(t: Any, kind: str) -> tuple[tuple[int, ...], Any, int, Any]:
    """(shape, numpy dtype, bytes, GGML type) for ``GGUFWriter.add_tensor_info``."""
    import gguf
    import numpy as np

    shape = tuple(t.shape)
    if kind == "q8_0":
        qtype = gguf.GGMLQuantizationType.Q8_0
        byte_shape = gguf.quant_shape_to_byte_shape(shape, qtype)
        return byte_shape, np.uint8, math.prod(byte_shape), qtype
    if kind == "f16":
        return shape, np.float16, math.prod(shape) * 2, None
    return shape, np.float32, math.prod(shape) * 4, None


def _encode(t: Any, kind: str) -> Any:
    import gguf
    import numpy as np

    a = t.float().contiguous().numpy()
    if kind == "q8_0":
        return gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0)
    return a.astype(np.float16) if kind == "f16" else a


# --- llama.cpp's quantizer ----------------------------------------------------------------------


def quantize(src: Path, out: Path, quant: str, threads: int | None = None) -> Path:
    """``src`` (an f16 or f32 GGUF) quantized to q4_0 or q4_k_m by llama.cpp's C API; metadata
    is carried over. Atomic: ``out`` appears only when complete."""
    import ctypes

    from llamahub_llamacpp.runtime import llama_lib

    llama_cpp = llama_lib()  # its log lines go to Python logging
    if quant not in QUANTIZED:
        raise ConfigError(f"llama.cpp's quantizer is used for {', '.join(QUANTIZED)}, not {quant}",
                          hint="write f32, f16 and q8_0 with write_gguf()")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FILE_TYPES[quant]
    params.nthread = threads or (os.cpu_count() or 1)
    tmp = out.with_name(out.name + ".part")
    try:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0 or not tmp.is_file():
            raise BackendError(f"llama.cpp could not quantize {src.name} to {quant} (code {rc})",
                               hint="check that the f16 file is intact: delete it to make it again")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def write_vocab_gguf(tokenizer: Any, out: Path, chat_format: str | None = None) -> Path:
    """A GGUF holding only ``tokenizer``'s vocabulary (and the numbers of a stand-in one-layer
    model that llama.cpp reads with it), for llama.cpp's ``vocab_only`` loading: its own
    tokenization of our tokenizers, without weights."""
    import gguf

    from llamahub.plugin import ModelArgs
    from llamahub_llamacpp.metadata import add_metadata

    class _Ref:
        args = ModelArgs(dim=64, n_layers=1, n_heads=4, vocab_size=tokenizer.n_words)

    _Ref.tokenizer = tokenizer  # type: ignore[attr-defined]
    writer = gguf.GGUFWriter(out, "llama")
    add_metadata(writer, _Ref(), FILE_TYPES["f32"],
                 Provenance(variant="vocab", family="vocab", size="0", license="none",
                            chat_format=chat_format))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    return out
