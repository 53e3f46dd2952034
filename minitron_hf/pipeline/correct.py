"""Stage ``correct``: teacher correction, a short fine-tune of the teacher on the distillation data (arXiv
2408.11796 sec. 2.1); only with a ``correct:`` section (the options of ``minitron correct-teacher``)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import instantiate
from ..distill.correct import CorrectionConfig, run_correction
from ..distill.trainer import TrainArgs
from .base import Run, Stage, StageResult, check_report_to, prepared_data, rel, report_to, resume_from


@dataclass
class CorrectResult(StageResult):
    summary: dict | None = None  # run_correction's record (mode, steps, before/after LM loss, ...)
    model: str | None = None  # the corrected teacher


class CorrectStage(Stage):
    name = "correct"
    help = "teacher correction options (minitron correct-teacher); absent = no correction"
    section = (CorrectionConfig, TrainArgs)
    reserved = ("model", "output_dir", "overwrite", "resume_from_checkpoint")
    inputs = ("data",)
    parallel = True
    result = CorrectResult

    def options(self, run: Run):
        sec = dict(run.sections.get(self.name) or {})
        sec.setdefault("seq_len", run.cfg.seq_len)
        sec.setdefault("eval_samples", run.cfg.eval_samples)
        sec.setdefault("report_to", report_to(run, sec) or "none")
        sec.update(model=run.cfg.teacher, output_dir=str(run.stage_dir(self.name)), overwrite=True)
        return instantiate(list(self.section), sec, where="section 'correct'")

    def check(self, run: Run, where: str, check_model: bool = True) -> None:
        check_report_to(run, self.name, where)
        self.options(run)

    def run(self, run: Run, resume: bool) -> CorrectResult:
        cfg, args = self.options(run)
        args.resume_from_checkpoint = resume_from(args.output_dir, resume)
        s = run_correction(prepared_data(run), cfg, args)
        return CorrectResult(tokens=s.get("tokens"), summary=s, model=str(run.stage_dir(self.name) / "final"))

    def report(self, run: Run, result: CorrectResult | None) -> list[str]:
        if result is None:
            return []
        sm = result.summary
        L = ["## Teacher correction", "", f"Teacher correction ({sm['mode']}): {sm['steps']} steps, validation LM "
             f"loss {sm['before_lm_loss']:.3f} -> {sm['after_lm_loss']:.3f}.", ""]
        curves = run.stage_dir(self.name) / "curves.png"
        return L + ([f"![correct curves]({rel(run, curves)})", ""] if curves.exists() else [])


STAGE = CorrectStage()
