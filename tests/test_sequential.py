"""Sequential (layer-by-layer) calibration equals the in-memory scores, holds one layer at a time, and refuses what
it cannot do before calibrating (issue 20)."""

import json
import logging
import os
import re
import shutil
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from conftest import tiny_model
from minitron_hf.data import DataConfig
from minitron_hf.pruning.depth import block_influence, block_lm_losses
from minitron_hf.pruning.importance import Importance, estimate_importance
from minitron_hf.pruning.config import PruneConfig
from minitron_hf.pruning.prune import run_prune
from minitron_hf.pruning.scoring import ImportanceConfig, run_importance
from minitron_hf.pruning.activation_cache import ActivationCache
from minitron_hf.pruning.layerwise import LayerwiseModel, SequentialError, checkpoint_tensors
from minitron_hf.pruning.sequential import SequentialPlan, calibrate
from minitron_hf.pruning.trim import PruningConfigError


def _blocks(n, seed, seq=16, vocab=128):
    return torch.randint(0, vocab, (n, seq), generator=torch.Generator().manual_seed(seed))


def _reference(model, calib, val, k):
    imp = estimate_importance(model, calib, "l2_mean", batch_size=4, progress=False)
    base, losses = block_lm_losses(model, val, k, batch_size=4, progress=False)
    bi, li = block_influence(model, calib, k, batch_size=4, progress=False)
    return imp, base, losses, bi, li


def _check_equal(out, ref):
    imp, base, losses, bi, li = ref
    # the same layers see the same inputs in the same order: width scores and influences are equal to the bit
    for name in ("heads", "neurons", "hidden_per_layer"):
        torch.testing.assert_close(getattr(out["importance"], name), getattr(imp, name), rtol=1e-6, atol=0)
    assert out["importance"].meta == imp.meta
    assert out["block_influence"] == pytest.approx(bi, rel=1e-9)
    assert out["layer_influence"] == pytest.approx(li, rel=1e-9)
    # the LM loss sums over vocabulary chunks and sequences in another order: fp32 rounding only
    assert out["baseline_loss"] == pytest.approx(base, rel=1e-5)
    assert out["lm_loss"] == pytest.approx(losses, rel=1e-5)


def test_sequential_equals_in_memory_for_every_family(model_type, tmp_path):
    from minitron_hf.arch import family_of

    model = tiny_model(model_type, num_hidden_layers=5)
    model.save_pretrained(tmp_path / "m")
    problem = family_of(model.config).sequential_problem(model.config)
    if problem:  # not supported (mixtures of experts, hybrids): refused by name before any layer is read
        assert f"model_type='{model_type}' is a " in problem
        with pytest.raises(SequentialError, match=re.escape(problem)):
            LayerwiseModel(tmp_path / "m", torch.float32, torch.device("cpu"))
        return
    calib, val = _blocks(6, 1), _blocks(5, 2)
    ref = _reference(model, calib, val, 2)
    lw = LayerwiseModel(tmp_path / "m", torch.float32, torch.device("cpu"))
    out = calibrate(lw, calib, val, SequentialPlan(aggregation="l2_mean", influence_block=2, loss_block=2,
                                                   batch_size=4, activation_cache="cpu", offload_dir=tmp_path,
                                                   progress=False))
    _check_equal(out, ref)
    assert [c["kind"] for c in out["cache"]] == ["cpu", "cpu"]
    # the skeleton never held weights: every parameter is back on the meta device
    assert {p.device.type for p in lw.model.parameters()} == {"meta"}


