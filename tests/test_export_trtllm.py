"""TensorRT-LLM benchmark files: datasets, LLM API options and the exact commands (no GPU here); the
runner is exercised with a stand-in trtllm-bench executable that records its arguments."""

import json
import os
import shutil
import subprocess

import pytest
import yaml
from conftest import tiny_model
from safetensors.torch import save_file
import torch

from minitron_hf.arch import FAMILIES
from minitron_hf.cli import main
from minitron_hf.export import NotACheckpointError
from minitron_hf.export.trtllm import (CONVERTER_ARGS, TRTLLMConfig, TRTLLMError, default_batch_size, export_trtllm,
                                       plan)

LENGTHS = ["8/4", "16/32"]


@pytest.fixture
def ckpt(tmp_path, default_model_dir, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no trtllm-bench unless a test puts one there
    d = tmp_path / "ckpt"
    tiny_model("llama", vocab_size=49152).to(torch.bfloat16).save_pretrained(d)
    for f in default_model_dir.iterdir():
        if f.name.startswith("tokenizer") or f.name == "special_tokens_map.json":
            shutil.copy2(f, d / f.name)
    return d


def _cfg(tmp_path, **kw):
    return TRTLLMConfig(output=str(tmp_path / "bench"), lengths=LENGTHS, num_requests=5, **kw)


def test_datasets_are_trtllm_bench_requests(ckpt, tmp_path, default_tokenizer):
    res = export_trtllm(ckpt, _cfg(tmp_path))
    assert not res["ran"] and "needs a GPU machine with TensorRT-LLM" in res["message"]
    special = set(default_tokenizer.all_special_ids)
    for (isl, osl), path in zip([(8, 4), (16, 32)], res["datasets"]):
        rows = [json.loads(line) for line in open(path)]
        assert [r["task_id"] for r in rows] == list(range(5))
        for r in rows:
            assert set(r) == {"task_id", "input_ids", "output_tokens"}  # trtllm-bench's InferenceRequest fields
            assert len(r["input_ids"]) == isl and r["output_tokens"] == osl
            assert all(0 <= t < len(default_tokenizer) and t not in special for t in r["input_ids"])
        assert len({tuple(r["input_ids"]) for r in rows}) == 5  # distinct prompts
    first = open(res["datasets"][0]).read()
    export_trtllm(ckpt, _cfg(tmp_path, overwrite=True))
    assert open(res["datasets"][0]).read() == first  # deterministic (seed)


def test_commands_and_kv_cache_dtype(ckpt, tmp_path):
    out = tmp_path / "bench"
    export_trtllm(ckpt, _cfg(tmp_path))
    cmds = json.loads((out / "commands.json").read_text())
    assert len(cmds["pytorch"]) == len(LENGTHS)
    for c, (isl, osl) in zip(cmds["pytorch"], [(8, 4), (16, 32)]):
        assert c[:7] == ["trtllm-bench", "--model", "minitron/ckpt", "--model_path", str(ckpt.resolve()),
                         "--workspace", str(out / "workspace")]
        assert c[7:10] == ["throughput", "--backend", "pytorch"]
        args = dict(zip(c[10::2], c[11::2]))
        assert args["--dataset"] == str(out / "datasets" / f"isl{isl}_osl{osl}.jsonl")
        assert args["--max_batch_size"] == "64"  # a small model: the paper's 4B setting
        assert args["--num_requests"] == "5"
        assert args["--extra_llm_api_options"] == str(out / "extra-llm-api-options.yaml")
        assert args["--report_json"].endswith(f"pytorch-bfloat16-kvbfloat16-isl{isl}_osl{osl}.json")
    opts = yaml.safe_load((out / "extra-llm-api-options.yaml").read_text())
    assert opts == {"kv_cache_config": {"dtype": "auto", "free_gpu_memory_fraction": 0.9}}
    build = cmds["engine_build"][0]
    assert build[7] == "build" and "--quantization" not in build
    b = dict(zip(build[8::2], build[9::2]))
    assert (b["--max_seq_len"], b["--max_batch_size"], b["--max_num_tokens"]) == ("48", "64", "8192")
    for c in cmds["engine"]:
        a = dict(zip(c[10::2], c[11::2]))
        assert c[8:10] == ["--backend", "tensorrt"] and a["--engine_dir"] == str(out / "workspace/minitron/ckpt/tp_1_pp_1")
    convert, trtllm_build = cmds["trtllm_build"]
    assert "convert_checkpoint.py" in convert[1] and convert[convert.index("--dtype") + 1] == "bfloat16"
    assert trtllm_build[0] == "trtllm-build" and trtllm_build[trtllm_build.index("--max_batch_size") + 1] == "64"
    for s in ("run_pytorch.sh", "run_engine.sh"):
        assert os.access(out / s, os.X_OK)
        assert subprocess.run(["bash", "-n", str(out / s)]).returncode == 0
    assert "--backend pytorch" in (out / "run_pytorch.sh").read_text()
    assert "tensorrt-llm <= 1.2.1" in (out / "run_engine.sh").read_text()

    # FP8 KV cache: set in the options; an engine from this checkpoint would have a BF16 KV cache: no engine run
    export_trtllm(ckpt, _cfg(tmp_path, kv_cache_dtype="fp8", overwrite=True))
    assert yaml.safe_load((out / "extra-llm-api-options.yaml").read_text())["kv_cache_config"]["dtype"] == "fp8"
    cmds = json.loads((out / "commands.json").read_text())
    assert cmds["engine_build"] == cmds["engine"] == cmds["trtllm_build"] == [] and len(cmds["pytorch"]) == 2
    assert "Nothing to run" in (out / "run_engine.sh").read_text()


def test_fp8_checkpoint(ckpt, tmp_path):
    (ckpt / "hf_quant_config.json").write_text(json.dumps({"quantization": {"quant_algo": "FP8",
                                                                            "kv_cache_quant_algo": None}}))
    p = plan(ckpt, _cfg(tmp_path))
    assert p["weights"] == "fp8"
    export_trtllm(ckpt, _cfg(tmp_path))
    cmds = json.loads((tmp_path / "bench" / "commands.json").read_text())
    assert cmds["trtllm_build"] == [] and "--quantization" not in cmds["engine_build"][0]
    assert "pytorch-fp8-kvbfloat16-isl8_osl4.json" in cmds["pytorch"][0][-1]
    # a checkpoint whose KV cache is quantized cannot be benchmarked with a BF16 KV cache
    (ckpt / "hf_quant_config.json").write_text(json.dumps({"quantization": {"quant_algo": "FP8",
                                                                            "kv_cache_quant_algo": "FP8"}}))
    with pytest.raises(TRTLLMError, match="kv_cache_dtype='bfloat16'.*use kv_cache_dtype='fp8'"):
        plan(ckpt, _cfg(tmp_path, overwrite=True))
    assert plan(ckpt, _cfg(tmp_path, overwrite=True, kv_cache_dtype="fp8"))["kv_cache_dtype"] == "fp8"


def _config_only_checkpoint(d, **kw):
    from transformers import LlamaConfig

    d.mkdir()
    LlamaConfig(**kw).save_pretrained(d)
    save_file({"x": torch.zeros(1)}, str(d / "model.safetensors"))
    return d


def test_batch_size_follows_parameter_count(tmp_path):
    """Paper: batch 32 for Llama-3.1-8B (and 12B), 64 for the 4B models."""
    llama8b = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                   num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072)
    d8 = _config_only_checkpoint(tmp_path / "8b", **llama8b)
    p8 = plan(d8, TRTLLMConfig(output=str(tmp_path / "o8")))
    assert 7.9e9 < p8["parameters"] < 8.1e9 and p8["batch_size"] == 32
    d4 = _config_only_checkpoint(tmp_path / "4b", **{**llama8b, "hidden_size": 3072, "intermediate_size": 9216,
                                                    "head_dim": 128})
    p4 = plan(d4, TRTLLMConfig(output=str(tmp_path / "o4")))
    assert 4.0e9 < p4["parameters"] < 5.0e9 and p4["batch_size"] == 64
    assert plan(d4, TRTLLMConfig(output=str(tmp_path / "o4"), batch_size=16))["batch_size"] == 16
    assert (default_batch_size(12_000_000_000), default_batch_size(135_000_000)) == (32, 64)
    assert p8["grid"] == [(128, 128), (128, 2048), (2048, 128), (2048, 2048)] and p8["max_seq_len"] == 4096


