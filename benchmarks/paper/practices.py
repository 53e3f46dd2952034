"""Two best practices of arXiv 2407.14679 checked at small scale: (1) single-shot importance is as good
as iterative pruning (the paper: iterative brings no benefit); (2) which width axis to prune: heads,
MLP neurons or hidden channels at equal parameter counts (the paper prunes MLP and hidden, and finds
head pruning the most harmful). Validation loss right after pruning and after a short distillation.

    .venv/bin/python benchmarks/paper/practices.py
"""

import lib


def main():
    sec = lib.Section("practices", "Best practices: single-shot vs iterative; heads vs MLP vs hidden")
    cfg = lib.teacher_config()
    width = lib.width_target(cfg)
    t = lib.steps(lib.T_SHORT)
    variants = {"single-shot": lib.prune("width", width),
                "iterative, 3 steps": lib.prune("width-iter3", width, iterative_steps=3)}
    axes = {name: lib.prune(f"axis-{name}", target) for name, target in lib.axis_targets(cfg).items()}
    rows = {}
    for group, items in (("shot", variants), ("axis", axes)):
        for name, (model, rec) in items.items():
            label = {"single-shot": "width"}.get(name, f"{group}-{name}".replace(" ", "").replace(",", ""))
            run = lib.train(f"{label}-short", model, t)
            rows[name] = {"group": group, "params": lib.non_embedding(model), "pruned": rec["val_loss"],
                          "distilled": lib.last(run), "target": rec["target"], "prune_s": rec["wall_time_s"]}

    fig, (a1, a2) = lib.figure(2)
    for ax, group, title in ((a1, "shot", "single-shot vs iterative"), (a2, "axis", "one axis, equal parameters")):
        names = [n for n in rows if rows[n]["group"] == group]
        x = range(len(names))
        ax.bar([i - 0.2 for i in x], [rows[n]["pruned"] for n in names], 0.4, label="right after pruning")
        ax.bar([i + 0.2 for i in x], [rows[n]["distilled"] for n in names], 0.4, label="after short KD")
        ax.set_xticks(list(x), names)
        ax.set(ylabel="validation loss", title=title)
        ax.legend(fontsize=7)
    lib.save(fig, sec.png)

    tokens = t * lib.BATCH * lib.SEQ
    table = "\n".join(f"| {n} | {r['target']} | {r['params'] / 1e6:.1f}M | {r['pruned']:.3f} | {r['distilled']:.3f} |"
                      for n, r in rows.items())
    body = f"""| variant | target | non-embedding params | loss right after pruning | after {tokens:,} tokens of KD |
|---|---|---|---|---|
{table}

Iterative: 3 steps from the teacher's widths to the target, importance re-estimated on the partly pruned model
before each step ({rows['iterative, 3 steps']['prune_s']:.0f} s vs {rows['single-shot']['prune_s']:.0f} s single-shot).
The axis students remove the same number of weights per layer: a third of the query heads, or as many MLP
neurons, or as many hidden channels.
"""
    s, i = rows["single-shot"], rows["iterative, 3 steps"]
    order_p = sorted(axes, key=lambda n: rows[n]["pruned"])
    order_d = sorted(axes, key=lambda n: rows[n]["distilled"])
    reading = (f"Single-shot vs iterative: {'yes' if s['distilled'] <= i['distilled'] + 0.05 else 'no'} (the paper: "
               f"iterative brings no benefit): after pruning {s['pruned']:.3f} vs {i['pruned']:.3f}, after the short "
               f"distillation {s['distilled']:.3f} vs {i['distilled']:.3f}. Axes, least harmful first: right after "
               f"pruning {' < '.join(order_p)}; after distillation {' < '.join(order_d)} (the paper: heads hurt "
               f"most: {'yes' if order_d[-1] == 'heads' else 'no'} here).")
    data = {"rows": rows, "axis_targets": lib.axis_targets(cfg)}
    headline = [("Iterative pruning brings no benefit over single-shot", f"after short KD {s['distilled']:.3f} "
                 f"(single-shot) vs {i['distilled']:.3f} (3 steps)", lib.yes(s["distilled"] <= i["distilled"] + 0.05),
                 lib.gap(s["distilled"] - i["distilled"], "short")),
                ("Pruning heads hurts most among heads / MLP / hidden at equal parameters",
                 "after short KD " + ", ".join(f"{n} {rows[n]['distilled']:.3f}" for n in axes),
                 lib.yes(order_d[-1] == "heads"),
                 lib.gap(rows["heads"]["distilled"] - max(rows[n]["distilled"] for n in axes if n != "heads"), "short"))]
    sec.write(data, body, reading, lib.budget_text(t, len(rows)), headline)


if __name__ == "__main__":
    main()
