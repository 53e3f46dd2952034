"""Stage ``align``: the instruct variant, SFT stages then rounds of RPO (arXiv 2408.11796 sec. 3.5); only with an
``align:`` section."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..config import check_fields, instantiate
from .base import PipelineError, Run, Stage, StageResult, distilled_student


@dataclass
class AlignConfig:
    """Options of the align stage: the paper's SFT stages, then rounds of RPO (arXiv 2408.11796 sec. 3.5)."""

    sft: list[dict] = field(default_factory=lambda: [{"data": "builtin:math-code"}, {"data": "builtin:instructions"}],
                            metadata={"help": "SFT stages in order, each a mapping of `minitron align sft` options "
                                      "(data, max_steps, learning_rate, ...); [] = no SFT"})
    rounds: dict | None = field(default_factory=dict, metadata={"help": "`minitron align rounds` options (rounds, "
                                "samples, reward, beta, eta, ...); null = no RPO"})


@dataclass
class AlignResult(StageResult):
    model: str | None = None  # the aligned model: the last RPO round's policy, else the last SFT stage's
    sft: list[dict] = field(default_factory=list)  # run_sft's record per SFT stage
    rounds: dict | None = None  # run_rounds' record (config, rpo, prompts, rounds)


_RESERVED = ("model", "output_dir", "overwrite")  # in every SFT stage and in rounds


class AlignStage(Stage):
    name = "align"
    help = "instruct variant (minitron align): sft stages and RPO rounds; absent = no alignment"
    section = (AlignConfig,)
    inputs = ("prune", "distill")
    parallel = True
    result = AlignResult

    def options(self, run: Run):
        """[(SFTStageConfig, SFTArgs) per SFT stage], (RoundsConfig, RPOConfig) or None; building them checks every
        value."""
        # here and below, not at the top: the alignment modules need TRL (the `train` extra), which a run without an
        # align section does not
        from ..alignment.rounds import RoundsConfig
        from ..alignment.rpo import RPOConfig
        from ..alignment.sft import SFTArgs, SFTStageConfig

        al = instantiate([AlignConfig], dict(run.sections["align"]), where="section 'align'")[0]
        d = run.stage_dir(self.name)
        model = str(distilled_student(run))
        sfts = []
        for i, sec in enumerate(al.sft or [], 1):
            if not isinstance(sec, dict):
                raise PipelineError(f"section 'align': sft[{i - 1}] must be a mapping of `minitron align sft` options")
            check_fields(sec, [SFTStageConfig, SFTArgs], f"section 'align': sft[{i - 1}]", reserved=_RESERVED)
            sec = {"report_to": "none", **sec, "model": model, "output_dir": str(d / f"sft_{i}"), "overwrite": True}
            sfts.append(instantiate([SFTStageConfig, SFTArgs], sec, where=f"section 'align': sft[{i - 1}]"))
            model = sec["output_dir"] + "/final"
        rounds = None
        if al.rounds is not None:
            if not isinstance(al.rounds, dict):
                raise PipelineError("section 'align': rounds must be a mapping of `minitron align rounds` options")
            check_fields(al.rounds, [RoundsConfig, RPOConfig], "section 'align': rounds", reserved=_RESERVED)
            sec = {"report_to": "none", "save_strategy": "no", **al.rounds, "model": model,
                   "output_dir": str(d / "rounds")}
            rounds = instantiate([RoundsConfig, RPOConfig], sec, where="section 'align': rounds")
        return sfts, rounds

    def run(self, run: Run, resume: bool) -> AlignResult:
        from ..alignment.rounds import run_rounds
        from ..alignment.sft import run_sft

        sfts, rounds = self.options(run)
        res = AlignResult(model=str(distilled_student(run)))
        for cfg, args in sfts:
            done = Path(args.output_dir) / "sft.json"
            rec = json.loads(done.read_text()) if resume and done.exists() else run_sft(cfg, args)
            res.sft.append(rec)
            res.model = rec["final"]
        if rounds is not None:
            rec = run_rounds(*rounds)
            res.rounds = {k: rec[k] for k in ("config", "rpo", "train_prompts", "heldout_prompts", "rounds")}
            res.model = rec["rounds"][-1]["policy"]
        return res

    def report(self, run: Run, result: AlignResult | None) -> list[str]:
        if result is None:
            return []
        from ..alignment.rounds import rounds_table

        L = ["## Alignment", ""]
        for i, r in enumerate(result.sft, 1):
            L.append(f"- SFT stage {i} on `{r['data']}`: {r['examples']} examples, {r['steps']} steps, training loss "
                     f"{r['train_loss']:.3f}, {r['wall_time_s']:.0f} s.")
        if result.rounds:
            L += ["", "Rounds of RPO (reward on held-out prompts, from the SFT model through each round):", "",
                  rounds_table(result.rounds)]
        return L + [""]


STAGE = AlignStage()
