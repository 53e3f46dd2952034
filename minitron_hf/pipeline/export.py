"""Stage ``export``: the final student as the vanilla HF folder ``minitron publish`` would upload (weights,
tokenizer, a model card with the architecture, recipe and evaluation) and, if asked, a ModelOpt FP8 checkpoint for
TensorRT-LLM and vLLM; only with an ``export:`` section."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..export.fp8 import FP8Config, export_fp8
from ..export.hub import build_publish_folder
from .base import PipelineError, Run, Stage, StageResult, final_student, prepared_data, read_done, read_result

FORMATS = ("hf", "fp8")


@dataclass
class ExportConfig:
    """Options of the export stage."""

    formats: list[str] = field(default_factory=lambda: ["hf"], metadata={"help": "hf: the final student as a "
                               "vanilla safetensors folder with a model card (what `minitron publish` uploads); "
                               "fp8: a ModelOpt FP8 checkpoint for TensorRT-LLM and vLLM (GPU)"})
    fp8_calib_samples: int = field(default=64, metadata={"help": "calibration sequences of the FP8 export"})


@dataclass
class ExportResult(StageResult):
    artifacts: dict[str, str] = field(default_factory=dict)  # {format: folder}
    fp8: dict | None = None  # the FP8 export's timing


class ExportStage(Stage):
    name = "export"
    help = "export options (formats); absent = no export"
    section = (ExportConfig,)
    inputs = ("prune", "distill", "align", "evaluate")
    result = ExportResult

    def options(self, run: Run) -> ExportConfig:
        return super().options(run)[0]

    def check(self, run: Run, where: str, check_model: bool = True) -> None:
        ex = self.options(run)
        bad = [f for f in ex.formats if f not in FORMATS]
        if bad or not ex.formats:
            raise PipelineError(f"{where}: section 'export': formats={ex.formats!r}; allowed: {', '.join(FORMATS)}")
        if ex.fp8_calib_samples < 1:
            raise PipelineError(f"{where}: section 'export': fp8_calib_samples={ex.fp8_calib_samples} must be >= 1")

    def run(self, run: Run, resume: bool) -> ExportResult:
        ex = self.options(run)
        src = final_student(run)
        ev = read_result(run, "evaluate")
        table = {name: {"val loss": r["val_loss"], "perplexity": r["perplexity"]}
                 for name, r in (ev.models if ev is not None else {}).items()}
        res = ExportResult(tokens=0)
        if "hf" in ex.formats:
            dest = run.stage_dir(self.name) / "hf"
            title = f"{Path(str(run.cfg.teacher)).name}-minitron-{run.out.resolve().name}"
            build_publish_folder(src, dest, evaluation=table or None, title=title)
            (dest / "minitron.json").write_text(json.dumps(provenance(run), indent=1, default=str))
            res.artifacts["hf"] = str(dest)
        if "fp8" in ex.formats:
            dest = run.stage_dir(self.name) / "fp8"
            rec = export_fp8(src, prepared_data(run), FP8Config(output=str(dest), calib_samples=ex.fp8_calib_samples,
                                                                seq_len=run.cfg.seq_len, overwrite=True))
            res.artifacts["fp8"] = str(dest)
            res.tokens += ex.fp8_calib_samples * run.cfg.seq_len
            res.fp8 = {k: rec[k] for k in ("wall_time_s",) if k in rec}
        return res

    def report(self, run: Run, result: ExportResult | None) -> list[str]:
        """The run's artifacts: the exported folders, and how to load, talk to and serve the final student."""
        final = final_student(run)
        L = ["## Artifacts", ""]
        if result is not None:
            L += [f"- `{fmt}`: `{p}`" for fmt, p in result.artifacts.items()] + [""]
        if final.exists():
            L += [f"Final student: `{final}`. Load it with vanilla transformers, or talk to it / serve it:", "",
                  "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
                  f"model = AutoModelForCausalLM.from_pretrained({str(final)!r})",
                  f"tokenizer = AutoTokenizer.from_pretrained({str(final)!r})", "```", "", "```bash",
                  f"minitron generate {final} --prompt \"What is the capital of France?\"",
                  f"minitron eval loss {run.cfg.teacher} {final}", "```", ""]
        return L


def provenance(run: Run) -> dict:
    """How the exported model was made: the recipe, and each stage's tokens and key numbers."""
    stages = {}
    for s in (stage.name for stage in run.stages):
        done = read_done(run, s)
        if done:
            stages[s] = {"tokens": done["result"].get("tokens"), "wall_time_s": done["wall_time_s"]}
    ev = read_result(run, "evaluate")
    return {"teacher": run.cfg.teacher, "config": run.path, "stages": stages,
            "evaluation": {k: {"val_loss": v["val_loss"], "perplexity": v["perplexity"]}
                           for k, v in (ev.models if ev is not None else {}).items()}}


STAGE = ExportStage()
