"""TensorRT-LLM throughput benchmarks (``minitron export trtllm``): the paper's runtime comparison.

Writes, for one checkpoint (BF16 or the ModelOpt FP8 export of :mod:`.fp8`):

- ``datasets/isl{I}_osl{O}.jsonl``: synthetic requests for each input/output-length pair of the grid,
  in ``trtllm-bench``'s dataset format (one JSON object per line: ``task_id``, ``input_ids``,
  ``output_tokens``; what ``prepare_dataset.py token-norm-dist`` writes with zero deviation);
- ``extra-llm-api-options.yaml``: LLM API options with the KV-cache dtype set explicitly (TensorRT-LLM
  otherwise takes it from the checkpoint, which silently changes FP8-vs-BF16 comparisons);
- ``run_pytorch.sh``: ``trtllm-bench throughput --backend pytorch`` for every pair (any TensorRT-LLM >= 1.0);
- ``run_engine.sh``: the TensorRT engine path, which exists only up to tensorrt-llm 1.2.1:
  ``trtllm-bench build`` (LLM API engine build; reads ModelOpt FP8 checkpoints) then ``throughput
  --backend tensorrt``; and, for BF16 checkpoints, the classic ``convert_checkpoint.py`` + ``trtllm-build``;
- ``commands.json``: every command as an argv list, and ``plan.json``: the settings and why.

Batch size follows the paper: 32 for 8B-12B models, 64 for 4B; decided from the parameter count
(>= 6B -> 32, else 64). When ``trtllm-bench`` is on PATH the PyTorch-backend commands run (and the
engine path too with tensorrt-llm <= 1.2.1); otherwise the files are written for a GPU machine.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import random
import shlex
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml
from packaging.version import Version
from transformers import AutoConfig, AutoTokenizer

from . import check_checkpoint, is_fp8_checkpoint
from ..arch import FAMILIES, count_parameters, family_of
from ..config import at_least, one_of
from ..errors import MinitronError
from ..outputs import OUTPUT_FIELDS, check_output, input_paths, write_checkpoint_atomically

logger = logging.getLogger(__name__)

# Input/output sequence lengths (ISL/OSL) of the runtime comparison; override with --lengths.
DEFAULT_LENGTHS = ["128/128", "128/2048", "2048/128", "2048/2048"]
KV_DTYPES = ("bfloat16", "fp8")
LARGE_MODEL_PARAMS = 6e9  # >= this: the 8B-12B setting (batch 32); below: the 4B setting (batch 64)
ENGINE_MAX_VERSION = (1, 2, 1)  # the TensorRT engine path (trtllm-build) was removed after 1.2.1

# How each TensorRT-LLM converter, $TRTLLM_EXAMPLES/models/core/<example>/convert_checkpoint.py, spells its
# arguments, checked against NVIDIA/TensorRT-LLM's sources: examples/models/core/llama/convert_checkpoint.py
# (commit 368f8f2a), qwen/ (0df9aaf3), phi/ (10c1d594): --model_dir --output_dir --dtype --tp_size;
# gemma/ (310decb9): --ckpt-type hf (required: it has no default), --model-dir, --output-model-dir, --dtype and
# --world-size (it has no --tp_size). Which example converts which model type is the family's ``trtllm_example``
# (minitron_hf/arch; the per-family sources checked are cited there); a family without one is refused by plan().
CONVERTER_ARGS = {
    "llama": ("--model_dir", "--output_dir", "--tp_size", ()),
    "qwen": ("--model_dir", "--output_dir", "--tp_size", ()),
    "phi": ("--model_dir", "--output_dir", "--tp_size", ()),
    "gemma": ("--model-dir", "--output-model-dir", "--world-size", ("--ckpt-type", "hf")),
}


class TRTLLMError(MinitronError):
    """Options that cannot make a benchmark; the message names the field and what is allowed."""


@dataclass
class TRTLLMConfig:
    """Datasets and commands for trtllm-bench throughput runs."""

    output: str | None = field(default=None, metadata={"help": "directory for datasets, options and scripts"})
    batch_size: int | None = field(default=None, metadata={"help": "max batch size (default: 32 for >= 6B "
                                   "parameters, as the paper's 8B-12B runs; 64 below, as its 4B runs)"})
    lengths: list[str] = field(default_factory=lambda: list(DEFAULT_LENGTHS), metadata={
        "help": "input/output token lengths ISL/OSL, one dataset each"})
    num_requests: int = field(default=512, metadata={"help": "requests per dataset"})
    kv_cache_dtype: str = field(default="bfloat16", metadata={
        "help": "KV-cache dtype, always set explicitly (bfloat16 for both BF16 and FP8 weights compares the "
                "weights alone; fp8 as well for the fastest FP8 setting)", "choices": KV_DTYPES})
    kv_cache_free_gpu_memory_fraction: float = field(default=0.9, metadata={
        "help": "share of free GPU memory for the KV cache"})
    max_num_tokens: int = field(default=8192, metadata={"help": "max batched tokens per step (engine build)"})
    tp_size: int = field(default=1, metadata={"help": "tensor-parallel GPUs"})
    model_name: str | None = field(default=None, metadata={"help": "name passed to trtllm-bench --model (not a "
                                   "path; default: minitron/<directory name>)"})
    workspace: str | None = field(default=None, metadata={"help": "trtllm-bench workspace (engines); default: "
                                  "<output>/workspace"})
    seed: int = field(default=0, metadata={"help": "seed of the synthetic token ids"})
    run: bool = field(default=True, metadata={"help": "run the commands when trtllm-bench is on PATH"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing output directory"})

    def __post_init__(self):
        at_least(self, ("num_requests", "tp_size", "max_num_tokens"), error=TRTLLMError)
        if self.batch_size is not None and self.batch_size < 1:
            raise TRTLLMError(f"batch_size={self.batch_size} must be >= 1 (or unset for the paper's default)")
        if not 0 < self.kv_cache_free_gpu_memory_fraction <= 1:
            raise TRTLLMError(f"kv_cache_free_gpu_memory_fraction={self.kv_cache_free_gpu_memory_fraction} must be "
                              f"in (0, 1]")
        one_of("kv_cache_dtype", self.kv_cache_dtype, KV_DTYPES, error=TRTLLMError)


def parse_lengths(items, error=None) -> list[tuple[int, int]]:
    """``["128/2048", ...]`` -> ``[(128, 2048), ...]``; bad items raise ``error`` (TRTLLMError) naming them."""
    error = error or TRTLLMError
    out = []
    for it in items:
        try:
            isl, osl = (int(x) for x in str(it).split("/"))
        except ValueError:
            raise error(f"lengths item {it!r} must be ISL/OSL, two positive integers, e.g. 128/2048") from None
        if isl < 1 or osl < 1:
            raise error(f"lengths item {it!r}: both lengths must be >= 1")
        out.append((isl, osl))
    if not out:
        raise error("lengths must name at least one ISL/OSL pair")
    return out


def default_batch_size(total_params: int) -> int:
    """The paper's batch sizes: 32 for the 8B-12B models, 64 for the 4B ones (and anything smaller)."""
    return 32 if total_params >= LARGE_MODEL_PARAMS else 64


