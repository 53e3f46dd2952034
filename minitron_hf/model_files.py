"""A model's folder on disk: what makes it a checkpoint the stages accept.

Shared by every stage that takes a checkpoint folder (export, serving, evaluation): each checks its input here before
any heavy work, and the error names the field, the value and what is expected.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import MinitronError


class NotACheckpointError(MinitronError):
    """A directory that is not a Hugging Face checkpoint (config.json + safetensors)."""


def check_checkpoint(path, field: str = "model_dir") -> Path:
    """``path`` as a :class:`Path` if it is a checkpoint directory: ``config.json`` with a ``model_type``
    and at least one ``*.safetensors`` file. Anything else raises :class:`NotACheckpointError` naming
    ``field``, the value and what is expected."""
    p = Path(path).expanduser()
    want = "a checkpoint directory with config.json and *.safetensors weights"
    if not p.exists():
        raise NotACheckpointError(f"{field}={str(path)!r}: no such directory; expected {want}")
    if not p.is_dir():
        raise NotACheckpointError(f"{field}={str(path)!r} is a file; expected {want}")
    cfg = p / "config.json"
    if not cfg.is_file():
        raise NotACheckpointError(f"{field}={str(path)!r} has no config.json; expected {want}")
    try:
        model_type = json.loads(cfg.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError) as e:
        raise NotACheckpointError(f"{field}={str(path)!r}: config.json is not a JSON object ({e})") from None
    if not model_type:
        raise NotACheckpointError(f"{field}={str(path)!r}: config.json has no model_type; expected {want}")
    if not any(p.glob("*.safetensors")):
        bins = [f.name for f in p.glob("*.bin")] + [f.name for f in p.glob("*.pt")]
        hint = f" (found {', '.join(bins)}: pickled weights are not accepted, re-save with safetensors)" if bins else ""
        raise NotACheckpointError(f"{field}={str(path)!r} has no *.safetensors weights{hint}; expected {want}")
    from .models import verify_checkpoint_files

    return verify_checkpoint_files(p)


def is_fp8_checkpoint(path) -> bool:
    """True for a ModelOpt FP8 export (``hf_quant_config.json`` with ``quant_algo`` FP8)."""
    f = Path(path) / "hf_quant_config.json"
    if not f.is_file():
        return False
    return json.loads(f.read_text()).get("quantization", {}).get("quant_algo") == "FP8"
