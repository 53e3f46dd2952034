"""Every YAML recipe parses into its stage's dataclasses (no unknown or mistyped fields), and every thin entry script
of the top-level stage folders (alignment/, export/, eval/) runs and reads its configs as its `minitron` subcommand."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from minitron_hf.config import parse_args
from minitron_hf.data import DataConfig

ROOT = Path(__file__).parents[1]
CONFIGS = sorted(p for folder in ("recipes", "alignment") for p in (ROOT / folder / "configs").glob("*/*.yaml")
                 if not p.name.startswith("minitron-"))  # whole-run configs: tests/test_pipeline.py


def _classes(name):
    if name.startswith("prune"):
        from minitron_hf.pruning.config import PruneConfig

        return [DataConfig, PruneConfig], ("target",)
    if name.startswith("distill"):
        from minitron_hf.distill.run import DistillScriptConfig
        from minitron_hf.distill.trainer import DistillationConfig

        return [DataConfig, DistillScriptConfig, DistillationConfig], ()
    if name.startswith("correct-teacher"):
        from minitron_hf.distill.correct import CorrectionConfig
        from minitron_hf.distill.trainer import TrainArgs

        return [DataConfig, CorrectionConfig, TrainArgs], ()
    if name.startswith("sft"):
        from minitron_hf.alignment.sft import SFTArgs, SFTStageConfig

        return [SFTStageConfig, SFTArgs], ()
    if name.startswith("rpo-rounds"):
        from minitron_hf.alignment.rounds import RoundsConfig
        from minitron_hf.alignment.rpo import RPOConfig

        return [RoundsConfig, RPOConfig], ()
    if name.startswith("rpo"):
        from minitron_hf.alignment.rpo import RPOConfig, RPOScriptConfig

        return [RPOScriptConfig, RPOConfig], ()
    raise AssertionError(f"no stage for {name}")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_parses(path):
    from minitron_hf.distributed import DistributedConfigError

    raw = yaml.safe_load(path.read_text())
    classes, append = _classes(path.name)
    extra = []
    if raw.get("global_batch_size"):  # written for a number of GPUs: refused on one process, as it should be
        with pytest.raises(DistributedConfigError, match="global_batch_size"):
            parse_args(classes, ["--config", str(path)], append_fields=append)
        extra = ["--global-batch-size", str(raw["per_device_train_batch_size"] * raw["gradient_accumulation_steps"])]
    objs = parse_args(classes, ["--config", str(path), *extra], append_fields=append)
    if path.name.startswith(("sft", "rpo")):  # alignment stages: epochs, not steps
        assert (objs[0].prompts if path.name.startswith("rpo-rounds") else objs[0].data) and objs[0].model
        assert objs[-1].num_train_epochs > 0 and objs[-1].learning_rate > 0
        return
    assert objs[0].data
    if path.name.startswith("prune"):
        assert objs[1].target
    else:
        assert objs[-1].max_steps > 0 and objs[-1].learning_rate > 0


def test_paper_table_4_schedules():
    from types import SimpleNamespace

    from minitron_hf.distill.run import DistillScriptConfig
    from minitron_hf.distill.trainer import DistillationConfig
    from minitron_hf.distributed import DistributedConfigError, check_global_batch

    root = ROOT / "recipes"
    for rel, min_lr, warmup, batch, gpus in (("llama-3.1-8b/distill-4b.yaml", 1e-5, 40, 18, 64),
                                             ("mistral-nemo-12b/distill-8b.yaml", 4.5e-7, 60, 6, 128)):
        with pytest.raises(DistributedConfigError, match="global_batch_size"):  # one process: not the paper's batch
            parse_args([DataConfig, DistillScriptConfig, DistillationConfig], ["--config", str(root / "configs" / rel)])
        _, script, args = parse_args([DataConfig, DistillScriptConfig, DistillationConfig],
                                     ["--config", str(root / "configs" / rel), "--global-batch-size", str(batch)])
        declared = yaml.safe_load((root / "configs" / rel).read_text())["global_batch_size"]
        assert declared == args.per_device_train_batch_size * batch * gpus == {64: 1152, 128: 768}[gpus]
        check_global_batch(SimpleNamespace(global_batch_size=declared, per_device_train_batch_size=1,
                                           gradient_accumulation_steps=batch), world_size=gpus)  # the launch it is for
        assert args.learning_rate == 1e-4 and args.lr_scheduler_kwargs["min_lr"] == min_lr
        assert args.warmup_steps == warmup and args.gradient_accumulation_steps == batch and script.seq_len == 8192


# --------------------------------------------------------------------------------------------------
# Thin entry scripts of alignment/, export/, eval/ (the product card's top level)
# --------------------------------------------------------------------------------------------------

# script -> the `minitron` argv it stands for, and the positional arguments its subcommand requires
SCRIPTS = {
    "alignment/sft.py": (["align", "sft"], []),
    "alignment/rpo.py": (["align", "rpo"], []),
    "alignment/rounds.py": (["align", "rounds"], []),
    "export/publish.py": (["publish"], ["MODEL_DIR", "--repo-id", "org/name"]),
    "export/fp8.py": (["export", "fp8"], ["MODEL_DIR"]),
    "export/trtllm.py": (["export", "trtllm"], ["MODEL_DIR"]),
    "export/serve.py": (["serve"], ["MODEL_DIR"]),
    "export/throughput.py": (["bench", "throughput"], ["TEACHER", "STUDENT"]),
    **{f"eval/{suite}.py": (["eval", suite], ["TEACHER", "STUDENT"])
       for suite in ("base", "humaneval", "mbpp", "mtbench", "bfcl", "instruct", "loss")},
}
STAGE_CONFIGS = sorted(p for folder in ("alignment", "export", "eval") for p in (ROOT / folder / "configs").glob("*/*.yaml"))


def test_every_script_and_suite_is_listed():
    from minitron_hf.eval import SUITES

    on_disk = {str(p.relative_to(ROOT)) for folder in ("alignment", "export", "eval") for p in (ROOT / folder).glob("*.py")}
    assert on_disk == set(SCRIPTS)
    assert {f"eval/{s}.py" for s in SUITES} <= on_disk  # one script per `minitron eval` suite
    assert not any((ROOT / folder / "__init__.py").exists() for folder in ("alignment", "export", "eval"))


def test_script_docstrings_name_existing_configs():
    """Every `--config PATH` in an entry script's examples exists (configs moved here from recipes/configs)."""
    import ast
    import re

    for script in [*SCRIPTS, *(str(p.relative_to(ROOT)) for p in (ROOT / "recipes").glob("*.py"))]:
        doc = ast.get_docstring(ast.parse((ROOT / script).read_text()))
        assert doc and f"{script} " in doc, f"{script}: no docstring with an example command line"
        if script in SCRIPTS:  # the paper section (or figure, table) the stage implements
            assert "arXiv" in doc, f"{script}: the docstring names no paper section"
        for cfg in re.findall(r"(?:--config|run\.py) (\S+/\S+\.yaml)", doc):
            assert (ROOT / cfg).is_file(), f"{script} names {cfg}, which does not exist"


