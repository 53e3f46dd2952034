"""Supervised fine-tuning stages on TRL's ``SFTTrainer`` (``minitron align sft``).

The paper (arXiv 2408.11796 sec. 3.5) runs math + code SFT, then instruction SFT, before RPO; each is one
call of :func:`run_sft` with its own YAML (alignment/configs/smollm2-135m/sft-*.yaml). Data are chat
examples (:mod:`.data`): each becomes a conversational prompt/completion pair, so TRL puts the loss on
the completion (the last assistant turn) only, through the model's chat template; ``packing`` packs
several examples per sequence (TRL's best-fit-decreasing packing, with position ids restarting per
example). A tokenizer without a chat template gets :data:`CHATML` with its EOS token closing each turn
(no new tokens, so the embeddings keep their size), or the template in ``chat_template``; it is saved
with the model, so every later stage (RPO, serving, evaluation) uses the same one.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Dataset
from trl import SFTConfig

from ..distributed import GLOBAL_BATCH_HELP, connect_cpu_processes
from ..loading import load_model, load_tokenizer, resolve_model
from ..outputs import input_paths, no_debris, require_output_dir
from ..training import CheckpointMixin, check_training_arguments, save_trained
from .data import load_rows, sft_examples
from .errors import AlignmentError

logger = logging.getLogger(__name__)

# ChatML turns closed by the tokenizer's own EOS token (filled in), for tokenizers that have no template
CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}{{ eos }}\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@dataclass
class SFTStageConfig:
    """What to fine-tune on what (the trainer's options are TRL's SFTConfig)."""

    model: str = field(default="smollm2-135m", metadata={"help": "the policy: alias, local dir or Hub id"})
    data: str = field(default="builtin:instructions", metadata={"help": "chat data: json/jsonl/parquet path, Hub "
                      "dataset id, or builtin:math-code | builtin:instructions"})
    max_samples: int | None = field(default=None, metadata={"help": "use only the first N examples"})
    chat_template: str | None = field(default=None, metadata={"help": "Jinja chat template (a file, or 'chatml') for "
                                      "tokenizers without one; the tokenizer's own is kept otherwise"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing output_dir/final"})

    def __post_init__(self):
        if self.max_samples is not None and self.max_samples < 1:
            raise AlignmentError(f"max_samples={self.max_samples} must be >= 1")


@dataclass
class SFTArgs(SFTConfig):
    """TRL's SFTConfig with defaults for this project (fp32 on CPU; completion-only loss)."""

    learning_rate: float = field(default=2e-5, metadata={"help": "AdamW learning rate"})
    max_length: int | None = field(default=512, metadata={"help": "tokens per (packed) sequence"})
    report_to: list[str] | str = field(default="none", metadata={"help": "integrations to report to"})
    save_strategy: str = field(default="no", metadata={"help": "no | steps | epoch (checkpoints)"})
    global_batch_size: int | None = field(default=None, metadata={"help": GLOBAL_BATCH_HELP})

    def __post_init__(self):
        check_training_arguments(self)  # as distill.trainer.TrainArgs: before anything is created
        if not torch.cuda.is_available():
            self.use_cpu = True  # as distill.trainer.TrainArgs: connects `accelerate launch` CPU processes
            connect_cpu_processes(self)  # with ddp_timeout (distributed.connect_cpu_processes)
            if self.bf16 is None:
                self.bf16 = False  # bf16 autocast is many times slower on these CPUs (docs/development.md)
        super().__post_init__()


@functools.cache
def sft_trainer_class():
    """TRL's ``SFTTrainer`` with atomic, finite-only checkpoints (:class:`~minitron_hf.training.CheckpointMixin`);
    built on first use, as importing TRL's SFTTrainer takes seconds."""
    from trl import SFTTrainer

    class SFTStageTrainer(CheckpointMixin, SFTTrainer):
        pass

    return SFTStageTrainer


def ensure_chat_template(tokenizer, chat_template: str | None, field_name: str = "chat_template",
                         add_default: bool = True):
    """Give ``tokenizer`` a chat template: ``chat_template`` (a file or 'chatml'), its own, or (``add_default``)
    ChatML closed by its EOS token. Without ``add_default`` a missing template is an error naming the field."""
    if chat_template:
        if chat_template == "chatml":
            tokenizer.chat_template = CHATML.replace("{{ eos }}", tokenizer.eos_token or "")
        else:
            p = Path(chat_template)
            if not p.is_file():
                raise AlignmentError(f"{field_name}={chat_template!r}: not a file (give a Jinja template file or 'chatml')")
            tokenizer.chat_template = p.read_text()
    elif not getattr(tokenizer, "chat_template", None):
        if not add_default:
            raise AlignmentError(f"{field_name}: the tokenizer has no chat template and none was given (run "
                                 f"`minitron align sft` first, which adds one, or pass {field_name}=FILE|chatml)")
        if tokenizer.eos_token is None:
            raise AlignmentError(f"{field_name}: the tokenizer has neither a chat template nor an EOS token; give one")
        logger.info("the tokenizer has no chat template: adding ChatML closed by %r", tokenizer.eos_token)
        tokenizer.chat_template = CHATML.replace("{{ eos }}", tokenizer.eos_token)
    return tokenizer


def run_sft(cfg: SFTStageConfig, args: SFTArgs) -> dict:
    """One SFT stage; writes ``output_dir/final`` (a vanilla checkpoint with the chat template) and sft.json."""
    with no_debris(args.output_dir):  # a failed run leaves no empty output folder behind
        return _run_sft(cfg, args)


def _run_sft(cfg: SFTStageConfig, args: SFTArgs) -> dict:
    t0 = time.time()
    require_output_dir(args.output_dir, AlignmentError, args=args, sources=[cfg.model, *input_paths(cfg)])
    final = Path(args.output_dir) / "final"
    if final.exists() and not cfg.overwrite:
        raise AlignmentError(f"output_dir: {final} exists; set overwrite=true to replace it")
    examples = sft_examples(load_rows(cfg.data), field="data")[: cfg.max_samples]
    path = resolve_model(cfg.model)
    tok = ensure_chat_template(load_tokenizer(path), cfg.chat_template)
    model = load_model(path)
    trainer = sft_trainer_class()(model=model, args=args, train_dataset=Dataset.from_list(examples),
                                  processing_class=tok)
    if not trainer.completion_only_loss:
        raise AlignmentError("data: TRL did not enable completion-only loss for these examples")
    out = trainer.train()
    save_trained(trainer, tok, final)
    rec = {"model": str(path), "data": cfg.data, "examples": len(examples), "train_loss": out.training_loss,
           "steps": out.global_step, "wall_time_s": round(time.time() - t0, 1), "final": str(final)}
    if trainer.accelerator.is_main_process:
        (Path(args.output_dir) / "sft.json").write_text(json.dumps(rec, indent=1))
    logger.info("SFT on %d examples of %s: loss %.3f in %.0f s -> %s", len(examples), cfg.data, out.training_loss,
                rec["wall_time_s"], final)
    return rec
