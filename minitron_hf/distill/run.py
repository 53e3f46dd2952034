"""The distillation stage: ``minitron distill`` / ``accelerate launch recipes/distill.py``.

Loads student and teacher, checks they can be distilled together, packs the data, evaluates the
student before training (the pruned baseline), trains with :class:`DistillationTrainer`, evaluates
again, saves the student (safetensors + tokenizer) and writes ``distill.json`` and a PNG of the
curves (KD loss and student LM loss against tokens, the teacher's LM loss as a reference line).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig

from ..compat import check_vocab, tokenizer_id_count
from ..resume import check_output_dir, check_resume_shapes, header_shapes, parse_resume_flag
from ..training import save_trained
from ..outputs import input_paths, no_debris, remove_checkpoints
from ..data import BlockDataset, DataConfig, collate_blocks, load_blocks, train_blocks
from ..loading import load_model, load_tokenizer, resolve_model
from .trainer import (BaselineEvaluation, DistillationConfig, DistillationError, DistillationTrainer, check_pair,
                      eval_curve)

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class DistillScriptConfig:
    """Which models and how much data (the Trainer's own options are in DistillationConfig)."""

    student: str | None = field(default=None, metadata={"help": "the pruned model: local dir, alias or Hub id"})
    teacher: str = field(default="smollm2-135m", metadata={"help": "the (corrected) teacher: local dir, alias or Hub id"})
    seq_len: int = field(default=256, metadata={"help": "tokens per packed training/eval sequence"})
    train_samples: int | None = field(default=None, metadata={"help": "training sequences to pack (default: what "
                                      "max_steps needs, or the whole train split)"})
    eval_samples: int = field(default=16, metadata={"help": "held-out validation sequences for evaluation"})
    model_dtype: str = field(default="float32", metadata={"help": "dtype the models are loaded in",
                             "choices": list(DTYPES)})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing final model in output_dir and "
                            "remove the checkpoint-* folders of an earlier run there"})

    def __post_init__(self):
        if self.model_dtype not in DTYPES:
            raise DistillationError(f"model_dtype={self.model_dtype!r} is not one of {', '.join(DTYPES)}")
        if self.seq_len < 2 or self.eval_samples < 1:
            raise DistillationError("seq_len must be >= 2 and eval_samples >= 1")


def check_inputs(script: DistillScriptConfig, args: DistillationConfig, data_cfg: DataConfig | None = None
                 ) -> str | None:
    """Errors before any work (the models named, the output folder, the inputs); returns the checkpoint to resume
    from (resolved) or None. Values are checked when the configs are made (``__post_init__``)."""
    if not script.student:
        raise DistillationError("student is required: the pruned model to distil into")
    if not script.teacher:
        raise DistillationError("teacher is required: the model to distil from")
    if not getattr(args, "output_dir_given", True):
        raise DistillationError("output_dir is required: the folder for checkpoints and the final model "
                                "(--output-dir DIR)")
    final = Path(args.output_dir) / "final"
    resume = parse_resume_flag(args.resume_from_checkpoint)
    if final.exists() and not script.overwrite and resume is None:
        raise DistillationError(f"output_dir={args.output_dir!r} already holds a distilled model (final/); pass "
                                f"--overwrite or --resume-from-checkpoint")
    return check_output_dir(args.output_dir, resume, script.overwrite, DistillationError, args=args,
                            sources=[script.student, script.teacher, *input_paths(data_cfg, script)])


def run_distill(data_cfg: DataConfig, script: DistillScriptConfig, args: DistillationConfig) -> dict:
    with no_debris(args.output_dir):  # a failed run leaves no empty output folder behind
        return _run_distill(data_cfg, script, args)


