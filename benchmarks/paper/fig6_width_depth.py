"""Fig. 6 of arXiv 2408.11796: width-pruned vs depth-pruned students of (nearly) equal parameter count,
distilled on the same tokens. The depth student keeps the number of layers whose parameters come closest
to the width student's; its layers are the contiguous block whose removal raises validation loss least.

    .venv/bin/python benchmarks/paper/fig6_width_depth.py
"""

import lib


def main():
    sec = lib.Section("fig6", "Fig. 6: width vs depth pruning at equal parameters")
    cfg = lib.teacher_config()
    target = lib.width_target(cfg)
    T = lib.steps(lib.T_MAIN)
    width, rec_w = lib.prune("width", target)
    share = lib.non_embedding(width) / lib.non_embedding(lib.teacher_dir())
    layers = max(1, round(cfg.num_hidden_layers * share))
    depth, rec_d = lib.prune("depth", {"num_hidden_layers": layers})
    runs = {f"width {target}": lib.train("width-kd", width, T),
            f"depth {cfg.num_hidden_layers} -> {layers} layers": lib.train("depth-kd", depth, T)}
    teacher = next(iter(runs.values()))["curve"][-1]["teacher_lm_loss"]
    fig, (ax,) = lib.figure()
    lib.plot_curves(ax, runs, teacher, "Width vs depth, equal parameters, same tokens")
    lib.save(fig, sec.png)

    pw, pd = lib.non_embedding(width), lib.non_embedding(depth)
    (nw, w), (nd, d) = runs.items()
    body = f"""| student | non-embedding params | loss right after pruning | after {w['curve'][-1]['tokens']:,} tokens of KD | train s |
|---|---|---|---|---|
| {nw} | {pw / 1e6:.1f}M | {rec_w['val_loss']:.3f} | {lib.last(w):.3f} | {w['wall_s']:.0f} |
| {nd} (dropped {rec_d['depth']['dropped'][0]}-{rec_d['depth']['dropped'][-1]}) | {pd / 1e6:.1f}M | {rec_d['val_loss']:.3f} | {lib.last(d):.3f} | {d['wall_s']:.0f} |

Teacher validation loss {teacher:.3f}. Width importance l2_mean on {lib.CALIB} x {lib.SEQ} calibration tokens; depth
block chosen by validation LM loss (Fig. 7 metric) on {lib.VAL} x {lib.SEQ} tokens.
"""
    holds = lib.last(w) < lib.last(d)
    reading = (f"{'Yes' if holds else 'No'}: after distillation the width student is at {lib.last(w):.3f}, the depth "
               f"student at {lib.last(d):.3f} ({lib.last(d) - lib.last(w):+.3f}); right after pruning "
               f"{rec_w['val_loss']:.3f} vs {rec_d['val_loss']:.3f}.")
    data = {"width_target": target, "depth_layers": layers, "params": {"width": pw, "depth": pd},
            "prune_val_loss": {"width": rec_w["val_loss"], "depth": rec_d["val_loss"]},
            "dropped": rec_d["depth"]["dropped"], "runs": runs, "teacher_loss": teacher, "holds": holds}
    headline = [("Fig. 6: width pruning beats depth pruning at equal parameters, after distillation",
                 f"{lib.last(w):.3f} vs {lib.last(d):.3f} ({pw / 1e6:.1f}M vs {pd / 1e6:.1f}M)", lib.yes(holds),
                 lib.gap(lib.last(w) - lib.last(d), "main"))]
    sec.write(data, body, reading, lib.budget_text(T, 2), headline)


if __name__ == "__main__":
    main()
