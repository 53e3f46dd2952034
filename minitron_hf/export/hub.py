"""Model card and Hugging Face Hub upload (``minitron publish``).

The card is generated from what the earlier stages left in the checkpoint directory:

- ``pruning.json`` (``minitron prune``): source model, target, importance settings, parameter counts;
- ``distill.json`` (``minitron distill``, in the directory itself or in its parent when the directory
  is the run's ``final/``): teacher, loss, steps and tokens, losses before and after;
- ``fp8.json`` + ``hf_quant_config.json`` (``minitron export fp8``);
- ``evaluation.json``: ``{model_name: {metric: value}}``, rendered as a table.

Front matter: ``base_model`` (a Hub id, found by following the lineage back to the original model),
``base_model_relation``, ``license`` (carried over from the base model when known), ``library_name:
transformers`` and tags. The Hub knows four relations (``adapter``, ``merge``, ``quantized``,
``finetune``): a pruned and/or distilled model is declared ``finetune`` (its weights derive from the
base and were trained further) and tagged ``pruned``/``distillation``; an FP8 export of an unpruned
model is ``quantized``.

:func:`build_publish_folder` writes exactly the folder that :func:`publish` uploads (``--dry-run``
stops there). All input checks (checkpoint, repo id, token) happen before anything is written or sent.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import huggingface_hub  # HfApi and get_token looked up on the module per call: tests stub them there
from huggingface_hub import ModelCardData, constants, metadata_load, model_info
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import AutoConfig

from ..arch import UnsupportedModelError, count_parameters, family_of
from ..default_model import EMBEDDED
from ..outputs import check_output, write_checkpoint_atomically
from . import check_checkpoint, is_fp8_checkpoint
from ..errors import MinitronError

logger = logging.getLogger(__name__)

# Hub ids and licenses of the aliases resolve_model knows (the alias itself is not a Hub id).
KNOWN_BASES = {m.alias: (m.hub_id, m.license) for m in EMBEDDED.values()}
RELATIONS = ("finetune", "quantized", "adapter", "merge")
# Files of a checkpoint directory that are published; everything else (trainer state, pickles,
# checkpoint-* folders, hidden files) stays behind. README.md is replaced by the generated card.
PUBLISHED_SUFFIXES = (".json", ".safetensors", ".jinja", ".txt", ".model", ".tiktoken", ".png")
PUBLISHED_SUBDIRS = ("importance",)
_MAX_LINEAGE = 8


class HubError(MinitronError):
    """Input that cannot be published; the message names the field, the value and what is allowed."""


class MissingTokenError(HubError):
    """No Hugging Face token on this machine."""


# --------------------------------------------------------------------------------------------------
# Lineage: what produced this checkpoint, back to the original base model
# --------------------------------------------------------------------------------------------------

def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        logger.warning("%s is not valid JSON; ignored for the model card", path)
        return None


def _distill_record(model_dir: Path) -> dict | None:
    """distill.json in the directory, or in its parent when this directory is that run's final model."""
    rec = _read_json(model_dir / "distill.json")
    if rec is not None:
        return rec
    rec = _read_json(model_dir.parent / "distill.json")
    if rec is not None and rec.get("final_model") and Path(rec["final_model"]).resolve() == model_dir.resolve():
        return rec
    return None


def read_records(model_dir) -> dict:
    """The stage records of a checkpoint: ``pruning``, ``distill``, ``fp8`` (dicts or None).

    A distilled model's pruning record is its student's ``pruning.json``; an FP8 export carries copies
    of its source's records.
    """
    d = Path(model_dir)
    distill = _distill_record(d)
    pruning = _read_json(d / "pruning.json")
    if pruning is None and distill and distill.get("student"):
        pruning = _read_json(Path(distill["student"]) / "pruning.json")
    return {"pruning": pruning, "distill": distill, "fp8": _read_json(d / "fp8.json")}


def _is_hub_id(name: str) -> bool:
    if not name or Path(name).expanduser().exists() or name.startswith((".", "/", "~")):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return "/" in name


def _front_matter(path: Path) -> dict:
    if not (path / "README.md").is_file():
        return {}
    try:
        return metadata_load(path / "README.md") or {}
    except Exception as e:  # a malformed card: the license is then unknown, not an error
        logger.warning("could not read the front matter of %s (%s)", path / "README.md", e)
        return {}


