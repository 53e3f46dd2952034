"""Reward-aware Preference Optimization (RPO) on TRL's ``DPOTrainer`` (``minitron align rpo``).

RPO (Nemotron-4 340B report; arXiv 2502.00203) is the loss the Minitron paper aligns with (arXiv
2408.11796 sec. 3.5, run there in NeMo-Aligner). DPO only knows that the chosen response is better;
RPO also knows *by how much*: it fits the policy's implicit reward gap to the reward model's gap.
With, per preference pair,

    a = beta * [(log pi - log pi_ref)(chosen) - (log pi - log pi_ref)(rejected)]   (the policy's gap)
    b = eta  * (r_chosen - r_rejected)                                               (the reward gap)

the losses are NeMo-Aligner's (``model.dpo.preference_loss``):

- ``rpo_bwd_kl`` (default): KL(Bernoulli(sigmoid b) || Bernoulli(sigmoid a))
  = sigmoid(b) (log sigmoid(b) - log sigmoid(a)) + sigmoid(-b) (log sigmoid(-b) - log sigmoid(-a));
  with sigmoid(b) = 1 it is DPO's sigmoid loss -log sigmoid(a);
- ``rpo_fwd_kl``: KL(Bernoulli(sigmoid a) || Bernoulli(sigmoid b));
- ``rpo_sq``: (a - b)^2;

plus an optional SFT loss on the chosen responses (``sft_weight``, NeMo-Aligner's
``sft_loss_weight``). ``beta`` is NeMo-Aligner's ``ref_policy_kl_penalty`` (default 0.2 there and
here), ``eta`` its ``gt_reward_scale`` (default 1).

``RPOTrainer`` subclasses ``DPOTrainer`` and keeps its machinery: tokenization of prompt/chosen/
rejected (plain or conversational), the reference model (a separate model, the PEFT base with
adapters disabled, or precomputed log-probs), DeepSpeed/FSDP preparation of the reference, logging.
It overrides only the loss (``_compute_loss``), keeps the two reward columns through TRL's column
pruning (``_set_signature_columns_if_needed``) and collation (the collator is wrapped to add them),
and validates the dataset (columns present, rewards finite) before any model work.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.utils import is_peft_model
from datasets import Dataset
from trl import DPOConfig, DPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import use_adapter

from ..distributed import GLOBAL_BATCH_HELP, connect_cpu_processes
from ..loading import load_model, load_tokenizer, resolve_model
from ..outputs import input_paths, no_debris, require_output_dir
from ..training import CheckpointMixin, check_training_arguments, save_trained
from .data import load_rows
from .errors import AlignmentError
from .sft import ensure_chat_template

RPO_LOSSES = ("rpo_bwd_kl", "rpo_fwd_kl", "rpo_sq")
REQUIRED_COLUMNS = ("prompt", "chosen", "rejected", "chosen_reward", "rejected_reward")
REWARD_COLUMNS = ("chosen_reward", "rejected_reward")
_NON_MODEL_KEYS = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps", *REWARD_COLUMNS}



def rpo_loss(policy_gap: torch.Tensor, reward_gap: torch.Tensor, loss: str = "rpo_bwd_kl") -> torch.Tensor:
    """Per-pair RPO loss from ``a`` = beta x (policy log-ratio gap) and ``b`` = eta x (reward gap)."""
    a, b = policy_gap, reward_gap.to(policy_gap.dtype)
    if loss == "rpo_sq":
        return (a - b) ** 2
    log_pa, log_na = F.logsigmoid(a), F.logsigmoid(-a)
    log_pb, log_nb = F.logsigmoid(b), F.logsigmoid(-b)
    if loss == "rpo_bwd_kl":
        return log_pb.exp() * (log_pb - log_pa) + log_nb.exp() * (log_nb - log_na)
    if loss == "rpo_fwd_kl":
        return log_pa.exp() * (log_pa - log_pb) + log_na.exp() * (log_na - log_nb)
    raise AlignmentError(f"rpo_loss={loss!r} is not one of {', '.join(RPO_LOSSES)}")


@dataclass
class RPOConfig(DPOConfig):
    """``DPOConfig`` plus the RPO loss options (NeMo-Aligner's names in parentheses)."""

    beta: float = field(default=0.2, metadata={"help": "scale of the policy's log-ratio gap "
                        "(NeMo-Aligner ref_policy_kl_penalty; default 0.2 as there)"})
    eta: float = field(default=1.0, metadata={"help": "scale of the reward gap (NeMo-Aligner gt_reward_scale)"})
    rpo_loss: str = field(default="rpo_bwd_kl", metadata={"help": "rpo_bwd_kl | rpo_fwd_kl | rpo_sq "
                          "(NeMo-Aligner preference_loss)", "choices": list(RPO_LOSSES)})
    sft_weight: float = field(default=0.0, metadata={"help": "weight of the SFT loss (mean negative log-likelihood "
                              "of the chosen tokens) added to the RPO loss (NeMo-Aligner sft_loss_weight)"})
    average_log_probs: bool = field(default=False, metadata={"help": "use per-token mean log-probs in the gap "
                                    "instead of sums (NeMo-Aligner preference_average_log_probs)"})
    learning_rate: float = field(default=1e-6, metadata={"help": "AdamW learning rate"})
    global_batch_size: int | None = field(default=None, metadata={"help": GLOBAL_BATCH_HELP})

    def __post_init__(self):
        check_training_arguments(self)  # as distill.trainer.TrainArgs: before anything is created
        if self.rpo_loss not in RPO_LOSSES:
            raise AlignmentError(f"rpo_loss={self.rpo_loss!r} is not one of {', '.join(RPO_LOSSES)}")
        if self.beta <= 0 or self.eta < 0 or self.sft_weight < 0:
            raise AlignmentError(f"beta={self.beta} must be > 0, eta={self.eta} and sft_weight={self.sft_weight} >= 0")
        if not torch.cuda.is_available():
            self.use_cpu = True  # connect `accelerate launch` CPU processes (as distill.trainer.TrainArgs)
            connect_cpu_processes(self)  # with ddp_timeout (distributed.connect_cpu_processes)
            if self.bf16 is None:  # TRL defaults to bf16: many times slower on these CPUs (docs/development.md)
                self.bf16 = False
        super().__post_init__()


def check_preference_dataset(dataset, name: str = "train_dataset") -> None:
    """Columns present and rewards finite numbers; raises :class:`AlignmentError` naming what is wrong."""
    cols = set(dataset.column_names)
    missing = [c for c in REQUIRED_COLUMNS if c not in cols]
    if missing:
        raise AlignmentError(f"{name}: missing column(s) {', '.join(missing)}; RPO needs {', '.join(REQUIRED_COLUMNS)} "
                             f"(has {', '.join(sorted(cols))})")
    for col in REWARD_COLUMNS:
        for i, r in enumerate(dataset[col]):
            if not isinstance(r, (int, float)) or isinstance(r, bool) or not math.isfinite(r):
                raise AlignmentError(f"{name}: row {i} has {col}={r!r}; rewards must be finite numbers")


class _WithRewards:
    """Wraps a preference collator: the padded batch plus ``chosen_reward``/``rejected_reward`` tensors."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, examples):
        out = self.inner(examples)
        for col in REWARD_COLUMNS:
            out[col] = torch.tensor([float(e[col]) for e in examples], dtype=torch.float32)
        return out


class RPOTrainer(CheckpointMixin, DPOTrainer):
    """``DPOTrainer`` with the RPO loss; datasets need ``chosen_reward`` and ``rejected_reward`` columns.
    Checkpoints are atomic and finite-only (:class:`~minitron_hf.training.CheckpointMixin`)."""

    def __init__(self, model, ref_model=None, args: RPOConfig | None = None, train_dataset=None, eval_dataset=None,
                 **kwargs):
        if args is None or not isinstance(args, RPOConfig):
            raise AlignmentError("args: RPOTrainer needs an RPOConfig")
        if args.ld_alpha is not None or args.use_weighting or args.f_divergence_type != "reverse_kl":
            raise AlignmentError("ld_alpha, use_weighting and f_divergence_type are DPO options RPO does not use: "
                                 "leave them at their defaults")
        if args.average_log_probs and args.precompute_ref_log_probs:
            raise AlignmentError("average_log_probs does not work with precompute_ref_log_probs (TRL precomputes "
                                 "summed reference log-probs)")
        if train_dataset is None:
            raise AlignmentError("train_dataset: RPO needs a preference dataset")
        check_preference_dataset(train_dataset)
        if eval_dataset is not None:
            for n, d in (eval_dataset.items() if isinstance(eval_dataset, dict) else [("eval_dataset", eval_dataset)]):
                check_preference_dataset(d, n)
        super().__init__(model, ref_model=ref_model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         **kwargs)
        self.data_collator = _WithRewards(self.data_collator)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        self._signature_columns = list(dict.fromkeys([*self._signature_columns, *REWARD_COLUMNS]))

    def compute_ref_log_probs(self, model, inputs):
        return super().compute_ref_log_probs(model, {k: v for k, v in inputs.items() if k not in REWARD_COLUMNS})

    def _sequence_logps(self, per_token_logps, shift_mask):
        logps = (per_token_logps * shift_mask).sum(dim=1)
        if self.args.average_log_probs:
            logps = logps / shift_mask.sum(dim=1).clamp(min=1)
        return logps

    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        args = self.args
        completion_mask = inputs["completion_mask"]
        shift_mask = completion_mask[..., 1:]
        model_kwargs = {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS}
        model_kwargs["use_cache"] = False
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
        per_token_logps = outputs.log_probs[:, -shift_mask.size(1):]  # prompt-learning PEFT prepends tokens
        chosen_logps, rejected_logps = self._sequence_logps(per_token_logps, shift_mask).chunk(2, dim=0)

        if self.precompute_ref_logps:
            ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            ref_model = self.ref_model if self.ref_model is not None else model  # PEFT: adapters disabled inside
            ref_inputs = {k: v for k, v in inputs.items() if k not in REWARD_COLUMNS}
            with torch.no_grad():
                ref_per_token = self._ref_per_token_logps(ref_model, ref_inputs)[:, -shift_mask.size(1):]
            ref_chosen, ref_rejected = self._sequence_logps(ref_per_token, shift_mask).chunk(2, dim=0)

        chosen_ratio, rejected_ratio = chosen_logps - ref_chosen, rejected_logps - ref_rejected
        policy_gap = args.beta * (chosen_ratio - rejected_ratio)
        reward_gap = args.eta * (inputs["chosen_reward"] - inputs["rejected_reward"]).to(policy_gap.device)
        preference = rpo_loss(policy_gap, reward_gap, args.rpo_loss).mean()
        loss = preference
        if args.sft_weight > 0:
            chosen_mask = shift_mask.chunk(2, dim=0)[0]
            chosen_tokens = per_token_logps.chunk(2, dim=0)[0]
            sft = -(chosen_tokens * chosen_mask).sum() / chosen_mask.sum().clamp(min=1)
            loss = loss + args.sft_weight * sft
            self._metrics[mode]["sft_loss"].append(self.accelerator.gather_for_metrics(sft.detach()).mean().item())

        gather = lambda t: self.accelerator.gather_for_metrics(t.detach()).float()  # noqa: E731
        chosen_rewards, rejected_rewards = gather(args.beta * chosen_ratio), gather(args.beta * rejected_ratio)
        m = self._metrics[mode]
        m["preference_loss"].append(gather(preference).mean().item())
        m["rewards/chosen"].append(chosen_rewards.mean().item())
        m["rewards/rejected"].append(rejected_rewards.mean().item())
        m["rewards/accuracies"].append((chosen_rewards > rejected_rewards).float().mean().item())
        m["rewards/margins"].append((chosen_rewards - rejected_rewards).mean().item())
        m["reward_gap"].append(gather(reward_gap).mean().item())
        m["logps/chosen"].append(gather(chosen_logps).mean().item())
        m["logps/rejected"].append(gather(rejected_logps).mean().item())
        return (loss, outputs) if return_outputs else loss

    def _ref_per_token_logps(self, ref_model, inputs):
        """Per-token reference log-probs through DPOTrainer's reference path (separate model, PEFT base with
        adapters disabled): ``compute_ref_log_probs`` returns summed log-probs, so the per-token values are
        recomputed the same way it does."""
        model_kwargs = {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS}
        model_kwargs["use_cache"] = False
        labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
        ctx = nullcontext()
        if self.ref_model is None:
            unwrapped = self.accelerator.unwrap_model(self.model)
            if is_peft_model(unwrapped):
                ctx = use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
            else:
                raise AlignmentError("ref_model: RPO needs a reference model (or a PEFT policy, or "
                                     "precompute_ref_log_probs=True)")
        with disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs), ctx:
            return ref_model(**model_kwargs, labels=labels, fused_lm_head=True).log_probs


@dataclass
class RPOScriptConfig:
    """What ``minitron align rpo`` trains on (the trainer's options are RPOConfig's)."""

    model: str = field(default="smollm2-135m", metadata={"help": "the policy: alias, local dir or Hub id"})
    ref_model: str | None = field(default=None, metadata={"help": "the reference (default: a frozen copy of model)"})
    data: str = field(default="", metadata={"help": "preference rows (json/jsonl/parquet or Hub id) with prompt, "
                      "chosen, rejected, chosen_reward, rejected_reward"})
    chat_template: str | None = field(default=None, metadata={"help": "chat template (file or 'chatml') when the "
                                      "tokenizer has none and the rows are conversational"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing output_dir/final"})

    def __post_init__(self):
        if not self.data:
            raise AlignmentError("data: give the preference rows (a json/jsonl/parquet file or a Hub dataset id)")


def run_rpo(cfg: RPOScriptConfig, args: RPOConfig) -> dict:
    """RPO on a preference dataset; writes ``output_dir/final`` and rpo.json."""
    with no_debris(args.output_dir):  # a failed run leaves no empty output folder behind
        return _run_rpo(cfg, args)


def _run_rpo(cfg: RPOScriptConfig, args: RPOConfig) -> dict:
    t0 = time.time()
    require_output_dir(args.output_dir, AlignmentError, args=args, sources=[cfg.model, *input_paths(cfg)])
    final = Path(args.output_dir) / "final"
    if final.exists() and not cfg.overwrite:
        raise AlignmentError(f"output_dir: {final} exists; set overwrite=true to replace it")
    dataset = Dataset.from_list(load_rows(cfg.data))
    check_preference_dataset(dataset, "data")
    path = resolve_model(cfg.model)
    tok = load_tokenizer(path)
    if isinstance(dataset[0]["prompt"], list):  # conversational rows go through the chat template
        ensure_chat_template(tok, cfg.chat_template, add_default=False)
    trainer = RPOTrainer(model=load_model(path), ref_model=load_model(cfg.ref_model or path), args=args,
                         train_dataset=dataset, processing_class=tok)
    out = trainer.train()
    save_trained(trainer, tok, final)
    rec = {"model": str(path), "data": cfg.data, "pairs": len(dataset), "train_loss": out.training_loss,
           "steps": out.global_step, "wall_time_s": round(time.time() - t0, 1), "final": str(final)}
    if trainer.accelerator.is_main_process:
        (Path(args.output_dir) / "rpo.json").write_text(json.dumps(rec, indent=1))
    return rec
