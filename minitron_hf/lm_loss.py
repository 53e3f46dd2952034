"""The language-model loss: mean next-token cross-entropy over token blocks.

One home for the number pruning is judged by (``minitron eval loss``, the pipeline's evaluation, the depth scan's
``lm-loss`` metric, architecture search): :func:`lm_loss` on an in-memory model, :func:`validation_loss` on a
checkpoint and the validation split of its data.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .data import DataConfig, load_blocks
from .distributed import all_reduce_sum
from .loading import load_model, load_tokenizer


@torch.no_grad()
def lm_loss(model, blocks: torch.Tensor, batch_size: int = 8, progress: bool = False, reduce: bool = False) -> float:
    """Mean next-token cross-entropy over [N, seq_len] token blocks (every token counts once).

    ``reduce``: the blocks are this process's shard of the data-parallel calibration; the sums are all-reduced,
    so every process must call it. Without it nothing is collective (a main-process-only evaluation under
    ``accelerate launch`` would otherwise wait for the other processes forever)."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in tqdm(range(0, len(blocks), batch_size), desc="val loss", disable=not progress, leave=False):
        ids = blocks[i : i + batch_size].to(device)
        out = model(input_ids=ids, labels=ids, use_cache=False)
        n = ids.shape[0] * (ids.shape[1] - 1)
        total += float(out.loss) * n
        count += n
    if reduce:
        total, count = all_reduce_sum(torch.tensor([total, count], dtype=torch.float64)).tolist()
    return total / max(count, 1)


def validation_loss(model_dir, data_cfg: DataConfig, samples: int = 32, seq_len: int = 512, batch_size: int = 8,
                    device=None) -> float:
    """LM loss of a checkpoint on the validation split (the number pruning is judged by)."""
    tok = load_tokenizer(model_dir)  # before the weights load: its ids fit the model's vocabulary
    model = load_model(model_dir, device=device)
    blocks = load_blocks(data_cfg, tok, "validation", seq_len, samples)
    return lm_loss(model, blocks, batch_size)