def test_runs_commands_when_trtllm_bench_is_installed(ckpt, tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "calls.jsonl"
    fake = bindir / "trtllm-bench"
    fake.write_text(f"""#!{shutil.which("python3") or "/usr/bin/python3"}
import json, sys
a = sys.argv[1:]
open({str(log)!r}, "a").write(json.dumps(a) + "\\n")
if "--report_json" in a:
    open(a[a.index("--report_json") + 1], "w").write("{{}}")
""")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    res = export_trtllm(ckpt, _cfg(tmp_path))
    calls = [json.loads(line) for line in open(log)]
    cmds = json.loads((tmp_path / "bench" / "commands.json").read_text())
    assert res["ran"] and calls == [c[1:] for c in cmds["pytorch"] + cmds["engine_build"] + cmds["engine"]]
    assert len(res["reports"]) == 2 * len(LENGTHS)


def test_bad_input(ckpt, tmp_path, capsys):
    with pytest.raises(TRTLLMError, match="lengths item '128x2'"):
        plan(ckpt, TRTLLMConfig(output=str(tmp_path / "b"), lengths=["128x2"]))
    with pytest.raises(TRTLLMError, match="exceed the model's max_position_embeddings=256"):
        plan(ckpt, TRTLLMConfig(output=str(tmp_path / "b"), lengths=["128/200"]))
    with pytest.raises(TRTLLMError, match="output is required"):
        plan(ckpt, TRTLLMConfig())
    (tmp_path / "b").mkdir()
    with pytest.raises(TRTLLMError, match="exists; pass --overwrite"):
        plan(ckpt, TRTLLMConfig(output=str(tmp_path / "b"), lengths=LENGTHS))
    with pytest.raises(NotACheckpointError):
        plan(tmp_path / "b", TRTLLMConfig(output=str(tmp_path / "c")))
    assert main(["export", "trtllm", str(ckpt), "--output", str(tmp_path / "c"), "--lengths", "8/4",
                 "--num-requests", "2", "--batch-size", "3"]) == 0
    assert "batch size 3" in capsys.readouterr().out
    assert json.loads((tmp_path / "c" / "plan.json").read_text())["batch_size"] == 3
    assert main(["export", "trtllm", str(ckpt), "--output", str(tmp_path / "d"), "--lengths", "8-4"]) == 2
    assert "lengths item '8-4'" in capsys.readouterr().err


def _family_checkpoint(d, model_type):
    """A config-only checkpoint of one family (plan() reads the config; no weights are loaded)."""
    from conftest import tiny_config
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    d.mkdir()
    cfg = tiny_config(model_type, vocab_size=49152)
    cfg.architectures = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]]  # as save_pretrained of the model writes
    cfg.save_pretrained(d)
    save_file({"x": torch.zeros(1)}, str(d / "model.safetensors"))
    return d


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_every_family_names_a_real_converter_or_is_refused(model_type, tmp_path):
    """Each family's trtllm_example is a TensorRT-LLM converter whose argument spelling we know
    (CONVERTER_ARGS, checked against TensorRT-LLM's sources), or empty: then plan() refuses the model type up
    front, naming it and the supported ones, before the output directory is touched."""
    family = FAMILIES[model_type]
    d = _family_checkpoint(tmp_path / model_type, model_type)
    out = tmp_path / "bench"
    if family.trtllm_example:
        assert family.trtllm_example in CONVERTER_ARGS
        p = plan(d, TRTLLMConfig(output=str(out), lengths=LENGTHS))
        assert p["converter"] == family.trtllm_example
    else:
        assert family.trtllm_unsupported
        with pytest.raises(TRTLLMError, match=rf"model_type='{model_type}' cannot be benchmarked with TensorRT-LLM"):
            plan(d, TRTLLMConfig(output=str(out), lengths=LENGTHS))
        assert not out.exists()


