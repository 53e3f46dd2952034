"""A model's folder on disk: what makes it a checkpoint the stages accept.

Shared by every stage that takes a checkpoint folder (export, serving, evaluation): each checks its input here before
any heavy work, and the error names the field, the value and what is expected. :func:`verify_checkpoint_files` reads
the headers of the weight files (no weights), so a truncated download fails here rather than mid-load; model
resolution (:func:`minitron_hf.loading.resolve_model`) runs it on every folder it returns.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import MinitronError
from .outputs import CorruptFileError, read_json, safetensors_problem


class ModelNotFoundError(MinitronError):
    """A model name that is neither an alias, a local checkpoint nor a reachable Hub repository (or a folder
    without safetensors weights)."""


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
    return verify_checkpoint_files(p)


def read_weight_map(index) -> dict[str, str]:
    """The ``weight_map`` (tensor name -> shard file name) of a ``*.safetensors.index.json``: the one parser of shard
    indexes. A file that is not JSON, not an object with a ``weight_map`` of names, or that names a shard outside its
    own folder (``../x``, an absolute path) is a :class:`~minitron_hf.outputs.CorruptFileError` naming it."""
    index = Path(index)
    data = read_json(index)
    wm = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(wm, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in wm.items()):
        raise CorruptFileError(index, "is not a shard index (a JSON object whose weight_map maps tensor names to "
                                      "file names)")
    outside = sorted(v for v in set(wm.values()) if Path(v).name != v or v in ("", ".", ".."))
    if outside:
        raise CorruptFileError(index, f"names a shard outside its folder ({outside[0]!r}); shards are file names "
                                      f"beside the index")
    return wm


def index_shards(index) -> list[str]:
    """The shard file names a ``*.safetensors.index.json`` names, sorted (:func:`read_weight_map`)."""
    return sorted(set(read_weight_map(index).values()))


def verify_checkpoint_files(path) -> Path:
    """Cheap integrity checks of a checkpoint folder, before anything loads it (headers only, no weights read):
    ``config.json`` is a JSON object with a ``model_type``; every ``*.safetensors`` file (and every shard a
    ``model.safetensors.index.json`` names) has a readable header and exactly the size its header promises, so a
    truncated or garbage file is an error naming it instead of a ``SafetensorError`` traceback mid-load."""
    path = Path(path)
    cfg = read_json(path / "config.json")
    if not isinstance(cfg, dict) or not cfg.get("model_type"):
        raise CorruptFileError(path / "config.json", "is not a model config (a JSON object with a model_type)")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        pickles = sorted(f.name for f in path.iterdir() if f.suffix in (".bin", ".pt", ".pth"))
        raise ModelNotFoundError(f"{path} has config.json but no *.safetensors weights" + (
            f" ({', '.join(pickles)}: pickled weights are not loaded, re-save with safetensors)" if pickles else ""))
    index = path / "model.safetensors.index.json"
    if index.exists():
        missing = [s for s in index_shards(index) if not (path / s).is_file()]
        if missing:
            raise CorruptFileError(index, f"names shards that are missing: {', '.join(missing)}")
    for f in files:
        problem = safetensors_problem(f)
        if problem:
            raise CorruptFileError(f, f"{problem.removeprefix(f.name).strip()}: not a complete safetensors file; "
                                      f"re-save or re-download it")
    return path


def is_fp8_checkpoint(path) -> bool:
    """True for a ModelOpt FP8 export (``hf_quant_config.json`` with ``quant_algo`` FP8)."""
    f = Path(path) / "hf_quant_config.json"
    if not f.is_file():
        return False
    return json.loads(f.read_text()).get("quantization", {}).get("quant_algo") == "FP8"
