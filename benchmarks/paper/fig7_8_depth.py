"""Fig. 7 and 8 of arXiv 2408.11796: which layers can go. Fig. 7: validation LM loss after removing each
contiguous block of k layers (k = 1, 2, 8 and half the depth). Fig. 8: accuracy on a multiple-choice
task (pydoc_continuation, 4-way, 0-shot, through LM Evaluation Harness) after removing each contiguous
block of half the layers, against the non-contiguous choice of as many layers: those whose single
removal raises the LM loss least. Layers are skipped in memory; nothing is trained.

    .venv/bin/python benchmarks/paper/fig7_8_depth.py
"""

import time

import lib

TASK, ITEMS = "pydoc_continuation", 40


def main():
    sec = lib.Section("fig7_8", "Fig. 7 and 8: contiguous layer removal, LM loss and task accuracy")
    from minitron_hf.data import load_blocks
    from minitron_hf.eval.harness import evaluate_model, score, task_manager, wrap_model
    from minitron_hf.loading import load_model, load_tokenizer
    from minitron_hf.lm_loss import lm_loss
    from minitron_hf.pruning.depth import block_lm_losses, block_task_accuracy, dropped_layers

    src = lib.teacher_dir()
    model, tok = load_model(src).eval(), load_tokenizer(src)
    L = model.config.num_hidden_layers
    half = L // 2
    ks = sorted({k for k in (1, 2, 8, half) if k < L})
    blocks = load_blocks(lib.DATA, tok, "validation", lib.SEQ, lib.VAL)
    t = time.time()
    losses = {}
    for k in ks:
        baseline, losses[k] = block_lm_losses(model, blocks, k, progress=False)
    single = losses[1]
    noncontig = sorted(sorted(range(L), key=lambda i: single[i])[:half])
    with dropped_layers(model, noncontig):
        noncontig_loss = lm_loss(model, blocks)
    loss_s = time.time() - t

    limit = max(4, round(ITEMS * lib.SCALE))
    t = time.time()
    acc = block_task_accuracy(model, tok, TASK, half, num_fewshot=0, limit=limit, noncontiguous=False, progress=False)
    with dropped_layers(model, noncontig):
        noncontig_acc = score(evaluate_model(model, tok, [TASK], num_fewshot=0, limit=limit, manager=task_manager(),
                                             lm=wrap_model(model, tok)), TASK, "acc")
    acc_s = time.time() - t

    fig, (a1, a2) = lib.figure(2)
    for k in ks:
        a1.plot(range(len(losses[k])), losses[k], "o-", ms=3, label=f"remove {k}")
    a1.axhline(baseline, color="gray", ls=":", label=f"all layers ({baseline:.2f})")
    a1.axhline(noncontig_loss, color="tab:red", ls="--", label=f"non-contiguous {half} ({noncontig_loss:.2f})")
    a1.set(xlabel="first removed layer", ylabel="validation LM loss", yscale="log", title="Fig. 7: LM loss")
    a1.legend(fontsize=7)
    a2.plot(range(len(acc["blocks"])), acc["blocks"], "o-", label=f"remove {half} contiguous")
    a2.axhline(acc["baseline"], color="gray", ls=":", label=f"all layers ({acc['baseline']:.2f})")
    a2.axhline(noncontig_acc, color="tab:red", ls="--", label=f"non-contiguous ({noncontig_acc:.2f})")
    a2.axhline(0.25, color="black", lw=0.6, label="chance")
    a2.set(xlabel="first removed layer", ylabel=f"{TASK} acc ({limit} items)", title="Fig. 8: task accuracy")
    a2.legend(fontsize=7)
    lib.save(fig, sec.png)

    order = sorted(range(L), key=lambda i: -single[i])
    rank = {i: order.index(i) + 1 for i in range(L)}
    best = {k: min(range(len(v)), key=v.__getitem__) for k, v in losses.items()}
    best_acc = max(range(len(acc["blocks"])), key=acc["blocks"].__getitem__)
    se = (0.25 * 0.75 / limit) ** 0.5
    lines = "\n".join(f"| {k} | {min(v):.3f} (layers {best[k]}-{best[k] + k - 1}) | {max(v):.3f} "
                      f"(layers {max(range(len(v)), key=v.__getitem__)}-{max(range(len(v)), key=v.__getitem__) + k - 1}) |"
                      for k, v in losses.items())
    body = f"""Teacher, {L} layers, validation loss with all layers {baseline:.3f} ({lib.VAL} x {lib.SEQ} tokens).

| k removed | best contiguous block | worst contiguous block |
|---|---|---|
{lines}

Single-layer removal, loss by layer: {' '.join(f'{x:.2f}' for x in single)}.
Non-contiguous {half}: the layers whose single removal hurts least, {noncontig}: loss {noncontig_loss:.3f}.

Task accuracy ({TASK}, first {limit} test items, 0-shot, chance 0.25, one item = {1 / limit:.3f}, standard
error about {se:.2f} near 0.5): all layers {acc['baseline']:.3f}; removing {half} contiguous layers starting at
0..{len(acc['blocks']) - 1}: {' '.join(f'{a:.2f}' for a in acc['blocks'])}; best block layers
{best_acc}-{best_acc + half - 1} at {acc['blocks'][best_acc]:.3f}; the non-contiguous choice {noncontig_acc:.3f}.
LM-loss scans {loss_s:.0f} s, accuracy scans {acc_s:.0f} s.
"""
    contiguous_wins_loss = min(losses[half]) < noncontig_loss
    contiguous_wins_acc = acc["blocks"][best_acc] > noncontig_acc
    gap_se = abs(acc["blocks"][best_acc] - noncontig_acc) / se
    reading = (f"Fig. 7 (the first and last layers matter most): removing the first layer ranks {rank[0]} and the last "
               f"{rank[L - 1]} of {L} single removals by the loss they cause (first {single[0]:.2f}, last "
               f"{single[-1]:.2f}, all layers {baseline:.2f}); the best {half}-layer block "
               f"is layers {best[half]}-{best[half] + half - 1}. Fig. 8 (contiguous beats non-contiguous): by LM loss "
               f"{'yes' if contiguous_wins_loss else 'no'} ({min(losses[half]):.3f} vs {noncontig_loss:.3f}); by "
               f"accuracy {'yes' if contiguous_wins_acc else 'no'} ({acc['blocks'][best_acc]:.3f} vs "
               f"{noncontig_acc:.3f}, a gap of {gap_se:.1f} standard errors; "
               f"choosing the best of {len(acc['blocks'])} blocks on the same items also favours the contiguous side).")
    data = {"layers": L, "baseline_loss": baseline, "block_losses": {str(k): v for k, v in losses.items()},
            "noncontiguous": {"layers": noncontig, "loss": noncontig_loss, "accuracy": noncontig_acc},
            "accuracy": acc, "task": TASK, "items": limit, "holds": {"first_layer_rank": rank[0], "last_layer_rank": rank[L - 1],
            "contiguous_beats_noncontiguous_loss": contiguous_wins_loss,
            "contiguous_beats_noncontiguous_acc": contiguous_wins_acc}}
    headline = [
        ("Fig. 7: the first and the last layer are the most important (single-layer removal)",
         f"rank of the first layer {rank[0]}, of the last {rank[L - 1]} of {L} (1 = loss rises most); best "
         f"{half}-layer block to remove: layers {best[half]}-{best[half] + half - 1}",
         f"first {lib.yes(rank[0] <= 2)}, last {lib.yes(rank[L - 1] <= 2)}"),
        ("Fig. 8: the best contiguous block beats non-contiguous removal", f"LM loss {min(losses[half]):.2f} vs "
         f"{noncontig_loss:.2f}; accuracy {acc['blocks'][best_acc]:.2f} vs {noncontig_acc:.2f} ({limit} items)",
         f"loss {lib.yes(contiguous_wins_loss)}, accuracy {lib.yes(contiguous_wins_acc)}"
         + (f" (a gap of {gap_se:.1f} standard errors: noise)" if gap_se < 1 else ""))]
    sec.write(data, body, reading, headline=headline, budget=f"no training; {lib.VAL} x {lib.SEQ} validation tokens per loss, {limit} task items "
              f"per accuracy")


if __name__ == "__main__":
    main()
