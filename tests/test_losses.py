"""Chunked KD losses against the naive full-logit reference: values and gradients."""

import pytest
import torch

from minitron_hf.distill.losses import LOSSES, chunked_kd_loss, chunked_lm_loss_sum, naive_kd_loss, shift_labels, token_loss


def _setup(seed=0, B=3, S=11, D=16, V=50, Dt=24, bias=False):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(B, S, D, generator=g, dtype=torch.float64, requires_grad=True)
    ws = (torch.randn(V, D, generator=g, dtype=torch.float64) * 0.5).requires_grad_()
    bs = torch.randn(V, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    ht = torch.randn(B, S, Dt, generator=g, dtype=torch.float64)
    wt = torch.randn(V, Dt, generator=g, dtype=torch.float64) * 0.5
    ids = torch.randint(0, V, (B, S), generator=g)
    mask = torch.ones(B, S, dtype=torch.long)
    mask[1, 7:] = 0  # right padding
    mask[2, :3] = 0  # left padding
    return hs, ws, bs, ht, wt, shift_labels(ids, mask)


@pytest.mark.parametrize("kind", LOSSES)
@pytest.mark.parametrize("temperature, ce_weight, bias", [(1.0, 0.0, False), (2.0, 0.5, True)])
def test_chunked_equals_naive_values_and_gradients(kind, temperature, ce_weight, bias):
    hs, ws, bs, ht, wt, labels = _setup(bias=bias)
    kw = dict(kind=kind, temperature=temperature, ce_weight=ce_weight, beta=0.3)
    ref = naive_kd_loss(torch.nn.functional.linear(hs, ws, bs), ht @ wt.T, labels, **kw)
    ref_grads = torch.autograd.grad(ref, [hs, ws] + ([bs] if bias else []))
    out = chunked_kd_loss(hs, ws, ht, wt, labels, student_bias=bs, chunk_size=4, **kw)
    grads = torch.autograd.grad(out, [hs, ws] + ([bs] if bias else []))
    torch.testing.assert_close(out, ref.float().to(out.dtype), rtol=1e-6, atol=1e-7)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("kind", LOSSES)
@pytest.mark.parametrize("caps", [(2.0, 3.0), (None, 2.5), (1.5, None)])
def test_soft_capped_logits_equal_naive_values_and_gradients(kind, caps):
    """A final logit soft cap (Gemma 2), student's and/or teacher's: the chunked loss equals the naive loss on
    ``cap * tanh(z / cap)`` logits, gradients included (the caps are small so that tanh saturates on these logits)."""
    hs, ws, bs, ht, wt, labels = _setup(bias=True)

    def capped(z, c):
        return z if c is None else c * torch.tanh(z / c)

    kw = dict(kind=kind, temperature=2.0, ce_weight=0.5, beta=0.3)
    zs, zt = torch.nn.functional.linear(hs, ws, bs), ht @ wt.T
    ref = naive_kd_loss(capped(zs, caps[0]), capped(zt, caps[1]), labels, **kw)
    assert abs(ref.item() - naive_kd_loss(zs, zt, labels, **kw).item()) > 1e-2  # the caps matter here
    ref_grads = torch.autograd.grad(ref, [hs, ws, bs])
    out = chunked_kd_loss(hs, ws, ht, wt, labels, student_bias=bs, chunk_size=4, student_softcap=caps[0],
                          teacher_softcap=caps[1], **kw)
    grads = torch.autograd.grad(out, [hs, ws, bs])
    torch.testing.assert_close(out, ref.float().to(out.dtype), rtol=1e-6, atol=1e-7)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)
    with torch.no_grad():
        lm = chunked_lm_loss_sum(hs, ws, labels, bs, chunk_size=4, softcap_value=caps[0])
        naive = torch.nn.functional.cross_entropy(capped(zs, caps[0]).reshape(-1, zs.shape[-1]), labels.reshape(-1),
                                                  ignore_index=-100, reduction="sum")
    torch.testing.assert_close(lm, naive.double(), rtol=1e-6, atol=1e-6)  # the sum computes in fp32


def test_gradient_accumulation_normalisation():
    """Two micro-batches with num_items of the whole step equal one batch of both."""
    hs, ws, _, ht, wt, labels = _setup()
    full = chunked_kd_loss(hs, ws, ht, wt, labels)
    g_full = torch.autograd.grad(full, ws)[0]
    n = int((labels != -100).sum())
    parts = [chunked_kd_loss(hs[i:j], ws, ht[i:j], wt, labels[i:j], num_items=n) for i, j in ((0, 1), (1, 3))]
    g_parts = torch.autograd.grad(sum(parts), ws)[0]
    torch.testing.assert_close(sum(parts), full)
    torch.testing.assert_close(g_parts, g_full)


def test_kd_against_itself_is_zero():
    hs, ws, _, _, _, labels = _setup()
    for kind in LOSSES:
        assert chunked_kd_loss(hs, ws, hs.detach(), ws.detach(), labels, kind=kind).abs().item() < 1e-12


def test_jsd_limits_and_padding_ignored():
    g = torch.Generator().manual_seed(1)
    zs, zt = torch.randn(5, 30, generator=g), torch.randn(5, 30, generator=g)
    # JSD is symmetric under swapping the models when beta = 0.5, and bounded by ln 2
    a, b = token_loss(zs, zt, "jsd", beta=0.5), token_loss(zt, zs, "jsd", beta=0.5)
    torch.testing.assert_close(a, b)
    assert (a <= torch.log(torch.tensor(2.0)) + 1e-6).all()
    hs, ws, _, ht, wt, labels = _setup()
    changed = ht.clone()
    changed[1, 8:] += 100  # padded positions of sample 1: must not matter
    assert torch.equal(chunked_kd_loss(hs, ws, ht, wt, labels), chunked_kd_loss(hs, ws, changed, wt, labels))


def test_shift_labels():
    ids = torch.tensor([[5, 6, 7, 8]])
    assert shift_labels(ids).tolist() == [[6, 7, 8, -100]]
    assert shift_labels(ids, torch.tensor([[1, 1, 1, 0]])).tolist() == [[6, 7, -100, -100]]


def test_vocab_mismatch_is_refused():
    hs, ws, _, ht, wt, labels = _setup()
    with pytest.raises(ValueError, match="vocabulary 50 != teacher vocabulary 49"):
        chunked_kd_loss(hs, ws, ht, wt[:49], labels)


def test_hidden_states_in_another_dtype_than_the_heads():
    """Accelerate's mixed precision hands a bf16 model's outputs back in fp32 (found on a GPU run:
    evaluation outside autocast failed with 'expected mat1 and mat2 to have the same dtype')."""
    hs, ws, _, ht, wt, labels = _setup()
    ref = chunked_kd_loss(hs, ws.bfloat16(), ht.bfloat16(), wt.bfloat16(), labels, chunk_size=4)
    out = chunked_kd_loss(hs.float(), ws.bfloat16(), ht.float(), wt.bfloat16(), labels, chunk_size=4)
    torch.testing.assert_close(out, ref)
    (g,) = torch.autograd.grad(out, [hs])
    assert g.dtype == torch.float64 and g.abs().sum() > 0  # flows back through the cast
    lm = chunked_lm_loss_sum(ht.float(), wt.bfloat16(), labels, chunk_size=4)
    torch.testing.assert_close(lm, chunked_lm_loss_sum(ht.bfloat16(), wt.bfloat16(), labels, chunk_size=4))
