"""Every YAML recipe parses into its stage's dataclasses (no unknown or mistyped fields)."""

from pathlib import Path

import pytest

from minitron_hf.config import parse_args
from minitron_hf.data import DataConfig

CONFIGS = sorted(p for p in (Path(__file__).parents[1] / "recipes" / "configs").glob("*/*.yaml")
                 if not p.name.startswith("minitron-"))  # whole-run configs: tests/test_pipeline.py


def _classes(name):
    if name.startswith("prune"):
        from minitron_hf.pruning.prune import PruneConfig

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
    if name.startswith("rpo"):
        from minitron_hf.alignment.rounds import RoundsConfig
        from minitron_hf.alignment.rpo import RPOConfig

        return [RoundsConfig, RPOConfig], ()
    raise AssertionError(f"no stage for {name}")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_parses(path):
    import yaml

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
        assert (objs[0].data if path.name.startswith("sft") else objs[0].prompts) and objs[0].model
        assert objs[-1].num_train_epochs > 0 and objs[-1].learning_rate > 0
        return
    assert objs[0].data
    if path.name.startswith("prune"):
        assert objs[1].target
    else:
        assert objs[-1].max_steps > 0 and objs[-1].learning_rate > 0


def test_paper_table_4_schedules():
    from types import SimpleNamespace

    import yaml

    from minitron_hf.distill.run import DistillScriptConfig
    from minitron_hf.distill.trainer import DistillationConfig
    from minitron_hf.distributed import DistributedConfigError, check_global_batch

    root = CONFIGS[0].parents[2]  # recipes/
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