def test_disk_cache_equals_and_leaves_nothing_behind(tmp_path):
    model = tiny_model("qwen3", num_hidden_layers=4)
    # a sharded checkpoint: weights of one layer come from several files
    model.save_pretrained(tmp_path / "m", max_shard_size="20KB")
    assert (tmp_path / "m" / "model.safetensors.index.json").exists()
    calib, val = _blocks(7, 3), _blocks(3, 4)  # 7 blocks in batches of 4: the last batch is smaller
    ref = _reference(model, calib, val, 1)
    off = tmp_path / "offload"
    seen = []
    lw = LayerwiseModel(tmp_path / "m", torch.float32, torch.device("cpu"))

    def count_loaded(module, args, kwargs):  # how many layers hold real weights while one runs
        seen.append(sum(any(p.device.type != "meta" for p in layer.parameters()) for layer in lw.layers))
        files = [p for p in off.rglob("*") if p.is_file()]
        seen.append(-len(files))

    for layer in lw.layers:
        layer.register_forward_pre_hook(count_loaded, with_kwargs=True)
    out = calibrate(lw, calib, val, SequentialPlan(aggregation="l2_mean", influence_block=1, loss_block=1,
                                                   batch_size=4, activation_cache="disk", offload_dir=off,
                                                   progress=False))
    _check_equal(out, ref)
    assert {c["kind"] for c in out["cache"]} == {"disk"}
    assert max(seen) == 1  # one layer in memory at a time
    assert min(seen) < 0  # the activations really were in files
    assert list(off.iterdir()) == []  # and the files are gone


def test_batch_groups_when_the_cache_fits_nowhere_equal_one_pass(tmp_path, caplog):
    """Activations too big for the memory limit: the batches go in groups that fit, each group streams every layer,
    and the scores are those of one pass (the accumulators see the batches in the same order)."""
    model = tiny_model("mistral", num_hidden_layers=4)
    model.save_pretrained(tmp_path / "m")
    calib, val = _blocks(10, 7), _blocks(9, 8)  # batches of 4: 4, 4, 2 and 4, 4, 1
    ref = _reference(model, calib, val, 2)
    lw = LayerwiseModel(tmp_path / "m", torch.float32, torch.device("cpu"))
    batch = 4 * 16 * 48 * 4  # bytes of one full batch's hidden states
    # room for 9 batches' worth of streams: the importance pass keeps k + 2 = 4 streams, the drop-2 scan L + 2 = 6
    limit = 2 * lw.layer_bytes + 2 * int(1.5 * batch * 6)
    with caplog.at_level(logging.INFO, logger="minitron_hf"):
        out = calibrate(lw, calib, val, SequentialPlan(aggregation="l2_mean", influence_block=2, loss_block=2,
                                                       batch_size=4, memory_limit=limit, offload_dir=tmp_path,
                                                       progress=False))
    _check_equal(out, ref)
    assert [c["kind"] for c in out["cache"]] == ["cpu", "cpu"] and min(c["groups"] for c in out["cache"]) >= 2
    assert "groups of batches" in caplog.text and "every layer read once per group" in caplog.text
    # not even one batch fits: the disk
    out = calibrate(lw, calib, None, SequentialPlan(aggregation="l2_mean", batch_size=4, memory_limit=2 * lw.layer_bytes,
                                                    offload_dir=tmp_path, progress=False))
    assert [(c["kind"], c["groups"]) for c in out["cache"]] == [("disk", 1)]
    torch.testing.assert_close(out["importance"].neurons, ref[0].neurons, rtol=1e-6, atol=0)


