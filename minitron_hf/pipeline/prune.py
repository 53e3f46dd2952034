"""Stage ``prune``: trim the (corrected) teacher to ``prune.target`` with the importance stage's scores (arXiv
2407.14679 sec. 2, arXiv 2408.11796 sec. 2.2); the section takes the options of ``minitron prune``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoConfig

from ..arch import count_parameters, family_of
from ..loading import resolve_model
from ..pruning import prune as pruning
from ..pruning.config import PruneConfig, check_inputs
from .base import PipelineError, Run, Stage, StageResult, prepared_data, read_result
from .pruning_options import prune_options


@dataclass
class PruneResult(StageResult):
    model: str | None = None  # the pruned checkpoint
    parameters: dict | None = None  # run_prune's parameter counts


def _arch(path) -> dict | None:
    try:
        c = AutoConfig.from_pretrained(resolve_model(path))
    except Exception:  # not there yet
        return None
    n, family = count_parameters(c), family_of(c, check=False)
    moe = {"active": n["active"], "experts": family.num_experts(c)} if family.is_moe else {}
    return {"total": n["total"], "non_embedding": n["non_embedding"], "layers": c.num_hidden_layers,
            "hidden": c.hidden_size, "mlp": getattr(c, family.mlp_field), "heads": c.num_attention_heads,
            "kv_heads": c.num_key_value_heads, **moe}


class PruneStage(Stage):
    name = "prune"
    help = "pruning options (minitron prune), target required"
    reserved = ("model", "output", "scores", "overwrite")
    inputs = ("data", "correct", "importance")
    parallel = True
    always = True
    result = PruneResult
    section = (PruneConfig,)

    def options(self, run: Run) -> PruneConfig:
        return prune_options(run)

    def check(self, run: Run, where: str, check_model: bool = True) -> None:
        if not run.sections.get(self.name) or not run.sections[self.name].get("target"):
            raise PipelineError(f"{where}: section 'prune' with a 'target' is required, e.g. prune: {{target: "
                                f"{{hidden_size: 432, intermediate_size: 768}}}}")
        cfg = self.options(run)
        cfg.model = run.cfg.teacher  # a corrected teacher keeps the source's architecture
        if check_model:
            check_inputs(cfg)

    def run(self, run: Run, resume: bool) -> PruneResult:
        cfg = self.options(run)
        imp = read_result(run, "importance")
        if imp is not None and imp.scores and (Path(imp.scores) / "importance.safetensors").exists():
            cfg.scores = imp.scores
        if imp is not None and imp.drop_layers is not None:  # the depth scan's layers instead of a layer count
            cfg.target = dataclasses.replace(cfg.target, drop_layers=sorted(set(imp.drop_layers)),
                                             num_hidden_layers=None)
        # looked up when called, so that a test's replacement of pruning.prune.run_prune is the one that runs
        rec = pruning.run_prune(prepared_data(run), cfg)
        return PruneResult(tokens=0, model=cfg.output, parameters=rec["parameters"])

    def report(self, run: Run, result: PruneResult | None) -> list[str]:
        teacher = _arch(run.cfg.teacher)
        if not teacher:
            return []
        student = _arch(run.stage_dir(self.name) / "model") if result is not None else None
        L = ["## Architecture", "", "| | teacher | student |", "|---|---|---|"]
        for k, label in (("total", "parameters"), ("non_embedding", "non-embedding parameters"), ("layers", "layers"),
                         ("hidden", "hidden size"), ("mlp", "MLP size"), ("heads", "attention heads"),
                         ("kv_heads", "KV heads")):
            fmt = (lambda v: f"{v / 1e6:.1f}M") if k in ("total", "non_embedding") else str
            L.append(f"| {label} | {fmt(teacher[k])} | {fmt(student[k]) if student else '(pending)'} |")
        return L + [""]


STAGE = PruneStage()