def synthetic_dataset(isl: int, osl: int, n: int, vocab: int, exclude=(), seed: int = 0) -> list[dict]:
    """``n`` requests of exactly ``isl`` random token ids (special ids excluded) and ``osl`` output tokens."""
    rng = random.Random(f"{seed}-{isl}-{osl}")
    bad = set(exclude)
    ids = [i for i in range(vocab) if i not in bad]
    return [{"task_id": t, "input_ids": [ids[rng.randrange(len(ids))] for _ in range(isl)], "output_tokens": osl}
            for t in range(n)]


def _version_tuple(v: str) -> tuple[int, ...]:
    return Version(v).release[:3]


def installed_trtllm_version() -> str | None:
    try:
        return importlib.metadata.version("tensorrt_llm")
    except importlib.metadata.PackageNotFoundError:
        return None


def _kv_quant_in_checkpoint(d: Path) -> str | None:
    f = d / "hf_quant_config.json"
    return json.loads(f.read_text()).get("quantization", {}).get("kv_cache_quant_algo") if f.is_file() else None


def plan(model_dir, cfg: TRTLLMConfig) -> dict:
    """Check the options and decide everything (no files written)."""
    d = check_checkpoint(model_dir).resolve()
    config = AutoConfig.from_pretrained(d)
    family = family_of(config)
    if not family.trtllm_example:  # before anything is written: no TensorRT-LLM path runs this model type
        supported = sorted(mt for mt, f in FAMILIES.items() if f.trtllm_example)
        raise TRTLLMError(f"model_type={family.model_type!r} cannot be benchmarked with TensorRT-LLM: "
                          f"{family.trtllm_unsupported or 'no TensorRT-LLM converter supports it'}. "
                          f"export trtllm supports: {', '.join(supported)}")
    # not, around or inside the checkpoint (--overwrite replaces the whole folder), and writable; the workspace is
    # trtllm-bench's output (engines)
    inputs = input_paths(cfg, skip=OUTPUT_FIELDS | {"workspace", "model_name"})
    out = check_output(cfg.output, "output", sources=[d, *inputs], overwrite=cfg.overwrite,
                       error=TRTLLMError).resolve()
    grid = parse_lengths(cfg.lengths)
    ckpt_kv = _kv_quant_in_checkpoint(d)
    if cfg.kv_cache_dtype == "bfloat16" and ckpt_kv:
        raise TRTLLMError(f"kv_cache_dtype='bfloat16' but {d}/hf_quant_config.json quantizes the KV cache "
                          f"({ckpt_kv}); TensorRT-LLM cannot undo that: use kv_cache_dtype='fp8'")
    params = count_parameters(config)["total"]
    max_pos = getattr(config, "max_position_embeddings", None)
    too_long = [f"{i}/{o}" for i, o in grid if max_pos and i + o > max_pos]
    if too_long:
        raise TRTLLMError(f"lengths {', '.join(too_long)} exceed the model's max_position_embeddings={max_pos}")
    model_name = cfg.model_name or f"minitron/{d.name}"
    if Path(model_name).exists():
        raise TRTLLMError(f"model_name={model_name!r} is an existing path; trtllm-bench --model wants a name "
                          "(the checkpoint goes to --model_path)")
    weights_dtype = "fp8" if is_fp8_checkpoint(d) else str(getattr(config, "dtype", None) or "").replace("torch.", "")
    if weights_dtype == "float32":
        logger.warning("%s holds float32 weights: TensorRT-LLM would run them in float32; save the checkpoint in "
                       "bfloat16 (or export FP8) for a meaningful benchmark", d)
    return {
        "model_dir": str(d), "output": str(out), "model_name": model_name, "parameters": params,
        # TensorRT-LLM's example folder whose convert_checkpoint.py converts this family (the classic path)
        "converter": family.trtllm_example,
        "batch_size": cfg.batch_size or default_batch_size(params),
        "batch_size_reason": "given" if cfg.batch_size else
        (f"{params / 1e9:.2f}B parameters: {'>=' if params >= LARGE_MODEL_PARAMS else '<'} "
         f"{LARGE_MODEL_PARAMS / 1e9:.0f}B -> the paper's {'8B-12B' if params >= LARGE_MODEL_PARAMS else '4B'} setting"),
        "grid": grid, "weights": weights_dtype, "kv_cache_dtype": cfg.kv_cache_dtype,
        "checkpoint_kv_cache_quant": ckpt_kv, "max_seq_len": max(i + o for i, o in grid),
        "max_input_len": max(i for i, _ in grid), "workspace": str(Path(cfg.workspace).expanduser().resolve())
        if cfg.workspace else str(out / "workspace"),
    }