@pytest.mark.slow
def test_prune_sequential_on_the_default_model_equals_in_memory(default_model_dir, tmp_path, caplog):
    """SmolLM2-135M: `minitron prune --sequential` (width + the LM-loss depth scan) keeps the same channels, heads,
    neurons and layers as the in-memory prune, and its scores are equal."""
    common = dict(model=str(default_model_dir), calib_samples=8, val_samples=4, seq_len=64, batch_size=4,
                  target=dict(hidden_size=432, intermediate_size=1024, num_hidden_layers=28))
    one = run_prune(DataConfig(), PruneConfig(output=str(tmp_path / "mem"), sequential=False, **common))
    with caplog.at_level(logging.INFO, logger="minitron_hf"):
        seq = run_prune(DataConfig(), PruneConfig(output=str(tmp_path / "seq"), sequential=True,
                                                  activation_cache="disk", **common))
    assert seq["importance"]["sequential"] is True and one["importance"]["sequential"] is False
    assert seq["kept"] == one["kept"]
    assert seq["depth"]["dropped"] == one["depth"]["dropped"]
    assert seq["depth"]["lm_loss"] == pytest.approx(one["depth"]["lm_loss"], rel=1e-5)
    a, b = Importance.load(tmp_path / "mem" / "importance"), Importance.load(tmp_path / "seq" / "importance")
    torch.testing.assert_close(b.hidden_per_layer, a.hidden_per_layer, rtol=1e-6, atol=0)
    torch.testing.assert_close(b.heads, a.heads, rtol=1e-6, atol=0)
    torch.testing.assert_close(b.neurons, a.neurons, rtol=1e-6, atol=0)
    assert load_file(tmp_path / "seq" / "model.safetensors").keys() == load_file(tmp_path / "mem" / "model.safetensors").keys()
    assert "calibration layer by layer" in caplog.text and "activation cache on disk" in caplog.text
    assert [c["kind"] for c in json.loads((tmp_path / "seq" / "pruning.json").read_text())["importance"]
            ["activation_cache"]] == ["disk", "disk"]


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["llama"])
def test_auto_switch_when_the_model_does_not_fit(tiny_checkpoint, tmp_path, caplog):
    src, _ = tiny_checkpoint
    opts = dict(model=str(src), calib_samples=4, seq_len=32, batch_size=2, target=dict(intermediate_size=40))
    with caplog.at_level(logging.INFO, logger="minitron_hf"):
        small = run_prune(DataConfig(), PruneConfig(output=str(tmp_path / "a"), memory_limit_gb=0.001, **opts))
    assert small["importance"]["sequential"] is True
    assert "switching to sequential calibration, one layer at a time" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="minitron_hf"):
        big = run_prune(DataConfig(), PruneConfig(output=str(tmp_path / "b"), **opts))
    assert big["importance"]["sequential"] is False and "calibrating in memory" in caplog.text
    assert small["kept"] == big["kept"]
    # `minitron importance` switches the same way and writes the same scores
    r = run_importance(DataConfig(), ImportanceConfig(model=str(src), output=str(tmp_path / "i"), calib_samples=4,
                                                      seq_len=32, batch_size=2, block_size=1, val_samples=2,
                                                      memory_limit_gb=0.001))
    assert r["importance"]["sequential"] is True and len(r["layers"]["best_block_lm_loss"]) == 1
    torch.testing.assert_close(Importance.load(tmp_path / "i").neurons,
                               Importance.load(tmp_path / "b" / "importance").neurons, rtol=1e-6, atol=0)


