"""Validation LM loss and perplexity of checkpoints (``minitron eval loss``; the old ``minitron evaluate``).

Every model's tokenizer loads first (a checkpoint that cannot be read fails before any model is scored); then, one
model after another, its parameter counts and its LM loss on ``samples`` blocks of ``seq_len`` tokens of the
validation split of ``data`` (:func:`minitron_hf.lm_loss.validation_loss`, the number pruning is judged by, as in
arXiv 2408.11796 Fig. 7 and 8). The table is the plain-text one the command has always printed.

The torch-bound imports (data, loading, the LM loss, transformers) stay inside the steps: ``minitron --help``
imports every suite module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..config import at_least
from .suite import EvalError, Suite


@dataclass
class LossEvalConfig:
    """Options of ``minitron eval loss``."""

    data: str = field(default="python-docs", metadata={"help": "text whose validation split is scored: "
                      "'python-docs' (embedded default), a local file or directory, a folder written by `minitron "
                      "data prepare`, or a Hub dataset id"})
    samples: int = field(default=16, metadata={"help": "blocks of seq_len tokens scored per model"})
    seq_len: int = field(default=256, metadata={"help": "tokens per block"})
    output: str | None = field(default=None, metadata={"help": "directory for results.json and results.md"})

    def __post_init__(self):
        at_least(self, ("samples",), error=EvalError)
        at_least(self, ("seq_len",), low=2, error=EvalError)


class LossSuite(Suite):
    """Validation LM loss: ``check`` loads every tokenizer, ``generate`` scores one checkpoint, ``score`` adds its
    perplexity."""

    name = "loss"
    help = "validation LM loss and perplexity of checkpoints (same tokens for all)"
    config_class = LossEvalConfig

    @staticmethod
    def table(out: dict) -> str:
        return results_table(out)

    def check(self, models, names) -> list:
        from ..data import DataConfig
        from ..loading import load_tokenizer

        self.data = DataConfig(data=self.cfg.data)
        for m in models:  # every model and its tokenizer before the first is scored
            load_tokenizer(m)
        return list(models)

    def generate(self, model, name: str) -> tuple[float, dict[str, int]]:
        """(LM loss, parameter counts) of one checkpoint."""
        from transformers import AutoConfig

        from ..arch import count_parameters
        from ..lm_loss import validation_loss
        from ..loading import resolve_model

        counts = count_parameters(AutoConfig.from_pretrained(resolve_model(model)))
        return validation_loss(model, self.data, samples=self.cfg.samples, seq_len=self.cfg.seq_len), counts

    def score(self, name: str, outputs) -> dict:
        loss, counts = outputs
        return {"val_loss": loss, "perplexity": min(math.exp(loss), 1e12),
                **{f"params_{k}": v for k, v in counts.items()}}


def results_table(out: dict) -> str:
    """The data and the token count, then a row per model: parameters, non-embedding parameters, loss, perplexity."""
    c = out["config"]
    lines = [f"validation split of {c['data']!r}, {c['samples']} x {c['seq_len']} tokens",
             f"{'model':<40} {'params':>9} {'non-emb':>9} {'val loss':>9} {'ppl':>10}"]
    for name, r in out["results"].items():
        lines.append(f"{name:<40} {r['params_total'] / 1e6:>8.1f}M {r['params_non_embedding'] / 1e6:>8.1f}M "
                     f"{r['val_loss']:>9.3f} {r['perplexity']:>10.1f}")
    return "\n".join(lines)
