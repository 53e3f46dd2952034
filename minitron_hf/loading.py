"""Where models come from and how they load: names resolve to local checkpoint folders, which load with vanilla
transformers (``trust_remote_code`` stays off).

A model name resolves in one place (:func:`resolve_model`): an embedded model's alias (``smollm2-135m``,
the default, or ``gemma3-270m``: :mod:`minitron_hf.default_model`), a local checkpoint directory, or a Hub id. Every folder it returns has passed
:func:`~minitron_hf.model_files.verify_checkpoint_files`; :func:`load_model` also refuses an unsupported
architecture (:func:`~minitron_hf.arch.family_of`) before reading any weights.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from huggingface_hub import snapshot_download

from .arch import family_of
from .compat import check_vocab
from .config import ConfigError
from .default_model import EMBEDDED, ensure_embedded
from .model_files import ModelNotFoundError, verify_checkpoint_files

logger = logging.getLogger(__name__)


def resolve_model(name: str | os.PathLike) -> Path:
    """Turn a model name into a local checkpoint directory.

    an embedded model (``smollm2-135m``, the default; ``gemma3-270m``) -> converted once into
    :func:`~minitron_hf.outputs.cache_dir`; an
    existing directory -> itself; anything else -> a Hub id, downloaded with ``huggingface_hub`` (safetensors,
    configs and tokenizer files only).
    """
    path = Path(name).expanduser()
    alias = str(name) in EMBEDDED
    if alias and not path.exists():
        return ensure_embedded(str(name))
    if path.exists():  # a local path wins over an alias of the same name, and says so
        also = (f" (a local path, which wins over the embedded model of that name; write ./{name} to mean the folder "
                f"or move it to use the embedded model)" if alias else "")
        if alias:
            logger.warning("model=%r: using the local %s %s, not the embedded model of that name", str(name),
                           "folder" if path.is_dir() else "file", path.resolve())
        if not path.is_dir():
            raise ModelNotFoundError(f"model={str(name)!r} is a file; expected a checkpoint directory{also}")
        if not (path / "config.json").exists():
            raise ModelNotFoundError(f"model={str(name)!r}: directory has no config.json (not an HF checkpoint)"
                                     f"{also}")
        return verify_checkpoint_files(path)
    if str(name).startswith((".", "/", "~")) or str(name).count("/") > 1:
        raise ModelNotFoundError(f"model={str(name)!r}: no such directory")
    try:
        local = Path(
            snapshot_download(
                str(name),
                allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model", "*.tiktoken", "*.txt", "*.jinja"],
            )
        )
    except Exception as e:  # offline, gated, typo: one clear message
        raise ModelNotFoundError(
            f"model={str(name)!r} is not an alias ({', '.join(EMBEDDED)}), not a local directory, and could not be "
            f"downloaded from the Hub ({type(e).__name__}: {e}). Offline machines must pass a local checkpoint."
        ) from e
    return verify_checkpoint_files(local)


def parse_device(name: str | None, field: str = "device"):
    """``torch.device`` of a name (default: cuda when available, else cpu); an unknown name, or an accelerator this
    machine does not have, is an error naming the field."""
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{field}={name!r} is not a device; use cpu, cuda, cuda:N, mps, ...") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{field}={name!r}: this machine has no CUDA device; use cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"{field}={name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return dev


def load_model(name, dtype=None, device=None):
    """Load a supported causal LM with vanilla transformers (``trust_remote_code`` stays off)."""
    # transformers' Auto classes take seconds to import, and minitron_hf.data imports this module (load_tokenizer)
    from transformers import AutoConfig, AutoModelForCausalLM

    path = resolve_model(name)
    family_of(AutoConfig.from_pretrained(path))  # fail before loading weights
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    if device is not None:
        model.to(device)
    model.eval()
    return model


def load_tokenizer(name):
    from transformers import AutoTokenizer

    path = resolve_model(name)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as e:
        raise ModelNotFoundError(f"model={str(name)!r}: no usable tokenizer in {path} ({type(e).__name__}: {e})") from e
    # every command that reads a checkpoint's tokenizer pairs it with that checkpoint: ids beyond its vocabulary rows
    # would be an IndexError deep in the first forward pass (export fp8, eval, generate, ... alike)
    check_vocab(path, tok, str(name))
    return tok