def test_too_little_disk_for_the_cache_is_refused_before_calibration(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(SequentialError, match=r"activation cache needs .* GiB .* offload_dir=.* GiB free; set "
                                              r"offload_dir to a folder with more space"):
        ActivationCache("disk", torch.device("cpu"), batch_bytes=[free // 2, free // 2], streams=2, layer_bytes=0,
                        offload_dir=tmp_path / "off")
    assert list((tmp_path / "off").iterdir()) == []  # no cache folder was left


def test_bad_checkpoints_and_options_are_refused_before_work(tmp_path, default_model_dir):
    model = tiny_model("mistral", num_hidden_layers=2)
    d = tmp_path / "m"
    model.save_pretrained(d, max_shard_size="20KB")
    index = json.loads((d / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    # the index names the wrong shard for one tensor
    key = next(k for k, v in index["weight_map"].items() if v == shards[0])
    bad = json.loads(json.dumps(index))
    bad["weight_map"][key] = shards[1]
    (d / "model.safetensors.index.json").write_text(json.dumps(bad))
    with pytest.raises(SequentialError, match=f"sharded inconsistently: .*puts '{key}' in {shards[1]}, which does "
                                              f"not hold it"):
        checkpoint_tensors(d)
    # a shard holds a tensor the index does not name
    bad = json.loads(json.dumps(index))
    shared = next(s for s in shards if list(index["weight_map"].values()).count(s) > 1)
    del bad["weight_map"][next(k for k, v in index["weight_map"].items() if v == shared)]
    (d / "model.safetensors.index.json").write_text(json.dumps(bad))
    with pytest.raises(SequentialError, match="sharded inconsistently: 1 tensors are in the shards but not in"):
        checkpoint_tensors(d)
    # a tensor in two shards
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    extra = load_file(d / shards[1])
    extra[key] = torch.zeros(1)
    save_file(extra, d / shards[1])
    with pytest.raises(SequentialError, match=f"tensor '{key}' is in both"):
        checkpoint_tensors(d)
    # no safetensors at all
    p = tmp_path / "pickled"
    p.mkdir()
    torch.save({}, p / "pytorch_model.bin")
    with pytest.raises(SequentialError, match="found pytorch_model.bin; sequential calibration streams safetensors"):
        checkpoint_tensors(p)
    # options
    with pytest.raises(SequentialError, match="activation_cache='ram' is not one of auto, device, cpu, disk"):
        run_prune(DataConfig(), PruneConfig(model=str(default_model_dir), output=str(tmp_path / "o"),
                                            activation_cache="ram", target=dict(hidden_size=432)))
    with pytest.raises(SequentialError, match="memory_limit_gb=0 must be > 0"):
        run_prune(DataConfig(), PruneConfig(model=str(default_model_dir), output=str(tmp_path / "o"),
                                            memory_limit_gb=0, target=dict(hidden_size=432)))
    # the task metric needs the whole model: refused in sequential mode, before anything loads
    with pytest.raises(PruningConfigError, match="depth_metric='task:winogrande' needs the whole model in memory"):
        run_prune(DataConfig(), PruneConfig(model=str(default_model_dir), output=str(tmp_path / "o"),
                                            sequential=True, depth_metric="task:winogrande",
                                            target=dict(num_hidden_layers=28)))
    assert not (tmp_path / "o").exists()


def _dp_worker(rank, world, port, src, calib, val, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        lw = LayerwiseModel(src, torch.float32, torch.device("cpu"))
        r = calibrate(lw, calib[rank::world], val[rank::world],
                      SequentialPlan(aggregation="l2_mean", influence_block=2, loss_block=2, batch_size=2,
                                     activation_cache="cpu", progress=False))
        if rank == 0:
            torch.save(r, out)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.multiprocess
def test_data_parallel_sequential_equals_single_process_in_memory(tmp_path):
    """Each process streams the same layers over its own shard; the accumulators are all-reduced."""
    model = tiny_model("llama", num_hidden_layers=4)
    model.save_pretrained(tmp_path / "m")
    calib, val = _blocks(8, 5, seq=12), _blocks(4, 6, seq=12)
    imp = estimate_importance(model, calib, "l2_mean", batch_size=2, progress=False)
    base, losses = block_lm_losses(model, val, 2, batch_size=2, progress=False)
    bi, li = block_influence(model, calib, 2, batch_size=2, progress=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_dp_worker, args=(2, port, str(tmp_path / "m"), calib, val, str(tmp_path / "r.pt")), nprocs=2)
    r = torch.load(tmp_path / "r.pt", weights_only=False)
    torch.testing.assert_close(r["importance"].heads, imp.heads)
    torch.testing.assert_close(r["importance"].neurons, imp.neurons)
    torch.testing.assert_close(r["importance"].hidden, imp.hidden, rtol=1e-5, atol=1e-5)
    assert r["importance"].meta["samples"] == 8
    assert r["baseline_loss"] == pytest.approx(base, rel=1e-5)
    assert r["lm_loss"] == pytest.approx(losses, rel=1e-5)
    assert r["block_influence"] == pytest.approx(bi, rel=1e-6)
    assert r["layer_influence"] == pytest.approx(li, rel=1e-6)


def test_head_loss_over_vocabulary_blocks_equals_cross_entropy(tmp_path):
    """The LM-loss scan never converts the whole head: blocks of vocabulary rows, log-sum-exp merged."""
    model = tiny_model("qwen2", num_hidden_layers=1, vocab_size=1000)  # untied head
    model.save_pretrained(tmp_path / "m")
    lw = LayerwiseModel(tmp_path / "m", torch.float32, torch.device("cpu"))
    h = torch.randn(3, 9, 48)
    targets = torch.randint(0, 1000, (3, 9), generator=torch.Generator().manual_seed(0))
    logits = model.lm_head(model.model.norm(h)).float()
    want = torch.nn.functional.cross_entropy(logits.reshape(-1, 1000), targets.reshape(-1), reduction="sum").item()
    for budget in (256 * 48 * 4, 10 ** 9):  # blocks of 256 rows (4 blocks, the last one partial), then one block
        with lw.head(logits_budget=budget) as loss:
            assert loss(h, targets) == pytest.approx(want, rel=1e-6)
    assert {p.device.type for p in lw.model.parameters()} == {"meta"}
