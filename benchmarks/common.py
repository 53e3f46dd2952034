"""Shared helpers of the benchmark scripts: machine description and markdown results."""

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}, torch threads {torch.get_num_threads()}")


def command() -> str:
    return " ".join([Path(sys.executable).name, *sys.argv])


def revision() -> str:
    """The checkout's short commit id, or '?' outside git."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        rev = ""
    return rev or "?"


def run_json_child(code: str, *args: str, **kw) -> dict:
    """Run ``python -c code *args`` in a fresh process (peak memory measured there is its own) and return the JSON
    object its last stdout line holds; a failure exits with the child's stderr. ``kw`` goes to subprocess.run."""
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, **kw)
    if r.returncode:
        sys.exit(f"child process failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def write_result(name: str, title: str, body: str, directory: Path = RESULTS) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    text = (f"# {title}\n\n- date: {datetime.date.today().isoformat()}\n- machine: {machine()}\n"
            f"- command: `{command()}`\n- commit: {revision()}\n\n{body.strip()}\n")
    path = directory / f"{name}.md"
    path.write_text(text)
    return path
