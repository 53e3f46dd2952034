"""Pruning a model larger than memory: sequential (layer-by-layer) calibration, time and peak memory (issue 20).

Three parts, each `minitron prune` in a fresh child process whose peak RSS (VmHWM) is read at its end:

1. SmolLM2-135M (real weights), width + depth (the LM-loss scan): in memory against sequential with the
   activation cache in CPU memory and on disk. Scores, kept indices and dropped layers must be equal.
2. A Llama-3.2-1B-shaped checkpoint (random bf16 weights), width only: in memory against sequential.
3. A Llama-3.1-8B-shaped checkpoint (random bf16 weights, about 15 GiB on disk) pruned to the
   Llama-3.1-Minitron-4B-Width shape with no --sequential flag: the model does not fit, so the
   command must switch to sequential mode by itself. Goal: peak RSS under 4 GiB and under a quarter
   of the checkpoint's size.
4. The same checkpoint to the 4B-Depth shape (16 of 32 layers): the LM-loss scan of 17 candidate blocks,
   layer by layer, with the activation cache on disk.

Random weights come from one pool of normal values (each tensor a slice at a random offset): only time and
memory are measured on them. The checkpoints carry SmolLM2's tokenizer (49,152 tokens, within every vocabulary).

    python benchmarks/sequential.py [--work /path/with/40GB] [--parts 1,2,3] [--keep]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from common import write_result

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
t = time.perf_counter()
from minitron_hf.cli import main
rc = main(json.loads(sys.argv[1]))
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"rc": rc, "seconds": time.perf_counter() - t, "peak_gib": hwm / 2**20}))
"""

LLAMA_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, rope_theta=500000.0,
                max_position_embeddings=131072, rms_norm_eps=1e-5,
                rope_scaling=dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                  original_max_position_embeddings=8192, rope_type="llama3"))
LLAMA_1B = dict(LLAMA_8B, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, tie_word_embeddings=True,
                rope_scaling=dict(LLAMA_8B["rope_scaling"], factor=32.0))
TARGET_4B_WIDTH = dict(hidden_size=3072, intermediate_size=9216)  # Llama-3.1-Minitron-4B-Width


