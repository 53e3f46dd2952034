"""Stage ``distill``: logit knowledge distillation of the pruned student from the (corrected) teacher (arXiv
2407.14679 sec. 3, arXiv 2408.11796 sec. 2.3); only with a ``distill:`` section (the options of ``minitron
distill``)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import instantiate
from ..distill.run import DistillScriptConfig, run_distill
from ..distill.trainer import DistillationConfig
from .base import Run, Stage, StageResult, check_report_to, prepared_data, rel, report_to, resume_from, teacher_dir


@dataclass
class DistillResult(StageResult):
    model: str | None = None  # the distilled student (final/)
    summary: dict | None = None  # run_distill's record (loss, temperature, steps, before/after, ...)


class DistillStage(Stage):
    name = "distill"
    help = "distillation options (minitron distill); absent = the pruned model is the result"
    section = (DistillScriptConfig, DistillationConfig)
    reserved = ("student", "teacher", "output_dir", "overwrite", "resume_from_checkpoint")
    inputs = ("data", "correct", "prune")
    parallel = True
    result = DistillResult

    def options(self, run: Run):
        sec = dict(run.sections.get(self.name) or {})
        sec.setdefault("seq_len", run.cfg.seq_len)
        sec.setdefault("eval_samples", run.cfg.eval_samples)
        sec.setdefault("report_to", report_to(run, sec) or "none")
        sec.update(student=str(run.stage_dir("prune") / "model"), teacher=teacher_dir(run),
                   output_dir=str(run.stage_dir(self.name)), overwrite=True)
        return instantiate(list(self.section), sec, where="section 'distill'")

    def check(self, run: Run, where: str, check_model: bool = True) -> None:
        check_report_to(run, self.name, where)
        self.options(run)

    def run(self, run: Run, resume: bool) -> DistillResult:
        script, args = self.options(run)
        args.resume_from_checkpoint = resume_from(args.output_dir, resume)
        s = run_distill(prepared_data(run), script, args)
        return DistillResult(tokens=s["tokens"], model=s["final_model"], summary=s)

    def report(self, run: Run, result: DistillResult | None) -> list[str]:
        curves = run.stage_dir(self.name) / "curves.png"
        if result is None and not curves.exists():
            return []
        L = ["## Training", ""]
        if result is not None:
            sm = result.summary
            b, a = sm["before"], sm["after"]
            L += [f"Distillation ({sm['loss']}, T={sm['temperature']}): {sm['steps']} steps, {sm['tokens']:,} tokens, "
                  f"{sm['train_runtime_s'] or 0:.0f} s of training. Validation KD loss {b['before_kd_loss']:.3f} -> "
                  f"{a['eval_kd_loss']:.3f}; student LM loss {b['before_student_lm_loss']:.3f} -> "
                  f"{a['eval_student_lm_loss']:.3f} (teacher {a['eval_teacher_lm_loss']:.3f}).", ""]
        return L + ([f"![distill curves]({rel(run, curves)})", ""] if curves.exists() else [])


STAGE = DistillStage()
