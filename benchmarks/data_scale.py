"""Issue 17: memory and time of the data path do not grow with the corpus.

Generated corpora of about 100 MB, 1 GB and 4 GB of text (jsonl; documents are random 1-8 KB slices of the
embedded python-docs text, each with a unique first line so that none is a duplicate). For each:

1. ``minitron data prepare --num-proc 2``: wall time, peak RSS of the main process, of the largest worker,
   and of the whole process tree (sampled every 0.1 s with psutil).
2. ``minitron distill`` of the default model (SmolLM2-135M as student and teacher), 2 steps of 1 x 256 tokens,
   reading the prepared folder: peak RSS and the time from process start to the first logged training step.
3. On the largest corpus, resume: the run's checkpoint-2 is copied twice and its ``trainer_state.json`` step is
   set to 10% and to 90% of the corpus' steps (the weights stay those of step 2: what is measured is the cost of
   finding the data position); each resumed run is timed from process start to its first new logged step.

Throughput of prepare is compared with the fast tokenizer alone in one process (``TOKENIZERS_PARALLELISM=false``,
batches of 1 MB of text, nothing else: no reading, splitting, dedup or writing) on the first 100 MB.

    .venv/bin/python benchmarks/data_scale.py [--sizes-mb 100 1000 4000] [--keep]

Everything lives in runs/data_scale/ (corpora are reused when present; --keep keeps the prepared folders).
Writes benchmarks/results/data_scale.md and data_scale.json. Run it alone: it uses both cores.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result  # noqa: E402

RUNS = ROOT / "runs" / "data_scale"
MINITRON = [sys.executable, "-m", "minitron_hf.cli"]
SEQ_LEN = 256


def make_corpus(path: Path, mb: int) -> Path:
    if path.exists() and path.stat().st_size >= mb * 1_000_000:
        return path
    from minitron_hf.data import python_docs_documents

    text = "\n".join(t for _, t in python_docs_documents())
    rng = random.Random(mb)
    tmp = path.with_suffix(".tmp")
    written, i = 0, 0
    with open(tmp, "w") as f:
        while written < mb * 1_000_000:
            n = rng.randint(1000, 8000)
            start = rng.randrange(0, len(text) - n)
            line = json.dumps({"text": f"document {i}\n" + text[start:start + n]}) + "\n"
            f.write(line)
            written += len(line)
            i += 1
    tmp.rename(path)
    return path


class Peak:
    """Peak RSS of a process and its descendants, sampled every ``dt`` seconds."""

    def __init__(self, pid: int, dt: float = 0.1):
        import psutil

        self.proc, self.dt = psutil.Process(pid), dt
        self.main = self.worker = self.total = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        import psutil

        while not self._stop.is_set():
            try:
                main = self.proc.memory_info().rss
                kids = []
                for c in self.proc.children(recursive=True):
                    try:
                        kids.append(c.memory_info().rss)
                    except psutil.Error:
                        pass
            except psutil.Error:
                break
            self.main = max(self.main, main)
            self.worker = max([self.worker, *kids])
            self.total = max(self.total, main + sum(kids))
            time.sleep(self.dt)

    def stop(self):
        self._stop.set()
        self._t.join()


def run(cmd: list[str], first_step: bool = False, timeout: float = 7200) -> dict:
    """Run ``cmd``; peak RSS; with ``first_step``, the seconds from start to the first logged training loss (the
    process is then left to finish)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    peak = Peak(p.pid)
    out, t_first = [], None
    for line in p.stdout:
        out.append(line)
        if first_step and t_first is None and re.search(r"'loss': ", line):
            t_first = time.time() - t0
    rc = p.wait(timeout=timeout)
    peak.stop()
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({rc}):\n{''.join(out[-30:])}")
    return {"seconds": round(time.time() - t0, 1), "first_step_s": None if t_first is None else round(t_first, 1),
            "rss_main_mib": round(peak.main / 2**20), "rss_worker_mib": round(peak.worker / 2**20),
            "rss_tree_mib": round(peak.total / 2**20), "output": "".join(out[-5:])}


