"""Hostile-user probe of every ``minitron`` command (issue 16, "Tests and numbers").

Runs many bad inputs (and a few good ones, as controls) against the real CLI and classifies each outcome:

- ``clean``: nonzero exit, stderr's last line starts with ``minitron `` and contains ``error:`` (a bare
  ``minitron: error:`` only for the top-level cases, where no command was given), no traceback, every sentinel
  intact and nothing partial left behind (``ok`` for a control, or an either-way case, that succeeded);
- ``traceback``: a Python traceback was printed;
- ``silent success``: exit 0 where the input should have been refused;
- ``data lost``: a sentinel (a file or folder that existed before the command) is gone or changed;
- ``left behind``: the command failed but left something new (a partial output, an empty folder, a stray
  temporary folder) in its working folder or its temporary directory;
- ``timeout``;
- ``bug (exit 3)``: the CLI's own "this is a bug, run with -v" exit, without a traceback;
- ``unclear``: nonzero exit whose last stderr line is not ``minitron <cmd>: error: ...``;
- ``refused``: a control that should have succeeded failed (cleanly);
- ``check failed``: a case-specific check (e.g. no non-finite checkpoint after a NaN loss, the message names the
  input the case is about, the rerun on the fixed input succeeds) did not hold;
- ``skipped``: the case's situation cannot be built here (a tmpfs for the full disk cases cannot be mounted).

The cases are data: a table with one ``Case`` a row (its command, class of input, argv, expectation, and the setup
and check it needs, by the name of a function of ``reliability_setups.py``), in ``reliability_cases.py`` (the
classes, the argv templates, the cases of issue 16 by command) and ``reliability_classes.py`` (the classes of issue
35). This script builds the fixtures, runs the table through ``reliability_run.py`` (the fork pool and the
classification), measures kill-and-resume and writes the report (``reliability_report.py``).

Every case belongs to a class of input (``Case.cls``, one of ``reliability_cases.CLASSES``): the report counts the
cases of each class as well as of each command. A probe passes its own cases; what matters is the classes it tries
(issue 35: a second probe written from scratch found 39 of 60 cases wrong, in classes this one had never tried), so
a new class is added as a group of several cases across the commands it applies to, not as one example. Cases may
set environment variables (``env``), start helper processes or mounts in their setup (a setup may return a cleanup,
always run after the case: a process holding the output's lock, a 64 KiB tmpfs), send a signal once the command's
output matches a pattern (``signal``: a scheduler's SIGTERM, a user's Ctrl-C), cap the memory a command may take
(``mem_mb``: YAML alias bombs), and run the CLI again from their check (a rerun after a failed preparation).

Every case runs in its own folder (the working directory of the command, with ``TMPDIR`` pointing at a
private empty folder), with ``HF_HUB_OFFLINE=1`` and ``MINITRON_CACHE`` at the user's cache (unless the case sets
it), so the embedded default model is reused. Fixtures are tiny (a random Llama with hidden 64, 2 layers and the
real SmolLM2 tokenizer, vocab 49152), so a command that gets as far as doing work takes seconds.

By default each case is a ``fork`` of a parent that has imported the CLI (``minitron_hf.cli.main(argv)``, with
exit codes and an uncaught exception's traceback reproduced as ``python -m minitron_hf.cli`` would): importing
torch/transformers/trl takes about 7 s per process on 2 cores, which would otherwise be most of the run.
``--mode subprocess`` runs ``python -m minitron_hf.cli`` for every case instead. The kill-and-resume
measurements always use real subprocesses (killed with SIGKILL).

    .venv/bin/python benchmarks/reliability.py              # everything, writes results/reliability.{md,json}
    .venv/bin/python benchmarks/reliability.py --list       # the cases, with what each should do
    .venv/bin/python benchmarks/reliability.py --only distill-nan   # some cases (kill-and-resume: --only kill)

With ``--only``, the results go to the work folder (kept), not to benchmarks/results. Each case folder keeps
the command's stdout/stderr next to it (``cases/NAME.stdout``, ``cases/NAME.stderr``) with ``--keep``/``--work``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from common import RESULTS, machine  # noqa: E402
from reliability_cases import COMMAND_CASES, DISTILL, KILL_DISTILL  # noqa: E402
from reliability_classes import CLASS_CASES  # noqa: E402
from reliability_report import revision_text, shown_argv, write_report  # noqa: E402
from reliability_run import cli_cmd, digest, error_line, fx_paths, last_line, run_cases, sub  # noqa: E402
from reliability_setups import base_run_config, max_abs, nonfinite  # noqa: E402


def cases() -> list:
    """Every case of the table, in the order the report lists them; names are unique."""
    all_cases = COMMAND_CASES + CLASS_CASES
    names = [c.name for c in all_cases]
    assert len(names) == len(set(names)), "duplicate case names"
    return all_cases


# --------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json")


def build_models(fx_dir: Path) -> None:
    """(in a child process) tiny random Llamas with the default model's tokenizer. The imports are here: torch is
    heavy, and minitron_hf is the project under test, found on the child's PYTHONPATH."""
    import torch
    from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM

    from minitron_hf.loading import resolve_model

    src = resolve_model("smollm2-135m")
    ref = AutoConfig.from_pretrained(src)
    for name, seed, vocab in (("tiny", 0, 49152), ("student", 1, 49152), ("othervocab", 2, 1024)):
        torch.manual_seed(seed)
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=2048,
                          tie_word_embeddings=True, bos_token_id=ref.bos_token_id, eos_token_id=ref.eos_token_id,
                          pad_token_id=getattr(ref, "pad_token_id", None))
        m = LlamaForCausalLM(cfg).eval()
        with torch.no_grad():  # random init has tiny norms; spread them so channel importance differs
            for n, p in m.named_parameters():
                if "norm" in n:
                    p.copy_(torch.rand_like(p) * 2)
        m.config.architectures = ["LlamaForCausalLM"]
        d = fx_dir / name
        m.save_pretrained(d)
        for f in TOKENIZER_FILES:
            if (src / f).exists() and not (f == "generation_config.json" and (d / f).exists()):
                shutil.copy2(src / f, d / f)
    # a small local data file (text field), for cases that need --data with a valid file
    from minitron_hf.data import python_docs_documents

    docs = python_docs_documents()[:400]
    with open(fx_dir / "data.jsonl", "w") as f:
        for _, text in docs:
            f.write(json.dumps({"text": text}) + "\n")



