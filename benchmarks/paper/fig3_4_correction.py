"""Fig. 3 and 4 of arXiv 2408.11796: teacher correction.

Fig. 3: the same pruned student (pruned from the original teacher) distilled from the original teacher vs
from the teacher corrected on the distillation data. Fig. 4: pruning the corrected teacher and distilling
from it vs pruning the original and distilling from a teacher corrected continuously during distillation.
The offline correction trains the teacher on the LM loss for as many tokens as a student run, at the
teacher LR that continuous correction uses by default (the student's / 5), so both corrections see the
same data at the same rate.

    .venv/bin/python benchmarks/paper/fig3_4_correction.py
"""

import lib


def main():
    sec = lib.Section("fig3_4", "Fig. 3 and 4: teacher correction")
    cfg = lib.teacher_config()
    target = lib.width_target(cfg)
    T = lib.steps(lib.T_MAIN)
    corr = lib.train("teacher-correct", lib.teacher_dir(), T, lm_only=True, lr=lib.LR / 5, keep=True)
    corrected = corr["model"]
    pruned, rec = lib.prune("width", target)
    pruned_c, rec_c = lib.prune("width-of-corrected", target, source=corrected)
    fig3 = {"prune original, KD from original": lib.train("width-kd", pruned, T),
            "prune original, KD from corrected": lib.train("width-kd-corrected", pruned, T, teacher=corrected)}
    fig4 = {"prune corrected, KD from corrected": lib.train("wcorr-kd-corrected", pruned_c, T, teacher=corrected),
            "prune original, KD from continuously corrected":
                lib.train("width-kd-continuous", pruned, T, continuous=True)}
    t_orig = fig3["prune original, KD from original"]["curve"][-1]["teacher_lm_loss"]
    t_corr = fig3["prune original, KD from corrected"]["curve"][-1]["teacher_lm_loss"]
    t_cont = fig4["prune original, KD from continuously corrected"]["curve"][-1]["teacher_lm_loss"]

    fig, (a1, a2) = lib.figure(2)
    lib.plot_curves(a1, fig3, None, "Fig. 3: KD from the original vs the corrected teacher")
    lib.plot_curves(a2, fig4, None, "Fig. 4: prune corrected vs continuous correction")
    for ax in (a1, a2):
        ax.axhline(t_orig, color="gray", ls=":", label=f"original teacher ({t_orig:.2f})")
        ax.axhline(t_corr, color="black", ls="--", lw=0.8, label=f"corrected teacher ({t_corr:.2f})")
        ax.legend(fontsize=7)
    lib.save(fig, sec.png)

    def rows(runs):
        return "\n".join(f"| {n} | {lib.first(r):.3f} | {lib.last(r):.3f} | {r['wall_s']:.0f} |" for n, r in runs.items())

    body = f"""Correction: full fine-tuning of the teacher on the LM loss, {T} steps of {lib.BATCH} x {lib.SEQ} tokens
of the distillation data's train split, peak LR {lib.LR / 5:g}: validation loss {corr['before_lm_loss']:.3f} ->
{corr['after_lm_loss']:.3f} ({corr['wall_s']:.0f} s). The continuously corrected teacher ends at {t_cont:.3f}
(same LR, trained on the same batches while the student learns from it). Student: width target {target};
right after pruning, validation loss {rec['val_loss']:.3f} (from the original) and {rec_c['val_loss']:.3f}
(from the corrected teacher).

| Fig. 3 run | student loss at 0 tokens | at {fig3['prune original, KD from original']['curve'][-1]['tokens']:,} | train s |
|---|---|---|---|
{rows(fig3)}

| Fig. 4 run | student loss at 0 tokens | at the end | train s |
|---|---|---|---|
{rows(fig4)}
"""
    o, c = (lib.last(r) for r in fig3.values())
    pc, cc = (lib.last(r) for r in fig4.values())
    f3 = c < o
    f4 = abs(pc - cc) < 0.05 or cc < pc
    reading = (f"Fig. 3: {'yes' if f3 else 'no'}: distilling from the corrected teacher ends at {c:.3f} vs {o:.3f} "
               f"from the original ({o - c:+.3f}); the corrected teacher's own loss is {t_corr:.3f} vs {t_orig:.3f}. "
               f"Fig. 4 (the paper: continuous correction matches pruning the corrected teacher): "
               f"{'yes' if f4 else 'no'}: {cc:.3f} (continuous) vs {pc:.3f} (prune the corrected teacher).")
    data = {"target": target, "correction": corr, "fig3": fig3, "fig4": fig4, "teacher_loss": {
        "original": t_orig, "corrected": t_corr, "continuous_final": t_cont},
        "prune_val_loss": {"original": rec["val_loss"], "corrected": rec_c["val_loss"]},
        "holds": {"fig3": f3, "fig4": f4}}
    headline = [("Fig. 3: distilling from the corrected teacher beats the original teacher",
                 f"{c:.3f} vs {o:.3f} (teachers {t_corr:.2f} vs {t_orig:.2f})", lib.yes(f3), lib.gap(c - o, "main")),
                ("Fig. 4: continuous correction matches pruning the corrected teacher",
                 f"{cc:.3f} vs {pc:.3f}", lib.yes(f4), lib.gap(cc - pc, "main"))]
    sec.write(data, body, reading, lib.budget_text(T, 5) + " (one is the teacher correction)", headline)


if __name__ == "__main__":
    main()