def test_smollm3_refused_with_reason_and_supported_list(tmp_path, capsys):
    d = _family_checkpoint(tmp_path / "smol", "smollm3")
    supported = sorted(mt for mt, f in FAMILIES.items() if f.trtllm_example)
    assert "smollm3" not in supported and {"llama", "mixtral", "qwen3_moe", "gemma3_text", "phi3"} <= set(supported)
    with pytest.raises(TRTLLMError, match="NoPE layers") as e:
        plan(d, TRTLLMConfig(output=str(tmp_path / "o")))  # refused even before the output/lengths checks
    assert f"export trtllm supports: {', '.join(supported)}" in str(e.value)
    assert main(["export", "trtllm", str(d), "--output", str(tmp_path / "o")]) == 2
    assert "model_type='smollm3'" in capsys.readouterr().err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("model_type,expect", [
    ("gemma2", ["gemma/convert_checkpoint.py", "--ckpt-type", "hf", "--model-dir", "MODEL", "--output-model-dir", "CKPT",
                "--dtype", "bfloat16", "--world-size", "1"]),
    ("qwen3_moe", ["qwen/convert_checkpoint.py", "--model_dir", "MODEL", "--output_dir", "CKPT", "--dtype", "bfloat16",
                   "--tp_size", "1"]),
])
def test_converter_command_spelling(model_type, expect, tmp_path):
    """Gemma's converter takes --ckpt-type hf, --model-dir, --output-model-dir and --world-size (no --tp_size):
    the llama/qwen/phi spelling would stop it at argparse."""
    from minitron_hf.export.trtllm import commands

    d = _family_checkpoint(tmp_path / model_type, model_type)
    cfg = TRTLLMConfig(output=str(tmp_path / "bench"), lengths=LENGTHS)
    p = plan(d, cfg)
    convert = commands(p, cfg, tmp_path / "bench")["trtllm_build"][0]
    subst = {p["model_dir"]: "MODEL", str(tmp_path / "bench" / "workspace" / "trtllm-checkpoint"): "CKPT"}
    got = [subst.get(a, a) for a in convert[1:]]
    assert got[0].endswith(expect[0]) and got[1:] == expect[1:]