def build_fixtures(work: Path, env: dict, project: Path, log) -> dict:
    fx_dir = work / "fixtures"
    fx_dir.mkdir(parents=True, exist_ok=True)
    fx = {"T": fx_dir / "tiny", "S": fx_dir / "student", "V": fx_dir / "othervocab", "DIST": fx_dir / "distilled",
          "RUN": fx_dir / "run", "DATA": fx_dir / "data.jsonl", "SMALL": fx_dir / "small.jsonl",
          "PREP": fx_dir / "prepared"}
    notes = []
    t0 = time.time()
    if not (fx["T"] / "model.safetensors").exists():
        r = subprocess.run([sys.executable, __file__, "--_build-models", str(fx_dir)], env=env, cwd=fx_dir,
                           capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"building the tiny models failed:\n{r.stderr[-3000:]}")
    log(f"tiny models in {time.time() - t0:.0f} s")
    if not fx["SMALL"].exists():
        with open(fx["DATA"]) as f:
            fx["SMALL"].write_text("".join(f.readlines()[:60]))
    # a finished distill output and a finished run, with the real CLI (in parallel: independent)
    jobs = []
    if not (fx["DIST"] / "final").exists():
        argv = [a.replace("{S}", str(fx["S"])).replace("{T}", str(fx["T"])) for a in DISTILL]
        argv[argv.index("out")] = str(fx["DIST"])
        jobs.append(("distill", argv))
    if not (fx["RUN"] / "out" / "report.md").exists():
        fx["RUN"].mkdir(exist_ok=True)
        (fx["RUN"] / "run.yaml").write_text(yaml.safe_dump(base_run_config(fx, fx["RUN"] / "out"), sort_keys=False))
        jobs.append(("run", ["run", str(fx["RUN"] / "run.yaml")]))
    if not (fx["PREP"] / "manifest.json").exists():
        jobs.append(("data prepare", ["data", "prepare", "--data", str(fx["SMALL"]), "--output", str(fx["PREP"]),
                                      "--tokenizer", str(fx["T"]), "--overwrite"]))
    procs = [(name, subprocess.Popen(cli_cmd(project) + argv, env=env, cwd=fx_dir, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)) for name, argv in jobs]
    for name, p in procs:
        out, _ = p.communicate()
        if p.returncode:
            notes.append(f"fixture `{name}` failed (exit {p.returncode}): {last_line(out)}")
            log(f"fixture {name} FAILED: {out[-2000:]}")
    log(f"fixtures ready in {time.time() - t0:.0f} s")
    return {k: Path(v) for k, v in fx.items()}, notes



