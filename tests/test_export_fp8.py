"""ModelOpt FP8 export: structure of the written checkpoint and its numerics (by dequantizing the
safetensors: transformers cannot load this format, so from_pretrained is never used on it)."""

import json
import logging
import shutil

import pytest
import torch
from conftest import assert_dequantized_close, tiny_model
from safetensors.torch import load_file

pytest.importorskip("modelopt.torch.quantization", reason="nvidia-modelopt is not installed (pip install -e '.[export]')")

from minitron_hf.cli import main  # noqa: E402
from minitron_hf.data import DataConfig, load_blocks  # noqa: E402
from minitron_hf.export import NotACheckpointError  # noqa: E402
from minitron_hf.export.fp8 import FP8_E4M3_MAX, FP8Config, FP8ExportError, dequantize, dims_not_divisible, export_fp8  # noqa: E402

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CALIB, SEQ = 4, 32


def _with_tokenizer(d, default_model_dir):
    for f in default_model_dir.iterdir():
        if f.name.startswith("tokenizer") or f.name in ("special_tokens_map.json", "chat_template.jinja"):
            shutil.copy2(f, d / f.name)
    return d


@pytest.fixture(scope="module")
def exported(tmp_path_factory, default_model_dir):
    """A tiny random Llama (MLP 100: not a multiple of 16; no config.architectures) exported to FP8 once."""
    tmp = tmp_path_factory.mktemp("fp8")
    model = tiny_model("llama", vocab_size=49152, intermediate_size=100)
    model.config.architectures = None
    src = tmp / "src"
    model.save_pretrained(src)
    _with_tokenizer(src, default_model_dir)
    (src / "pruning.json").write_text(json.dumps({"source": "smollm2-135m", "target": {"intermediate_size": 100}}))
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("minitron_hf.export.fp8").addHandler(handler)
    try:
        rec = export_fp8(src, DataConfig(), FP8Config(output=str(tmp / "fp8"), calib_samples=CALIB, seq_len=SEQ,
                                                      batch_size=2, dtype="float32"))
    finally:
        logging.getLogger("minitron_hf.export.fp8").removeHandler(handler)
    return src, tmp / "fp8", rec, [r.getMessage() for r in records]


def test_structure(exported):
    src, out, rec, _ = exported
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]  # set although the source had none
    q = cfg["quantization_config"]
    assert q["quant_method"] == "modelopt" and q["quant_algo"] == "FP8" and "lm_head" in q["ignore"]
    hq = json.loads((out / "hf_quant_config.json").read_text())["quantization"]
    assert hq["quant_algo"] == "FP8" and hq["kv_cache_quant_algo"] is None and "lm_head" in hq["exclude_modules"]
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (out / f).read_bytes() == (src / f).read_bytes()
    assert json.loads((out / "pruning.json").read_text())["source"] == "smollm2-135m"  # lineage for the card
    fp8 = json.loads((out / "fp8.json").read_text())
    assert fp8["calib_samples"] == CALIB and fp8["quantized_linears"] == 4 * 7 == rec["quantized_linears"]

    t = load_file(out / "model.safetensors")
    for layer in range(4):
        for proj in LINEARS:
            kind = "self_attn" if proj in LINEARS[:4] else "mlp"
            p = f"model.layers.{layer}.{kind}.{proj}"
            assert t[f"{p}.weight"].dtype == torch.float8_e4m3fn
            assert t[f"{p}.weight_scale"].shape == () and t[f"{p}.weight_scale"] > 0  # per-tensor scale
            assert t[f"{p}.input_scale"].shape == () and t[f"{p}.input_scale"] > 0  # static activation scale
    assert t["model.embed_tokens.weight"].dtype == torch.float32  # unquantized tensors keep the export dtype
    assert not any(k.startswith("lm_head") for k in t)  # tied to the embedding
    assert not any(v.dtype == torch.float8_e4m3fn for k, v in t.items() if "norm" in k or "embed" in k)


def test_weights_within_fp8_e4m3_tolerance(exported):
    src, out, _, _ = exported
    assert_dequantized_close(load_file(src / "model.safetensors"), out)


