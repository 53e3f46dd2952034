"""Stage ``importance``: activation importance of heads, neurons and channels (width) and the depth scan (arXiv
2407.14679 sec. 2.2-2.3, arXiv 2408.11796 sec. 2.2). It takes the ``prune:`` section's options and is cached on the
scoring ones only, so a new width target reuses the scores."""

from __future__ import annotations

from dataclasses import dataclass

from ..distributed import process_state
from ..loading import load_tokenizer
from ..outputs import write_checkpoint_atomically
from ..pruning.config import PruneConfig, ResolvedTarget, resolve
from ..pruning.scoring import compute_scores, write_scores
from ..pruning.trim import PruneTarget
from .base import Run, Stage, StageResult, prepared_data, rel
from .pruning_options import prune_options


@dataclass
class ImportanceResult(StageResult):
    scores: str | None = None  # the scores folder (importance.safetensors, layer importance), None = nothing scored
    drop_layers: list[int] | None = None  # the depth scan's choice
    depth_metric: str | None = None
    task_evaluations: int | None = None  # lm-eval runs of a task-metric depth scan
    note: str | None = None


class ImportanceStage(Stage):
    name = "importance"
    always = True
    inputs = ("data", "correct")
    parallel = True
    result = ImportanceResult

    def check(self, run: Run, where: str, check_model: bool = True) -> None:
        pass  # the prune stage checks the options both use

    def options(self, run: Run) -> PruneConfig:
        return prune_options(run)

    def key(self, run: Run) -> dict:
        """The prune options marked as scoring ones (:meth:`~minitron_hf.pruning.config.PruneConfig.scoring_fields`,
        as the section gives them) and which kinds of scores the target needs."""
        sec = run.sections["prune"]
        target = PruneTarget.from_dict(sec.get("target"))
        width = bool(target.width_fields()) and sec.get("importance", "l2_mean") != "random"
        depth = None if target.drop_layers is not None else target.num_hidden_layers
        return {**{k: sec[k] for k in PruneConfig.scoring_fields() if k in sec}, "width_scores": width,
                "depth_to_layers": depth}

    def plan(self, run: Run) -> tuple[PruneConfig, ResolvedTarget, bool]:
        """(the prune options, their target resolved against the (corrected) teacher, width scores needed?); the
        depth scan removes ``plan.depth_block`` layers."""
        cfg = self.options(run)
        target = resolve(cfg)
        return cfg, target, bool(target.width) and cfg.importance != "random"

    def run(self, run: Run, resume: bool) -> ImportanceResult:
        cfg, target, width = self.plan(run)
        out = run.stage_dir(self.name) / "scores"
        if not width and not target.depth_block:
            return ImportanceResult(tokens=0, note="nothing to score (random importance or explicit drop_layers)")
        imp, li, _ = compute_scores(prepared_data(run), cfg, target, load_tokenizer(target.source), width)
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
        title = f"{run.cfg.teacher} ({cfg.importance})"
        write_checkpoint_atomically(out, lambda tmp: write_scores(tmp, imp, li, title))
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