def make_checkpoint(d: Path, cfg, tokenizer_dir: Path, shard_bytes: int = 5 << 30) -> int:
    """A checkpoint of ``cfg``'s shape (a Llama config mapping, or any transformers config) with random bf16
    weights, written shard by shard; returns its bytes."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**cfg, head_dim=cfg["hidden_size"] // cfg["num_attention_heads"]) if isinstance(cfg, dict) \
        else cfg
    with init_empty_weights():
        config.architectures = [type(AutoModelForCausalLM.from_config(config)).__name__]
    config.dtype = "bfloat16"
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config)
    skeleton.tie_weights()  # on the meta device from_config leaves a tied head untied
    shapes = {n: tuple(p.shape) for n, p in skeleton.named_parameters()}  # tied head: listed once
    g = torch.Generator().manual_seed(0)
    pool = (torch.randn(1 << 27, generator=g) * 0.02).to(torch.bfloat16)
    d.mkdir(parents=True)
    config.save_pretrained(d)
    for f in tokenizer_dir.iterdir():
        if f.name.startswith("tokenizer") or f.name in ("special_tokens_map.json", "chat_template.jinja"):
            shutil.copy2(f, d / f.name)
    names = list(shapes)
    groups, cur, size = [], [], 0
    for n in names:
        b = torch.Size(shapes[n]).numel() * 2
        if cur and size + b > shard_bytes:
            groups.append(cur)
            cur, size = [], 0
        cur.append(n)
        size += b
    groups.append(cur)
    weight_map, total = {}, 0
    for i, group in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for n in group:
            numel = torch.Size(shapes[n]).numel()
            if "norm" in n:
                t = torch.ones(numel, dtype=torch.bfloat16)
            else:
                start = int(torch.randint(0, len(pool), (1,), generator=g))
                t = pool.roll(-start)[:numel] if numel <= len(pool) else pool.repeat(numel // len(pool) + 1)[:numel]
            tensors[n] = t.reshape(shapes[n]).clone()
            weight_map[n] = fname
            total += numel * 2
        save_file(tensors, str(d / fname), metadata={"format": "pt"})
        del tensors
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                "weight_map": weight_map}, indent=1))
    return total


def prune(args: list[str], log: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "w") as err:
        r = subprocess.run([sys.executable, "-c", CHILD, json.dumps(["prune", *args])], stdout=subprocess.PIPE,
                           stderr=err, text=True, env=env, cwd=ROOT)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    if out["rc"] != 0:
        raise SystemExit(f"prune {args} failed (rc {out['rc']}); see {log}")
    return out


def _equal_scores(a: Path, b: Path) -> dict:
    from safetensors.torch import load_file

    x, y = load_file(a / "importance" / "importance.safetensors"), load_file(b / "importance" / "importance.safetensors")
    diff = max(float((x[k] - y[k]).abs().max() / y[k].abs().max().clamp(min=1e-30)) for k in x)
    ka = json.loads((a / "pruning.json").read_text())
    kb = json.loads((b / "pruning.json").read_text())
    return {"max_rel_diff": diff, "kept_equal": ka["kept"] == kb["kept"],
            "dropped": (ka.get("depth") or {}).get("dropped"), "dropped_equal":
            (ka.get("depth") or {}).get("dropped") == (kb.get("depth") or {}).get("dropped")}


def part_fits(work: Path, src: Path, name: str, common: list[str], modes: dict) -> tuple[list[dict], dict]:
    rows = []
    for mode, extra in modes.items():
        out = work / f"{name}-{mode}"
        shutil.rmtree(out, ignore_errors=True)
        r = prune(["--model", str(src), *common, *extra, "--output", str(out)], work / f"{name}-{mode}.log")
        rec = json.loads((out / "pruning.json").read_text())
        rows.append({"mode": mode, **r, "cache": rec["importance"].get("activation_cache")})
    ref = work / f"{name}-{list(modes)[0]}"
    checks = {m: _equal_scores(work / f"{name}-{m}", ref) for m in list(modes)[1:]}
    return rows, checks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/minitron-sequential-bench"))
    ap.add_argument("--parts", default="1,2,3,4")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints (they are reused when present)")
    a = ap.parse_args()
    parts = {int(p) for p in a.parts.split(",")}
    a.work.mkdir(parents=True, exist_ok=True)
    from minitron_hf.default_model import ensure_default_model

    smol = ensure_default_model()
    out_json = ROOT / "benchmarks" / "results" / "sequential.json"
    # parts not run now keep their last results (each part's ratios come from one run)
    results = json.loads(out_json.read_text()) if out_json.exists() else {}
    when = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": " ".join(["python", *sys.argv])}
    if 1 in parts:
        common = ["--target", "hidden_size=432", "--target", "intermediate_size=1024", "--target",
                  "num_hidden_layers=28", "--calib-samples", "32", "--val-samples", "8", "--seq-len", "128",
                  "--batch-size", "8"]
        rows, checks = part_fits(a.work, smol, "smollm2", common, {
            "in memory": ["--sequential", "false"], "sequential, CPU cache": ["--sequential", "--activation-cache", "cpu"],
            "sequential, disk cache": ["--sequential", "--activation-cache", "disk"]})
        results["smollm2"] = {"rows": rows, "checks": checks, **when, "title": (
                         "SmolLM2-135M (real weights, fp32 on disk, 0.50 GiB), target hidden 432, MLP 1024, 28 of 30 "
                         "layers (LM-loss scan of 29 blocks of 2 layers); 32 x 128 calibration tokens, 8 x 128 "
                         "validation tokens")}
    if 2 in parts:
        src = a.work / "llama-1b-shape"
        if not (src / "config.json").exists():
            make_checkpoint(src, LLAMA_1B, smol)
        common = ["--target", "hidden_size=1536", "--target", "intermediate_size=4096", "--calib-samples", "16",
                  "--seq-len", "128", "--batch-size", "8"]
        rows, checks = part_fits(a.work, src, "llama1b", common, {
            "in memory": ["--sequential", "false"], "sequential": ["--sequential"]})
        size = sum(f.stat().st_size for f in src.glob("*.safetensors")) / 2 ** 30
        results["llama1b"] = {"rows": rows, "checks": checks, **when, "title": (
                         f"Llama-3.2-1B shape (random weights, bf16 on disk, {size:.2f} GiB; fp32 in memory), "
                         f"width only: hidden 1536, MLP 4096; 16 x 128 calibration tokens")}
    big = {3: ("llama8b-width", list(TARGET_4B_WIDTH.items()), ["--calib-samples", "16", "--seq-len", "256"],
               "Llama-3.1-8B shape to Llama-3.1-Minitron-4B-Width (hidden 3072, MLP 9216)",
               "16 x 256 calibration tokens"),
           4: ("llama8b-depth", [("num_hidden_layers", 16)],
               ["--val-samples", "4", "--seq-len", "128", "--activation-cache", "disk"],
               "Llama-3.1-8B shape to Llama-3.1-Minitron-4B-Depth (16 of 32 layers by the LM-loss scan)",
               "4 x 128 validation tokens per candidate block, activation cache forced to disk")}
    if parts & set(big):
        src = a.work / "llama-8b-shape"
        t = time.perf_counter()
        if not (src / "config.json").exists():
            make_checkpoint(src, LLAMA_8B, smol)
        made = time.perf_counter() - t
        size = sum(f.stat().st_size for f in src.glob("*.safetensors")) / 2 ** 30
    for part in sorted(parts & set(big)):
        name, target, extra, title, data = big[part]
        out = a.work / name
        shutil.rmtree(out, ignore_errors=True)
        r = prune(["--model", str(src), *sum((["--target", f"{k}={v}"] for k, v in target), []), *extra,
                   "--batch-size", "4", "--output", str(out)], a.work / f"{name}.log")
        rec = json.loads((out / "pruning.json").read_text())
        log = (a.work / f"{name}.log").read_text().splitlines()
        said = [x.split(": ", 1)[-1] for x in log if "sequential calibration" in x or "activation cache" in x]
        out_size = sum(f.stat().st_size for f in out.glob("*.safetensors")) / 2 ** 30
        results[name] = {**r, "disk_gib": size, "out_gib": out_size, "log": said, "made_s": made, "title": title,
                         "data": data, "params": rec["parameters"], "cache": rec["importance"].get("activation_cache"),
                         "dropped": (rec.get("depth") or {}).get("dropped"), **when}
        shutil.rmtree(out)
    if not a.keep:
        shutil.rmtree(a.work / "llama-8b-shape", ignore_errors=True)
    out_json.write_text(json.dumps(results, indent=1))

    body = []
    for name in ("llama8b-width", "llama8b-depth"):
        if name not in results:
            continue
        r = results[name]
        ok = r["peak_gib"] < 4 and r["peak_gib"] < r["disk_gib"] / 4
        body.append(f"""## {r['title']}, on a machine that cannot hold it

