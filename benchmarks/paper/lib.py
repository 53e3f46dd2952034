"""Shared machinery of the paper reproductions (benchmarks/paper/*.py; `make bench-paper` runs them all).

Every script builds what it needs through :func:`artifact`: a pruned student, a corrected teacher or a
training run is written once under ``WORK`` (``runs/paper``; ``MINITRON_PAPER_WORK`` overrides) next to
the spec that made it; a later script asking for the same spec reuses it. So `make bench-paper` pays
once for the width student and its distillation, which four figures share, and each script still runs
alone. Delete ``WORK`` to measure from scratch.

One setting for all: teacher SmolLM2-135M-Instruct (``MINITRON_PAPER_TEACHER`` overrides; the smoke test
uses a tiny model), data ``python-docs``, sequences of 256 tokens, batches of 4 (1,024 tokens per step),
validation loss on the same 8 held-out sequences everywhere, AdamW with warmup and cosine decay to a tenth,
seed 0. Budgets are in steps; ``MINITRON_PAPER_SCALE`` multiplies them (the smoke test uses a small one, and
smaller sizes through ``MINITRON_PAPER_SEQ``, ``_BATCH``, ``_VAL`` and ``_CALIB``).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/common.py

from common import command, machine, revision  # noqa: E402

from minitron_hf.data import DataConfig  # noqa: E402

logging.basicConfig(level=logging.WARNING)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORK = Path(os.environ.get("MINITRON_PAPER_WORK", "runs/paper"))
RESULTS = Path(os.environ.get("MINITRON_PAPER_RESULTS", Path(__file__).resolve().parents[1] / "results"))
TEACHER = os.environ.get("MINITRON_PAPER_TEACHER", "smollm2-135m")
SCALE = float(os.environ.get("MINITRON_PAPER_SCALE", "1"))
DATA = DataConfig()
# sizes; the smoke test shrinks them through the environment
SEQ = int(os.environ.get("MINITRON_PAPER_SEQ", 256))
BATCH = int(os.environ.get("MINITRON_PAPER_BATCH", 4))
VAL = int(os.environ.get("MINITRON_PAPER_VAL", 8))
CALIB = int(os.environ.get("MINITRON_PAPER_CALIB", 32))
LR = 1e-3          # the demo's peak LR for a pruned student
SEED = 0
T_MAIN = 24        # steps of the learning-curve runs (Fig. 3-6): 24 x 1,024 = 24.6k tokens
T_SHORT = 8        # steps of the "short distillation" of the ablation tables: 8.2k tokens
EVAL_EVERY = 4

TITLE = "Reproducing the Minitron papers' findings at small scale"
INTRO = """Each section below is written by one script under `benchmarks/paper/` (`make bench-paper` runs them
all; each also runs alone, e.g. `.venv/bin/python benchmarks/paper/fig5_init.py`). The scale is the
embedded default's: teacher SmolLM2-135M-Instruct (30 layers, 106.2M non-embedding parameters), data
`python-docs` (Python documentation and standard-library source), CPU. The papers distil for 94-400B
tokens on GPUs; here a learning curve is tens of thousands of tokens, so these are statements about the
start of training. Lower validation loss is better; every loss is the student's LM loss on the same
8 x 256 held-out tokens. The JSON and PNG of each section are in `benchmarks/results/paper/`.
"""


def steps(n: int) -> int:
    return max(1, round(n * SCALE))


def teacher_dir() -> Path:
    from minitron_hf.loading import resolve_model

    return resolve_model(TEACHER)


def teacher_config():
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(teacher_dir())


def non_embedding(model_dir) -> int:
    from transformers import AutoConfig

    from minitron_hf.arch import count_parameters

    return count_parameters(AutoConfig.from_pretrained(model_dir))["non_embedding"]


# ------------------------------------------------------------------------------------------ students
def _mult(x: float, k: int = 8) -> int:
    return max(k, int(round(x / k)) * k)


def width_target(cfg) -> dict:
    """The demo's student: hidden x 0.75 (a multiple of the head count, as Llama needs), MLP x 0.5
    (SmolLM2-135M: 576 -> 432, 1536 -> 768)."""
    return {"hidden_size": _mult(cfg.hidden_size * 0.75, cfg.num_attention_heads),
            "intermediate_size": _mult(cfg.intermediate_size * 0.5)}


def axis_targets(cfg) -> dict[str, dict]:
    """Three students with the same non-embedding parameters, each pruned along one axis only: a third
    of the query heads (GQA groups kept), or as many MLP neurons, or as many hidden channels."""
    H, G, h, f = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size, cfg.intermediate_size
    hd = getattr(cfg, "head_dim", None) or h // H
    heads = H - max(G, (H // 3) // G * G)              # 9 -> 6 with 3 KV heads
    removed = 2 * (H - heads) * hd * h                 # q_proj rows + o_proj columns per layer
    per_hidden = 2 * H * hd + 2 * G * hd + 3 * f       # weights per hidden channel per layer
    return {"heads": {"num_attention_heads": heads, "num_key_value_heads": G},
            "mlp": {"intermediate_size": f - round(removed / (3 * h))},
            "hidden": {"hidden_size": _mult(h - removed / per_hidden, H)}}


# ------------------------------------------------------------------------------------------ artifacts
USED: dict[str, tuple[float, bool]] = {}  # artifacts this process used: name -> (seconds to build, reused)


def artifact(label: str, spec: dict, build) -> Path:
    """``WORK/<label>-<hash of spec>``, built by ``build(tmp_dir)`` unless a finished one exists."""
    spec = {"scale": SCALE, "seq": SEQ, "batch": BATCH, "val": VAL, "seed": SEED, **spec}
    key = hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:10]
    out = WORK / f"{label}-{key}"
    if (out / "spec.json").exists():
        USED[out.name] = (json.loads((out / "spec.json").read_text())["build_s"], True)
        return out
    tmp = WORK / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t = time.time()
    build(tmp)
    (tmp / "spec.json").write_text(json.dumps({**spec, "build_s": round(time.time() - t, 1)}, indent=1, default=str))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    USED[out.name] = (round(time.time() - t, 1), False)
    return out


def result(d: Path) -> dict:
    return json.loads((d / "result.json").read_text())


def prune(label: str, target: dict, source=None, **opts) -> tuple[Path, dict]:
    """A pruned checkpoint and its record, with ``val_loss`` right after pruning."""
    from minitron_hf.lm_loss import validation_loss
    from minitron_hf.pruning.config import PruneConfig
    from minitron_hf.pruning.prune import run_prune

    source = Path(source) if source else teacher_dir()

    def build(tmp: Path):
        rec = run_prune(DATA, PruneConfig(model=str(source), output=str(tmp / "model"), target=target,
                                          calib_samples=CALIB, seq_len=SEQ, val_samples=VAL, batch_size=8, **opts))
        rec["val_loss"] = validation_loss(tmp / "model", DATA, samples=VAL, seq_len=SEQ)
        (tmp / "result.json").write_text(json.dumps(rec, indent=1))

    d = artifact(f"prune-{label}", {"source": str(source), "target": target, "calib": CALIB, **opts}, build)
    return d / "model", result(d)


def random_init(like: Path) -> Path:
    """A randomly initialised model of ``like``'s architecture (transformers' own init), with its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from minitron_hf.loading import load_tokenizer

    def build(tmp: Path):
        torch.manual_seed(SEED)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(like))
        model.save_pretrained(tmp / "model")
        load_tokenizer(like).save_pretrained(tmp / "model")
        (tmp / "result.json").write_text(json.dumps({"like": str(like)}))

    return artifact("random-init", {"like": str(like)}, build) / "model"


