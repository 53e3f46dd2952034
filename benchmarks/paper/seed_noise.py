"""How big a difference is noise at this scale: the width student's distillation repeated with other
seeds (the seed sets the order of the training batches; pruning is deterministic). The other sections'
differences can be read against this spread.

    .venv/bin/python benchmarks/paper/seed_noise.py
"""

import statistics

import lib


def main():
    sec = lib.Section("seeds", "Seed-to-seed noise of the distillation runs")
    target = lib.width_target(lib.teacher_config())
    T, t = lib.steps(lib.T_MAIN), lib.steps(lib.T_SHORT)
    pruned, _ = lib.prune("width", target)
    main_runs = {0: lib.train("width-kd", pruned, T)}
    main_runs[1] = lib.train("width-kd-seed1", pruned, T, seed=1)
    short = {0: lib.train("width-short", pruned, t)}
    for seed in (1, 2):
        short[seed] = lib.train(f"width-short-seed{seed}", pruned, t, seed=seed)

    fig, (ax,) = lib.figure()
    lib.plot_curves(ax, {f"{T} steps, seed {s}": r for s, r in main_runs.items()}
                    | {f"{t} steps, seed {s}": r for s, r in short.items()}, None, "Width student, other seeds")
    lib.save(fig, sec.png)

    def spread(runs):
        v = [lib.last(r) for r in runs.values()]
        return v, max(v) - min(v), statistics.pstdev(v)

    (vm, rm, _), (vs, rs, sds) = spread(main_runs), spread(short)
    body = f"""| run | seeds | final validation loss | range |
|---|---|---|---|
| {T} steps ({T * lib.BATCH * lib.SEQ:,} tokens, the learning-curve runs) | {', '.join(map(str, main_runs))} | {', '.join(f'{x:.3f}' for x in vm)} | {rm:.3f} |
| {t} steps ({t * lib.BATCH * lib.SEQ:,} tokens, the short distillations) | {', '.join(map(str, short))} | {', '.join(f'{x:.3f}' for x in vs)} | {rs:.3f} |
"""
    reading = (f"Differences below about {max(rm, rs):.2f} in final loss are within seed noise here (the batch order "
               f"alone moves the {t}-step result by up to {rs:.3f} and the {T}-step result by {rm:.3f}); every other "
               f"section is a single seed (0).")
    data = {"main": {str(k): v for k, v in main_runs.items()}, "short": {str(k): v for k, v in short.items()},
            "range_main": rm, "range_short": rs, "std_short": sds}
    headline = [("(noise floor) the same width run with other seeds", f"final loss range {rm:.3f} over 2 seeds "
                 f"({T} steps), {rs:.3f} over 3 seeds ({t} steps)", "-")]
    sec.write(data, body, reading, f"{lib.budget_text(T, 2)}; {lib.budget_text(t, 3)}", headline)


if __name__ == "__main__":
    main()