def resolve_base(name) -> dict:
    """Follow a model name back to the original model: {"hub_id", "local_dir", "license"}.

    An alias maps to its Hub id; a Hub id is itself; a local directory is followed through its own
    records (pruning source, distillation teacher, FP8 source) or its card's ``base_model``.
    """
    out = {"hub_id": None, "local_dir": None, "license": None}
    seen = set()
    for _ in range(_MAX_LINEAGE):
        if name is None or str(name) in seen:
            break
        seen.add(str(name))
        name = str(name)
        if name in KNOWN_BASES:
            out["hub_id"], lic = KNOWN_BASES[name]
            out["license"] = out["license"] or lic
            break
        if _is_hub_id(name):
            out["hub_id"] = name
            break
        path = Path(name).expanduser()
        if not path.is_dir():
            break
        out["local_dir"] = out["local_dir"] or path
        meta = _front_matter(path)
        cfg = _read_json(path / "config.json") or {}
        out["license"] = out["license"] or meta.get("license") or cfg.get("license")
        rec = read_records(path)
        nxt = ((rec["pruning"] or {}).get("source") or (rec["distill"] or {}).get("teacher")
               or (rec["fp8"] or {}).get("source") or meta.get("base_model"))
        if isinstance(nxt, list):
            nxt = nxt[0] if nxt else None
        if nxt is None and (path / "SOURCE.json").is_file() and path.name in EMBEDDED:
            nxt = path.name  # a converted embedded model in the cache
        name = nxt
    return out


def _hub_license(hub_id: str) -> str | None:
    """The license on the base model's Hub card, or None when the Hub cannot be reached."""
    if constants.HF_HUB_OFFLINE:
        return None
    try:
        card = model_info(hub_id, timeout=10).card_data
        return getattr(card, "license", None) if card else None
    except Exception as e:  # offline, gated or missing: the card then says the license is unknown
        logger.warning("could not read the license of %s from the Hub (%s: %s)", hub_id, type(e).__name__, e)
        return None


def lineage(model_dir, base_model: str | None = None) -> dict:
    """Records plus the resolved base: {"records", "base"} (base from ``base_model`` when given)."""
    d = Path(model_dir)
    rec = read_records(d)
    if base_model is None:
        start = ((rec["pruning"] or {}).get("source") or (rec["distill"] or {}).get("teacher")
                 or (rec["fp8"] or {}).get("source"))
        if isinstance(start, str) and Path(start).expanduser().resolve() == d.resolve():
            start = None
    else:
        start = base_model
    base = resolve_base(start)
    if base_model is not None and _is_hub_id(base_model):
        base["hub_id"] = base_model
    if base["local_dir"] is None and rec["pruning"] and rec["pruning"].get("source_dir"):
        sd = Path(rec["pruning"]["source_dir"])
        base["local_dir"] = sd if sd.is_dir() else None
    return {"records": rec, "base": base}


# --------------------------------------------------------------------------------------------------
# Model card
# --------------------------------------------------------------------------------------------------

def _config(path: Path | None):
    if path is None or not (path / "config.json").is_file():
        return None
    try:
        return AutoConfig.from_pretrained(path)
    except Exception as e:
        logger.warning("could not read %s/config.json (%s)", path, e)
        return None


