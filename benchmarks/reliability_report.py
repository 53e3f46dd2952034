"""The reliability probe's report (``benchmarks/reliability.py``): ``reliability.md`` (outcomes per command and per
class of input, the kill-and-resume table, every case that is not clean) and ``reliability.json``."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from common import revision
from reliability_cases import CLASSES, KILL_DISTILL

ROOT = Path(__file__).resolve().parent.parent

COLUMNS = ("clean", "ok", "traceback", "silent success", "data lost", "left behind", "timeout", "bug (exit 3)",
           "other")


def _col(outcome):
    return outcome if outcome in COLUMNS else "other"


def shown_argv(argv):
    names = {"T": "<tiny>", "S": "<student>", "V": "<other-vocab>", "DIST": "<distilled>", "RUN": "<run>",
             "D": ".", "DATA": "<data.jsonl>", "SMALL": "<small.jsonl>", "PREP": "<prepared>"}
    out = []
    for a in argv:
        for k, v in names.items():
            a = a.replace("{" + k + "}", v)
        out.append(a if a and not re.search(r"[\s'\"{}\[\]]", a) else json.dumps(a))
    return "minitron " + " ".join(out)


def revision_text() -> str:
    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    rev = revision()
    # the results this run is about to replace do not make the code under test uncommitted
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results")
    return rev + (" + uncommitted" if dirty else "")


def class_table(results) -> list:
    """The classes of input probed: a line of description, and how many of their cases were clean."""
    lines = ["## Classes probed", "",
             "A class is a kind of hostile input; each is probed with several cases, across the commands it applies "
             "to. **clean**: refused cleanly, or (a control, an either-way case) succeeded without harm; **not "
             "clean**: every other outcome (listed below).", "",
             "| class | what it tries | cases | clean | not clean |", "|---|---|---:|---:|---:|"]
    for cls, what in CLASSES.items():
        rs = [r for r in results if r.get("cls") == cls]
        if not rs:
            continue
        skipped = sum(1 for r in rs if r["outcome"] == "skipped")
        good = sum(1 for r in rs if r["outcome"] in ("clean", "ok"))
        lines.append(f"| {cls} | {what} | {len(rs)}{f' ({skipped} skipped)' if skipped else ''} | {good} | "
                     f"{len(rs) - good - skipped} |")
    return lines + [""]


def write_report(results, kills, meta, out_dir: Path):
    groups = []
    for r in results:
        if r["group"] not in groups:
            groups.append(r["group"])
    lines = [
        "# Reliability: hostile inputs against every command",
        "",
        f"- date: {meta['date']}",
        f"- machine: {meta['machine']}",
        f"- command: `{meta['command']}`",
        f"- git revision: {meta['revision']}",
        f"- mode: {meta['mode']} ({meta['mode_note']}), {meta['workers']} at a time; wall time "
        f"{meta['wall_s'] / 60:.1f} min (fixtures {meta['fixtures_s']:.0f} s, cases {meta['cases_s']:.0f} s, "
        f"kill-and-resume {meta['kill_s']:.0f} s)",
        "",
        "Each case runs the real CLI in a fresh folder on tiny fixtures (a random Llama, hidden 64, 2 layers, with the "
        "SmolLM2 tokenizer), offline. **clean**: refused with exit != 0 and a last stderr line `minitron <cmd>: error: "
        "...`, no traceback, sentinels intact, nothing partial left. **ok**: a control (or an either-way case) that "
        "succeeded. **left behind**: a failure that left new files/folders (or a stray temporary folder). **bug "
        "(exit 3)**: the CLI's internal-error exit. **other**: refused (a control that should have succeeded), "
        "unclear (exit != 0 without the one-line error as the last line; a bare `minitron: error:` is accepted "
        "only for the top-level cases, where no command was given), check failed (a case-specific check), setup "
        "failed. A case with several problems is counted under the most severe (order: data lost, timeout, "
        "traceback, silent success, left behind, bug, check failed, refused, unclear).",
        "",
    ]
    if meta.get("notes"):
        lines += ["Notes:", ""] + [f"- {n}" for n in meta["notes"]] + [""]
    lines += ["## Outcomes per command", "",
              "| command | cases | " + " | ".join(COLUMNS) + " |",
              "|---|---:|" + "---:|" * len(COLUMNS)]
    total = {c: 0 for c in COLUMNS}
    for g in groups:
        rs = [r for r in results if r["group"] == g]
        cnt = {c: sum(1 for r in rs if _col(r["outcome"]) == c) for c in COLUMNS}
        for c in COLUMNS:
            total[c] += cnt[c]
        lines.append(f"| {g} | {len(rs)} | " + " | ".join(str(cnt[c]) for c in COLUMNS) + " |")
    lines.append(f"| **total** | **{len(results)}** | " + " | ".join(f"**{total[c]}**" for c in COLUMNS) + " |")
    n_fail = sum(1 for r in results if r["expect"] == "fail")
    n_succ = sum(1 for r in results if r["expect"] == "succeed")
    lines += ["", f"{len(results)} cases: {n_fail} should be refused, {n_succ} are controls that should succeed, "
              f"{len(results) - n_fail - n_succ} may go either way (refuse cleanly or succeed without harm).", ""]
    lines += class_table(results)
    if kills:
        lines += ["## Kill -9 and resume", "",
                  f"`{shown_argv(KILL_DISTILL)}` killed with SIGKILL at a moment, then rerun with "
                  "`--resume-from-checkpoint true`. The last row does not kill: a learning rate of 1e30 makes the "
                  "weights non-finite; the run must stop by itself and name a checkpoint, and the rerun follows its "
                  "advice (learning rate 1e-3, `--resume-from-checkpoint` that checkpoint).", "",
                  "| moment | killed | checkpoints at kill | resume exit | resumed | from step | finished | "
                  "final weights finite | temp folders left |", "|---|---|---|---:|---|---:|---|---|---|"]
        for k in kills:
            lines.append(f"| {k['scenario']} | {k['killed']} | {k.get('checkpoints at kill', '-')} | "
                         f"{k.get('resume rc', '-')} | {k['resumed']} | {k['from step']} | {k['finished']} | "
                         f"{k['final finite']} | {k.get('temp left after resume') or 'none'} |")
        for k in kills:
            if k.get("first run"):
                where = ("(the last line)" if k.get("error is last line") else
                         "(not the last line of its output: a progress bar is redrawn after it)")
                big = k.get("named checkpoint max |w|")
                lines.append(f"\n- {k['scenario']}: the first run's message {where}: `{k['first run']}`"
                             + (f"; the largest weight in the checkpoint it names is {big:.3g}" if big is not None
                                else ""))
        bad = [k for k in kills if k.get("resume rc") not in (0, None) or k.get("traceback")]
        for k in bad:
            lines.append(f"\n- {k['scenario']}: resume {'printed a traceback; ' if k.get('traceback') else ''}"
                         f"last line `{k.get('resume last line', '')}`")
        nan = next((r for r in results if r["name"] == "distill-nan-lr-1e6"), None)
        if nan:
            lines += ["", f"NaN (`distill --learning-rate 1e6 --max-steps 4 --save-steps 1`): exit {nan['rc']}, "
                      f"outcome **{nan['outcome']}**; last line `{nan['last_stderr']}`"
                      + (f"; {'; '.join(nan['details'].get('check', []))}" if nan["details"].get("check") else "")]
        lines.append("")
    bad = [r for r in results if r["outcome"] not in ("clean", "ok", "skipped")]
    lines += [f"## Cases that are not clean ({len(bad)})", ""]
    for g in groups:
        rs = [r for r in bad if r["group"] == g]
        if not rs:
            continue
        lines += [f"### {g}", ""]
        for r in rs:
            extra = []
            if len(r["flags"]) > 1:
                extra.append("also " + ", ".join(f for f in r["flags"] if f != r["outcome"]))
            for k in ("lost", "left", "check", "wrote", "wrote inside", "message", "signal"):
                if r["details"].get(k):
                    extra.append(f"{k}: " + "; ".join(r["details"][k]))
            why = f" ({r['why']})" if r.get("why") else ""
            last = r["last_stderr"] or "(stderr empty)"
            env = "".join(f"{k}={json.dumps(v)} " for k, v in (r.get("env") or {}).items())
            lines.append(f"- `{r['name']}` [{r.get('cls', '')}] — **{r['outcome']}** (exit {r['rc']}, expected "
                         f"{r['expect']}){why}: `{env}{shown_argv(r['argv'])}`" + (f"; {'; '.join(extra)}" if extra
                                                                                  else "")
                         + f"\n  - last stderr line: `{last.replace('`', '')}`"
                         + (f"\n  - error line: `{r['error_line'].replace('`', '')}`" if r.get("error_line") else ""))
        lines.append("")
    skipped = [r for r in results if r["outcome"] == "skipped"]
    if skipped:
        lines += [f"## Skipped ({len(skipped)})", ""]
        lines += [f"- `{r['name']}` [{r.get('cls', '')}]: {r['last_stderr']}" for r in skipped] + [""]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "reliability.md").write_text("\n".join(lines).rstrip() + "\n")
    (out_dir / "reliability.json").write_text(json.dumps({"meta": meta, "cases": results, "kill_and_resume": kills},
                                                         indent=1, default=str))
    return out_dir / "reliability.md"