def llm_api_options(p: dict, cfg: TRTLLMConfig) -> dict:
    """The extra LLM API options (PyTorch backend). TensorRT-LLM's PyTorch backend accepts
    kv_cache_config.dtype "auto" (= the checkpoint's KV quantization, none in our exports, so the
    model dtype) or "fp8": bfloat16 is written as "auto" after :func:`plan` checked that the checkpoint
    does not quantize its KV cache."""
    return {"kv_cache_config": {"dtype": "fp8" if p["kv_cache_dtype"] == "fp8" else "auto",
                                "free_gpu_memory_fraction": cfg.kv_cache_free_gpu_memory_fraction}}


def commands(p: dict, cfg: TRTLLMConfig, out: Path) -> dict:
    """{"pytorch": [argv...], "engine_build": [argv...], "engine": [argv...], "trtllm_build": [argv...]}
    (paths point into ``out``, the final output directory)."""
    base = ["trtllm-bench", "--model", p["model_name"], "--model_path", p["model_dir"], "--workspace", p["workspace"]]
    tag = f"{p['weights']}-kv{p['kv_cache_dtype']}"
    pytorch, engine = [], []
    engine_dir = str(Path(p["workspace"]) / p["model_name"] / f"tp_{cfg.tp_size}_pp_1")
    for isl, osl in p["grid"]:
        ds = str(out / "datasets" / f"isl{isl}_osl{osl}.jsonl")
        common = ["--dataset", ds, "--num_requests", str(cfg.num_requests), "--max_batch_size", str(p["batch_size"]),
                  "--tp", str(cfg.tp_size)]
        pytorch.append(base + ["throughput", "--backend", "pytorch", *common,
                               "--extra_llm_api_options", str(out / "extra-llm-api-options.yaml"),
                               "--report_json", str(out / "reports" / f"pytorch-{tag}-isl{isl}_osl{osl}.json")])
        engine.append(base + ["throughput", "--backend", "tensorrt", "--engine_dir", engine_dir, "--dataset", ds,
                              "--num_requests", str(cfg.num_requests), "--kv_cache_free_gpu_mem_fraction",
                              str(cfg.kv_cache_free_gpu_memory_fraction),
                              "--report_json", str(out / "reports" / f"engine-{tag}-isl{isl}_osl{osl}.json")])
    # One engine for the whole grid: its limits cover the longest request. An engine's KV-cache dtype is
    # fixed at build time by the checkpoint's quantization (hf_quant_config.json kv_cache_quant_algo: none in
    # a BF16 checkpoint or in our FP8 export, so BF16); `trtllm-bench build --quantization FP8` would give an
    # FP8 KV cache only by quantizing the weights as well. So the engine path runs only where the requested
    # KV dtype is the checkpoint's.
    build = base + ["build", "--tp_size", str(cfg.tp_size), "--max_seq_len", str(p["max_seq_len"]),
                    "--max_batch_size", str(p["batch_size"]), "--max_num_tokens", str(cfg.max_num_tokens)]
    if p["kv_cache_dtype"] != engine_kv_dtype(p):
        build, engine = None, []
    ckpt = str(Path(p["workspace"]) / "trtllm-checkpoint")
    model_arg, output_arg, tp_arg, fixed = CONVERTER_ARGS[p["converter"]]
    classic = [
        ["python", f"$TRTLLM_EXAMPLES/models/core/{p['converter']}/convert_checkpoint.py", *fixed,
         model_arg, p["model_dir"], output_arg, ckpt, "--dtype", "bfloat16", tp_arg, str(cfg.tp_size)],
        ["trtllm-build", "--checkpoint_dir", ckpt, "--output_dir", str(Path(p["workspace"]) / "trtllm-build-engine"),
         "--max_batch_size", str(p["batch_size"]), "--max_input_len", str(p["max_input_len"]),
         "--max_seq_len", str(p["max_seq_len"]), "--max_num_tokens", str(cfg.max_num_tokens),
         "--gemm_plugin", "auto", "--use_paged_context_fmha", "enable"],
    ] if p["weights"] != "fp8" and p["kv_cache_dtype"] == "bfloat16" else []
    return {"pytorch": pytorch, "engine_build": [build] if build else [], "engine": engine, "trtllm_build": classic}