# Run in a child per folder, each script as `python <script> --help` would (its folder first on sys.path, so a
# script named like a module it imports would shadow it), one interpreter start per folder instead of per script.
_HELP = """
import contextlib, io, json, os, runpy, sys
res = {}
for path in sys.argv[1:]:
    sys.path[0] = os.path.dirname(os.path.abspath(path))
    sys.argv = [path, "--help"]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(path, run_name="__main__")
        code = "no exit"
    except SystemExit as e:
        code = e.code
    res[path] = {"code": code, "help": out.getvalue()}
print(json.dumps(res))
"""


@pytest.mark.multiprocess
@pytest.mark.parametrize("folder", ["alignment", "export", "eval"])
def test_scripts_print_their_subcommands_help(folder):
    scripts = [s for s in SCRIPTS if s.startswith(folder + "/")]
    r = subprocess.run([sys.executable, "-c", _HELP, *scripts], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    for script in scripts:
        argv, _ = SCRIPTS[script]
        assert res[script]["code"] in (0, None), (script, res[script])
        assert res[script]["help"].startswith(f"usage: minitron {' '.join(argv)} "), (script, res[script]["help"][:200])


class _Parsed(BaseException):  # not an Exception: main() would report it as a bug
    def __init__(self, objs):
        super().__init__()
        self.objs = objs


def _script_for(path: Path) -> str:
    folder, stem = path.parents[2].name, path.stem
    if folder == "alignment":  # sft-math-code.yaml -> sft.py, rpo-rounds.yaml -> rounds.py, rpo.yaml -> rpo.py
        stem = "rounds" if stem.startswith("rpo-rounds") else stem.split("-")[0]
    return f"{folder}/{stem}.py"


@pytest.mark.parametrize("path", STAGE_CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_stage_config_loads_through_its_subcommand(path, monkeypatch, capsys):
    """The config goes through `minitron <subcommand> --config PATH` up to the parsed dataclasses (the stage itself is
    stopped there), so it is read by exactly the parser and classes its script uses; every YAML value arrives."""
    from minitron_hf import cli

    real = cli.parse_args

    def stop(*a, **k):
        raise _Parsed(real(*a, **k))

    monkeypatch.setattr(cli, "parse_args", stop)
    script = _script_for(path)
    assert script in SCRIPTS, f"{path} has no entry script"
    argv, positional = SCRIPTS[script]
    try:
        rc = cli.main([*argv, *positional, "--config", str(path)])
    except _Parsed as e:
        objs = e.objs
    else:
        pytest.fail(f"minitron {' '.join(argv)} --config {path} exited {rc}: {capsys.readouterr().err.strip()}")
    raw = yaml.safe_load(path.read_text())
    assert raw
    for key, value in raw.items():
        owner = next(o for o in objs if hasattr(o, key))
        got = getattr(owner, key)
        if not script.startswith("alignment/"):  # TrainingArguments normalise some values (enums, report_to lists)
            assert got == value, f"{path.name}: {key}={got!r}, YAML says {value!r}"


RUN_CONFIGS = sorted((ROOT / "recipes" / "configs").glob("*/minitron-*.yaml"))


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_run_configs_launched_on_many_processes_declare_their_global_batch(path):
    """A run config whose launch line uses N > 1 processes states the global batch it is meant for in every training
    section, and per device x accumulation x N equals it: without it, 8 processes trained 144 sequences per step
    instead of the paper's 1152, silently (issue 33)."""
    import re

    m = re.search(r"--num_processes (\d+)", path.read_text())
    processes = int(m.group(1)) if m else 1
    raw = yaml.safe_load(path.read_text())
    sections = [s for s in ("correct", "distill") if isinstance(raw.get(s), dict)]
    assert sections, path
    for s in sections:
        sec = raw[s]
        if processes == 1:
            continue
        assert "global_batch_size" in sec, f"{path.name}: section {s!r} launched on {processes} processes"
        per_step = sec.get("per_device_train_batch_size", 8) * sec.get("gradient_accumulation_steps", 1) * processes
        assert per_step == sec["global_batch_size"], f"{path.name}: section {s!r}"