Checkpoint: Llama-3.1-8B's config (32 layers, hidden 4096, MLP 14336, 32/8 heads, vocab 128256, untied),
random bf16 weights, **{r['disk_gib']:.2f} GiB** in 5 GiB shards; {r['params']['before']['total'] / 1e9:.2f}B
parameters -> {r['params']['after']['total'] / 1e9:.2f}B, {r['out_gib']:.2f} GiB written{
f" (dropped layers {r['dropped'][0]}-{r['dropped'][-1]}: random weights, any block is as good)" if r['dropped'] else ""}.
Run {r['date']}: `{r['command']}`. Calibration in fp32 (the default dtype: 30 GiB for the
whole model, more than this machine's 24 GiB), {r['data']}. No `--sequential` flag was given; the command said:

{chr(10).join('    ' + x for x in r['log'])}

| wall time | peak RSS | peak / checkpoint size | goal (< 4 GiB and < 1/4 of the checkpoint) |
|---|---|---|---|
| {r['seconds']:.0f} s | **{r['peak_gib']:.2f} GiB** | {r['peak_gib'] / r['disk_gib']:.3f} | {"met" if ok else "NOT MET"} |
""")
    if any(n in results for n in ("llama8b-width", "llama8b-depth")):
        body.append("""Wall time covers everything from loading to the written output: tokenizing the calibration data, calibration
(the 32 layers read from disk and converted to fp32 one at a time), the plan, and trimming (streamed tensor by
tensor). Writing the random checkpoint is not counted.
""")
    for key in ("smollm2", "llama1b"):
        if key not in results:
            continue
        title, rows, checks = results[key]["title"], results[key]["rows"], results[key]["checks"]
        lines = "\n".join(f"| {x['mode']} | {x['seconds']:.1f} | {x['peak_gib']:.2f} | "
                          f"{', '.join(c['kind'] for c in x['cache']) if x['cache'] else '-'} |" for x in rows)
        base = rows[0]
        ratios = "; ".join(f"{x['mode']}: time x{x['seconds'] / base['seconds']:.2f}, peak memory "
                           f"x{x['peak_gib'] / base['peak_gib']:.2f}" for x in rows[1:])
        eq = "; ".join(f"{m}: kept indices {'equal' if c['kept_equal'] else 'DIFFERENT'}"
                       + (f", dropped layers {c['dropped']} {'equal' if c['dropped_equal'] else 'DIFFERENT'}"
                          if c["dropped"] else "")
                       + f", largest score difference {c['max_rel_diff']:.1e} of the largest score"
                       for m, c in checks.items())
        body.append(f"""## {title}

| mode | wall time (s) | peak RSS (GiB) | activation cache |
|---|---|---|---|
{lines}

Run {results[key]['date']}: `{results[key]['command']}`. Against in memory, in the same run: {ratios}. {eq}.
""")
    text = "\n".join(body) + """
Peak RSS is the child process's VmHWM (Python, torch and transformers included, about 0.5 GiB alone).
Every run is `minitron prune` from the command line, in a fresh process, one after another on the otherwise
idle machine."""
    print(text)
    print("wrote", write_result("sequential", "Sequential calibration: models larger than memory", text))


if __name__ == "__main__":
    main()