def tokenizer_ceiling(corpus: Path, mb: int = 100) -> dict:
    """Tokens per second of the fast tokenizer alone, one process, one thread, on the first ``mb`` MB of text."""
    code = f"""
import json, time, os
os.environ["TOKENIZERS_PARALLELISM"] = "false"
from minitron_hf.loading import load_tokenizer
tok = load_tokenizer("smollm2-135m")
texts, n = [], 0
with open({str(corpus)!r}) as f:
    for line in f:
        t = json.loads(line)["text"]; texts.append(t); n += len(line)
        if n >= {mb} * 1_000_000: break
t0 = time.time(); toks = 0; i = 0
while i < len(texts):
    j, c = i, 0
    while j < len(texts) and c < 1_000_000:
        c += len(texts[j]); j += 1
    toks += sum(len(x) for x in tok(texts[i:j], add_special_tokens=False)["input_ids"]); i = j
dt = time.time() - t0
print(json.dumps({{"tokens": toks, "seconds": dt, "documents": len(texts)}}))
"""
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def distill_cmd(data: Path, out: Path, max_steps: int, resume: str | None = None) -> list[str]:
    cmd = [*MINITRON, "distill", "--student", "smollm2-135m", "--teacher", "smollm2-135m", "--data", str(data),
           "--output-dir", str(out), "--seq-len", str(SEQ_LEN), "--max-steps", str(max_steps),
           "--per-device-train-batch-size", "1", "--gradient-accumulation-steps", "1", "--logging-steps", "1",
           "--save-steps", "2", "--save-strategy", "steps", "--eval-samples", "2", "--eval-strategy", "no",
           "--report-to", "none", "--overwrite"]
    if resume:
        cmd += ["--resume-from-checkpoint", resume]
    return cmd


def two_process(prepared: Path, mb: int) -> dict:
    """The issue's end-to-end check: 2 processes (torchrun + gloo on CPU) distil 4 steps from the prepared corpus,
    saving at step 2; a second launch resumes from a copy of that checkpoint-2 and must end with the same weights."""
    from safetensors.torch import load_file

    acc = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "recipes" / "distill.py")]
    full, cut = RUNS / "two-full", RUNS / "two-resumed"
    shutil.rmtree(cut, ignore_errors=True)
    base = distill_cmd(prepared, full, 4)[len(MINITRON) + 1:]
    r_full = run([*acc, *base], first_step=True)
    cut.mkdir()
    shutil.copytree(full / "checkpoint-2", cut / "checkpoint-2")
    resumed = distill_cmd(prepared, cut, 4, resume="true")[len(MINITRON) + 1:]
    resumed.remove("--overwrite")
    r_res = run([*acc, *resumed], first_step=True)
    a = load_file(str(full / "final" / "model.safetensors"))
    b = load_file(str(cut / "final" / "model.safetensors"))
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    return {"corpus_mb": mb, "full": r_full, "resumed": r_res, "max_abs_weight_diff": diff}


