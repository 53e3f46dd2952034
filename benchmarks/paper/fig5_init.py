"""Fig. 5 of arXiv 2408.11796: the same student architecture trained on the same tokens from
(a) random initialisation + KD, (b) random pruning + KD, (c) importance pruning + LM loss,
(d) importance pruning + KD. Validation LM loss against tokens.

    .venv/bin/python benchmarks/paper/fig5_init.py
"""

import lib


def main():
    sec = lib.Section("fig5", "Fig. 5: pruning vs random initialisation, distillation vs LM loss")
    cfg = lib.teacher_config()
    target = lib.width_target(cfg)
    T = lib.steps(lib.T_MAIN)
    pruned, rec = lib.prune("width", target)
    rnd, rec_rnd = lib.prune("width-random", target, importance="random")
    init = lib.random_init(pruned)
    runs = {
        "(a) random init + KD": lib.train("init-kd", init, T),
        "(b) random pruning + KD": lib.train("randprune-kd", rnd, T),
        "(c) pruning + LM loss": lib.train("width-lm", pruned, T, lm_only=True),
        "(d) pruning + KD": lib.train("width-kd", pruned, T),
    }
    teacher = runs["(d) pruning + KD"]["curve"][-1]["teacher_lm_loss"]
    fig, (ax,) = lib.figure()
    lib.plot_curves(ax, runs, teacher, f"Same student ({lib.non_embedding(pruned) / 1e6:.1f}M), same tokens")
    lib.save(fig, sec.png)

    rows = "\n".join(f"| {n} | {lib.first(r):.3f} | {r['curve'][len(r['curve']) // 2]['lm_loss']:.3f} | "
                     f"{lib.last(r):.3f} | {r['wall_s']:.0f} |" for n, r in runs.items())
    mid = runs["(d) pruning + KD"]["curve"][len(runs["(d) pruning + KD"]["curve"]) // 2]["tokens"]
    body = f"""Student: the demo's width target {target} ({lib.non_embedding(pruned) / 1e6:.1f}M non-embedding
parameters) from the teacher ({lib.non_embedding(lib.teacher_dir()) / 1e6:.1f}M). Importance: l2_mean on {lib.CALIB}
x {lib.SEQ} calibration tokens; random pruning keeps random channels; random init is transformers' own
initialisation of the same config. KD = forward KL on logits; LM loss = next-token cross-entropy only.
Teacher validation loss {teacher:.3f}.

| run | loss at 0 tokens | at {mid:,} | at {runs['(d) pruning + KD']['curve'][-1]['tokens']:,} | train s |
|---|---|---|---|---|
{rows}
"""
    a, b, c, d = (lib.last(r) for r in runs.values())
    checks = [("importance pruning + KD ends lowest", d < min(a, b, c)),
              ("KD beats LM loss from the same pruned start (d < c)", d < c),
              ("random pruning beats random init (b < a)", b < a),
              ("importance pruning beats random pruning (d < b)", d < b)]
    holds = all(ok for _, ok in checks)
    reading = ("Yes. " if holds else "Partly. " if any(ok for _, ok in checks) else "No. ") + "; ".join(
        f"{name}: {'yes' if ok else 'no'}" for name, ok in checks) + (
        f". Final losses: (a) {a:.3f}, (b) {b:.3f}, (c) {c:.3f}, (d) {d:.3f}.")
    data = {"target": target, "runs": runs, "teacher_loss": teacher, "prune_val_loss": {
        "importance": rec["val_loss"], "random": rec_rnd["val_loss"]}, "checks": dict(checks)}
    headline = [
        ("Fig. 5: importance pruning + KD ends lowest of the four",
         f"(a) random init + KD {a:.2f}, (b) random pruning + KD {b:.2f}, (c) pruning + LM loss {c:.2f}, "
         f"(d) pruning + KD {d:.2f}", lib.yes(d < min(a, b, c)), lib.gap(d - min(a, b, c), "main")),
        ("Fig. 5: KD beats the LM loss from the same pruned student", f"{d:.2f} vs {c:.2f}", lib.yes(d < c),
         lib.gap(d - c, "main")),
        ("Fig. 5: random pruning + KD beats random init + KD", f"{b:.2f} vs {a:.2f}", lib.yes(b < a),
         lib.gap(b - a, "main"))]
    sec.write(data, body, reading, lib.budget_text(T, 4), headline)


if __name__ == "__main__":
    main()
