"""Logit distillation losses (arXiv 2408.11796 sec. 2.3): per-token definitions and a chunked,
memory-flat implementation that never materialises [tokens x vocab] logits for the whole batch.

Per-token losses (``token_loss``) act on student and teacher logits of one token and sum over the
vocabulary; the batch loss is their sum over valid tokens divided by ``num_items`` (the number of
valid shifted tokens of the whole optimizer step, so gradient accumulation normalises correctly):

- ``forward_kl``: KL(p_teacher || p_student) (the paper's loss);
- ``reverse_kl``: KL(p_student || p_teacher);
- ``jsd``: beta * KL(p_t || m) + (1 - beta) * KL(p_s || m), m = beta * p_t + (1 - beta) * p_s;

on softmax(logits / T), scaled by T^2 so gradients keep their size across temperatures; plus
``ce_weight`` x the student's cross-entropy on the labels (0 by default, as in the paper).

:func:`chunked_kd_loss` takes the final hidden states and LM-head weights of both models. It
walks the tokens in chunks: each chunk's logits exist only inside the loop, and the gradients with
respect to the student's hidden states and LM-head weight are accumulated right there (the
Liger-Kernel "fused linear" approach), so extra memory is O(chunk x vocab) whatever the sequence
length, and the work is the same three matmuls per chunk as the naive forward + backward.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..arch.base import softcap

LOSSES = ("forward_kl", "reverse_kl", "jsd")


def token_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str = "forward_kl",
               temperature: float = 1.0, beta: float = 0.5) -> torch.Tensor:
    """Per-token divergence, [..., V] logits -> [...] (at least fp32, T^2-scaled)."""
    dt = torch.promote_types(student_logits.dtype, torch.float32)
    s = F.log_softmax(student_logits.to(dt) / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.to(dt) / temperature, dim=-1)
    if kind == "forward_kl":
        loss = (t.exp() * (t - s)).sum(-1)
    elif kind == "reverse_kl":
        loss = (s.exp() * (s - t)).sum(-1)
    elif kind == "jsd":
        if not 0 < beta < 1:
            raise ValueError(f"jsd_beta={beta} must be in (0, 1)")
        m = torch.logsumexp(torch.stack([t + math.log(beta), s + math.log(1 - beta)]), 0)
        loss = beta * (t.exp() * (t - m)).sum(-1) + (1 - beta) * (s.exp() * (s - m)).sum(-1)
    else:
        raise ValueError(f"loss={kind!r} is not one of {', '.join(LOSSES)}")
    return loss * temperature**2


def _chunk_loss(zs, zt, labels, kind, temperature, beta, ce_weight):
    """Summed loss of one chunk of tokens (valid tokens only) from its logits."""
    valid = labels != -100
    loss = (token_loss(zs, zt, kind, temperature, beta) * valid).sum()
    if ce_weight:
        dt = torch.promote_types(zs.dtype, torch.float32)
        loss = loss + ce_weight * F.cross_entropy(zs.to(dt), labels, ignore_index=-100, reduction="sum")
    return loss


def _forward_kl_chunk(zs, zt, labels, temperature, ce_weight, need_grad):
    """Summed forward KL (+ CE) of one chunk and its gradient with respect to the student logits.

    d/dz_s of T^2 KL(softmax(z_t/T) || softmax(z_s/T)) = T (softmax(z_s/T) - softmax(z_t/T)), and
    d/dz_s CE = softmax(z_s) - onehot(label): equal to autograd through :func:`token_loss` (tested),
    in about half the elementwise passes over the [chunk x vocab] logits, which dominate on CPU.
    """
    dt = torch.promote_types(zs.dtype, torch.float32)
    valid = (labels != -100).unsqueeze(-1)
    t = F.log_softmax(zt.to(dt) / temperature, dim=-1)
    s = F.log_softmax(zs.to(dt) / temperature, dim=-1)
    pt = t.exp()
    loss = ((pt * (t - s)).sum(-1, keepdim=True) * valid).sum() * temperature**2
    g = None
    if need_grad:
        g = s.exp_().sub_(pt).mul_(valid * temperature)  # in place: s is not needed any more
    if ce_weight:
        lsm = F.log_softmax(zs.to(dt), dim=-1) if temperature != 1 or g is not None else s
        safe = labels.clamp_min(0).unsqueeze(-1)
        loss = loss - ce_weight * (lsm.gather(-1, safe) * valid).sum()
        if need_grad:
            ce_grad = lsm.exp_()
            ce_grad.scatter_add_(-1, safe, -torch.ones_like(safe, dtype=dt))
            g.add_(ce_grad.mul_(valid), alpha=ce_weight)
    return loss, g


class _ChunkedKD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hs, ws, bs, ht, wt, bt, labels, kind, temperature, beta, ce_weight, num_items, chunk, caps):
        grad_h = torch.zeros_like(hs) if hs.requires_grad else None
        grad_w = torch.zeros_like(ws, dtype=torch.promote_types(ws.dtype, torch.float32)) if ws.requires_grad else None
        grad_b = torch.zeros_like(bs, dtype=torch.promote_types(bs.dtype, torch.float32)) if bs is not None and bs.requires_grad else None
        total = torch.zeros((), dtype=torch.promote_types(hs.dtype, torch.float32), device=hs.device)
        need_grad = grad_h is not None or grad_w is not None or grad_b is not None
        for i in range(0, hs.shape[0], chunk):
            h, lab = hs[i:i + chunk], labels[i:i + chunk]
            if not (lab != -100).any():
                continue
            with torch.no_grad():
                zt = softcap(F.linear(ht[i:i + chunk], wt, bt), caps[1])
                zs = softcap(F.linear(h, ws, bs), caps[0])
            if kind == "forward_kl":  # the paper's loss: closed-form gradient, fewer passes over the logits
                with torch.no_grad():
                    loss, g = _forward_kl_chunk(zs, zt, lab, temperature, ce_weight, need_grad)
            else:
                with torch.enable_grad():
                    zs = zs.requires_grad_(need_grad)
                    loss = _chunk_loss(zs, zt, lab, kind, temperature, beta, ce_weight)
                    g = torch.autograd.grad(loss, zs)[0] if need_grad else None
            total += loss.detach()
            if g is not None and caps[0] is not None:
                # through the soft cap c * tanh(z / c): dz_capped / dz = 1 - (z_capped / c)^2
                g = g * (1 - (zs.detach().to(g.dtype) / caps[0]) ** 2)
            if g is not None:
                g = g.to(ws.dtype)
                if grad_h is not None:
                    grad_h[i:i + chunk] = g @ ws
                if grad_w is not None:  # in place: no [V, D] temporary per chunk
                    if grad_w.dtype == g.dtype:
                        grad_w.addmm_(g.t(), h)
                    else:
                        grad_w += (g.t() @ h).to(grad_w.dtype)
                if grad_b is not None:
                    grad_b += g.to(grad_b.dtype).sum(0)
        ctx.save_for_backward(*(x if x is not None else torch.empty(0) for x in (grad_h, grad_w, grad_b)))
        ctx.has = (grad_h is not None, grad_w is not None, grad_b is not None)
        ctx.num_items = num_items
        ctx.dtypes = (ws.dtype, None if bs is None else bs.dtype)
        return total / num_items

    @staticmethod
    def backward(ctx, grad_out):
        gh, gw, gb = ctx.saved_tensors
        has_h, has_w, has_b = ctx.has
        scale = grad_out / ctx.num_items
        return (gh * scale.to(gh.dtype) if has_h else None,
                (gw * scale).to(ctx.dtypes[0]) if has_w else None,
                (gb * scale).to(ctx.dtypes[1]) if has_b else None,
                None, None, None, None, None, None, None, None, None, None, None)


def chunked_kd_loss(student_hidden: torch.Tensor, student_weight: torch.Tensor, teacher_hidden: torch.Tensor,
                    teacher_weight: torch.Tensor, labels: torch.Tensor, *, student_bias=None, teacher_bias=None,
                    kind: str = "forward_kl", temperature: float = 1.0, beta: float = 0.5, ce_weight: float = 0.0,
                    num_items: int | None = None, chunk_size: int | None = None, student_softcap: float | None = None,
                    teacher_softcap: float | None = None) -> torch.Tensor:
    """KD loss from final hidden states [..., D] and LM-head weights [V, D], token by token in chunks.

    ``student_softcap``/``teacher_softcap``: a model's final logit soft cap (Gemma 2:
    ``cap * tanh(z / cap)``, :meth:`~minitron_hf.arch.base.Family.logit_softcap`), applied to each chunk's logits
    as the model's own forward does; the student's gradient goes through it in closed form.

    ``labels`` [...] marks the tokens that count (-100 = ignored, e.g. padding or the last position);
    they are the targets of the optional cross-entropy term. Hidden states and labels must already be
    aligned (position i predicts labels[i]). ``num_items`` defaults to the number of valid tokens.
    ``chunk_size``: tokens per chunk; None = :func:`chunk_tokens`'s default (by vocabulary and device).
    """
    if kind not in LOSSES:
        raise ValueError(f"loss={kind!r} is not one of {', '.join(LOSSES)}")
    if student_weight.shape[0] != teacher_weight.shape[0]:
        raise ValueError(f"student vocabulary {student_weight.shape[0]} != teacher vocabulary {teacher_weight.shape[0]}")
    # Hidden states in the head's dtype: Accelerate's mixed precision returns a bf16 model's outputs
    # in fp32 (convert_outputs_to_fp32), and outside autocast (evaluation) F.linear needs one dtype.
    hs = student_hidden.reshape(-1, student_hidden.shape[-1]).to(student_weight.dtype)
    ht = teacher_hidden.reshape(-1, teacher_hidden.shape[-1]).detach().to(teacher_weight.dtype)
    lab = labels.reshape(-1)
    if num_items is None:
        num_items = int((lab != -100).sum())
    num_items = max(int(num_items), 1)
    chunk_size = chunk_tokens(chunk_size, student_weight.shape[0], hs.device)
    return _ChunkedKD.apply(hs, student_weight, student_bias, ht, teacher_weight.detach(),
                            None if teacher_bias is None else teacher_bias.detach(), lab, kind,
                            float(temperature), float(beta), float(ce_weight), num_items, int(chunk_size),
                            (student_softcap, teacher_softcap))


def chunk_tokens(chunk_size: int | None, vocab: int, device=None) -> int:
    """Tokens per chunk of the chunked losses: ``chunk_size`` when set (> 0), else :func:`auto_chunk_size`. The one
    place the automatic default is resolved; ``DistillationTrainer`` calls it once, when it is built."""
    return int(chunk_size) if chunk_size else auto_chunk_size(vocab, device)


def auto_chunk_size(vocab: int, device=None, logits_per_chunk: int | None = None) -> int:
    """Tokens per chunk of the KD loss for a vocabulary, by device.

    CPU: about 16M logits per chunk (64 MiB of fp32 logits; the loss holds a few such tensors): 341
    tokens at vocab 49152, 130 at 128256. CUDA: 256M logits (1 GiB), 2092 tokens at vocab 128256:
    every chunk reads and accumulates the whole [vocab x hidden] weight gradient, which small chunks
    make the bottleneck on a GPU. H100, vocab 128256, hidden 4096, 16384 tokens (benchmarks/results/
    gpu_llama8b.md): 130-token chunks 4.1x the naive loss's time, 2092-token chunks 1.09x at 5.5x less
    peak memory.
    """
    if logits_per_chunk is None:
        on_gpu = device is not None and torch.device(device).type != "cpu"
        logits_per_chunk = 1 << 28 if on_gpu else 1 << 24
    return max(1, logits_per_chunk // vocab)


def naive_kd_loss(student_logits, teacher_logits, labels, *, kind="forward_kl", temperature=1.0, beta=0.5,
                  ce_weight=0.0, num_items=None):
    """Reference: full [tokens x vocab] logits, autograd everywhere (what the chunked loss must equal)."""
    zs = student_logits.reshape(-1, student_logits.shape[-1])
    zt = teacher_logits.reshape(-1, teacher_logits.shape[-1]).detach()
    lab = labels.reshape(-1)
    if num_items is None:
        num_items = int((lab != -100).sum())
    return _chunk_loss(zs, zt, lab, kind, temperature, beta, ce_weight) / max(int(num_items), 1)


def shift_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Labels aligned with positions: position i predicts token i+1; the last position and padding
    are -100."""
    labels = torch.full_like(input_ids, -100)
    labels[..., :-1] = input_ids[..., 1:]
    if attention_mask is not None:
        nxt = torch.zeros_like(attention_mask)
        nxt[..., :-1] = attention_mask[..., 1:]
        labels = labels.masked_fill((attention_mask == 0) | (nxt == 0), -100)
    return labels


@torch.no_grad()
def chunked_lm_loss_sum(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, bias=None,
                        chunk_size: int = 1024, softcap_value: float | None = None) -> torch.Tensor:
    """Summed next-token cross-entropy from final hidden states, chunk by chunk (evaluation only); ``softcap_value``
    as in :func:`chunked_kd_loss`."""
    h = hidden.reshape(-1, hidden.shape[-1]).to(weight.dtype)  # fp32 outputs of a bf16 model: see chunked_kd_loss
    lab = labels.reshape(-1)
    total = torch.zeros((), dtype=torch.float64, device=h.device)
    for i in range(0, h.shape[0], chunk_size):
        z = softcap(F.linear(h[i:i + chunk_size], weight, bias), softcap_value)
        total += F.cross_entropy(z.float(), lab[i:i + chunk_size], ignore_index=-100, reduction="sum").double()
    return total
