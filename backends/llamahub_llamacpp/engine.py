"""Loading a model on llama.cpp: the GGUF (derived once, or the user's own), a runtime, a model."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from llamahub.errors import BackendError, ConfigError, NotACheckpointError
from llamahub.plugin import Artifacts, LlamaModel, LoadOptions, Variant, context_length
from llamahub_llamacpp import default_threads, quant_of
from llamahub_llamacpp.convert import FILE_TYPES, check_quant
from llamahub_llamacpp.derive import derived_gguf
from llamahub_llamacpp.runtime import Runtime, RuntimeGenerator, VocabTokenizer

QUANT_OF_FILE_TYPE = {v: k for k, v in FILE_TYPES.items()}


def gguf_file(artifacts: Artifacts) -> Path | None:
    """The GGUF file ``artifacts`` are (a user's own file, or a folder holding one and no
    checkpoint); None when they hold a Meta or HF checkpoint to convert."""
    folder = artifacts.folder
    if folder.is_file():
        return folder
    if artifacts.formats & {"meta", "hf"}:
        return None
    found = sorted(folder.glob("*.gguf"))
    if len(found) > 1:
        raise NotACheckpointError(f"{folder} holds {len(found)} GGUF files",
                                  hint="load the one you want by its path: llamahub.load('./x.gguf')")
    return found[0] if found else None


def load_model(artifacts: Artifacts, variant: Variant, options: LoadOptions) -> LlamaModel:
    started = time.perf_counter()
    threads = options.threads or default_threads()
    n_ctx = context_length(variant, options)
    kv_f32 = str(options.extra.get("kv_cache", "f16")) == "f32"
    flash_attn = options.extra.get("flash_attn")
    own = gguf_file(artifacts)
    if own is not None and options.rope_scaling:
        raise ConfigError(f"rope_scaling= cannot apply to a GGUF file of your own ({own.name}): llama.cpp "
                          "reads Llama 3.1-style RoPE scaling from the file's rope_freqs tensor",
                          hint="load the variant's checkpoint (it is converted with the scaling), or "
                               "ask for at most the file's context without rope_scaling")
    path = own or derived_gguf(artifacts, variant, check_quant(quant_of(options)), threads=threads,
                               options=options if options.rope_scaling else None)
    runtime = Runtime(path, n_ctx=n_ctx, threads=threads, kv_f32=kv_f32,
                      flash_attn=str(flash_attn) if flash_attn else None)
    try:
        if own is not None:
            tokenizer: Any = VocabTokenizer(runtime)
            quant = QUANT_OF_FILE_TYPE.get(int(runtime.meta("general.file_type") or -1), "gguf")
        else:
            from llamahub.plugin import open_reference

            tokenizer = open_reference(artifacts, variant, options).tokenizer
            quant = quant_of(options)
        if tokenizer.n_words != runtime.n_vocab:
            raise BackendError(f"{path.name} has {runtime.n_vocab} tokens, the tokenizer {tokenizer.n_words}",
                               hint="the GGUF does not belong to this variant")
    except BaseException:
        runtime.close()
        raise
    info = {"load_seconds": time.perf_counter() - started, "threads": threads, "gguf": str(path),
            "quant": quant, "kv_cache": "f32" if kv_f32 else "f16", "user_file": own is not None,
            "flash_attn": runtime.flash_attn}
    return LlamaModel(None, tokenizer, variant, backend="llamacpp", dtype=quant, info=info,
                      generator=RuntimeGenerator(runtime), context_length=n_ctx, close=runtime.close)


def export(artifacts: Artifacts, variant: Variant, fmt: str, quant: str, out: Path) -> Path:
    """``variant`` as a GGUF file at ``out``: made once in the derived cache, then copied to
    ``out`` (replaced atomically; a copy, so that editing it never touches the cache)."""
    if fmt.lower() != "gguf":
        raise ConfigError(f"the llamacpp backend exports gguf, not {fmt!r}", hint="use --format gguf")
    quant = check_quant(quant)
    if quant in ("q4_0", "q4_k_m") and importlib_missing("llama_cpp"):
        raise ConfigError(f"{quant} is made by llama.cpp's quantizer, and llama-cpp-python is not installed",
                          hint="pip install 'llamahub[llamacpp]', or export f32, f16 or q8_0")
    made = derived_gguf(artifacts, variant, quant)
    out = Path(out).expanduser()
    if out.is_dir():
        out = out / made.name
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    tmp.unlink(missing_ok=True)
    try:
        shutil.copyfile(made, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def importlib_missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None
