"""FP8 post-training quantization with NVIDIA ModelOpt (``minitron export fp8``).

The paper's runtime numbers are for FP8 checkpoints in TensorRT-LLM. This is ModelOpt's own recipe,
unchanged: ``mtq.quantize(model, mtq.FP8_DEFAULT_CFG, forward_loop)`` inserts per-tensor FP8 (e4m3)
quantizers on the inputs and weights of every linear layer except ``lm_head`` and calibrates their
ranges (``max`` algorithm) by running the model over calibration blocks; ``export_hf_checkpoint``
then writes the unified HF format: ``float8_e4m3fn`` weights with scalar ``weight_scale`` and
``input_scale`` tensors (scale = amax / 448), the unquantized tensors in ``dtype``, the quantization
in ``config.json`` (``quantization_config.quant_method: modelopt``) and ``hf_quant_config.json``.
TensorRT-LLM (>= 1.2) and vLLM load that directory as it is.

Environment facts (checked with modelopt 0.42 on CPU, transformers 5.19):
- it runs on CPU (fake quantization; no FP8 matmul is needed to calibrate);
- ``config.architectures`` must be set or the export cannot tell the model class: set here when missing;
- modelopt warns that transformers 5.x is untested; the export is still correct (tests dequantize it);
- transformers cannot load this format (it silently produces wrong weights): check the result by
  dequantizing the safetensors (``weight.float() * weight_scale``), never with ``from_pretrained``.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm
from transformers import AutoConfig

from . import check_checkpoint, is_fp8_checkpoint
from .. import loading  # module attribute, looked up per call: tests stub loading.load_model
from ..arch import family_of
from ..config import at_least, one_of
from ..data import load_blocks
from ..errors import MinitronError
from ..outputs import check_output, dir_size, input_paths, write_checkpoint_atomically
from .hub import read_records

logger = logging.getLogger(__name__)

DTYPES = ("bfloat16", "float16", "float32")
FP8_E4M3_MAX = 448.0
# Files of the tokenizer that are copied unchanged from the source checkpoint.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")
class FP8ExportError(MinitronError):
    """Options or input that cannot be exported to FP8; the message names the field and what is allowed."""


@dataclass
class FP8Config:
    """ModelOpt FP8 export options (the calibration data comes from the data options)."""

    output: str | None = field(default=None, metadata={"help": "directory to write the FP8 checkpoint to"})
    calib_samples: int = field(default=64, metadata={"help": "calibration sequences from the calibration split "
                               "(ModelOpt's examples use 512; per-tensor FP8 ranges settle with far fewer)"})
    seq_len: int = field(default=256, metadata={"help": "tokens per calibration sequence"})
    batch_size: int = field(default=8, metadata={"help": "sequences per calibration forward pass"})
    dtype: str = field(default="bfloat16", metadata={"help": "dtype of the unquantized tensors (embeddings, norms, "
                       "lm_head) and of the calibration pass on GPU (on CPU it runs in float32)", "choices": DTYPES})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, ... (default: cuda when available)"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing output directory"})

    def __post_init__(self):
        one_of("dtype", self.dtype, DTYPES, error=FP8ExportError)
        at_least(self, ("calib_samples", "batch_size"), error=FP8ExportError)


def linear_shapes(config) -> dict[str, tuple[int, int]]:
    """{proj name: (in_features, out_features)} of the linears ModelOpt quantizes, from the config: every linear of
    the model's layer types (:meth:`~minitron_hf.arch.base.Family.layer_linears`; a mixture of experts' include one
    expert's gate, up and down projections)."""
    family = family_of(config, check=False)
    size = family.axis_sizes(config)
    linears = {k: v for t in dict.fromkeys(family.layer_types(config)) for k, v in family.layer_linears(t).items()}
    return {name: (size[i], size[o]) for name, (i, o) in linears.items()}


def dims_not_divisible(config, by: int = 16) -> list[str]:
    """Human-readable list of FP8-quantized weight dimensions that are not multiples of ``by``."""
    bad = []
    for name, (i, o) in linear_shapes(config).items():
        for what, n in (("in", i), ("out", o)):
            if n % by:
                bad.append(f"{name}.{what}_features={n}")
    return bad