def _run_distill(data_cfg: DataConfig, script: DistillScriptConfig, args: DistillationConfig) -> dict:
    t0 = time.time()
    resume = check_inputs(script, args, data_cfg)
    student_dir, teacher_dir = resolve_model(script.student), resolve_model(script.teacher)
    s_cfg, t_cfg = AutoConfig.from_pretrained(student_dir), AutoConfig.from_pretrained(teacher_dir)
    tok = load_tokenizer(teacher_dir)

    class _C:  # configs are enough for the pair check: fail before loading weights
        def __init__(self, c):
            self.config = c

    # load_tokenizer checked the teacher; every id the data holds needs a row in the student too
    check_vocab(s_cfg, tok, script.student, tokenizer_name=script.teacher, error=DistillationError)
    check_pair(_C(s_cfg), _C(t_cfg), seq_len=script.seq_len, tokenizer_size=tokenizer_id_count(tok))
    if resume is not None:  # a checkpoint of another student: refused from the headers, before weights load
        check_resume_shapes(resume, header_shapes(student_dir), f"student={str(script.student)!r}", DistillationError,
                            num_hidden_layers=getattr(s_cfg, "num_hidden_layers", None))

    world = max(args.world_size, 1)
    need = script.train_samples
    if need is None and args.max_steps > 0:
        need = args.max_steps * args.per_device_train_batch_size * args.gradient_accumulation_steps * world
    train = train_blocks(data_cfg, tok, script.seq_len, need, args.process_index, max(args.world_size, 1))
    val = load_blocks(data_cfg, tok, "validation", script.seq_len, script.eval_samples)
    train.log_summary()
    dtype = DTYPES[script.model_dtype]
    student = load_model(student_dir, dtype=dtype)
    teacher = load_model(teacher_dir, dtype=dtype)
    student.train()

    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, tokenizer_size=tokenizer_id_count(tok),
                                  train_dataset=train, eval_dataset=BlockDataset(val),
                                  data_collator=collate_blocks, processing_class=tok)
    if trainer.sharded:  # the student is placed and sharded inside train(): evaluate it there
        baseline = BaselineEvaluation(trainer)
        trainer.add_callback(baseline)
    else:
        before = trainer.evaluate(metric_key_prefix="before")
    if resume is None and script.overwrite and args.should_save:
        remove_checkpoints(args.output_dir)  # a fresh run: the earlier run's checkpoints would mix with this one's
    result = trainer.train(resume_from_checkpoint=resume)
    if trainer.sharded:
        before = baseline.metrics
    after = trainer.evaluate(metric_key_prefix="eval")
    final = Path(args.output_dir) / "final"
    save_trained(trainer, tok, final)  # also under FSDP/ZeRO-3: gathered into a plain checkpoint
    tokens_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * world * script.seq_len
    summary = {
        "student": str(script.student), "teacher": str(script.teacher), "data": asdict(data_cfg),
        "train_data": train.describe(),  # per source: weight, blocks available, samples drawn, epochs
        "seq_len": script.seq_len, "tokens_per_step": tokens_per_step, "steps": trainer.state.global_step,
        "tokens": trainer.state.global_step * tokens_per_step,
        "before": before, "after": after, "train_runtime_s": result.metrics.get("train_runtime"),
        "train_tokens_per_s": (trainer.state.global_step * tokens_per_step / result.metrics["train_runtime"]
                               if result.metrics.get("train_runtime") else None),
        # this process's device: the peak of the whole run (both models, optimizer states, activations)
        "peak_gpu_memory_gib": (round(torch.cuda.max_memory_allocated() / 2**30, 2)
                                if torch.cuda.is_available() else None),
        "wall_time_s": round(time.time() - t0, 1), "final_model": str(final),
        "loss": args.kd_loss, "temperature": args.temperature, "ce_weight": args.ce_weight,
        # validation losses against training tokens (step 0 = before training)
        "eval_curve": eval_curve(trainer.state.log_history, tokens_per_step, before),
    }
    if args.continuous_correction and trainer.is_world_process_zero():  # the corrected teacher, too
        trainer.accelerator.unwrap_model(trainer.teacher).save_pretrained(Path(args.output_dir) / "final-teacher")
        tok.save_pretrained(Path(args.output_dir) / "final-teacher")
        summary["final_teacher"] = str(Path(args.output_dir) / "final-teacher")
    if trainer.is_world_process_zero():
        (Path(args.output_dir) / "distill.json").write_text(json.dumps(summary, indent=1))
        plot_curves(trainer.state.log_history, tokens_per_step, Path(args.output_dir) / "curves.png", before, after)
    logger.info("distilled %s: student LM loss %.3f -> %.3f (teacher %.3f), KD %.3f -> %.3f in %d steps",
                script.student, before["before_student_lm_loss"], after["eval_student_lm_loss"],
                after["eval_teacher_lm_loss"], before["before_kd_loss"], after["eval_kd_loss"], trainer.state.global_step)
    return summary


def plot_curves(history: list[dict], tokens_per_step: int, path: Path, before: dict | None = None,
                after: dict | None = None) -> Path:
    """KD (train) loss and evaluation losses against tokens; the teacher's LM loss as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"] * tokens_per_step, h["loss"]) for h in history if "loss" in h and "step" in h]
    ev = [(h["step"] * tokens_per_step, h["eval_student_lm_loss"], h.get("eval_kd_loss"), h.get("eval_teacher_lm_loss"))
          for h in history if "eval_student_lm_loss" in h]
    if before:
        ev.insert(0, (0, before["before_student_lm_loss"], before["before_kd_loss"], before["before_teacher_lm_loss"]))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if train:
        ax.plot(*zip(*train), label="train KD loss", alpha=0.7)
    if ev:
        x = [e[0] for e in ev]
        ax.plot(x, [e[1] for e in ev], "o-", label="student LM loss (validation)")
        ax.plot(x, [e[2] for e in ev], "s--", label="KD loss (validation)")
        teacher = ev[-1][3]
        if teacher is not None:
            ax.axhline(teacher, color="gray", ls=":", label=f"teacher LM loss ({teacher:.2f})")
    ax.set(xlabel="training tokens", ylabel="loss", title="Distillation")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
