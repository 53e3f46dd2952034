"""Teacher correction (arXiv 2408.11796 sec. 2.1, Figs. 3-4): a light LM fine-tune of the teacher on
the distillation data before pruning and distillation, so the teacher fits the data it will teach.

Paper schedule: 120 warmup steps, peak LR one fifth of the model's original peak, cosine decay to
the minimum LR (``lr_scheduler_type: cosine_with_min_lr``). Three modes:

- ``full``: every parameter trains (the paper);
- ``lora``: PEFT LoRA adapters on every attention and MLP projection, merged into the weights on
  save, so the result is a vanilla checkpoint (the paper's suggested future work);
- ``norm``: only the RMSNorm weights train (likewise).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers import AutoConfig, Trainer

from ..data import BlockDataset, DataConfig, collate_blocks, load_blocks, train_blocks
from ..loading import load_model, load_tokenizer, resolve_model
from .trainer import BaselineEvaluation, TrainArgs, eval_curve
from ..arch import family_of
from ..outputs import input_paths, no_debris, remove_checkpoints
from ..resume import check_output_dir, check_resume_shapes, header_shapes
from ..training import CheckpointMixin, save_trained
from ..distributed import fsdp_requested
from ..errors import MinitronError

logger = logging.getLogger(__name__)

MODES = ("full", "lora", "norm")


class CorrectionError(MinitronError):
    """Bad teacher-correction settings."""


class CorrectionTrainer(CheckpointMixin, Trainer):
    """The plain LM-loss Trainer with atomic, finite-only checkpoints and a NaN/inf stop
    (:class:`~minitron_hf.training.CheckpointMixin`)."""


@dataclass
class CorrectionConfig:
    """What to correct and how (the Trainer's options come from TrainingArguments)."""

    model: str = field(default="smollm2-135m", metadata={"help": "the teacher: alias, local dir or Hub id"})
    mode: str = field(default="full", metadata={"help": "full | lora (merged on save) | norm (RMSNorm weights only)",
                      "choices": list(MODES)})
    seq_len: int = field(default=256, metadata={"help": "tokens per packed sequence"})
    train_samples: int | None = field(default=None, metadata={"help": "training sequences (default: what max_steps needs)"})
    eval_samples: int = field(default=16, metadata={"help": "validation sequences for the before/after LM loss"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing corrected model and remove the "
                            "checkpoint-* folders of an earlier run in output_dir"})

    def __post_init__(self):
        if self.mode not in MODES:
            raise CorrectionError(f"mode={self.mode!r} is not one of {', '.join(MODES)}")
        if self.lora_r < 1 or self.lora_alpha < 1:
            raise CorrectionError(f"lora_r={self.lora_r} and lora_alpha={self.lora_alpha} must be >= 1")


def prepare_mode(model, mode: str, lora_r: int = 16, lora_alpha: int = 32):
    """Set which parameters train; returns the model to train (a PEFT wrapper for ``lora``)."""
    if mode == "full":
        model.requires_grad_(True)
        return model
    if mode == "norm":
        for name, p in model.named_parameters():
            p.requires_grad_("norm" in name.split(".")[-2])  # input_layernorm, q_norm, model.norm, ...
        if not any(p.requires_grad for p in model.parameters()):
            raise CorrectionError("mode='norm' found no norm weights to train")
        return model
    if mode == "lora":
        from peft import LoraConfig, get_peft_model  # the optional `train` extra

        targets = family_of(model.config).lora_targets  # every linear of a decoder layer
        return get_peft_model(model, LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.0,
                                                target_modules=targets, task_type="CAUSAL_LM"))
    raise CorrectionError(f"mode={mode!r} is not one of {', '.join(MODES)}")


def finalize_mode(model, mode: str):
    """The plain transformers model to save (LoRA adapters merged into the weights)."""
    return model.merge_and_unload() if mode == "lora" else model


def run_correction(data_cfg: DataConfig, cfg: CorrectionConfig, args: TrainArgs) -> dict:
    with no_debris(args.output_dir):  # a failed run leaves no empty output folder behind
        return _run_correction(data_cfg, cfg, args)


