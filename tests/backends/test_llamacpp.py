"""The llamacpp backend on llama.cpp itself (skipped without llama-cpp-python).

Parity: a GGUF of a tiny random checkpoint, run by llama.cpp in f32 (KV cache f32 too), gives the
greedy tokens of our cpu backend in fp32, and logits within LOGIT_TOL, for a Llama 2-style
(SentencePiece, MHA) and a Llama 3.1-style (BPE, GQA, scaled RoPE) model; llama.cpp's own
tokenization of 30 strings equals ours for both tokenizers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

llama_cpp = pytest.importorskip("llama_cpp")

import gguf  # noqa: E402
import llamahub_llamacpp  # noqa: E402
import pluggy  # noqa: E402
import torch  # noqa: E402
from llamahub_cpu.engine import build_decoder  # noqa: E402
from llamahub_llamacpp.convert import write_vocab_gguf  # noqa: E402
from llamahub_llamacpp.derive import derived_gguf  # noqa: E402
from llamahub_llamacpp.runtime import Runtime, VocabFile, VocabTokenizer  # noqa: E402
from tokentexts import STRINGS  # noqa: E402

import llamahub  # noqa: E402
from llamahub.errors import ContextLengthError, GenerationError  # noqa: E402
from llamahub.interfaces import LoadOptions  # noqa: E402
from llamahub.model.generation import Sampling, generate_ids  # noqa: E402
from llamahub.model.llm import LlamaModel  # noqa: E402
from llamahub.model.tokenizer import load_tokenizer, train_sentencepiece, write_tiktoken_ranks  # noqa: E402
from llamahub.reference import open_reference  # noqa: E402
from llamahub.testing import check_backend, tiny_artifacts  # noqa: E402

# fp32 on both sides, KV cache f32, no flash attention: llama.cpp only sums in another order
# (2.4e-7 measured on logits of magnitude ~0.6; its default f16 cache + flash attention: 2.4e-4)
LOGIT_TOL = 1e-5
VARIANTS = ("llama-debug-2-chat", "llama-debug-3.1-instruct")
PROMPT = [5, 17, 99, 42, 7, 300, 12, 64, 128, 3, 250, 11]


@pytest.fixture(autouse=True)
def with_llamacpp(plugin_manager: pluggy.PluginManager) -> pluggy.PluginManager:
    plugin_manager.register(llamahub_llamacpp, name="llamacpp")
    return plugin_manager


@pytest.mark.parametrize("name", VARIANTS)
def test_f32_gguf_matches_our_cpu_backend(name: str, tmp_path: Path) -> None:
    arts, v = tiny_artifacts(tmp_path, name, seed=1)
    ref = open_reference(arts, v)
    ours = build_decoder(ref.reader, "fp32", kernel=False)
    prompt = [ref.tokenizer.bos_id, *PROMPT]
    with torch.inference_mode():
        expected = ours(torch.tensor([prompt]), 0)[0]
    rt = Runtime(derived_gguf(arts, v, "f32"), n_ctx=128, threads=2, kv_f32=True)
    got = []
    for tok in prompt:  # one token at a time: every step reads the KV cache
        rt.feed([tok])
        got.append(torch.tensor(rt.last_logits()))
    diff = (torch.stack(got) - expected).abs().max().item()
    assert diff < LOGIT_TOL, f"max |logit difference| {diff:.2e}"
    greedy = Sampling(temperature=0)
    ours.reset_cache()
    want = [s[0] for s in generate_ids(ours, [prompt], 40, greedy, frozenset())]
    assert list(rt.steps(prompt, 40, greedy, frozenset())) == want
    rt.close()




def _tokenizer_pairs(tmp_path: Path, kind: str, real_llama2: Path | None) -> list[tuple[object, VocabFile]]:
    paths: list[Path] = []
    if kind == "sentencepiece":
        train_sentencepiece(tmp_path / "sp.model", 800)
        paths.append(tmp_path / "sp.model")
        if real_llama2 is not None:
            paths.append(real_llama2)
    else:
        write_tiktoken_ranks(tmp_path / "ranks.model", 128_000)
        paths.append(tmp_path / "ranks.model")
    pairs = []
    for i, p in enumerate(paths):
        ours = load_tokenizer(p, kind)
        pairs.append((ours, VocabFile(write_vocab_gguf(ours, tmp_path / f"vocab{i}.gguf"))))
    return pairs


@pytest.mark.parametrize("kind", ["sentencepiece", "tiktoken"])
def test_llama_cpp_tokenizes_like_we_do(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    real = None
    if kind == "sentencepiece":
        try:
            real = request.getfixturevalue("llama2_tokenizer_path")
        except pytest.skip.Exception:
            real = None  # the trained tokenizer is still compared
    assert len(STRINGS) == 30
    for ours, vocab_file in _tokenizer_pairs(tmp_path, kind, real):
        theirs = VocabTokenizer(vocab_file)
        assert theirs.kind == kind and theirs.n_words == ours.n_words
        for s in STRINGS:
            ids = ours.encode(s)
            assert theirs.encode(s) == ids, (ours, s)
            assert theirs.decode(ids) == ours.decode(ids), (ours, s)
        vocab_file.close()


def test_conforms_and_makes_its_gguf_once(tmp_path: Path) -> None:
    arts, v = tiny_artifacts(tmp_path, "llama-debug-2-chat")
    check_backend(llamahub_llamacpp.LlamaCppBackend(), arts, v)
    sidecar = arts.sidecar("gguf-q8_0")
    assert sidecar is not None and sidecar["quant"] == "q8_0"
    m = llamahub_llamacpp.LlamaCppBackend().load(arts, v, LoadOptions(backend="llamacpp"))
    assert arts.sidecar("gguf-q8_0") == sidecar  # reused, not made again
    assert m.dtype == "q8_0" and m.info["gguf"].endswith("llama-debug-2-chat-q8_0.gguf")
    m.close()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaModel]:
    arts, v = tiny_artifacts(tmp_path_factory.mktemp("m"), "llama-debug-3.1-instruct", seed=2)
    options = LoadOptions(backend="llamacpp", extra={"quant": "f16"})
    m = llamahub_llamacpp.LlamaCppBackend().load(arts, v, options)
    yield m
    m.close()


def test_sampling_maps_to_the_sampler_chain(model: LlamaModel) -> None:
    kw = dict(max_new_tokens=24, temperature=0.9, top_p=0.95)
    a = model.generate("The llama", seed=7, **kw)
    assert model.generate("The llama", seed=7, **kw) == a  # a seed repeats
    assert len({model.generate("The llama", seed=s, **kw) for s in range(4)}) > 1
    greedy = model.generate("The llama", max_new_tokens=24, temperature=0)
    assert model.generate("The llama", max_new_tokens=24, temperature=1.5, top_k=1, seed=3) == greedy
    assert model.generate("The llama", max_new_tokens=24, temperature=2.0, top_p=1e-6, seed=4) == greedy


def test_streams_batches_stops_and_chat(model: LlamaModel) -> None:
    greedy = model.generate("Once", max_new_tokens=20, temperature=0)
    assert "".join(model.generate("Once", max_new_tokens=20, temperature=0, stream=True)) == greedy
    assert model.generate(["Once", "Twice"], max_new_tokens=20, temperature=0) == \
        [greedy, model.generate("Twice", max_new_tokens=20, temperature=0)]
    if len(greedy) > 4:
        stop = greedy[2:4]
        cut = model.generate("Once", max_new_tokens=20, temperature=0, stop=[stop])
        assert cut == greedy[:greedy.find(stop)]
    answer = model.chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                        max_new_tokens=8, temperature=0)
    assert isinstance(answer, str)
    with pytest.raises(ContextLengthError):
        model.generate("x" * 10, max_new_tokens=model.context_length)
    room = model.context_length - len(model.tokenizer.encode("Once", bos=True))
    assert isinstance(model.generate("Once", max_new_tokens=room, temperature=0), str)  # fills the context


def test_paused_stream_is_refused_after_another_generation(model: LlamaModel) -> None:
    stream = model.generate("Once", max_new_tokens=20, temperature=0, stream=True)
    next(stream)
    model.generate("Other", max_new_tokens=2, temperature=0)
    with pytest.raises(GenerationError, match="another generation"):
        list(stream)


@pytest.mark.parametrize(("quant", "file_type"), [("q4_0", 2), ("q4_k_m", 15)])
def test_llama_cpp_quantizes_and_keeps_our_metadata(quant: str, file_type: int, tmp_path: Path) -> None:
    arts, v = tiny_artifacts(tmp_path, "llama-debug-2-chat")
    m = llamahub.load(arts.folder, quant=quant)  # a quant option alone picks llamacpp
    assert m.backend == "llamacpp" and m.dtype == quant
    fields = {k: f.contents() for k, f in gguf.GGUFReader(m.info["gguf"]).fields.items()
              if not k.startswith("tokenizer.ggml.")}
    assert fields["general.file_type"] == file_type and fields["llamahub.variant"] == v.name
    assert fields["llamahub.license"] == "llama-debug"
    assert isinstance(m.generate("Once", max_new_tokens=8, temperature=0), str)
    m.close()
    derived = Path(m.info["gguf"]).parents[1]
    assert (derived / "gguf-f16.json").is_file()  # quantized from the f16 file, which stays cached


def _llama_generate(path: Path, prompt: list[int], n: int, flash_attn: bool) -> list[int]:
    """Greedy tokens of llama-cpp-python's high-level ``Llama.generate`` on the same file and
    settings as our runtime (2 threads, batch = context; no AMX weight buffers on an AMX CPU,
    as the backend does)."""
    from llamahub_llamacpp.runtime import has_amx

    low = llama_cpp.llama_cpp
    default = low.llama_model_default_params

    def params() -> object:
        p = default()
        p.use_extra_bufts = not has_amx()
        return p

    low.llama_model_default_params = params
    try:
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, n_threads=2, n_threads_batch=2,
                              flash_attn=flash_attn, verbose=False)
    finally:
        low.llama_model_default_params = default
    out = []
    for tok in llm.generate(prompt, top_k=1, top_p=1.0, temp=0.0):
        out.append(int(tok))
        if len(out) == n:
            break
    llm.close()
    return out


def test_greedy_tokens_equal_llama_generate_when_flash_attention_matches(tmp_path: Path) -> None:
    """Why our quantized greedy tokens differed from ``Llama.generate``'s: llama.cpp's default
    (and ours) is flash attention "auto", on for a CPU; ``Llama()`` turns it off. The two
    attentions round differently, and random weights have near-ties: on this file the tokens
    part at the second step. With the same setting they are equal, token for token."""
    arts, v = tiny_artifacts(tmp_path, "llama-debug-2-chat", seed=1)
    path = derived_gguf(arts, v, "q8_0")
    prompt = [1, *PROMPT]
    greedy = Sampling(temperature=0)

    def ours(flash_attn: str | None) -> list[int]:
        rt = Runtime(path, n_ctx=128, threads=2, flash_attn=flash_attn)
        try:
            return list(rt.steps(prompt, 40, greedy, frozenset()))
        finally:
            rt.close()

    on, off = ours("on"), ours("off")
    assert on != off  # the setting matters on this file (they part at token 1)
    assert ours(None) == on  # auto: on for a CPU
    assert _llama_generate(path, prompt, 40, flash_attn=False) == off
    assert _llama_generate(path, prompt, 40, flash_attn=True) == on
    m = llamahub_llamacpp.LlamaCppBackend().load(arts, v, LoadOptions(backend="llamacpp",
                                                                      extra={"flash_attn": "off"}))
    assert m.info["flash_attn"] == "off"
    assert [step[0] for step in m.generator([prompt], 40, greedy, frozenset())] == off  # the option
    m.close()
    assert "flash_attn must be" in (llamahub_llamacpp.LlamaCppBackend().unsupported_reason(
        v, LoadOptions(backend="llamacpp", extra={"flash_attn": "yes"})) or "")


def test_step_loop_edges(model: LlamaModel) -> None:
    """The per-token loop (one batch made once): no token for max_new_tokens=0, a stop token
    ends it (and is yielded)."""
    prompt = model.tokenizer.encode("Once", bos=True)
    greedy = Sampling(temperature=0)
    assert list(model.generator([prompt], 0, greedy, frozenset())) == []
    steps = [s[0] for s in model.generator([prompt], 12, greedy, frozenset())]
    assert len(steps) == 12
    stop = steps[5]
    cut = [s[0] for s in model.generator([prompt], 12, greedy, frozenset({stop}))]
    assert cut == steps[:steps.index(stop) + 1]


def test_rope_scaling_extends_the_context_like_our_cpu_backend(tmp_path: Path) -> None:
    """rope_scaling= (Llama 3.1's per-frequency scaling, the cpu backend's option) on llama.cpp:
    the GGUF is made for that scaling (its rope_freqs tensor) and context. Past the variant's
    512 tokens, llama.cpp's f32 logits equal our cpu backend's fp32 ones within LOGIT_TOL, for
    two factors whose logits differ from each other."""
    arts, v = tiny_artifacts(tmp_path, "llama-debug-2-chat", seed=3)
    assert v.context_length == 512
    prompt = [1, *((PROMPT * 60)[:599])]  # 600 tokens: positions 512..599 need the scaling
    last = {}
    for factor in (2.0, 4.0):
        options = LoadOptions(backend="llamacpp", context_length=640, rope_scaling={"factor": factor},
                              extra={"quant": "f32", "kv_cache": "f32"})
        ours = build_decoder(open_reference(arts, v, options).reader, "fp32", kernel=False)
        with torch.inference_mode():
            expected = ours(torch.tensor([prompt]), 0)[0, -8:]
        m = llamahub_llamacpp.LlamaCppBackend().load(arts, v, options)
        assert m.context_length == 640 and "-rope-" in m.info["gguf"]
        rt = m.generator.runtime  # type: ignore[attr-defined]
        rt.reset()
        rt.feed(prompt[:-8])
        got = []
        for tok in prompt[-8:]:
            rt.feed([tok])
            got.append(torch.tensor(rt.last_logits()))
        diff = (torch.stack(got) - expected).abs().max().item()
        assert diff < LOGIT_TOL, f"factor {factor}: max |logit difference| {diff:.2e}"
        last[factor] = expected
        m.close()
    assert (last[2.0] - last[4.0]).abs().max().item() > 1e-3  # the factor reached the logits


def test_rope_scaling_refused_for_a_users_own_gguf(tmp_path: Path) -> None:
    arts, v = tiny_artifacts(tmp_path, "llama-debug-2-chat")
    own = tmp_path / "mine.gguf"
    own.write_bytes(derived_gguf(arts, v, "q8_0").read_bytes())
    from dataclasses import replace

    mine = replace(arts, folder=own, formats=frozenset({"gguf"}))
    options = LoadOptions(backend="llamacpp", context_length=1024, rope_scaling={"factor": 2.0})
    with pytest.raises(llamahub.errors.ConfigError, match="rope_freqs"):
        llamahub_llamacpp.LlamaCppBackend().load(mine, v, options)
    m = llamahub_llamacpp.LlamaCppBackend().load(mine, v, LoadOptions(backend="llamacpp"))
    assert m.info["user_file"]  # the same file loads without the scaling
    m.close()
