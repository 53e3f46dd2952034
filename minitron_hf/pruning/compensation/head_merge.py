"""Merging pruned attention heads into kept ones (arXiv 2407.14679 sec. 2.3, ``merge_pruned_heads``).

Our reading of the paper: within each KV group, with ``L`` query heads pruned to ``K`` (ranked by importance, 1-based,
most important first), kept head ``i`` takes the residual of pruned head ``2K - i + 1``: ``W_i <- W_i + (W_i -
W_{2K-i+1})``, along the head's query rows and ``o_proj`` columns (``Family.head_merge_tensors``). Heads pruned
beyond ``2K`` have no partner. Issue 31 measured it worse than plain removal before training.
"""

from __future__ import annotations

import torch

from ...arch import family_of
from .base import Compensation


def merge_heads(t: torch.Tensor, pairs, hd: int, dim: int) -> torch.Tensor:
    """Add each pruned head's residual into its kept partner along ``dim`` (before slicing): for each
    (kept, pruned) pair of head indices, ``kept <- kept + (kept - pruned)``, every head ``hd`` wide."""
    t = t.clone()
    src = t.clone()
    for kept, pruned in pairs:
        a = torch.arange(kept * hd, (kept + 1) * hd)
        b = torch.arange(pruned * hd, (pruned + 1) * hd)
        ka, kb = src.index_select(dim, a), src.index_select(dim, b)
        t.index_copy_(dim, a, ka + (ka - kb))
    return t


class HeadMerge(Compensation):
    name = "merge_pruned_heads"
    help = "add pruned heads' residual into kept heads (arXiv 2407.14679 sec. 2.3) instead of plain removal"
    record = "merged_heads"

    def decide(self, config, importance, plan, stats=None) -> dict[int, list[tuple[int, int]]]:
        """Per layer, the (kept, pruned) source query heads of every kept KV group, in the plan's group order."""
        if importance is None:
            return {}
        kv_groups = config.num_key_value_heads
        per_group = config.num_attention_heads // kv_groups
        new_per_group = plan.new_config["num_attention_heads"] // plan.new_config["num_key_value_heads"]
        if new_per_group >= per_group:
            return {}
        # the paper's names: L heads of a group pruned to K
        K, L = new_per_group, per_group
        pairs = {}
        for layer in plan.layers:
            group_scores = importance.heads[layer].float().view(kv_groups, per_group)
            merged = []
            for g in plan.kv_heads[layer].tolist():
                # the within-group ranking the plan kept heads by (stable: ties keep source order)
                order = torch.sort(group_scores[g], descending=True, stable=True).indices
                for i in range(max(1, 2 * K - L + 1), K + 1):
                    j = 2 * K - i + 1
                    merged.append((g * per_group + int(order[i - 1]), g * per_group + int(order[j - 1])))
            if merged:
                pairs[layer] = merged
        return pairs

    def apply(self, plan, layer: int | None, name: str, t: torch.Tensor, stats=None) -> torch.Tensor:
        pairs = plan.compensations.get(self.name, {}).get(layer)
        dims = family_of(plan.new_config, check=False).head_merge_tensors
        if not pairs or name not in dims:
            return t
        return merge_heads(t, pairs, plan.head_dim, dims[name])


COMPENSATION = HeadMerge()