def test_input_scales_are_calibrated_ranges(exported, default_tokenizer):
    """input_scale = (largest |input| seen during calibration) / 448, recomputed here with plain hooks."""
    from transformers import AutoModelForCausalLM

    src, out, _, _ = exported
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    blocks = load_blocks(DataConfig(), default_tokenizer, "calibration", SEQ, CALIB)
    amax = {}

    def hook(name):
        def f(mod, args):
            amax[name] = max(amax.get(name, 0.0), args[0].abs().max().item())
        return f

    for n, m in model.named_modules():
        if n.split(".")[-1] in LINEARS:
            m.register_forward_pre_hook(hook(n))
    with torch.no_grad():
        for i in range(0, CALIB, 2):
            model(blocks[i:i + 2])
    t = load_file(out / "model.safetensors")
    for n, a in amax.items():
        # q/k/v share one input (ModelOpt fuses their input scales; equal here anyway)
        assert t[f"{n}.input_scale"].item() == pytest.approx(a / FP8_E4M3_MAX, rel=1e-4), n


def test_warns_about_dims_not_divisible_by_16(exported):
    *_, rec, messages = exported
    assert rec["not_divisible_by_16"] == ["gate_proj.out_features=100", "up_proj.out_features=100",
                                          "down_proj.in_features=100"]
    assert any("divisible by 16" in m and "gate_proj.out_features=100" in m for m in messages)
    assert dims_not_divisible(tiny_model("llama").config) == []  # 48/96/96/32: all multiples of 16


def test_bad_input_fails_before_loading(exported, tmp_path, monkeypatch):
    src, out, _, _ = exported
    monkeypatch.setattr("minitron_hf.loading.load_model", lambda *a, **k: pytest.fail("model loaded"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotACheckpointError, match="no config.json"):
        export_fp8(tmp_path / "empty", DataConfig(), FP8Config(output=str(tmp_path / "o")))
    with pytest.raises(FP8ExportError, match="already a ModelOpt FP8 checkpoint"):
        export_fp8(out, DataConfig(), FP8Config(output=str(tmp_path / "o")))
    with pytest.raises(FP8ExportError, match="output is required"):
        export_fp8(src, DataConfig(), FP8Config())
    with pytest.raises(FP8ExportError, match="exists; pass --overwrite"):
        export_fp8(src, DataConfig(), FP8Config(output=str(out)))
    with pytest.raises(FP8ExportError, match="is or contains the input"):
        export_fp8(src, DataConfig(), FP8Config(output=str(src), overwrite=True))
    with pytest.raises(FP8ExportError, match="seq_len=100000 must be in"):
        export_fp8(src, DataConfig(), FP8Config(output=str(tmp_path / "o"), seq_len=100000))
    with pytest.raises(FP8ExportError, match="dtype='int8'"):
        export_fp8(src, DataConfig(), FP8Config(output=str(tmp_path / "o"), dtype="int8"))
    assert not (tmp_path / "o").exists()


def test_cli_errors(tmp_path, capsys):
    assert main(["export", "fp8", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    assert "no config.json" in capsys.readouterr().err


@pytest.mark.slow
def test_default_model_fp8_keeps_its_answer(default_model_dir, default_tokenizer, tmp_path):
    """SmolLM2-135M in FP8: the dequantized weights, run by vanilla transformers, still answer the
    question and stay close to the original logits."""
    from transformers import AutoModelForCausalLM

    rec = export_fp8(default_model_dir, DataConfig(), FP8Config(output=str(tmp_path / "fp8"), calib_samples=4,
                                                                seq_len=64, dtype="bfloat16"))
    assert rec["quantized_linears"] == 30 * 7 and rec["not_divisible_by_16"] == []
    ref = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32).eval()
    deq = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32).eval()
    missing, unexpected = deq.load_state_dict(dequantize(tmp_path / "fp8"), strict=False)
    assert unexpected == [] and set(missing) <= {"lm_head.weight"}
    ids = default_tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                                add_generation_prompt=True, return_tensors="pt",
                                                return_dict=True)["input_ids"]
    with torch.no_grad():
        lp_ref = torch.log_softmax(ref(ids).logits[0], -1)
        lp_deq = torch.log_softmax(deq(ids).logits[0], -1)
        out = deq.generate(ids, max_new_tokens=12, do_sample=False)
    kl = torch.sum(lp_ref.exp() * (lp_ref - lp_deq), -1).mean().item()  # per position, averaged over the prompt
    assert 0 < kl < 0.15, kl  # measured about 0.05 (FP8 weights, bfloat16 embeddings)
    assert "Paris" in default_tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