def check_inputs(model_dir, cfg: FP8Config, data_cfg=None):
    """Everything that needs the checkpoint, the output folder or ModelOpt, before any work (values are checked
    when the config is made); returns (source dir, output dir, model config, ModelOpt version)."""
    src = check_checkpoint(model_dir)
    if is_fp8_checkpoint(src):
        raise FP8ExportError(f"model_dir={str(model_dir)!r} is already a ModelOpt FP8 checkpoint (hf_quant_config.json)")
    # not, around or inside any input (the checkpoint, the calibration data); FP8 weights are a quarter of fp32
    # (half of bf16): a quarter of the source is the least it needs
    out = check_output(cfg.output, "output", sources=[src, *input_paths(data_cfg, cfg)], overwrite=cfg.overwrite,
                       need_bytes=dir_size(src) // 4, error=FP8ExportError)
    config = AutoConfig.from_pretrained(src)
    problem = family_of(config).fp8_problem(config)  # checked on modelopt 0.42 + transformers 5.19
    if problem:
        raise FP8ExportError(problem)
    max_pos = getattr(config, "max_position_embeddings", None)
    if cfg.seq_len < 2 or (max_pos and cfg.seq_len > max_pos):
        raise FP8ExportError(f"seq_len={cfg.seq_len} must be in [2, {max_pos}] (the model's max_position_embeddings)")
    try:
        version = importlib.metadata.version("nvidia-modelopt")
    except importlib.metadata.PackageNotFoundError:
        raise FP8ExportError("FP8 export needs NVIDIA ModelOpt: pip install 'nvidia-modelopt==0.42.0' (the `export` "
                             "extra: pip install -e '.[export]'; make install does this)") from None
    return src, out, config, version


def _copy_tokenizer(src: Path, dst: Path, tokenizer) -> list[str]:
    copied = [f for f in TOKENIZER_FILES if (src / f).is_file()]
    for f in copied:
        shutil.copy2(src / f, dst / f)
    if not copied:  # e.g. a checkpoint whose tokenizer came from elsewhere: save what was loaded
        tokenizer.save_pretrained(dst)
    return copied


def export_fp8(model_dir, data_cfg, cfg: FP8Config) -> dict:
    """Quantize ``model_dir`` to ModelOpt FP8 calibrated on the calibration split; write ``cfg.output``.

    Returns the record also written to ``fp8.json`` in the output.
    """
    t0 = time.time()
    src, out, config, version = check_inputs(model_dir, cfg, data_cfg)
    bad = dims_not_divisible(config)
    if bad:
        logger.warning("FP8 GEMM kernels (TensorRT-LLM, vLLM) want weight dimensions divisible by 16; not divisible: "
                       "%s. Expect a load error or a slower fallback; prune to multiples of 16 to avoid it.",
                       ", ".join(bad))
    tokenizer = loading.load_tokenizer(src)
    # data first: too little calibration text fails here, before the model loads
    blocks = load_blocks(data_cfg, tokenizer, "calibration", cfg.seq_len, cfg.calib_samples)

    import modelopt.torch.quantization as mtq  # the optional `export` extra, checked by check_inputs
    from modelopt.torch.export import export_hf_checkpoint

    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, cfg.dtype)
    # On CPU, ModelOpt's fake quantization is about 3x slower in bfloat16 than in float32 (measured on
    # SmolLM2-135M: 44 s vs 14 s for 8 x 128 tokens), so calibrate in float32 there; the export still
    # writes the unquantized tensors in `dtype` (ModelOpt logs that the dtypes differ: expected).
    calib_dtype = torch.float32 if torch.device(device).type == "cpu" else dtype
    model = loading.load_model(src, dtype=calib_dtype, device=device)
    family_of(model.config).prepare_quantization(model)  # e.g. a mixture of experts: per-expert nn.Linear modules
    if not getattr(model.config, "architectures", None):
        model.config.architectures = [type(model).__name__]  # the export needs it to name the model class

    def forward_loop(m):
        with torch.no_grad():
            for i in tqdm(range(0, len(blocks), cfg.batch_size), desc="FP8 calibration", leave=False):
                m(blocks[i:i + cfg.batch_size].to(device))

    mtq.quantize(model, mtq.FP8_DEFAULT_CFG, forward_loop)
    quantized = sorted(n for n, mod in model.named_modules()
                       if getattr(getattr(mod, "weight_quantizer", None), "is_enabled", False))
    if not quantized:
        raise RuntimeError("ModelOpt quantized no linear layer; nothing to export")
    record = {
        "source": str(model_dir), "format": "modelopt-fp8", "config": "FP8_DEFAULT_CFG", "modelopt_version": version,
        "dtype": cfg.dtype, "calib_samples": cfg.calib_samples, "seq_len": cfg.seq_len, "data": asdict(data_cfg),
        "quantized_linears": len(quantized), "not_divisible_by_16": bad,
    }
    lineage = read_records(src)

    def write(tmp: Path) -> None:
        export_hf_checkpoint(model, dtype=dtype, export_dir=tmp)
        cfg_json = json.loads((tmp / "config.json").read_text())
        if cfg_json.get("quantization_config", {}).get("quant_method") != "modelopt":
            raise RuntimeError(f"the ModelOpt export wrote no quantization_config to {tmp}/config.json")
        record["tokenizer_files"] = _copy_tokenizer(src, tmp, tokenizer)
        # the stage records travel with the checkpoint, so that its model card knows its lineage
        for name in ("pruning", "distill"):
            if lineage[name] is not None:
                (tmp / f"{name}.json").write_text(json.dumps(lineage[name], indent=1))
        record["wall_time_s"] = round(time.time() - t0, 1)
        (tmp / "fp8.json").write_text(json.dumps(record, indent=1))

    write_checkpoint_atomically(out, write)
    logger.info("FP8 checkpoint %s: %d linear layers quantized (calibration %d x %d tokens) in %.0f s",
                out, len(quantized), cfg.calib_samples, cfg.seq_len, record["wall_time_s"])
    return record


def dequantize(checkpoint_dir) -> dict:
    """{name: float32 tensor} of an FP8 checkpoint with every FP8 weight multiplied by its scale
    (for checks and comparisons: the numbers an FP8 runtime multiplies with)."""
    d = Path(checkpoint_dir)
    tensors = {}
    for f in sorted(d.glob("*.safetensors")):
        tensors.update(load_file(f))
    out = {}
    for name, t in tensors.items():
        if name.endswith(("weight_scale", "input_scale")):
            continue
        if t.dtype == torch.float8_e4m3fn:
            out[name] = t.float() * tensors[name + "_scale"].float()
        else:
            out[name] = t.float()
    return out