def first_steps(sizes: list[int], rounds: int = 3) -> dict:
    """Start -> first step of a 2-step distill on the smallest and the largest prepared corpus, alternating, ``rounds``
    times each: the single runs of the main pass follow each corpus' preparation, whose gigabytes of I/O leave the
    page cache (and the model files in it) in a different state each time."""
    small, big = min(sizes), max(sizes)
    out = {small: [], big: []}
    for _ in range(rounds):
        for mb in (small, big):
            r = run(distill_cmd(RUNS / f"prepared-{mb}mb", RUNS / f"first-{mb}mb", 2), first_step=True)
            out[mb].append(r["first_step_s"])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes-mb", type=int, nargs="+", default=[100, 1000, 4000])
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--first-steps-only", action="store_true", help="only rerun the start -> first step comparison "
                    "(alternating, 3 rounds) on the kept prepared folders, and rewrite the report")
    a = ap.parse_args()
    if a.first_steps_only:
        res = json.load(open(RUNS / "data_scale.json"))
        res["sizes"] = {int(k): v for k, v in res["sizes"].items()}
        res["resume"] = {float(k): v for k, v in res["resume"].items()}
        res["first_steps"] = first_steps(a.sizes_mb)
        json.dump(res, open(RUNS / "data_scale.json", "w"), indent=1)
        write_report(res, a.sizes_mb)
        return
    RUNS.mkdir(parents=True, exist_ok=True)
    res = {"sizes": {}}
    for mb in a.sizes_mb:
        corpus = make_corpus(RUNS / f"corpus-{mb}mb.jsonl", mb)
        prepared = RUNS / f"prepared-{mb}mb"
        shutil.rmtree(prepared, ignore_errors=True)
        print(f"== {mb} MB: prepare", flush=True)
        prep = run([*MINITRON, "data", "prepare", "--data", str(corpus), "--output", str(prepared), "--num-proc", "2"])
        manifest = json.loads((prepared / "manifest.json").read_text())
        tokens = sum(s["tokens"] for s in manifest["splits"].values())
        prep.update(tokens=tokens, documents=manifest["documents"]["kept"], corpus_bytes=corpus.stat().st_size,
                    tokens_per_s=round(tokens / prep["seconds"]))
        print(f"== {mb} MB: distill 2 steps", flush=True)
        dist = run(distill_cmd(prepared, RUNS / f"distill-{mb}mb", 2), first_step=True)
        res["sizes"][mb] = {"prepare": prep, "distill": dist,
                            "train_blocks": manifest["splits"]["train"]["tokens"] // SEQ_LEN}
        json.dump(res, open(RUNS / "data_scale.json", "w"), indent=1)
    big = max(a.sizes_mb)
    n_steps = res["sizes"][big]["train_blocks"]  # batch 1: one block per step
    ckpt = RUNS / f"distill-{big}mb" / "checkpoint-2"
    res["resume"] = {}
    for frac in (0.1, 0.9):
        step = int(frac * n_steps)
        out = RUNS / f"resume-{int(frac * 100)}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        shutil.copytree(ckpt, out / f"checkpoint-{step}")
        st = out / f"checkpoint-{step}" / "trainer_state.json"
        state = json.loads(st.read_text())
        state["global_step"] = step
        st.write_text(json.dumps(state))
        m = json.loads((out / f"checkpoint-{step}" / "minitron_checkpoint.json").read_text())
        m["step"] = step
        (out / f"checkpoint-{step}" / "minitron_checkpoint.json").write_text(json.dumps(m))
        print(f"== resume at {frac:.0%} (step {step:,} of {n_steps:,})", flush=True)
        cmd = distill_cmd(RUNS / f"prepared-{big}mb", out, step + 1, resume=str(out / f"checkpoint-{step}"))
        cmd.remove("--overwrite")
        r = run(cmd, first_step=True)
        res["resume"][frac] = {"step": step, "steps": n_steps, **r}
        json.dump(res, open(RUNS / "data_scale.json", "w"), indent=1)
    mid = 1000 if 1000 in a.sizes_mb else big
    print(f"== accelerate launch --multi_gpu --num_processes 2 on the {mid} MB corpus: 4 steps, and resumed at 2",
          flush=True)
    res["two_process"] = two_process(RUNS / f"prepared-{mid}mb", mid)
    json.dump(res, open(RUNS / "data_scale.json", "w"), indent=1)
    print("== start -> first step, alternating", flush=True)
    res["first_steps"] = first_steps(a.sizes_mb)
    json.dump(res, open(RUNS / "data_scale.json", "w"), indent=1)
    print("== tokenizer alone", flush=True)
    res["ceiling"] = tokenizer_ceiling(RUNS / f"corpus-{min(a.sizes_mb)}mb.jsonl")
    res["ceiling"]["tokens_per_s"] = round(res["ceiling"]["tokens"] / res["ceiling"]["seconds"])
    json.dump(res, open(RUNS / "data_scale.json", "w"), indent=1)
    if not a.keep:
        for mb in a.sizes_mb:
            shutil.rmtree(RUNS / f"prepared-{mb}mb", ignore_errors=True)
    write_report(res, a.sizes_mb)


def write_report(res: dict, sizes: list[int]) -> None:
    small, big = min(sizes), max(sizes)
    S = res["sizes"]
    L = ["Generated jsonl corpora (random 1-8 KB slices of python-docs text, unique first line each); SmolLM2 "
         "tokenizer (49,152 tokens, uint16 shards); `--num-proc 2`. RSS is the peak resident set sampled every "
         "0.1 s (psutil); *tree* is the sum over the process and its workers at the same moment.", "",
         "| corpus | tokens | prepare s | prepare tok/s | prepare RSS main / worker / tree (MiB) | "
         "distill RSS (MiB) | distill start -> first step (s) |", "|---|---|---|---|---|---|---|"]
    for mb in sizes:
        p, d = S[mb]["prepare"], S[mb]["distill"]
        L.append(f"| {p['corpus_bytes'] / 1e6:,.0f} MB | {p['tokens']:,} | {p['seconds']} | {p['tokens_per_s']:,} | "
                 f"{p['rss_main_mib']} / {p['rss_worker_mib']} / {p['rss_tree_mib']} | {d['rss_tree_mib']} | "
                 f"{d['first_step_s']} |")
    ps, pb = S[small]["prepare"], S[big]["prepare"]
    mid = 1000 if 1000 in S else big  # throughput of prepare where its fixed start-up cost is amortised
    pm = S[mid]["prepare"]
    ds, db = S[small]["distill"], S[big]["distill"]
    c = res["ceiling"]
    r = res["resume"]
    import statistics

    fs_s, fs_b = res["first_steps"][small], res["first_steps"][big]
    fs, fb = statistics.median(fs_s), statistics.median(fs_b)
    speed = pm["tokens_per_s"] / c["tokens_per_s"]
    L += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|",
          f"| prepare peak RSS, {big:,} MB vs {small} MB: <= 1.1x | main {pb['rss_main_mib'] / ps['rss_main_mib']:.2f}x,"
          f" tree {pb['rss_tree_mib'] / ps['rss_tree_mib']:.2f}x | "
          f"{'yes' if pb['rss_tree_mib'] <= 1.1 * ps['rss_tree_mib'] else 'no'} |",
          f"| distill peak RSS, {big:,} MB vs {small} MB: <= 1.1x | {db['rss_tree_mib'] / ds['rss_tree_mib']:.2f}x | "
          f"{'yes' if db['rss_tree_mib'] <= 1.1 * ds['rss_tree_mib'] else 'no'} |",
          f"| prepare of {mid:,} MB (2 processes, everything, start-up included) vs tokenizer alone (1 process, 1 "
          f"thread): >= 1.6x | {pm['tokens_per_s']:,} vs {c['tokens_per_s']:,} tok/s = {speed:.2f}x | "
          f"{'yes' if speed >= 1.6 else 'no'} |",
          f"| distill start -> first step, {big:,} MB vs {small} MB: <= 1.2x | median of {len(fs_b)} alternating runs "
          f"{fb} vs {fs} s = {fb / fs:.2f}x (runs: {fs_b} vs {fs_s}; the single runs after each preparation: "
          f"{db['first_step_s']} vs {ds['first_step_s']} s) | {'yes' if fb <= 1.2 * fs else 'no'} |",
          f"| resume -> first new step at 90% vs 10% of the {big:,} MB corpus: <= 1.2x | {r[0.9]['first_step_s']} vs "
          f"{r[0.1]['first_step_s']} s (steps {r[0.9]['step']:,} and {r[0.1]['step']:,} of {r[0.1]['steps']:,}) = "
          f"{r[0.9]['first_step_s'] / r[0.1]['first_step_s']:.2f}x | "
          f"{'yes' if r[0.9]['first_step_s'] <= 1.2 * r[0.1]['first_step_s'] else 'no'} |",
          "", "## Two processes", "",
          f"`accelerate launch --multi_gpu --num_processes 2 recipes/distill.py` (CPU: torchrun + gloo) on the prepared "
          f"{res['two_process']['corpus_mb']:,} MB corpus, 4 steps of 2 x 1 x 256 tokens, saving at step 2: peak RSS "
          f"of the process tree {res['two_process']['full']['rss_tree_mib']:,} MiB (both ranks, both models each; "
          f"largest rank {res['two_process']['full']['rss_worker_mib']:,} MiB). Resumed from a copy of its "
          f"checkpoint-2: peak {res['two_process']['resumed']['rss_tree_mib']:,} MiB, final weights differ from the "
          f"uninterrupted run's by at most {res['two_process']['max_abs_weight_diff']:.1e}.",
          "", f"Tokenizer alone: {c['tokens']:,} tokens of {c['documents']:,} documents in {c['seconds']:.1f} s.",
          "Resume: checkpoint-2 of the largest corpus' run with its step set to 10% / 90% of the corpus (the data "
          "position follows from the step; the Trainer's batch skipping is off, so no earlier block is read).",
          "Distill RSS includes both models (2 x 135M parameters, fp32), the optimizer and the Trainer."]
    write_result("data_scale", "Data at scale: memory and time against corpus size (issue 17)", "\n".join(L))


if __name__ == "__main__":
    main()