def _run_correction(data_cfg: DataConfig, cfg: CorrectionConfig, args: TrainArgs) -> dict:
    t0 = time.time()
    if not getattr(args, "output_dir_given", True):
        raise CorrectionError("output_dir is required: the folder for checkpoints and the corrected model "
                              "(--output-dir DIR)")
    final = Path(args.output_dir) / "final"
    if final.exists() and not cfg.overwrite:
        raise CorrectionError(f"output_dir={args.output_dir!r} already holds a corrected model; pass --overwrite")
    if cfg.mode == "lora" and (fsdp_requested(args) or args.deepspeed):
        raise CorrectionError("mode=lora runs on one device or with DDP; under FSDP or DeepSpeed use mode=full or "
                              "mode=norm (the merged LoRA teacher is saved from an unsharded model)")
    resume = check_output_dir(args.output_dir, args.resume_from_checkpoint, cfg.overwrite, CorrectionError,
                              args=args, sources=[cfg.model, *input_paths(data_cfg, cfg)])
    src = resolve_model(cfg.model)
    tok = load_tokenizer(src)  # before any data is tokenized or weights load: its ids fit the model
    if resume is not None:  # a checkpoint of another model: refused from the headers, before weights load
        check_resume_shapes(resume, header_shapes(src), f"model={str(cfg.model)!r}", CorrectionError,
                            num_hidden_layers=getattr(AutoConfig.from_pretrained(src), "num_hidden_layers", None))
    need = cfg.train_samples or (args.max_steps * args.per_device_train_batch_size * args.gradient_accumulation_steps
                                 * max(args.world_size, 1) if args.max_steps > 0 else None)
    train = train_blocks(data_cfg, tok, cfg.seq_len, need, args.process_index, max(args.world_size, 1))
    train.log_summary()
    val = load_blocks(data_cfg, tok, "validation", cfg.seq_len, cfg.eval_samples)
    model = prepare_mode(load_model(src), cfg.mode, cfg.lora_r, cfg.lora_alpha)
    model.train()
    trainer = CorrectionTrainer(model=model, args=args, train_dataset=train,
                                eval_dataset=BlockDataset(val), data_collator=collate_blocks, processing_class=tok)
    sharded = trainer.sharded
    if sharded:  # the model is placed and sharded inside train(): evaluate it there (as distillation does)
        baseline = BaselineEvaluation(trainer)
        trainer.add_callback(baseline)
    else:
        before = trainer.evaluate(metric_key_prefix="before")
    if resume is None and cfg.overwrite and args.should_save:
        remove_checkpoints(args.output_dir)  # a fresh run: the earlier run's checkpoints would mix with this one's
    trainer.train(resume_from_checkpoint=resume)
    if sharded:
        before = baseline.metrics
    after = trainer.evaluate()
    tokens_per_step = (args.per_device_train_batch_size * args.gradient_accumulation_steps * max(args.world_size, 1)
                       * cfg.seq_len)
    summary = {"model": cfg.model, "mode": cfg.mode, "steps": trainer.state.global_step,
               "tokens": trainer.state.global_step * tokens_per_step,
               "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
               "before_lm_loss": before["before_loss"], "after_lm_loss": after["eval_loss"],
               "data": asdict(data_cfg), "train_data": train.describe(), "wall_time_s": round(time.time() - t0, 1),
               "eval_curve": eval_curve(trainer.state.log_history, tokens_per_step, before)}
    save_trained(trainer, tok, final, finalize=lambda m: finalize_mode(m, cfg.mode),  # also gathered under FSDP/ZeRO-3
                 extra=lambda tmp: (tmp / "correction.json").write_text(json.dumps(summary, indent=1)))
    logger.info("teacher correction (%s): LM loss %.3f -> %.3f in %d steps; corrected teacher in %s", cfg.mode,
                summary["before_lm_loss"], summary["after_lm_loss"], summary["steps"], final)
    return summary
