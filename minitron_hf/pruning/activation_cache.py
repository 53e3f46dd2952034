"""The activation cache of sequential calibration: the residual stream of every calibration batch, kept between
layers on the device, in CPU memory or on disk, whichever fits (``activation_cache``)."""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .layerwise import SequentialError

logger = logging.getLogger(__name__)

GiB = 2 ** 30


def available_memory(device: torch.device) -> int:
    """Bytes free now: on a CUDA device its free memory; on the CPU MemAvailable (this machine's RAM)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


class Stream:
    """One hidden state per calibration batch ([B, S, hidden]), kept on the device, in CPU memory or in a file.

    The disk kind reads and writes with ``pread``/``pwrite``: no mapping, so the cache never counts in the
    process's resident memory."""

    def __init__(self, kind: str, device: torch.device, folder: Path | None = None):
        self.kind, self.device = kind, device
        self.items: dict[int, torch.Tensor] = {}
        self.slots: dict[int, tuple[int, tuple[int, ...], torch.dtype]] = {}  # batch -> (offset, shape, dtype)
        self.fd = None
        if kind == "disk":
            fd, self.path = tempfile.mkstemp(dir=folder, suffix=".act")
            self.fd, self.end = fd, 0

    def put(self, b: int, t: torch.Tensor) -> None:
        if self.kind == "device":
            self.items[b] = t
        elif self.kind == "cpu":
            self.items[b] = t if t.device.type == "cpu" else t.to("cpu")
        else:
            data = t.detach().to("cpu").contiguous().view(torch.uint8).reshape(-1).numpy().tobytes()
            if b not in self.slots:
                self.slots[b] = (self.end, tuple(t.shape), t.dtype)
                self.end += len(data)
            off, shape, _ = self.slots[b]
            if tuple(t.shape) != shape:
                raise RuntimeError(f"activation cache: batch {b} changed shape {shape} -> {tuple(t.shape)}")
            os.pwrite(self.fd, data, off)

    def get(self, b: int) -> torch.Tensor:
        if self.kind != "disk":
            return self.items[b].to(self.device)
        off, shape, dtype = self.slots[b]
        n = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        buf = bytearray(os.pread(self.fd, n, off))
        return torch.frombuffer(buf, dtype=torch.uint8).view(dtype).reshape(shape).to(self.device)

    def close(self) -> None:
        self.items.clear()
        if self.fd is not None:
            os.close(self.fd)
            os.unlink(self.path)
            self.fd = None


class ActivationCache:
    """Creates the :class:`Stream` s of one calibration pass in one place (device, CPU or a temporary folder),
    chosen before the pass from the size it needs, and removes them all at the end.

    ``auto`` takes the device when every batch's streams fit there, else CPU memory. When they fit in neither, the
    batches are split into consecutive groups that fit, and the pass runs once per group: each layer is then read
    from disk once per group, which costs far less than writing and reading every activation once per layer (a
    Llama-3.1-8B layer is 0.4 GiB in bf16; the paper's 1024 x 4096 calibration tokens are 32 GiB of activations at
    every layer). The disk holds the cache only when asked (``disk``) or when not even one batch fits in memory.
    Accumulators see the batches in the same order either way, so the groups change no score."""

    def __init__(self, kind: str, device: torch.device, batch_bytes: list[int], streams: int, layer_bytes: int,
                 offload_dir: Path, memory_limit: int | None = None):
        stream_bytes = sum(batch_bytes)
        need = stream_bytes * streams
        self.groups = [list(range(len(batch_bytes)))]
        if kind == "auto":
            free = memory_limit if memory_limit is not None else available_memory(device)
            if device.type == "cpu":
                budgets = {"cpu": 0.5 * (free - 2 * layer_bytes)}
            else:  # the device first, then CPU memory
                budgets = {"device": 0.8 * (free - 2 * layer_bytes),
                           "cpu": 0.5 * available_memory(torch.device("cpu"))}
            fits = [k for k, b in budgets.items() if need <= b]
            if fits:
                kind = fits[0]
            else:
                kind, budget = max(budgets.items(), key=lambda kv: kv[1])
                if max(batch_bytes) * streams <= budget:
                    self.groups, size = [[]], 0
                    for b, n in enumerate(batch_bytes):
                        if self.groups[-1] and (size + n) * streams > budget:
                            self.groups.append([])
                            size = 0
                        self.groups[-1].append(b)
                        size += n
                else:
                    kind = "disk"
        if kind == "device" and device.type == "cpu":
            kind = "cpu"
        self.kind, self.device, self.folder = kind, device, None
        where = {"device": f"on {device}", "cpu": "in CPU memory", "disk": f"on disk in {offload_dir}"}[kind]
        if kind == "disk":
            offload_dir = Path(offload_dir)
            offload_dir.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(offload_dir).free
            if need > free:
                raise SequentialError(
                    f"the activation cache needs {need / GiB:.2f} GiB ({streams} streams x {stream_bytes / GiB:.3f} GiB) "
                    f"but offload_dir={str(offload_dir)!r} has {free / GiB:.2f} GiB free; set offload_dir to a folder "
                    f"with more space, or use fewer calibration samples or a shorter seq_len")
            self.folder = Path(tempfile.mkdtemp(prefix=".minitron-activations-", dir=offload_dir))
        group_need = max(sum(batch_bytes[b] for b in g) for g in self.groups) * streams
        if len(self.groups) > 1:
            logger.info("activation cache %s: all batches would take %.1f MiB (%d streams x %.1f MiB), more than "
                        "fits; %d groups of batches of up to %.1f MiB each, every layer read once per group",
                        where, need / 2 ** 20, streams, stream_bytes / 2 ** 20, len(self.groups), group_need / 2 ** 20)
        else:
            logger.info("activation cache %s: up to %d streams x %.1f MiB = %.1f MiB", where, streams,
                        stream_bytes / 2 ** 20, need / 2 ** 20)
        self.info = {"kind": kind, "streams": streams, "stream_mib": round(stream_bytes / 2 ** 20, 2),
                     "groups": len(self.groups), "peak_mib": round(group_need / 2 ** 20, 2)}
        self.open: list[Stream] = []

    def new(self) -> Stream:
        s = Stream(self.kind, self.device, self.folder)
        self.open.append(s)
        return s

    def release(self, s: Stream) -> None:
        s.close()
        self.open.remove(s)

    def release_all(self) -> None:
        for s in self.open:
            s.close()
        self.open.clear()

    def close(self) -> None:
        self.release_all()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
