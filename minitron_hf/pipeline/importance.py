"""Stage ``importance``: activation importance of heads, neurons and channels (width) and the depth scan (arXiv
2407.14679 sec. 2.2-2.3, arXiv 2408.11796 sec. 2.2). It takes the ``prune:`` section's options and is cached on the
scoring ones only, so a new width target reuses the scores."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..distributed import process_state
from .base import Run, Stage, StageResult, prepared_data, rel


@dataclass
class ImportanceResult(StageResult):
    scores: str | None = None  # the scores folder (importance.safetensors, layer importance), None = nothing scored
    drop_layers: list[int] | None = None  # the depth scan's choice
    depth_metric: str | None = None
    task_evaluations: int | None = None  # lm-eval runs of a task-metric depth scan
    note: str | None = None


def _prune_options(run: Run):
    from .prune import STAGE as PRUNE

    return PRUNE.options(run)


class ImportanceStage(Stage):
    name = "importance"
    always = True
    inputs = ("data", "correct")
    parallel = True
    result = ImportanceResult

    def check(self, run: Run, where: str, check_model: bool = True) -> None:
        pass  # the prune stage checks the options both use

    def options(self, run: Run):
        return _prune_options(run)

    def key(self, run: Run) -> dict:
        """The prune options marked as scoring ones (:meth:`~minitron_hf.pruning.prune.PruneConfig.scoring_fields`)
        and which kinds of scores the target needs."""
        from ..pruning.prune import PruneConfig

        sec = run.sections["prune"]
        target = {k: v for k, v in sec["target"].items() if v is not None}
        from ..pruning.trim import WIDTH_FIELDS

        width = any(k in target for k in WIDTH_FIELDS) and sec.get("importance", "l2_mean") != "random"
        depth = None if "drop_layers" in target else target.get("num_hidden_layers")
        return {**{k: sec[k] for k in PruneConfig.scoring_fields() if k in sec}, "width_scores": width,
                "depth_to_layers": depth}

    def plan(self, run: Run):
        """(PruneConfig, source dir, width scores needed?, depth block size)."""
        from transformers import AutoConfig

        from ..loading import resolve_model
        from ..pruning.trim import PruneTarget, resolve_target

        cfg = self.options(run)
        src = resolve_model(cfg.model)
        config = AutoConfig.from_pretrained(src)
        target = PruneTarget.from_dict(cfg.target)
        new_config, drop = resolve_target(config, target)
        width = bool(target.width_fields()) and cfg.importance != "random"
        k = config.num_hidden_layers - new_config["num_hidden_layers"] if drop is None else 0
        return cfg, src, width, max(k, 0)

    def run(self, run: Run, resume: bool) -> ImportanceResult:
        from ..loading import load_tokenizer
        from ..outputs import write_checkpoint_atomically
        from ..pruning.importance import plot_importance
        from ..pruning.prune import compute_scores

        cfg, src, width, k = self.plan(run)
        out = run.stage_dir(self.name) / "scores"
        if not width and not k:
            return ImportanceResult(tokens=0, note="nothing to score (random importance or explicit drop_layers)")
        imp, li, _ = compute_scores(prepared_data(run), cfg, src, load_tokenizer(src), width, k)
        res = ImportanceResult(tokens=cfg.calib_samples * cfg.seq_len if width else 0, scores=str(out))
        if li is not None:
            res.drop_layers = li.best_block(cfg.depth_metric)
            res.depth_metric = cfg.depth_metric
            if li.task:  # lm-eval runs: the scan's cost is counted in evaluations, not in our tokens
                res.task_evaluations = (1 + len(li.task_accuracy) + len(li.single_layer_accuracy)
                                        + bool(li.noncontiguous))
            else:
                n_blocks = len(li.lm_loss or li.block_influence)
                res.tokens += cfg.val_samples * cfg.seq_len * (n_blocks + 1)
        if not process_state().is_main_process:
            return res

        def write(tmp: Path) -> None:
            if imp is not None:
                imp.save(tmp)
                plot_importance(imp, tmp / "importance.png", title=f"{run.cfg.teacher} ({cfg.importance})")
            if li is not None:
                li.save(tmp)

        write_checkpoint_atomically(out, write)
        return res

    def report(self, run: Run, result: ImportanceResult | None) -> list[str]:
        d = run.stage_dir(self.name) / "scores"
        plots = [p for p in (d / "importance.png", d / "layer_importance.png") if p.exists()]
        if not plots:
            return []
        L = ["## Importance", ""]
        if result is not None and result.drop_layers is not None:
            L += [f"Depth: dropped layers {result.drop_layers} (metric {result.depth_metric}).", ""]
        return L + [f"![{p.stem}]({rel(run, p)})" for p in plots] + [""]


STAGE = ImportanceStage()