def _arch(config, counts: dict | None = None) -> dict:
    """Rows of the architecture table for one config (None values print as a dash)."""
    if counts is None and config is not None:
        try:
            counts = count_parameters(config)
        except (ValueError, AttributeError):
            counts = None
    g = (lambda k: getattr(config, k, None)) if config is not None else (lambda k: None)
    head_dim = g("head_dim") or (g("hidden_size") // g("num_attention_heads") if g("hidden_size") and
                                 g("num_attention_heads") else None)
    try:
        family = family_of(config, check=False) if config is not None else None
    except UnsupportedModelError:  # not a supported family: the generic rows only
        family = None
    moe = family is not None and family.is_moe
    rows = {
        "Parameters (total)": counts and counts["total"],
        **({"Active parameters (per token)": counts and counts.get("active")} if moe else {}),
        "Non-embedding parameters": counts and counts["non_embedding"],
        "Layers": g("num_hidden_layers"),
        "Hidden size": g("hidden_size"),
        **({"Experts (routed per token)": f"{family.num_experts(config)} ({g('num_experts_per_tok')})"}
           if moe else {}),
        ("Expert FFN size" if moe else "MLP (intermediate) size"): g(family.mlp_field if family else
                                                                     "intermediate_size"),
        "Attention heads": g("num_attention_heads"),
        "KV heads": g("num_key_value_heads"),
        "Head dim": head_dim,
        "Vocabulary": g("vocab_size"),
    }
    return rows


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return f"{v / 1e9:.2f}B" if v >= 1e9 else f"{v / 1e6:.1f}M" if v >= 1e6 else f"{v:,}"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def evaluation_table(evaluation: dict) -> str:
    """``{model_name: {metric: value}}`` -> a markdown table, one row per model, one column per metric
    (the union over models, in first-seen order; a missing value prints as a dash)."""
    if not isinstance(evaluation, dict) or not all(isinstance(v, dict) for v in evaluation.values()):
        raise HubError("evaluation must be a mapping {model_name: {metric: value}}; got "
                       f"{type(evaluation).__name__}")
    metrics: list[str] = []
    for scores in evaluation.values():
        metrics += [m for m in scores if m not in metrics]
    lines = ["| model | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for name, scores in evaluation.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(scores.get(m)) for m in metrics) + " |")
    return "\n".join(lines)


def _recipe(rec: dict) -> tuple[list[str], int]:
    """Markdown bullet lines describing each stage, and the tokens the recipe used in all."""
    lines, tokens = [], 0
    p = rec["pruning"]
    if p:
        imp = p.get("importance") or {}
        calib = (imp.get("calib_samples") or 0) * (imp.get("seq_len") or 0)
        target = ", ".join(f"{k}={v}" for k, v in (p.get("target") or {}).items()) or "—"
        line = (f"- **Pruning** of `{p.get('source')}` to {target}: importance `{imp.get('method')}` from "
                f"{imp.get('calib_samples')} calibration samples x {imp.get('seq_len')} tokens ({calib:,} tokens)")
        if imp.get("iterative_steps", 1) and imp.get("iterative_steps", 1) > 1:
            line += f", {imp['iterative_steps']} iterative steps"
        depth = p.get("depth")
        if depth:
            line += f"; depth: dropped layers {depth.get('dropped')} (metric `{depth.get('metric')}`)"
        data = (p.get("data") or {}).get("data")
        lines.append(line + (f"; data `{data}`" if data else ""))
        tokens += calib
    d = rec["distill"]
    if d:
        before = (d.get("before") or {}).get("before_student_lm_loss")
        after = (d.get("after") or {}).get("eval_student_lm_loss")
        teacher_loss = (d.get("after") or {}).get("eval_teacher_lm_loss")
        line = (f"- **Distillation** from `{d.get('teacher')}`: `{d.get('loss')}` loss, temperature "
                f"{d.get('temperature')}, {d.get('steps')} steps x {d.get('tokens_per_step')} tokens = "
                f"{(d.get('tokens') or 0):,} tokens (sequence length {d.get('seq_len')})")
        if before is not None and after is not None:
            line += f"; student validation LM loss {before:.3f} -> {after:.3f}"
            if teacher_loss is not None:
                line += f" (teacher {teacher_loss:.3f})"
        data = (d.get("data") or {}).get("data")
        lines.append(line + (f"; data `{data}`" if data else ""))
        tokens += d.get("tokens") or 0
    f = rec["fp8"]
    if f:
        calib = (f.get("calib_samples") or 0) * (f.get("seq_len") or 0)
        lines.append(f"- **FP8** post-training quantization with NVIDIA ModelOpt {f.get('modelopt_version')} "
                     f"(`{f.get('config')}`: per-tensor FP8 e4m3 weights and activations, `lm_head` excluded), "
                     f"calibrated on {f.get('calib_samples')} samples x {f.get('seq_len')} tokens ({calib:,} tokens)")
        tokens += calib
    return lines, tokens


def model_card_text(model_dir, base_model: str | None = None, evaluation: dict | None = None,
                    license: str | None = None, base_model_relation: str | None = None,
                    repo_id: str | None = None, title: str | None = None) -> str:
    """The README.md (front matter + body) for a checkpoint directory."""
    d = check_checkpoint(model_dir)
    if base_model_relation is not None and base_model_relation not in RELATIONS:
        raise HubError(f"base_model_relation={base_model_relation!r} is not one of {', '.join(RELATIONS)} "
                       "(the relations the Hub knows)")
    lin = lineage(d, base_model)
    rec, base = lin["records"], lin["base"]
    fp8 = is_fp8_checkpoint(d)
    if evaluation is None:
        evaluation = _read_json(d / "evaluation.json")

    hub_id = base["hub_id"]
    lic = license or base["license"]
    if lic is None and hub_id:
        lic = _hub_license(hub_id)
    if lic is None:
        logger.warning("license of the base model unknown: the card has none (pass --license)")
    if hub_id is None:
        logger.warning("base model unknown (no Hub id in the lineage): the card has no base_model "
                       "(pass --base-model ORG/NAME)")
    relation = base_model_relation or ("quantized" if fp8 and not (rec["pruning"] or rec["distill"]) else "finetune")
    tags = ["minitron"] + (["pruned"] if rec["pruning"] else []) + (["distillation"] if rec["distill"] else []) \
        + (["fp8", "modelopt"] if fp8 else [])
    data = ModelCardData(base_model=hub_id, license=lic, library_name="transformers", tags=tags,
                         pipeline_tag="text-generation")
    if hub_id:
        data.base_model_relation = relation

    title = title or (repo_id.split("/")[-1] if repo_id else d.resolve().name)
    stages = [s for s, k in (("pruned", "pruning"), ("distilled", "distill")) if rec[k]] + (["FP8-quantized"] if fp8 else [])
    what = " and ".join(stages) or "derived"
    body = [f"# {title}", "",
            f"A {what} version of " + (f"[{hub_id}](https://huggingface.co/{hub_id})" if hub_id else "its base model")
            + ", made with minitron-hf (NVIDIA's Minitron recipe: pruning and knowledge "
            "distillation, arXiv 2407.14679 and 2408.11796, on vanilla Hugging Face checkpoints).", ""]

    this = _arch(_config(d))
    base_cfg = _config(base["local_dir"])
    base_counts = (rec["pruning"] or {}).get("parameters", {}).get("before") if base_cfg is None else None
    base_row = _arch(base_cfg, base_counts)
    body += ["## Architecture", "", f"| | base ({hub_id or 'unknown'}) | this model |", "|---|---|---|"]
    body += [f"| {k} | {_fmt(base_row.get(k))} | {_fmt(this[k])} |" for k in this]
    body.append("")

    lines, tokens = _recipe(rec)
    if lines:
        body += ["## Recipe", ""] + lines + ["", f"Tokens used in all: {tokens:,}.", ""]
    if evaluation:
        body += ["## Evaluation", "", evaluation_table(evaluation), ""]

    body += ["## Usage", ""]
    if fp8:
        body += ["ModelOpt FP8 checkpoint (`hf_quant_config.json`): serve it with vLLM or TensorRT-LLM (>= 1.2), "
                 "e.g. `vllm serve " + (repo_id or str(d)) + "`. Plain transformers cannot run this format.", ""]
    else:
        body += ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                 f'model = AutoModelForCausalLM.from_pretrained("{repo_id or d}")',
                 f'tokenizer = AutoTokenizer.from_pretrained("{repo_id or d}")', "```", ""]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)


