"""Logit distillation as a ``transformers.Trainer`` subclass (arXiv 2408.11796 sec. 2.3, 3.2).

``DistillationTrainer`` keeps every Trainer contract (checkpointing, resume, logging, ``accelerate
launch``, ``push_to_hub``) and overrides only ``compute_loss`` and ``evaluate`` (plus the checkpoint
mixin shared by every trainer of the project):

- the teacher is frozen (eval mode, no gradients) and prepared by the same accelerator as the
  student, so it is placed (and, under DeepSpeed/FSDP, sharded) like the student;
- the loss is the KD loss on logits only (forward KL by default; reverse KL, JSD, temperature and an
  optional cross-entropy weight), summed over the vocabulary, averaged over valid shifted tokens of
  the whole optimizer step (``num_items_in_batch``), computed in token chunks from both models' final
  hidden states and LM-head weights: the full [tokens x vocab] logits never exist;
- evaluation reports the KD loss and both models' LM loss on the evaluation set;
- checkpoints are written atomically and only with finite weights; a NaN/inf loss or NaN/inf weights stop
  the run with :class:`~minitron_hf.training.TrainingDivergedError`, which names the last good
  checkpoint; ``resume_from_checkpoint=True`` means the newest complete checkpoint
  (:class:`~minitron_hf.training.CheckpointMixin`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from pathlib import Path
from dataclasses import dataclass, field

import torch
from accelerate.utils import fsdp2_prepare_model
from safetensors.torch import load_file
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from transformers import Trainer, TrainerCallback, TrainingArguments

from ..arch import family_of
from .losses import LOSSES, chunk_tokens, chunked_kd_loss, chunked_lm_loss_sum, naive_kd_loss
from ..training import CheckpointMixin, check_training_arguments
from ..distributed import GLOBAL_BATCH_HELP, connect_cpu_processes, connect_deepspeed_on_cpu
from ..errors import MinitronError
from ..resume import check_model_fits_checkpoint

logger = logging.getLogger(__name__)


def eval_curve(log_history: list[dict], tokens_per_step: int, before: dict | None = None) -> list[dict]:
    """The evaluations of a Trainer run as ``[{"step", "tokens", <metric>: value}]`` (``eval_`` prefix
    dropped), with the ``before_`` evaluation, if given, as step 0: the learning curve against tokens."""
    def row(step, metrics, prefix):
        return {"step": step, "tokens": step * tokens_per_step,
                **{k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)
                   and not k.endswith(("runtime", "_time", "per_second"))}}

    rows = {0: row(0, before, "before_")} if before else {}
    for h in log_history:  # an evaluation repeated at the same step (the final one) replaces the earlier
        if "step" in h and any(k.startswith("eval_") and k.endswith("loss") for k in h):
            rows[h["step"]] = row(h["step"], h, "eval_")
    return [rows[k] for k in sorted(rows)]


class DistillationError(MinitronError):
    """Teacher and student (or the settings) cannot be distilled together."""


@dataclass
class TrainArgs(TrainingArguments):
    """TrainingArguments that also connect ``accelerate launch`` processes on CPU-only machines."""

    remove_unused_columns: bool = field(default=False, metadata={"help": "keep all dataset columns"})
    global_batch_size: int | None = field(default=None, metadata={"help": GLOBAL_BATCH_HELP})

    def __post_init__(self):
        check_training_arguments(self)  # before anything is created; "true" -> True for resume_from_checkpoint
        # without an accelerator, accelerate connects the processes (gloo) only when told cpu=True;
        # otherwise every process would train alone
        if not torch.cuda.is_available():
            self.use_cpu = True
            connect_cpu_processes(self)  # with ddp_timeout (distributed.connect_cpu_processes)
        super().__post_init__()
        if self.deepspeed and self.use_cpu:
            connect_deepspeed_on_cpu(self)


@dataclass
class DistillationConfig(TrainArgs):
    """TrainingArguments plus the distillation loss options."""

    kd_loss: str = field(default="forward_kl", metadata={"help": "forward_kl (paper) | reverse_kl | jsd",
                         "choices": list(LOSSES)})
    temperature: float = field(default=1.0, metadata={"help": "softmax temperature of both models (loss x T^2)"})
    jsd_beta: float = field(default=0.5, metadata={"help": "teacher weight of the JSD mixture"})
    ce_weight: float = field(default=0.0, metadata={"help": "weight of the student's LM cross-entropy added to "
                             "the KD loss (paper: 0; > 0 for the 'pruning + LM loss' ablation)"})
    kd_chunk_size: int | None = field(default=None, metadata={"help": "tokens per chunk of the KD loss (default: "
                                      "about 16M logits per chunk); 0 = full logits (used automatically under FSDP, "
                                      "where LM-head weights are sharded)"})
    continuous_correction: bool = field(default=False, metadata={"help": "keep correcting the teacher (LM loss, "
                                        "its own AdamW) while distilling from it, in the same run (paper Fig. 4)"})
    teacher_learning_rate: float | None = field(default=None, metadata={"help": "teacher LR under continuous "
                                                "correction (default: learning_rate / 5, the paper's correction LR)"})

    def __post_init__(self):
        super().__post_init__()
        if self.kd_loss not in LOSSES:
            raise DistillationError(f"kd_loss={self.kd_loss!r} is not one of {', '.join(LOSSES)}")
        if self.temperature <= 0:
            raise DistillationError(f"temperature={self.temperature} must be > 0")
        if not 0 < self.jsd_beta < 1:
            raise DistillationError(f"jsd_beta={self.jsd_beta} must be in (0, 1)")
        if self.ce_weight < 0 or (self.kd_chunk_size is not None and self.kd_chunk_size < 0):
            raise DistillationError("ce_weight and kd_chunk_size must be >= 0")


def shared_vocab(student_config, teacher_config, tokenizer_size: int | None = None) -> int:
    """Vocabulary rows KD compares. Embedding rows padded to a multiple (e.g. 128256 vs 128000 used)
    are fine as long as both cover the tokenizer; anything else is an error naming both sizes."""
    vs, vt = student_config.vocab_size, teacher_config.vocab_size
    if tokenizer_size is not None and min(vs, vt) < tokenizer_size:  # an IndexError in the first forward otherwise
        short = [who for who, v in (("student", vs), ("teacher", vt)) if v < tokenizer_size]
        raise DistillationError(
            f"the tokenizer produces {tokenizer_size} token ids but the {' and the '.join(short)} "
            f"{'have' if len(short) > 1 else 'has'} fewer vocabulary rows (student vocab_size={vs}, teacher "
            f"vocab_size={vt}); every id needs an embedding row: use the models' own tokenizer")
    if vs == vt:
        return vs
    if tokenizer_size is not None and min(vs, vt) >= tokenizer_size:
        return min(vs, vt)
    raise DistillationError(
        f"student vocab_size={vs} and teacher vocab_size={vt} differ; distillation needs the same tokenizer and "
        f"vocabulary (rows padded beyond the tokenizer's {tokenizer_size or '?'} tokens are allowed)"
    )


def check_pair(student, teacher, seq_len: int | None = None, tokenizer_size: int | None = None) -> int:
    """Errors before training for pairs that cannot be distilled; returns the shared vocabulary size."""
    v = shared_vocab(student.config, teacher.config, tokenizer_size)
    for who, m in (("student", student), ("teacher", teacher)):
        limit = getattr(m.config, "max_position_embeddings", None)
        if seq_len is not None and limit is not None and seq_len > limit:
            raise DistillationError(f"seq_len={seq_len} exceeds the {who}'s max_position_embeddings={limit}")
    ps, pt = getattr(student.config, "max_position_embeddings", None), getattr(teacher.config, "max_position_embeddings", None)
    if ps is not None and pt is not None and ps != pt:
        logger.warning("student max_position_embeddings=%s differs from the teacher's %s", ps, pt)
    return v


class BaselineEvaluation(TrainerCallback):
    """Evaluates the untrained student at the start of ``train()``.

    Under FSDP and DeepSpeed the Trainer wraps (shards) the student only inside ``train()``; before
    that it sits unplaced on the CPU (found on an H100 under FSDP2: 'index is on cuda:0, different
    from other tensors on cpu'). After a resume, the baseline is the resumed checkpoint's."""

    def __init__(self, trainer: "DistillationTrainer"):
        self.trainer, self.metrics = trainer, None

    def on_train_begin(self, args, state, control, **kwargs):
        if self.metrics is None:
            self.metrics = self.trainer.evaluate(metric_key_prefix="before")


class _TeacherStep(TrainerCallback):
    """Steps the continuously corrected teacher right after each student optimizer step."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        t = self.trainer
        t.teacher_optimizer.step()
        t.teacher_optimizer.zero_grad(set_to_none=True)
        if t._teacher_lm_losses:
            state.log_history.append({"teacher_train_lm_loss": sum(t._teacher_lm_losses) / len(t._teacher_lm_losses),
                                      "step": state.global_step})
            t._teacher_lm_losses = []


def _is_dtensor(t) -> bool:
    return isinstance(t, DTensor)


def _is_fsdp2_module(m) -> bool:
    return isinstance(m, FSDPModule)


def _deepspeed_teacher(teacher, accelerator):
    """An inference engine for the teacher with the student's ZeRO partitioning (stage 3 shards it;
    other stages keep a full copy per device), without optimizer or scheduler."""
    import deepspeed  # the optional `train` extra

    cfg = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    cfg.pop("optimizer", None)
    cfg.pop("scheduler", None)
    if cfg.get("zero_optimization", {}).get("stage") != 3:
        cfg["zero_optimization"] = {"stage": 0}
    engine, *_ = deepspeed.initialize(model=teacher, config=cfg)
    engine.eval()
    return engine


def _fsdp_teacher(model, accelerator):
    """The frozen teacher sharded with the student's FSDP settings.

    ``prepare_model(evaluation_mode=True)`` neither shards nor places a model under FSDP (accelerate
    1.15), which left the teacher on the CPU (seen on an H100 with recipes/accelerate/fsdp2.yaml)."""
    if getattr(accelerator, "is_fsdp2", False):
        model = fsdp2_prepare_model(accelerator, model)  # per-layer fully_shard, as for the student
        local = sum((p.to_local() if _is_dtensor(p) else p).numel() for p in model.parameters())
        total = sum(p.numel() for p in model.parameters())
        logger.info("teacher sharded with FSDP2: %d of %d parameters on process %d", local, total,
                    accelerator.process_index)
    else:
        model = accelerator.prepare_model(model)  # FSDP1 wraps outside evaluation mode
    model.eval()
    return model


class DistillationTrainer(CheckpointMixin, Trainer):
    def __init__(self, model=None, teacher_model=None, args: DistillationConfig | None = None,
                 tokenizer_size: int | None = None, **kwargs):
        if teacher_model is None:
            raise DistillationError("teacher_model is required")
        if args is not None and not isinstance(args, DistillationConfig):
            raise DistillationError("args must be a DistillationConfig")
        self.vocab = check_pair(model, teacher_model, tokenizer_size=tokenizer_size)
        # the chunked loss computes logits as hidden states x LM-head weight (+ bias), then each model's final soft
        # cap (Family.logits: Gemma 2), as the model's own forward does
        self._softcaps = tuple(family_of(m.config, check=False).logit_softcap(m.config) for m in (model, teacher_model))
        super().__init__(model=model, args=args, **kwargs)
        # kd_chunk_size, resolved once for the whole run: None = full [tokens x vocab] logits (asked with 0, and
        # under FSDP1, whose flat parameters cannot be read outside the forward; FSDP2 and ZeRO-3 gather the LM
        # heads for the chunked loss, see _head), else tokens per chunk (unset: by vocabulary and device)
        fsdp1 = getattr(self, "is_fsdp_enabled", False) and not self.accelerator.is_fsdp2
        self.kd_chunk: int | None = None if self.args.kd_chunk_size == 0 or fsdp1 else \
            chunk_tokens(self.args.kd_chunk_size, self.vocab, self.args.device)
        self.teacher_optimizer = None
        self._teacher_lm_losses: list[float] = []
        if self.args.continuous_correction:
            if self.sharded:
                raise DistillationError("continuous_correction runs on one device or DDP, not FSDP/DeepSpeed")
            teacher_model.train()
            teacher_model.requires_grad_(True)
            self.teacher = self.accelerator.prepare_model(teacher_model)
            lr = self.args.teacher_learning_rate or self.args.learning_rate / 5
            self.teacher_optimizer = torch.optim.AdamW(self.teacher.parameters(), lr=lr, weight_decay=0.0)
            self.add_callback(_TeacherStep(self))
            return
        teacher_model.eval()
        teacher_model.requires_grad_(False)
        if self.is_deepspeed_enabled:
            self.teacher = _deepspeed_teacher(teacher_model, self.accelerator)
        elif getattr(self, "is_fsdp_enabled", False):
            self.teacher = _fsdp_teacher(teacher_model, self.accelerator)
        else:  # single device, DDP: placed like the student
            self.teacher = self.accelerator.prepare_model(teacher_model, evaluation_mode=True)
        logger.info("KD loss: %s", "full [tokens x vocab] logits" if self._full_logits() else
                    "chunked from hidden states" + (" (LM heads gathered by FSDP2)" if self.accelerator.is_fsdp2 else
                                                    " (LM heads gathered by ZeRO-3)" if self._zero3() else ""))

    # -------------------------------------------------------------------------------------- loss
    def _full_logits(self) -> bool:
        return self.kd_chunk is None

    def _zero3(self) -> bool:
        return bool(self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.deepspeed_config
                    .get("zero_optimization", {}).get("stage") == 3)

    def _forward(self, model, inputs, grad: bool):
        """Final hidden states (or logits on the full-logits path) of one model."""
        kw = dict(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"), use_cache=False)
        if self._full_logits():
            return model(**kw).logits[..., : self.vocab]
        # logits_to_keep=1: the model computes logits for the last position only; the KD loss
        # computes the rest chunk by chunk from the final (normed) hidden states
        with torch.set_grad_enabled(grad):
            return model(**kw, output_hidden_states=True, logits_to_keep=1).hidden_states[-1]

    @contextlib.contextmanager
    def _head(self, model):
        """The LM-head weight and bias (the vocabulary rows KD compares) as full tensors, for the chunked loss.

        - FSDP2: the head belongs to the root module's parameter group (or to its own ``fully_shard`` unit). The
          root keeps its group unsharded from its forward until the end of backward, so right after a forward the
          weight is already the full tensor, and the gradients the chunked loss puts on it are reduce-scattered
          with the rest of the group. Otherwise (a head with its own unit, resharded after its forward) it is
          gathered here with ``FSDPModule.unshard()``: once per step, never per chunk.
        - ZeRO-3: the partitioned weight is gathered for the loss (``deepspeed.zero.GatheredParameters``) and
          partitioned again after it. The chunked loss computes its weight gradient inside the forward and keeps
          no reference to the weight, so the backward does not need it gathered; DeepSpeed's gradient hooks
          reduce-scatter that gradient like any other."""
        m = self.accelerator.unwrap_model(model)
        head = m.get_output_embeddings()
        params = [p for p in (head.weight, head.bias) if p is not None]
        gather = contextlib.nullcontext()
        if _is_dtensor(head.weight):
            owner = next((x for x in (head, m) if _is_fsdp2_module(x)), None)
            if owner is None:
                raise DistillationError("the LM-head weight is sharded (DTensor) but not by FSDP2: set kd_chunk_size=0")
            owner.unshard()
        elif any(hasattr(p, "ds_id") for p in params):  # DeepSpeed ZeRO-3 partitioned parameters
            import deepspeed

            gather = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
        with gather:
            yield head.weight[: self.vocab], None if head.bias is None else head.bias[: self.vocab]

    def _release_teacher_head(self):
        """FSDP2: put the teacher's root group (embeddings, head) back to its shards after the loss; its forward
        left it gathered, and without a backward nothing else would reshard it."""
        t = self.accelerator.unwrap_model(self.teacher)
        if _is_fsdp2_module(t):
            t.reshard()

    def kd_loss(self, model, inputs, num_items=None, with_grad=True, outputs=None) -> torch.Tensor:
        """KD loss of a batch; ``outputs`` = (student, teacher) forward results to reuse."""
        labels = inputs["shift_labels"]
        a = self.args
        hs, ht = outputs if outputs is not None else self._both(model, inputs, with_grad)
        opts = dict(kind=a.kd_loss, temperature=a.temperature, beta=a.jsd_beta, ce_weight=a.ce_weight,
                    num_items=num_items)
        if self._full_logits():
            return naive_kd_loss(hs, ht, labels, **opts)
        with self._head(model) as (ws, bs), self._head(self.teacher) as (wt, bt):
            return chunked_kd_loss(hs, ws, ht, wt, labels, student_bias=bs, teacher_bias=bt,
                                   chunk_size=self.kd_chunk, student_softcap=self._softcaps[0],
                                   teacher_softcap=self._softcaps[1], **opts)

    def _both(self, model, inputs, with_grad):
        hs = self._forward(model, inputs, with_grad)
        with torch.no_grad():
            ht = self._forward(self.teacher, inputs, False)
        return hs, ht

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "shift_labels" not in inputs:
            raise DistillationError("batches need 'shift_labels' (use minitron_hf.data.collate_blocks)")
        n = int(num_items_in_batch) if num_items_in_batch is not None else None
        outputs = None
        if self.teacher_optimizer is not None and model.training:
            outputs = self._correct_teacher(model, inputs, n)
        loss = self.kd_loss(model, inputs, n, outputs=outputs)
        self._release_teacher_head()
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # num_items counts the tokens of every process; DDP averages gradients over processes
            loss = loss * self.accelerator.num_processes
        return (loss, None) if return_outputs else loss

    def _correct_teacher(self, model, inputs, n):
        """Continuous correction: the teacher's LM-loss gradient for this micro-batch (stepped by
        :class:`_TeacherStep` with the student's optimizer); returns both models' hidden states."""
        out = self.teacher(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"),
                           labels=inputs["labels"], shift_labels=inputs["shift_labels"], num_items_in_batch=n,
                           output_hidden_states=True, use_cache=False)
        lm = out.loss * (self.accelerator.num_processes if self.args.average_tokens_across_devices and n else 1)
        if n is None:
            lm = lm / self.args.gradient_accumulation_steps
        self.accelerator.backward(lm)
        self._teacher_lm_losses.append(float(out.loss))
        ht = out.hidden_states[-1].detach()
        if self._full_logits():
            ht = out.logits[..., : self.vocab].detach()
        return self._forward(model, inputs, True), ht

    # ------------------------------------------------------------------------------ checkpoints
    def _save_extra_checkpoint_state(self, checkpoint_dir: Path) -> None:
        """Continuous correction: the teacher and its optimizer go into ``checkpoint-N/teacher``."""
        if self.teacher_optimizer is not None and self.is_world_process_zero():
            self.accelerator.unwrap_model(self.teacher).save_pretrained(checkpoint_dir / "teacher")
            torch.save(self.teacher_optimizer.state_dict(), checkpoint_dir / "teacher" / "optimizer.pt")

    def _load_extra_checkpoint_state(self, checkpoint_dir: Path) -> None:
        if self.teacher_optimizer is None:
            return
        tdir = Path(checkpoint_dir) / "teacher"
        if not tdir.exists():
            raise DistillationError(f"{checkpoint_dir} has no teacher/ state; it was not written with "
                                    f"continuous_correction")
        teacher = self.accelerator.unwrap_model(self.teacher)
        check_model_fits_checkpoint(tdir, teacher, "the teacher (continuous_correction)")  # before anything loads
        state = {}
        for f in sorted(tdir.glob("*.safetensors")):
            state.update(load_file(str(f)))
        teacher.load_state_dict(state, strict=False)
        self.teacher_optimizer.load_state_dict(torch.load(tdir / "optimizer.pt", weights_only=True))

    # -------------------------------------------------------------------------------------- eval
    @torch.no_grad()
    def lm_and_kd_losses(self, dataloader) -> dict[str, float]:
        """Sums over a dataloader: KD loss, student LM loss, teacher LM loss (per valid token)."""
        model = self.model_wrapped if self.model_wrapped is not None else self.model
        model.eval()
        sums = torch.zeros(4, dtype=torch.float64, device=self.args.device)
        for inputs in dataloader:
            inputs = self._prepare_inputs(inputs)
            labels = inputs["shift_labels"]
            outs = self._both(model, inputs, False)
            sums[0] += float(self.kd_loss(model, inputs, num_items=1, with_grad=False, outputs=outs))
            for i, (m, out, cap) in enumerate(zip((model, self.teacher), outs, self._softcaps), start=1):
                if self._full_logits():
                    sums[i] += torch.nn.functional.cross_entropy(
                        out.reshape(-1, out.shape[-1]).float(), labels.reshape(-1), ignore_index=-100, reduction="sum")
                else:
                    with self._head(m) as (w, b):
                        sums[i] += chunked_lm_loss_sum(out, w, labels, b, self.kd_chunk, cap)
            sums[3] += int((labels != -100).sum())
            self._release_teacher_head()
        sums = self.accelerator.reduce(sums, reduction="sum")
        k = max(float(sums[3]), 1.0)
        return {"kd_loss": float(sums[0]) / k, "student_lm_loss": float(sums[1]) / k,
                "teacher_lm_loss": float(sums[2]) / k}

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        dataloader = self.get_eval_dataloader(eval_dataset)
        losses = self.lm_and_kd_losses(dataloader)
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in losses.items()}
        metrics[f"{metric_key_prefix}_student_perplexity"] = math.exp(min(losses["student_lm_loss"], 50))
        metrics[f"{metric_key_prefix}_loss"] = losses["kd_loss"]
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        self.model.train()
        return metrics
