"""The ``lora`` and ``full`` methods: build the model, encode the data, run the loop, return weights.

``run(job, cfg)`` trains in this process, or, with ``processes > 1``, in that many data-parallel
worker processes on torch.distributed (gloo on CPU, NCCL on GPUs) whose rank 0 hands back the
result through the job's workdir.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

import llamahub.plugin as lp

from . import data as D
from . import lora as L
from . import parallel as P
from . import qat as Q
from .config import LoraConfig, QatConfig, TrainConfig
from .train import Loop, Rank, check_gpus, device_for, dist_backend, fingerprint, free_port

RESULT = "result.pt"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def chat_format_of(variant: lp.Variant) -> str:
    """The base's chat format; a base (non-chat) model uses its family's."""
    return variant.chat_format or ("llama3" if variant.tokenizer == "tiktoken" else "llama2")


def build(ref: lp.Reference, cfg: TrainConfig, device: torch.device,
          quantizer: Any = None) -> torch.nn.Module:
    """The reference model on the meta device → LoRA transform (lora) or fake quantization with
    the backend's ``quantizer`` (qat) → weights assigned."""
    model = lp.build_meta(ref.args)
    dtype = DTYPES[cfg.dtype]
    state = ref.reader.state_dict(dtype=dtype)
    if isinstance(cfg, LoraConfig):
        if "output" in cfg.targets and ref.args.tie_embeddings:
            raise lp.ConfigError("this model's output head is its embedding (tied): LoRA cannot target it",
                                 hint="drop 'output' (lm_head) from targets")
        L.add_lora(model, cfg)
        state.update({k: v.to(dtype) for k, v in L.initial_adapter(model, cfg.seed).items()})
        lp.assign_weights(model, state, device=device)
        for name, p in model.named_parameters():
            p.requires_grad_(".lora_" in name)
    else:  # every weight trains: own copies, never the memory-mapped checkpoint
        if isinstance(cfg, QatConfig):
            Q.add_fake_quant(model, cfg.targets, quantizer)
        state = {k: v.clone() for k, v in state.items()}
        lp.assign_weights(model, state, device=device, trainable=True)
    return model


def train_rank(job: lp.FinetuneJob, cfg: TrainConfig, rank: Rank,
               quantizer: Any = None) -> dict[str, Any] | None:
    """One rank's whole run; rank 0 returns the result fields. ``quantizer``: QAT's (``qat.py``)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = device_for(cfg, rank.rank)
    ref = lp.open_reference(job.artifacts, job.base, job.options)
    model = build(ref, cfg, device, quantizer)
    records = D.read_records(job.data)
    train_recs, held_recs = D.split(records, cfg.eval_fraction, cfg.seed)
    context = ref.args.max_seq_len
    encoder = D.Encoder(ref.tokenizer, chat_format_of(job.base), context, truncate=cfg.truncate,
                        where=job.data)
    train, held = D.encode_all(encoder, train_recs), D.encode_all(encoder, held_recs)
    pad = ref.tokenizer.eos_id
    if cfg.packing:
        width = max(cfg.seq_len or context, max(len(e) for e in train + held) - 1)

        def make_batch(examples: list[D.Example]) -> D.Batch:
            return D.packed(examples, pad, width)
    else:
        def make_batch(examples: list[D.Example]) -> D.Batch:
            return D.padded(examples, pad)
    with job.data.open("rb") as f:
        data_sha = hashlib.file_digest(f, "sha256").hexdigest()
    loop = Loop(model, cfg, rank, device, make_batch, job.workdir, fingerprint(job, cfg, data_sha))
    metrics = loop.run(train, held, job.progress)
    # full weights on every rank's call (FSDP gathers its shards; rank 0 receives them)
    full = None if isinstance(cfg, LoraConfig) else P.full_state(model)
    if rank.rank != 0:
        return None
    files: list[str] = []
    extra: dict[str, Any] = {}
    if isinstance(cfg, LoraConfig):
        adapter = {k: v.cpu() for k, v in L.adapter_state(model).items()}
        files = [f"adapter/{n}" for n in L.save_adapter(job.output / "adapter", adapter, cfg, ref.args,
                                                        job.base.name)]
        state = L.merged_state(model)
    elif isinstance(cfg, QatConfig):
        assert full is not None
        state, packed = Q.export(full, quantizer)
        files = quantizer.save(job.output, state, packed)
        extra = {"quantized_for": {"backend": getattr(quantizer, "backend", None),
                                   "dtype": f"int{cfg.bits}", "files": files}}
    else:
        assert full is not None
        state = full
    loop.discard_checkpoint()
    return {
        "state_dict": {k: v.cpu() for k, v in state.items()}, "args": ref.args, "files": tuple(files),
        "metrics": {"train_loss": metrics.train_loss, "eval_loss": metrics.eval_loss,
                    "tokens": metrics.tokens, "seconds": metrics.seconds,
                    "tokens_per_second": metrics.tokens / metrics.seconds if metrics.seconds else None,
                    "resumed_from": metrics.resumed_from, "train_examples": len(train),
                    "eval_examples": len(held), "processes": rank.world,
                    "parallel": cfg.parallel if rank.world > 1 else None, **extra},
    }


def _worker(rank: int, world: int, port: int, job: lp.FinetuneJob, cfg: TrainConfig, quantizer: Any) -> None:
    import torch.distributed as dist

    device = device_for(cfg, rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(dist_backend(device), init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, device_id=device if device.type == "cuda" else None)
    try:
        result = train_rank(job, cfg, Rank(rank, world), quantizer)
        if result is not None:
            torch.save(result, job.workdir / RESULT)
    finally:
        dist.destroy_process_group()


def run(job: lp.FinetuneJob, cfg: TrainConfig) -> lp.FinetuneResult:
    P.check(str(getattr(cfg, "method", "full")), cfg.parallel, cfg.processes)
    if cfg.device == "cuda":
        check_gpus(cfg)  # here, before any rank starts: a clear error instead of a failed rank
    quantizer = Q.find_quantizer(cfg.bits, cfg.backend)[1] if isinstance(cfg, QatConfig) else None
    if cfg.processes == 1:
        fields = train_rank(job, cfg, Rank(), quantizer)
    else:
        import torch.multiprocessing as mp
        from torch.multiprocessing.spawn import ProcessException

        job.workdir.mkdir(parents=True, exist_ok=True)
        (job.workdir / RESULT).unlink(missing_ok=True)
        try:
            mp.spawn(_worker, args=(cfg.processes, free_port(), job, cfg, quantizer), nprocs=cfg.processes,
                     join=True)
        except ProcessException as e:
            raise lp.BackendError(f"a data-parallel rank failed: {str(e).strip().splitlines()[-1]}",
                                  hint="the full traceback is above; fix it and run again "
                                       "(the last checkpoint is resumed)") from e
        fields = torch.load(Path(job.workdir / RESULT), weights_only=False)
        (job.workdir / RESULT).unlink()
    assert fields is not None
    return lp.FinetuneResult(config=cfg.model_dump(), **fields)