def write_model_card(model_dir, out_path, base_model: str | None = None, evaluation: dict | None = None,
                     **kw) -> Path:
    """Write the model card of ``model_dir`` to ``out_path`` (a README.md). ``evaluation`` defaults to
    ``model_dir/evaluation.json`` when present; extra keywords go to :func:`model_card_text`."""
    text = model_card_text(model_dir, base_model=base_model, evaluation=evaluation, **kw)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return out


# --------------------------------------------------------------------------------------------------
# The folder to upload, and the upload
# --------------------------------------------------------------------------------------------------

def publish_files(model_dir) -> list[Path]:
    """Paths (relative to ``model_dir``) that are published."""
    d = Path(model_dir)
    files = [f.relative_to(d) for f in sorted(d.iterdir())
             if f.is_file() and not f.name.startswith(".") and f.suffix in PUBLISHED_SUFFIXES]
    for sub in PUBLISHED_SUBDIRS:
        if (d / sub).is_dir():
            files += [f.relative_to(d) for f in sorted((d / sub).rglob("*"))
                      if f.is_file() and not f.name.startswith(".") and f.suffix in PUBLISHED_SUFFIXES]
    return files


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # weights can be many GB: a hard link costs nothing on the same filesystem
    except OSError:
        shutil.copy2(src, dst)