def engine_kv_dtype(p: dict) -> str:
    """The KV-cache dtype a TensorRT engine built from this checkpoint has."""
    return "fp8" if p["checkpoint_kv_cache_quant"] == "FP8" else "bfloat16"


def _script(title: str, cmds: list[list[str]], notes: list[str]) -> str:
    lines = ["#!/usr/bin/env bash", f"# {title}", *[f"# {n}" for n in notes], "set -euo pipefail",
             'cd "$(dirname "$0")"', "mkdir -p reports", ""]
    for c in cmds:  # one option (and its value) per line
        lines.append("".join((" \\\n    " if a.startswith("--") and i > 0 else " " if i else "") + shlex.quote(a)
                             for i, a in enumerate(c)))
    return "\n".join(lines) + "\n"


def export_trtllm(model_dir, cfg: TRTLLMConfig) -> dict:
    """Write datasets, options and scripts to ``cfg.output``; run them when trtllm-bench is installed."""
    p = plan(model_dir, cfg)
    out = Path(p["output"])
    tok = AutoTokenizer.from_pretrained(p["model_dir"])
    vocab = len(tok)
    cmds = commands(p, cfg, out)
    opts = llm_api_options(p, cfg)
    version = installed_trtllm_version()
    engine_ok = version is None or _version_tuple(version) <= ENGINE_MAX_VERSION

    def write(tmp: Path) -> None:
        (tmp / "datasets").mkdir()
        for isl, osl in p["grid"]:
            rows = synthetic_dataset(isl, osl, cfg.num_requests, vocab, tok.all_special_ids, cfg.seed)
            with open(tmp / "datasets" / f"isl{isl}_osl{osl}.jsonl", "w") as f:
                f.writelines(json.dumps(r, separators=(",", ":")) + "\n" for r in rows)
        (tmp / "extra-llm-api-options.yaml").write_text(
            "# LLM API options for trtllm-bench --extra_llm_api_options (PyTorch backend).\n"
            f"# KV cache: {p['kv_cache_dtype']}, set explicitly" +
            (" ('auto' = the checkpoint's KV quantization, which is none here, so the model dtype;\n"
             "# the PyTorch backend accepts only auto, fp8 and nvfp4).\n" if p["kv_cache_dtype"] == "bfloat16" else ".\n")
            + yaml.safe_dump(opts, sort_keys=False))
        notes = [f"model {p['model_dir']} ({p['parameters'] / 1e9:.2f}B parameters, weights {p['weights']})",
                 f"batch size {p['batch_size']} ({p['batch_size_reason']}), KV cache {p['kv_cache_dtype']}"]
        (tmp / "run_pytorch.sh").write_text(_script("trtllm-bench throughput, PyTorch backend (tensorrt-llm >= 1.0)",
                                                     cmds["pytorch"], notes))
        engine_cmds = cmds["engine_build"] + cmds["engine"]
        eng_notes = notes + ["TensorRT engine path: tensorrt-llm <= 1.2.1 only (later releases have no engine build)."]
        if not cmds["engine_build"]:
            eng_notes += [f"Nothing to run: an engine built from this checkpoint has a {engine_kv_dtype(p)} KV cache "
                          f"(set by the checkpoint's quantization), not the requested {p['kv_cache_dtype']}."]
        if cmds["trtllm_build"]:
            eng_notes += ["Alternative classic build (BF16 source; needs TensorRT-LLM's examples directory):"] + \
                [" ".join(c) for c in cmds["trtllm_build"]]
        (tmp / "run_engine.sh").write_text(_script("trtllm-bench build + throughput, TensorRT backend", engine_cmds,
                                                   eng_notes))
        for s in ("run_pytorch.sh", "run_engine.sh"):
            (tmp / s).chmod(0o755)
        (tmp / "commands.json").write_text(json.dumps(cmds, indent=1))
        (tmp / "plan.json").write_text(json.dumps({**p, "grid": [f"{i}/{o}" for i, o in p["grid"]],
                                                   "llm_api_options": opts, "config": asdict(cfg)}, indent=1))
        (tmp / "reports").mkdir()

    write_checkpoint_atomically(out, write)
    result = {"output": str(out), "batch_size": p["batch_size"], "kv_cache_dtype": p["kv_cache_dtype"],
              "datasets": [str(out / "datasets" / f"isl{i}_osl{o}.jsonl") for i, o in p["grid"]],
              "script": str(out / "run_pytorch.sh"), "ran": False, "reports": []}
    if shutil.which("trtllm-bench") is None or not cfg.run:
        result["message"] = (f"trtllm-bench is not on PATH: running these needs a GPU machine with TensorRT-LLM "
                             f"(pip install tensorrt-llm; the engine path needs tensorrt-llm==1.2.1). There, run "
                             f"{out}/run_pytorch.sh and {out}/run_engine.sh" if cfg.run else
                             f"not run (run=False): {out}/run_pytorch.sh and {out}/run_engine.sh")
        logger.info(result["message"])
        return result
    to_run = cmds["pytorch"] + (cmds["engine_build"] + cmds["engine"] if engine_ok else [])
    if not engine_ok:
        logger.info("tensorrt-llm %s has no TensorRT engine path (<= 1.2.1 only): PyTorch backend only", version)
    for c in to_run:
        logger.info("running: %s", shlex.join(c))
        subprocess.run(c, check=True, cwd=out)
    result["ran"] = True
    result["reports"] = sorted(str(f) for f in (out / "reports").glob("*.json"))
    result["message"] = f"ran {len(to_run)} commands with tensorrt-llm {version}; reports in {out}/reports"
    return result