# --------------------------------------------------------------------------------------------------
# Kill and resume
# --------------------------------------------------------------------------------------------------

def _ckpts(out: Path) -> dict:
    res = {}
    for p in sorted(out.glob("*checkpoint-*")) if out.exists() else []:
        res[p.name] = "complete" if (p / "trainer_state.json").exists() else f"partial ({len(list(p.iterdir()))} files)"
    return res


def kill_and_resume(work, fx, env, project, log) -> list:
    rows = []
    scenarios = [
        ("mid-step", [], "checkpoint-2 complete (trainer_state.json written): step 3 is running"),
        ("mid-save", [], "the save of checkpoint-3 has begun (tmp-checkpoint-3 or checkpoint-3 appears)"),
        ("during evaluation", ["--eval-strategy", "steps", "--eval-steps", "2", "--eval-samples", "16",
                               "--per-device-eval-batch-size", "1"],
         "0.5 s after step 2's loss is logged: its evaluation is running (before checkpoint-2 is saved)"),
        ("NaN (lr 1e30), then resume as advised", ["--learning-rate", "1e30"],
         "not killed: the run must stop itself; then rerun with --learning-rate 1e-3 and --resume-from-checkpoint "
         "set to the checkpoint its message names"),
    ]
    for name, extra, moment in scenarios:
        d = work / "kill" / name.replace(" ", "-")
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        paths = fx_paths(fx, d)
        base = [sub(a, paths) for a in KILL_DISTILL]
        argv = base + extra
        nan = name.startswith("NaN")
        log_path = d / "first.log"
        row = {"scenario": name, "kill when": moment}
        t0 = time.time()
        with open(log_path, "wb") as lf:
            p = subprocess.Popen(cli_cmd(project) + argv, cwd=d, env=env, stdout=lf, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        out = d / "out"
        killed_at = None
        deadline = time.time() + 300
        while time.time() < deadline and p.poll() is None and not nan:
            if name == "mid-step":
                if (out / "checkpoint-2" / "trainer_state.json").exists():
                    time.sleep(0.02)
                    killed_at = "checkpoint-2 complete"
            elif name == "mid-save":
                if out.exists() and (any(out.glob("*checkpoint-3")) or any(out.glob("tmp-checkpoint-3*"))):
                    killed_at = "save of checkpoint-3 begun"
            else:
                text = log_path.read_text(errors="replace")
                # training logs {'loss': ...} each step (logging_steps 1); step 2's evaluation follows its log line
                if len(re.findall(r"\{'loss'", text)) >= 2:
                    time.sleep(0.5)
                    killed_at = "step 2 logged + 0.5 s"
            if killed_at:
                os.killpg(p.pid, signal.SIGKILL)
                break
            time.sleep(0.005 if name == "mid-save" else 0.05)
        try:
            p.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        row["first run s"] = round(time.time() - t0, 1)
        resume_arg = "true"
        if nan:
            text = log_path.read_text(errors="replace")
            err = error_line(text)
            good = re.search(r"last good checkpoint [^;]*? is ([\w./-]*checkpoint-\d+)", err)
            start_again = "no good checkpoint" in err and "start again" in err
            named = [good.group(1)] if good else ([None] if start_again else [])
            killed_at = f"no kill: exit {p.returncode}"
            row["first run"] = err[:600]
            row["error is last line"] = err == last_line(text)
            if p.returncode == 0 or not named:
                row.update({"killed": killed_at + ("" if named else ", no checkpoint named"), "resumed": "-",
                            "from step": "-", "finished": "-", "final finite": "-",
                            "checkpoints at kill": ", ".join(f"{k} {v}" for k, v in _ckpts(out).items()) or "none"})
                st = out / "final" / "model.safetensors"
                if st.exists():
                    row["final finite"] = "no" if nonfinite(st) else "yes"
                rows.append(row)
                continue
            resume_arg = named[-1]  # None: the message says there is no good checkpoint, start again
            ck = next((c for c in (Path(resume_arg), d / resume_arg) if (c / "model.safetensors").exists()),
                      None) if resume_arg else None
            if ck is not None:
                row["named checkpoint max |w|"] = max_abs(ck / "model.safetensors")
            argv = base  # the advised rerun: a sane learning rate, from the named checkpoint (or from the start)
        if not killed_at:
            row.update({"killed": f"no (exit {p.returncode} before the moment)", "resumed": "-", "from step": "-",
                        "finished": "-", "final finite": "-"})
            row["log"] = last_line(log_path.read_text(errors="replace"))
            rows.append(row)
            continue
        text = log_path.read_text(errors="replace")
        at_kill = _ckpts(out)
        row["checkpoints at kill"] = ", ".join(f"{k} {v}" for k, v in at_kill.items()) or "none"
        if name == "during evaluation":  # step 2's eval metrics not logged yet, checkpoint-2 not saved yet
            row["eval running at kill"] = ("yes" if "'eval_kd_loss'" not in text and "'eval_loss'" not in text
                                           and not (out / "checkpoint-2").exists() else "no")
            killed_at += f"; evaluation running: {row['eval running at kill']}"
        row["killed"] = killed_at if nan else f"yes ({killed_at})"
        # resume
        t1 = time.time()
        resume = ["--resume-from-checkpoint", resume_arg] if resume_arg else []
        r = subprocess.run(cli_cmd(project) + argv + resume, cwd=d, env=env, capture_output=True, text=True,
                           timeout=600)
        (d / "resume.log").write_text(r.stdout + r.stderr)
        both = r.stdout + r.stderr
        m = re.search(r"(?:Continuing training from|Resuming training from checkpoint with epoch \d+ and) global "
                      r"step (\d+)", both)
        row["resume with"] = resume_arg or "(no resume: start again, as advised)"
        row["resume rc"] = r.returncode
        row["resume s"] = round(time.time() - t1, 1)
        row["resumed"] = "yes" if m else ("started over" if "Running training" in both else "no")
        row["from step"] = int(m.group(1)) if m else "-"
        summary = {}
        if (out / "distill.json").exists():
            try:
                summary = json.loads((out / "distill.json").read_text())
            except ValueError:
                pass
        row["finished"] = (f"yes ({summary.get('steps')} steps)" if r.returncode == 0 and (out / "final").exists()
                           else "no")
        st = out / "final" / "model.safetensors"
        fin = nonfinite(st) if st.exists() else None
        row["final finite"] = "-" if not st.exists() else ("no" if fin else ("yes" if fin is False else "unreadable"))
        row["temp left after resume"] = ", ".join(sorted(x.name for x in out.glob("*tmp*"))) if out.exists() else ""
        row["resume last line"] = (error_line(r.stderr) if r.returncode else last_line(r.stderr))[:400]
        row["traceback"] = "Traceback (most recent call last)" in both
        rows.append(row)
        log(f"  kill {name}: {row}")
    return rows

# --------------------------------------------------------------------------------------------------

def main():
    # started in the background by a shell without job control (`nohup ... &`), the probe would inherit SIGINT
    # ignored, and so would every command it starts: its Ctrl-C cases would then read as silent successes
    signal.signal(signal.SIGINT, signal.default_int_handler)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", metavar="SUBSTRING", help="run the cases whose name contains this "
                    "(repeatable); the kill-and-resume part runs only if 'kill' is given or --only is absent")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--mode", choices=("fork", "subprocess"), default="fork")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", type=Path, help="work folder (default: a new temporary folder, removed unless --keep)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--no-kill", action="store_true", help="skip the kill-and-resume measurements")
    ap.add_argument("--project", type=Path, default=ROOT, help="the folder holding the minitron_hf package to test")
    ap.add_argument("--results", type=Path, default=None, help="where to write reliability.md/json (default: "
                    "benchmarks/results; with --only: the work folder)")
    ap.add_argument("--_build-models", dest="build_models", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.build_models:
        build_models(args.build_models)
        return 0

    selected = [c for c in cases() if not args.only or any(s in c.name for s in args.only)]
    if args.list:
        for c in selected:
            print(f"{c.name:<45} {c.group:<16} {c.cls:<26} should {c.expect:<8} {shown_argv(c.argv)[:300]}")
        print(f"{len(selected)} cases")
        return 0

    t_start = time.time()
    project = args.project.resolve()
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               WANDB_MODE="disabled", PYTHONUNBUFFERED="1", HF_HUB_DISABLE_TELEMETRY="1",
               MINITRON_CACHE=os.environ.get("MINITRON_CACHE", str(Path.home() / ".cache" / "minitron_hf")),
               PYTHONPATH=os.pathsep.join([str(project)] + [p for p in os.environ.get("PYTHONPATH", "").split(
                   os.pathsep) if p]))
    work = (args.work or Path(tempfile.mkdtemp(prefix="minitron-reliability-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)

    def log(msg):
        print(f"[{time.time() - t_start:6.0f}s] {msg}", flush=True)

    log(f"work folder {work}; project {project}; {len(selected)} cases")
    notes = []
    fx, fx_notes = build_fixtures(work, env, project, log)
    notes += fx_notes
    t_fix = time.time() - t_start
    fixture_digest = {k: digest(v) for k, v in fx.items() if k in ("T", "S", "V", "DIST", "DATA", "SMALL", "PREP")}

    mode, mode_note = args.mode, ""
    if mode == "fork":
        # the parent imports what the CLI imports (nothing runs torch here: forking after torch ops is unsafe)
        os.environ.update(env)
        sys.path.insert(0, str(project))
        try:
            import minitron_hf.cli as cli

            cli.make_parser()
            mode_note = "each case forked from a parent that imported minitron_hf.cli"
        except BaseException as e:  # noqa: BLE001  an import-time failure: every case must show it, as a process
            mode = "subprocess"
            mode_note = f"fork fell back to subprocess: importing minitron_hf.cli failed ({e!r})"
            notes.append(f"importing minitron_hf.cli failed in the parent ({type(e).__name__}: {e}); every case ran as "
                         f"`python -m minitron_hf.cli`")
        else:
            for mod in ("minitron_hf.pruning.prune", "minitron_hf.distill.run", "minitron_hf.pipeline",
                        "minitron_hf.export.hub", "minitron_hf.export.fp8", "minitron_hf.export.trtllm",
                        "minitron_hf.eval.code", "minitron_hf.eval.loss", "minitron_hf.lm_loss",
                        "minitron_hf.alignment.sft", "minitron_hf.alignment.rpo", "minitron_hf.data",
                        "minitron_hf.loading"):
                try:
                    importlib.import_module(mod)
                except BaseException:  # noqa: BLE001  the child will hit (and print) the same failure
                    pass
            try:  # pre-read the embedded default data set (a cache only; no torch work)
                from minitron_hf.data import python_docs_documents

                python_docs_documents()
            except BaseException:  # noqa: BLE001
                pass
    if mode == "subprocess" and not mode_note:
        mode_note = "each case is `python -m minitron_hf.cli`"

    t1 = time.time()
    log(f"running {len(selected)} cases ({mode}, {args.workers} at a time)")
    results = run_cases(selected, work, fx, env, mode, project, args.workers, log)
    t_cases = time.time() - t1
    for k, before in fixture_digest.items():
        if digest(fx[k]) != before:
            notes.append(f"the shared fixture {k} ({fx[k].name}) changed during the run: some case wrote into its "
                         f"input")

    kills = []
    t2 = time.time()
    if not args.no_kill and (not args.only or any("kill" in s for s in args.only)):
        log("kill-and-resume")
        kills = kill_and_resume(work, fx, env, project, log)
    t_kill = time.time() - t2

    wall = time.time() - t_start
    meta = {"date": datetime.date.today().isoformat(), "machine": machine(),
            "command": ".venv/bin/python benchmarks/reliability.py" + "".join(
                f" {a}" for a in sys.argv[1:]),
            "revision": revision_text(), "mode": mode, "mode_note": mode_note, "workers": args.workers,
            "wall_s": wall, "fixtures_s": t_fix, "cases_s": t_cases, "kill_s": t_kill, "notes": notes,
            "work": str(work)}
    out_dir = args.results or (RESULTS if not args.only else work)
    path = write_report(results, kills, meta, out_dir)
    counts = {}
    for r in results:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    log(f"{len(results)} cases: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + f"; wrote {path}")
    if not args.keep and not args.work and not args.only:
        shutil.rmtree(work, ignore_errors=True)
    else:
        log(f"work folder kept: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