def build_publish_folder(model_dir, out_dir, base_model: str | None = None, evaluation: dict | None = None,
                         license: str | None = None, base_model_relation: str | None = None,
                         repo_id: str | None = None, title: str | None = None) -> Path:
    """Write the folder that is uploaded: the checkpoint's published files and the generated README.md.

    Written atomically (a temporary sibling renamed into place); an existing ``out_dir`` is replaced.
    """
    d = check_checkpoint(model_dir)
    out = Path(out_dir)
    if out.resolve() == d.resolve() or d.resolve() in out.resolve().parents or out.resolve() in d.resolve().parents:
        raise HubError(f"dry_run={str(out_dir)!r} must not be the checkpoint directory, inside it, or contain it")
    card = model_card_text(d, base_model=base_model, evaluation=evaluation, license=license,
                           base_model_relation=base_model_relation, repo_id=repo_id, title=title)
    files = publish_files(d)
    if (d / "README.md").exists():
        logger.info("%s/README.md is replaced by the generated model card", d)

    def write(tmp: Path) -> None:
        for rel in files:
            _link_or_copy(d / rel, tmp / rel)
        (tmp / "README.md").write_text(card)

    write_checkpoint_atomically(out, write)
    logger.info("publish folder %s: %d files + README.md", out, len(files))
    return out


def check_repo_id(repo_id: str) -> str:
    """``ORG/NAME`` checked with huggingface_hub's own validator."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise HubError(f"repo_id={repo_id!r} is not a valid Hub repository id: {e} "
                       "(allowed: 'ORG/NAME' of letters, digits, '-', '_', '.', at most 96 characters)") from None
    if "/" not in repo_id:
        raise HubError(f"repo_id={repo_id!r} has no namespace; expected 'ORG/NAME' (your user name or an organization)")
    return repo_id


def check_token(token: str | None = None) -> str:
    """The token to upload with: ``token``, ``$HF_TOKEN`` or the one saved by ``hf auth login``."""
    token = token or huggingface_hub.get_token()
    if not token:
        raise MissingTokenError("no Hugging Face token found: run `hf auth login` (or set HF_TOKEN) with a token "
                                "that has write access, then publish again")
    return token


def publish(model_dir, repo_id: str, private: bool = False, dry_run=None, base_model: str | None = None,
            evaluation: dict | None = None, license: str | None = None, base_model_relation: str | None = None,
            commit_message: str | None = None, token: str | None = None, api=None, overwrite: bool = False) -> dict:
    """Upload a checkpoint with its model card to ``repo_id`` (created if missing).

    ``dry_run=DIR`` writes the folder that would be uploaded and sends nothing (no token needed). DIR must be
    new or empty (``overwrite`` replaces a non-empty one) and may never be, contain or lie inside the checkpoint.
    Checks the checkpoint, the repo id and (unless dry run) the token before writing or sending anything.
    """
    d = check_checkpoint(model_dir)
    check_repo_id(repo_id)
    if base_model is not None and not _is_hub_id(base_model):
        raise HubError(f"base_model={base_model!r} is not a Hub model id; expected 'ORG/NAME' (e.g. "
                       f"meta-llama/Llama-3.1-8B), the model this checkpoint was made from")
    if dry_run is not None:
        check_output(dry_run, "dry_run", sources=[d], overwrite=overwrite, allow_empty=True)
    kw = dict(base_model=base_model, evaluation=evaluation, license=license,
              base_model_relation=base_model_relation, repo_id=repo_id)
    if dry_run is not None:
        folder = build_publish_folder(d, dry_run, **kw)
        logger.info("dry run: %s holds what would be uploaded to %s", folder, repo_id)
        return {"dry_run": True, "folder": str(folder), "repo_id": repo_id,
                "files": sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())}
    token = check_token(token)
    api = api or huggingface_hub.HfApi(token=token)
    try:  # beside the checkpoint: same filesystem, so the weights are hard-linked, not copied
        staging = Path(tempfile.mkdtemp(prefix=f".publish-{d.name}-", dir=d.parent))
    except OSError:  # a read-only parent: copy into the system temp directory instead
        staging = Path(tempfile.mkdtemp(prefix=f".publish-{d.name}-"))
    try:
        folder = build_publish_folder(d, staging / "upload", **kw)
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        try:
            url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                                     commit_message=commit_message or f"Upload {d.name} with minitron-hf")
        except HfHubHTTPError as e:
            status = getattr(getattr(e, "response", None), "status_code", None)
            if status in (401, 403):
                raise MissingTokenError(f"the Hub refused the token for repo_id={repo_id!r} (HTTP {status}): run "
                                        "`hf auth login` (or set HF_TOKEN) with a token that has write access "
                                        "to that namespace") from e
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("published %s to %s (%d files)", d, url, len(files))
    return {"dry_run": False, "repo_id": repo_id, "url": str(url), "files": files,
            "commit": getattr(info, "oid", None)}
