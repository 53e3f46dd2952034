"""Layer importance for depth pruning (arXiv 2408.11796 sec. 2.2, Fig. 7).

Two saliencies of a contiguous block of ``k`` layers starting at layer ``s``:

- ``lm-loss``: the LM validation loss of the model with layers ``s .. s+k-1`` removed (the paper's
  Fig. 7). Layers are skipped on the in-memory model (:func:`dropped_layers`), nothing is re-saved.
- ``block-influence``: ``1 - cos(h_s, h_{s+k})`` between the block's input and output hidden states
  (ShortGPT's Block Influence), from forward hooks on the decoder layers, averaged over tokens. One
  forward pass scores every block; only the last ``k + 1`` boundary states of a batch are held.
- ``task:<lm-eval task>``: downstream accuracy after removing the block, through LM Evaluation Harness
  on the in-memory model (the paper's Fig. 8: Winogrande 5-shot). Also scored: every single layer's
  removal, and the non-contiguous choice (the ``k`` layers whose single removal hurts least) for
  comparison. Highest accuracy wins.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..arch import family_of
from ..distributed import all_reduce_sum
from ..errors import MinitronError
from ..eval.harness import evaluate_model, score, task_manager, wrap_model
from ..lm_loss import lm_loss

logger = logging.getLogger(__name__)

DEPTH_METRICS = ("lm-loss", "block-influence")
TASK_PREFIX = "task:"


def is_task_metric(metric: str) -> bool:
    return isinstance(metric, str) and metric.startswith(TASK_PREFIX) and len(metric) > len(TASK_PREFIX)


def check_metric(metric: str, field_name: str = "depth_metric") -> str:
    if metric in DEPTH_METRICS or is_task_metric(metric):
        return metric
    raise DepthError(f"{field_name}={metric!r} is not one of {', '.join(DEPTH_METRICS)} or task:<lm-eval task> "
                     f"(e.g. task:winogrande, task:pydoc_continuation)")


class DepthError(MinitronError):
    """Bad depth-pruning input."""


@contextlib.contextmanager
def dropped_layers(model, drop):
    """Temporarily remove decoder layers ``drop`` from an in-memory model (no copy of weights).

    Forward passes and ``generate`` (KV cache included) see a model of ``len(keep)`` layers.
    """
    base = model.base_model
    config = model.config
    family = family_of(config)
    layers = base.layers
    drop = set(int(i) for i in drop)
    keep = [i for i in range(len(layers)) if i not in drop]
    if not keep:
        raise DepthError("drop_layers would remove every layer; keep at least one")
    saved = {"num_hidden_layers": config.num_hidden_layers}
    for f in family.per_layer_fields:
        if getattr(config, f, None) is not None:
            saved[f] = getattr(config, f)
    # attention modules index the KV cache by layer_idx: renumber the kept ones while skipping
    idx_owners = [(m, m.layer_idx) for m in base.modules() if isinstance(getattr(m, "layer_idx", None), int)]
    try:
        for new_i, old_i in enumerate(keep):
            for m in layers[old_i].modules():
                if isinstance(getattr(m, "layer_idx", None), int):
                    m.layer_idx = new_i
        base.layers = torch.nn.ModuleList([layers[i] for i in keep])
        config.num_hidden_layers = len(keep)
        for f in family.per_layer_fields:
            if f in saved:
                setattr(config, f, [saved[f][i] for i in keep])
        yield keep
    finally:
        base.layers = layers
        for m, i in idx_owners:
            m.layer_idx = i
        for k, v in saved.items():
            setattr(config, k, v)


@dataclass
class LayerImportance:
    block_size: int
    baseline_loss: float | None = None
    lm_loss: list[float] = field(default_factory=list)  # index = block start
    block_influence: list[float] = field(default_factory=list)  # index = block start
    layer_influence: list[float] = field(default_factory=list)  # single layers (k = 1)
    task: str | None = None  # lm-eval task of the accuracy scan
    task_metric: str = "acc"
    baseline_accuracy: float | None = None
    task_accuracy: list[float] = field(default_factory=list)  # index = block start
    single_layer_accuracy: list[float] = field(default_factory=list)  # index = the one removed layer
    noncontiguous: dict | None = None  # {"layers": the k least harmful single layers, "accuracy": ...}

    def best_block(self, metric: str = "lm-loss") -> list[int]:
        """The contiguous block whose removal hurts least under ``metric``."""
        check_metric(metric)
        if is_task_metric(metric):
            if metric[len(TASK_PREFIX):] != self.task or not self.task_accuracy:
                raise DepthError(f"no {metric} scores were computed")
            s = max(range(len(self.task_accuracy)), key=self.task_accuracy.__getitem__)
            return list(range(s, s + self.block_size))
        scores = self.lm_loss if metric == "lm-loss" else self.block_influence
        if not scores:
            raise DepthError(f"no {metric} scores were computed")
        s = min(range(len(scores)), key=scores.__getitem__)
        return list(range(s, s + self.block_size))

    def save(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        data = {
            "block_size": self.block_size,
            "baseline_loss": self.baseline_loss,
            "blocks": [
                {"start": s, "layers": list(range(s, s + self.block_size)),
                 "lm_loss": self.lm_loss[s] if s < len(self.lm_loss) else None,
                 "block_influence": self.block_influence[s] if s < len(self.block_influence) else None,
                 "task_accuracy": self.task_accuracy[s] if s < len(self.task_accuracy) else None}
                for s in range(max(len(self.lm_loss), len(self.block_influence), len(self.task_accuracy)))
            ],
            "layer_influence": self.layer_influence,
        }
        if self.task:
            data["task"] = {"name": self.task, "metric": self.task_metric, "baseline": self.baseline_accuracy,
                            "single_layer_accuracy": self.single_layer_accuracy,
                            "best_contiguous": self.best_block(TASK_PREFIX + self.task),
                            "best_contiguous_accuracy": max(self.task_accuracy),
                            "noncontiguous": self.noncontiguous}
        (out / "layer_importance.json").write_text(json.dumps(data, indent=2))
        self.plot(out / "layer_importance.png")
        return out

    def plot(self, path: str | Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        if self.task_accuracy:
            return self._plot_accuracy(path)
        fig, ax = plt.subplots(figsize=(8, 4.5))
        if self.lm_loss:
            ax.plot(range(len(self.lm_loss)), self.lm_loss, "o-", label=f"LM loss, {self.block_size} layers removed")
            if self.baseline_loss is not None:
                ax.axhline(self.baseline_loss, color="gray", ls="--", label="no layer removed")
            ax.set_ylabel("validation LM loss")
        ax.set_xlabel("first removed layer")
        if self.block_influence:
            ax2 = ax.twinx() if self.lm_loss else ax
            ax2.plot(range(len(self.block_influence)), self.block_influence, "s:", color="C1", label="block influence")
            ax2.set_ylabel("block influence (1 - cos)")
            ax2.legend(loc="upper center")
        ax.legend(loc="upper right")
        ax.set_title(f"Contiguous removal of {self.block_size} layers")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return Path(path)


    def _plot_accuracy(self, path) -> Path:
        """Fig. 8 analog: accuracy after removing each contiguous block, vs the non-contiguous choice."""
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 4.5))
        ax.plot(range(len(self.task_accuracy)), self.task_accuracy, "o-",
                label=f"contiguous: layers s .. s+{self.block_size - 1} removed")
        if self.baseline_accuracy is not None:
            ax.axhline(self.baseline_accuracy, color="gray", ls="--", label="no layer removed")
        if self.noncontiguous:
            ax.axhline(self.noncontiguous["accuracy"], color="C3", ls=":",
                       label=f"non-contiguous: the {self.block_size} least harmful single layers")
        ax.set_xlabel("first removed layer")
        ax.set_ylabel(f"{self.task} {self.task_metric}")
        ax.set_title(f"Downstream accuracy after removing {self.block_size} layers")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return Path(path)


def block_task_accuracy(model, tokenizer, task: str, block_size: int, *, metric: str = "acc",
                        num_fewshot: int | None = None, limit: int | float | None = None, batch_size: int = 8,
                        include_path=None, noncontiguous: bool = True, progress: bool = True) -> dict:
    """Accuracy on an lm-eval task with each contiguous block of ``block_size`` layers skipped in memory
    (and, with ``noncontiguous``, each single layer, then the ``block_size`` least harmful ones together)."""
    L = model.config.num_hidden_layers
    if not 1 <= block_size < L:
        raise DepthError(f"block_size={block_size} must be between 1 and num_hidden_layers - 1 = {L - 1}")
    manager = task_manager(include_path)
    lm = wrap_model(model, tokenizer, batch_size)

    def acc() -> float:
        return score(evaluate_model(model, tokenizer, [task], num_fewshot=num_fewshot, limit=limit, manager=manager,
                                    lm=lm), task, metric)

    out = {"baseline": acc(), "blocks": [], "single": [], "noncontiguous": None}
    for s in tqdm(range(L - block_size + 1), desc=f"{task}: drop {block_size} layers", disable=not progress):
        with dropped_layers(model, range(s, s + block_size)):
            out["blocks"].append(acc())
    if noncontiguous:
        for i in tqdm(range(L), desc=f"{task}: drop 1 layer", disable=not progress):
            with dropped_layers(model, [i]):
                out["single"].append(acc())
        least = sorted(sorted(range(L), key=lambda i: -out["single"][i])[:block_size])
        with dropped_layers(model, least):
            out["noncontiguous"] = {"layers": least, "accuracy": acc()}
    return out


def block_lm_losses(model, blocks: torch.Tensor, block_size: int, batch_size: int = 8, progress: bool = True):
    """Validation loss after removing each contiguous block of ``block_size`` layers (``blocks``: this process's shard
    under data parallelism; every process calls it)."""
    L = model.config.num_hidden_layers
    if not 1 <= block_size < L:
        raise DepthError(f"block_size={block_size} must be between 1 and num_hidden_layers - 1 = {L - 1}")
    baseline = lm_loss(model, blocks, batch_size, reduce=True)
    losses = []
    for s in tqdm(range(L - block_size + 1), desc=f"drop {block_size} layers", disable=not progress):
        with dropped_layers(model, range(s, s + block_size)):
            losses.append(lm_loss(model, blocks, batch_size, reduce=True))
    return baseline, losses


@torch.no_grad()
def block_influence(model, blocks: torch.Tensor, block_size: int, batch_size: int = 8, progress: bool = True):
    """(per-block 1 - cos for blocks of ``block_size``, per-layer 1 - cos) from one pass of hooks."""
    layers = model.base_model.layers
    L = len(layers)
    if not 1 <= block_size < L:
        raise DepthError(f"block_size={block_size} must be between 1 and num_hidden_layers - 1 = {L - 1}")
    device = next(model.parameters()).device
    block_sum = torch.zeros(L - block_size + 1, dtype=torch.float64)
    layer_sum = torch.zeros(L, dtype=torch.float64)
    n_tok = 0
    bounds: dict[int, torch.Tensor] = {}  # boundary index -> hidden state (input of that layer)

    def one_minus_cos(a, b):
        return (1 - torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)).sum().item()

    def pre_hook(i):
        def hook(module, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            bounds[i] = h.detach()
        return hook

    def post_hook(i):
        def hook(module, args, out):
            out = out[0] if isinstance(out, tuple) else out
            j = i + 1  # boundary after layer i
            layer_sum[i] += one_minus_cos(bounds[i], out)
            s = j - block_size
            if s >= 0:
                block_sum[s] += one_minus_cos(bounds.pop(s), out)  # boundary s is not needed again
        return hook

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(pre_hook(i), with_kwargs=True))
        handles.append(layer.register_forward_hook(post_hook(i)))
    try:
        for b in tqdm(range(0, len(blocks), batch_size), desc="block influence", disable=not progress):
            ids = blocks[b : b + batch_size].to(device)
            bounds.clear()
            model.base_model(input_ids=ids, use_cache=False)
            n_tok += ids.numel()
    finally:
        for h in handles:
            h.remove()
        bounds.clear()
    sums = all_reduce_sum(torch.cat([block_sum, layer_sum, torch.tensor([float(n_tok)], dtype=torch.float64)]))
    block_sum, layer_sum, n_tok = sums[: len(block_sum)], sums[len(block_sum): -1], sums[-1].item()
    return (block_sum / n_tok).tolist(), (layer_sum / n_tok).tolist()


def layer_importance(model, blocks: torch.Tensor | None, block_size: int, metrics=DEPTH_METRICS, batch_size: int = 8,
                     progress: bool = True, tokenizer=None, task_options: dict | None = None) -> LayerImportance:
    """Scores of every contiguous block of ``block_size`` layers under ``metrics``; a ``task:`` metric
    needs ``tokenizer`` and takes ``task_options`` (:func:`block_task_accuracy`'s keywords)."""
    for m in metrics:
        check_metric(m)
    result = LayerImportance(block_size=block_size)
    for m in metrics:
        if is_task_metric(m):
            if tokenizer is None:
                raise DepthError(f"depth_metric={m!r} needs the model's tokenizer")
            opts = dict(task_options or {})
            result.task, result.task_metric = m[len(TASK_PREFIX):], opts.get("metric", "acc")
            r = block_task_accuracy(model, tokenizer, result.task, block_size, batch_size=batch_size,
                                    progress=progress, **opts)
            result.baseline_accuracy, result.task_accuracy = r["baseline"], r["blocks"]
            result.single_layer_accuracy, result.noncontiguous = r["single"], r["noncontiguous"]
    if "block-influence" in metrics:
        result.block_influence, result.layer_influence = block_influence(model, blocks, block_size, batch_size, progress)
    if "lm-loss" in metrics:
        result.baseline_loss, result.lm_loss = block_lm_losses(model, blocks, block_size, batch_size, progress)
    return result
