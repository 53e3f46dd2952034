"""Table 15 analog (arXiv 2407.14679): how activation importance is aggregated over the batch and the
sequence. For each reducer pair, the same width target is pruned on the same calibration tokens; the
validation loss right after pruning and after a short distillation is reported.

    .venv/bin/python benchmarks/paper/table15_reducers.py
"""

import lib

# '<batch>_<seq>': the paper's default is L2 over the batch of per-sequence means (l2_mean)
REDUCERS = ["l2_mean", "mean_mean", "l1_mean", "max_mean", "mean_l2", "l2_l2"]


def main():
    sec = lib.Section("table15", "Table 15 analog: importance aggregation over batch and sequence")
    target = lib.width_target(lib.teacher_config())
    t = lib.steps(lib.T_SHORT)
    rows = {}
    for agg in REDUCERS:
        model, rec = lib.prune("width" if agg == "l2_mean" else f"width-{agg}", target,
                               **({} if agg == "l2_mean" else {"importance": agg}))
        run = lib.train("width-short" if agg == "l2_mean" else f"width-{agg}-short", model, t)
        rows[agg] = {"pruned": rec["val_loss"], "distilled": lib.last(run), "curve": run["curve"]}

    fig, (a1, a2) = lib.figure(2)
    names = list(rows)
    a1.bar(names, [rows[n]["pruned"] for n in names], color="tab:red")
    a1.set(ylabel="validation loss", title="right after pruning")
    a2.bar(names, [rows[n]["distilled"] for n in names], color="tab:blue")
    a2.set(ylabel="validation loss", title=f"after {rows[names[0]]['curve'][-1]['tokens']:,} tokens of KD",
           ylim=(min(r["distilled"] for r in rows.values()) - 0.2, max(r["distilled"] for r in rows.values()) + 0.1))
    for ax in (a1, a2):
        ax.tick_params(axis="x", rotation=30)
    lib.save(fig, sec.png)

    best_p = min(rows, key=lambda n: rows[n]["pruned"])
    best_d = min(rows, key=lambda n: rows[n]["distilled"])
    rank_p = sorted(rows, key=lambda n: rows[n]["pruned"])
    rank_d = sorted(rows, key=lambda n: rows[n]["distilled"])
    table = "\n".join(f"| {n} | {r['pruned']:.3f} | {r['distilled']:.3f} |" for n, r in rows.items())
    body = f"""Width target {target}; importance on the same {lib.CALIB} x {lib.SEQ} calibration tokens; reducer names
are `<over the batch>_<over the sequence>` (l2_mean = L2 norm over the batch of per-sequence means, the paper's
choice and this project's default).

| reducer (batch_seq) | loss right after pruning | after {rows[names[0]]['curve'][-1]['tokens']:,} tokens of KD |
|---|---|---|
{table}

Ranking after pruning: {', '.join(rank_p)}; after distillation: {', '.join(rank_d)}.
"""
    spread = max(r["distilled"] for r in rows.values()) - min(r["distilled"] for r in rows.values())
    reading = (f"The paper picks L2 over the batch and mean over the sequence (l2_mean). Here the best reducer right "
               f"after pruning is {best_p} and after the short distillation {best_d} "
               f"({'the paper choice' if best_d == 'l2_mean' else 'not the paper choice'}); after distillation the "
               f"reducers span {spread:.3f} in loss, "
               f"{'so the choice barely matters once the student trains' if spread < 0.1 else 'so the choice still matters after the short training'}"
               f". Whether the ranking right after pruning predicts the one after distillation: "
               f"{'yes' if rank_p[0] == rank_d[0] else 'no (the best differs)'}.")
    data = {"target": target, "reducers": rows, "best_after_pruning": best_p, "best_after_distillation": best_d}
    headline = [("Table 15: l2_mean (L2 over batch, mean over sequence) is the best reducer",
                 f"best after pruning {best_p} ({rows[best_p]['pruned']:.2f}), after short KD {best_d} "
                 f"({rows[best_d]['distilled']:.3f}; l2_mean {rows['l2_mean']['distilled']:.3f}; spread {spread:.3f})",
                 lib.yes(best_d == "l2_mean"),
                 lib.gap(rows["l2_mean"]["distilled"] - min(r["distilled"] for n, r in rows.items() if n != "l2_mean"),
                         "short"))]
    sec.write(data, body, reading, lib.budget_text(t, len(REDUCERS)), headline)


if __name__ == "__main__":
    main()