def train(label: str, student, n_steps: int, teacher=None, *, lm_only: bool = False, continuous: bool = False,
          lr: float = LR, keep: bool = False, seed: int = SEED) -> dict:
    """Distil ``student`` from ``teacher`` (or train it on the LM loss alone with ``lm_only``) for
    ``n_steps`` steps; returns the run's summary with ``curve``: [{tokens, lm_loss[, kd_loss]}].
    With ``keep`` the trained model stays in ``<dir>/run/final`` (``model`` in the summary)."""
    from minitron_hf.distill.correct import CorrectionConfig, run_correction
    from minitron_hf.distill.run import DistillScriptConfig, run_distill
    from minitron_hf.distill.trainer import DistillationConfig, TrainArgs

    teacher = None if lm_only else str(teacher or teacher_dir())
    every = max(1, min(EVAL_EVERY, n_steps // 2))
    common = dict(max_steps=n_steps, per_device_train_batch_size=BATCH, learning_rate=lr,
                  lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr": lr / 10},
                  warmup_steps=max(1, n_steps // 8), weight_decay=0.0, eval_strategy="steps", eval_steps=every,
                  logging_steps=every, save_strategy="no", report_to=[], seed=seed, disable_tqdm=True)

    def build(tmp: Path):
        args_dir = str(tmp / "run")
        if lm_only:
            s = run_correction(DATA, CorrectionConfig(model=str(student), mode="full", seq_len=SEQ, eval_samples=VAL),
                               TrainArgs(output_dir=args_dir, **common))
            curve = [{"tokens": r["tokens"], "lm_loss": r["loss"]} for r in s["eval_curve"]]
        else:
            s = run_distill(DATA, DistillScriptConfig(student=str(student), teacher=teacher, seq_len=SEQ,
                                                      eval_samples=VAL),
                            DistillationConfig(output_dir=args_dir, continuous_correction=continuous, **common))
            curve = [{"tokens": r["tokens"], "lm_loss": r["student_lm_loss"], "kd_loss": r["kd_loss"],
                      "teacher_lm_loss": r["teacher_lm_loss"]} for r in s["eval_curve"]]
        s.update(curve=curve, model=str(tmp / "run" / "final"))
        if not keep:  # only the numbers are needed; the weights would fill the disk
            for name in ("final", "final-teacher"):
                shutil.rmtree(tmp / "run" / name, ignore_errors=True)
        (tmp / "result.json").write_text(json.dumps(s, indent=1, default=str))

    spec = {"student": str(student), "teacher": teacher, "steps": n_steps, "lm_only": lm_only,
            "continuous": continuous, "lr": lr, "keep": keep, **({"seed": seed} if seed != SEED else {})}
    d = artifact(f"train-{label}", spec, build)
    out = result(d)
    out["model"] = str(d / "run" / "final")  # the directory may have been renamed after the run
    out["wall_s"] = json.loads((d / "spec.json").read_text())["build_s"]
    return out


# ------------------------------------------------------------------------------------------ reporting
class Section:
    """One script's JSON, PNG and section of ``paper.md`` (between markers, other sections kept)."""

    def __init__(self, key: str, title: str):
        self.key, self.title, self.t0 = key, title, time.time()
        (RESULTS / "paper").mkdir(parents=True, exist_ok=True)
        self.png = RESULTS / "paper" / f"{key}.png"

    def write(self, data: dict, body: str, reading: str, budget: str, headline: list[tuple[str, str, str]]) -> Path:
        """``headline``: (claim, what was measured, verdict) rows for the summary table of paper.md."""
        wall = time.time() - self.t0
        built = sum(s for s, reused in USED.values() if not reused)
        reused = {n: s for n, (s, r) in USED.items() if r}
        meta = {"date": datetime.date.today().isoformat(), "machine": machine(), "command": command(),
                "commit": revision(), "wall_time_s": round(wall, 1), "built_s": round(built, 1),
                "reused_s": reused, "scale": SCALE, "seed": SEED,
                "teacher": TEACHER, "budget": budget}
        (RESULTS / "paper" / f"{self.key}.json").write_text(
            json.dumps({**meta, "headline": headline, **data}, indent=1, default=str))
        section = (f"<!-- {self.key} -->\n## {self.title}\n\n"
                   f"- date {meta['date']}, commit {meta['commit']}; machine: {meta['machine']}\n"
                   f"- command: `{meta['command']}`; wall time {wall / 60:.1f} min"
                   + (f", reusing {len(reused)} pruned/trained artifacts that took {sum(reused.values()) / 60:.1f} min "
                      f"to build when an earlier script (or run) made them: {', '.join(sorted(reused))}" if reused else "")
                   + "\n"
                   f"- budget: {budget}; seed {SEED}; scale {SCALE:g}\n\n"
                   f"{body.strip()}\n\n**Does it hold here?** {reading.strip()}\n\n"
                   f"![{self.key}](paper/{self.png.name})\n<!-- /{self.key} -->\n")
        md = RESULTS / "paper.md"
        text = md.read_text() if md.exists() else f"# {TITLE}\n\n{INTRO}\n"
        pattern = re.compile(rf"<!-- {re.escape(self.key)} -->.*?<!-- /{re.escape(self.key)} -->\n", re.S)
        text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
        table = headline_table()
        pattern = re.compile(r"<!-- headline -->.*?<!-- /headline -->\n", re.S)
        text = pattern.sub(lambda _: table, text) if pattern.search(text) else text.replace(INTRO, INTRO + "\n" + table)
        md.write_text(text)
        print(section)
        return md


ORDER = ["fig5", "fig3_4", "fig6", "fig7_8", "table15", "practices", "seeds"]


def gap(value: float, budget: str) -> dict:
    """A headline row's 4th element: the loss difference its verdict rests on and the run length it was
    measured at ("main" = T_MAIN steps, "short" = T_SHORT), so the table can compare it with the seed noise."""
    if budget not in ("main", "short"):
        raise ValueError(f"budget={budget!r}: allowed are 'main' and 'short'")
    return {"gap": abs(value), "budget": budget}


def seed_noise() -> dict[str, float]:
    """The seed-to-seed range of the final loss per budget, once seed_noise.py has run ({} before)."""
    f = RESULTS / "paper" / "seeds.json"
    if not f.exists():
        return {}
    d = json.loads(f.read_text())
    return {"main": d["range_main"], "short": d["range_short"]}


def headline_table() -> str:
    """The summary of every section written so far (from their JSON files), in the papers' order. A verdict
    resting on a loss difference smaller than the seed noise at the same budget says so."""
    noise, rows = seed_noise(), []
    for key in ORDER:
        f = RESULTS / "paper" / f"{key}.json"
        if not f.exists():
            continue
        for claim, measured, verdict, *g in json.loads(f.read_text())["headline"]:
            if g and g[0]["budget"] in noise and g[0]["gap"] < noise[g[0]["budget"]]:
                verdict += f" (gap {g[0]['gap']:.3f}, within the width run's seed noise {noise[g[0]['budget']]:.3f})"
            rows.append(f"| {claim} | {measured} | {verdict} |")
    return ("<!-- headline -->\n| finding (paper) | measured here | holds here? |\n|---|---|---|\n" + "\n".join(rows)
            + "\n<!-- /headline -->\n")


def yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def plot_curves(ax, runs: dict[str, dict], teacher_loss: float | None = None, title: str = ""):
    for name, r in runs.items():
        c = r["curve"]
        ax.plot([p["tokens"] for p in c], [p["lm_loss"] for p in c], "o-", ms=3, label=name)
    if teacher_loss is not None:
        ax.axhline(teacher_loss, color="gray", ls=":", label=f"teacher ({teacher_loss:.2f})")
    ax.set(xlabel="training tokens", ylabel="validation LM loss", title=title)
    ax.legend(fontsize=7)


def figure(ncols: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(6.5 * ncols, 4.2))
    return fig, (axes if ncols > 1 else [axes])


def save(fig, path: Path):
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)


def budget_text(n_steps: int, runs: int) -> str:
    return f"{runs} runs x {n_steps} steps x {BATCH} x {SEQ} = {n_steps * BATCH * SEQ:,} training tokens each"


def last(r: dict) -> float:
    return r["curve"][-1]["lm_loss"]


def first(r: dict) -> float:
    return r["curve"][0]["lm_loss"]
