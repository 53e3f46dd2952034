"""Berkeley Function-Calling Leaderboard, live categories (``minitron eval bfcl``).

Questions, function docs and possible answers are those of the ``bfcl-eval`` package (BFCL v4 live data:
live_simple 258, live_multiple 1053, live_parallel 16, live_parallel_multiple 24, live_irrelevance 884,
live_relevance 16 entries). bfcl-eval pins numpy 1.26.4, so it lives in its own virtual environment
(``venv``, created on first use and reused) and only its own functions run there, in a subprocess with
JSON in and out (:mod:`._bfcl_worker`):

1. *load* (bfcl venv): each entry's chat messages with BFCL's default system prompt for prompt-based
   models (the function docs as JSON, answers as ``[func(arg=value), ...]``);
2. *generate* (our venv): the model under test answers greedily, a checkpoint through transformers and
   its chat template, or a served model through an OpenAI-compatible endpoint (``model_base_url``);
3. *parse* (our venv, :func:`parse_calls`): the answer as a list of ``{function: {argument: value}}``,
   decoded as bfcl-eval's default prompt decoder does (checked against it in the tests), or None;
4. *score* (bfcl venv): bfcl-eval's ``ast_checker`` on the AST categories, and "was a call decoded" on
   live_relevance / live_irrelevance.

Reported: accuracy per category, ``live_overall`` as bfcl-eval computes its live accuracy (the four AST
categories weighted by their entry counts) and ``live_with_relevance`` (all six weighted by counts, which
adds relevance detection). The papers report BFCL v2 live accuracy; v4's live data has the same
categories with re-checked answers, so numbers differ a little from v2's.
"""

from __future__ import annotations

import ast
import json
import logging
import operator
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..config import at_least, one_of
from ..generation import generate_texts
from ..model_files import check_checkpoint
from ..outputs import build_once, cache_dir
from . import endpoint
from .suite import EvalError, ServedModelOptions, Suite

logger = logging.getLogger(__name__)

LIVE_CATEGORIES = ["live_simple", "live_multiple", "live_parallel", "live_parallel_multiple", "live_irrelevance",
                   "live_relevance"]
BFCL_PACKAGE = "bfcl-eval==2026.3.23"
# What a "checker" venv holds besides bfcl-eval (installed --no-deps, exact pins): the modules that the functions
# of _bfcl_worker.py import. Derived 2026-11-23 for bfcl-eval 2026.3.23 by installing it --no-deps into a fresh
# venv, adding packages until every worker command ran on the real data, and listing the non-stdlib modules left
# in sys.modules (python -X importtime); versions are bfcl-eval's own pins (filelock, tree-sitter*) or those its
# full install resolved (tenacity). filelock: bfcl_eval.utils; tenacity and tree-sitter*: imported at module
# level by bfcl_eval.model_handler.utils (retry decorators, Java/JS answer parsers). Left out: the vendors' SDKs
# (openai, anthropic, qwen-agent, ...; imported only by bfcl-eval's model handler modules, which the worker
# stubs, see its comment), numpy and pandas (imported by eval_runner_helper for none of the functions we call;
# stubbed by the worker), sentence-transformers and faiss-cpu (agentic categories; they bring torch). 45 MB (pip and
# setuptools included), 10-25 s on 2 busy CPU cores, against 564 MB and 464 s for every requirement less those two.
CHECKER_REQUIREMENTS = ["filelock==3.20.0", "tenacity==9.1.4", "tree-sitter==0.21.3", "tree-sitter-java==0.21.0",
                        "tree-sitter-javascript==0.21.4"]
# "full" installs bfcl-eval with every requirement (about 6 GB with torch) and this, imported by qwen-agent
# (imported by bfcl-eval's handler table) but not declared by it
UNDECLARED = ["soundfile"]
WORKER = Path(__file__).with_name("_bfcl_worker.py")


class BFCLError(EvalError):
    """Bad BFCL input; the message names the field and what is allowed."""


INSTALL = ("checker", "full")


@dataclass
class BFCLConfig(ServedModelOptions):
    """Options of ``minitron eval bfcl`` (and those of :class:`.suite.ServedModelOptions`: with model_base_url the
    models answer from that server)."""

    categories: list[str] = field(default_factory=lambda: list(LIVE_CATEGORIES), metadata={
        "help": "BFCL live categories: " + ", ".join(LIVE_CATEGORIES)})
    limit: int | None = field(default=None, metadata={"help": "only the first N entries of each category"})
    max_new_tokens: int = field(default=512, metadata={"help": "tokens generated per answer"})
    batch_size: int = field(default=8, metadata={"help": "conversations per generate call"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda (default: cuda when available)"})
    venv: str | None = field(default=None, metadata={"help": "virtual environment for bfcl-eval (created when "
                             "missing; default: <cache>/bfcl-venv)"})
    install: str = field(default="checker", metadata={
        "help": "what goes into a new venv: checker (bfcl-eval and the few packages its data, prompt, decoder and "
                "AST checker import: about 45 MB, under a minute) or full (every requirement of bfcl-eval, its "
                "model handlers' SDKs and torch included: about 6 GB)",
        "choices": list(INSTALL)})
    output: str | None = field(default=None, metadata={"help": "directory for results.json/results.md and every "
                               "answer with its verdict (answers.jsonl)"})

    def __post_init__(self):
        super().__post_init__()
        cats = [self.categories] if isinstance(self.categories, str) else list(self.categories or [])
        if not cats:
            raise BFCLError("categories: name at least one of " + ", ".join(LIVE_CATEGORIES))
        for c in cats:
            if c not in LIVE_CATEGORIES:
                raise BFCLError(f"categories: {c!r} is not a BFCL live category ({', '.join(LIVE_CATEGORIES)})")
        at_least(self, ("max_new_tokens", "batch_size"), error=BFCLError)
        at_least(self, ("limit",), error=BFCLError, optional=("limit",))
        one_of("install", self.install, INSTALL, BFCLError)


# ------------------------------------------------------------------------------------------------
# The bfcl-eval virtual environment
# ------------------------------------------------------------------------------------------------

def default_venv() -> Path:
    return cache_dir() / "bfcl-venv"


def ensure_venv(venv: str | Path | None = None, install: str = "checker") -> Path:
    """The Python of a virtual environment holding :data:`BFCL_PACKAGE`; created (``python -m venv`` + pip)
    when missing or unfinished. A finished one carries a marker naming what was installed."""
    venv = Path(venv).expanduser() if venv else default_venv()
    py, marker = venv / "bin" / "python", venv / ".minitron-bfcl"
    want = f"{BFCL_PACKAGE} {install}"
    # two runs at once: one creates it, the other waits (unlocked, the second would remove the first's unfinished venv)
    build_once(venv, lambda: py.exists() and marker.exists() and marker.read_text().strip() in (
        want, f"{BFCL_PACKAGE} full"), lambda: _create_venv(venv, py, marker, want, install))
    return py


def _create_venv(venv: Path, py: Path, marker: Path, want: str, install: str) -> Path:
    if venv.exists() and not marker.exists():
        if not (venv / "pyvenv.cfg").exists():
            raise BFCLError(f"venv={str(venv)!r} exists and is not a virtual environment; name another directory")
        logger.info("removing the unfinished bfcl venv %s", venv)
        shutil.rmtree(venv)
    t0 = time.time()
    logger.info("creating the bfcl-eval venv %s (%s install)", venv, install)
    try:
        if not py.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, text=True)
        pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        if install == "full":
            subprocess.run(pip + [BFCL_PACKAGE] + UNDECLARED, check=True, capture_output=True, text=True)
        else:
            subprocess.run(pip + ["--no-deps", BFCL_PACKAGE] + CHECKER_REQUIREMENTS, check=True,
                           capture_output=True, text=True)
    except subprocess.CalledProcessError as e:
        raise BFCLError(f"venv={str(venv)!r}: installing {BFCL_PACKAGE} failed ({' '.join(e.cmd[:6])} ...):\n"
                        f"{(e.stderr or e.stdout or '')[-2000:]}") from None
    marker.write_text(want + "\n")
    logger.info("bfcl venv ready in %.0f s", time.time() - t0)
    return py


def call_worker(py: Path, command: str, request: dict) -> dict:
    """Run :mod:`._bfcl_worker` ``command`` in the bfcl venv with ``request``; its JSON answer."""
    with tempfile.TemporaryDirectory(prefix="minitron-bfcl-") as tmp:
        src, dst = Path(tmp) / "in.json", Path(tmp) / "out.json"
        src.write_text(json.dumps(request))
        p = subprocess.run([str(py), str(WORKER), command, str(src), str(dst)], capture_output=True, text=True,
                           cwd=tmp)
        if p.returncode != 0 or not dst.exists():
            raise RuntimeError(f"bfcl-eval worker '{command}' failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
        return json.loads(dst.read_text())


# ------------------------------------------------------------------------------------------------
# Model answers -> function calls
# ------------------------------------------------------------------------------------------------

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}


def _call_name(node) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _value(node):
    """An argument's value: literals as Python values, bare names as strings, a nested call with keywords
    as ``{name: {arg: value}}`` (one without as its source text); anything else is not a call answer."""
    if isinstance(node, ast.Constant):
        return "..." if node.value is Ellipsis else node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _value(node.operand)
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise ValueError("sign of a non-number")
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_value(v) for v in node.elts]
    if isinstance(node, ast.Dict):
        return {_value(k): _value(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:  # 2 * 60, "a" + "b": computed
        return _BINOPS[type(node.op)](_value(node.left), _value(node.right))
    if isinstance(node, ast.Call):
        return _call(node) if node.keywords else ast.unparse(node)
    if isinstance(node, ast.Subscript):
        return ast.unparse(node)
    raise ValueError(f"unsupported argument {ast.unparse(node)!r}")


def _call(node: ast.Call) -> dict:
    return {_call_name(node.func): {k.arg: _value(k.value) for k in node.keywords}}


def parse_calls(text: str) -> list[dict] | None:
    """A prompt-based answer ``[func(a=1, b="x"), mod.g(c=[1, 2])]`` (brackets optional) as
    ``[{"func": {"a": 1, "b": "x"}}, {"mod.g": {"c": [1, 2]}}]``; None when it is not such a list (prose,
    a fenced block with a language tag, positional-only syntax errors...). Only keyword arguments count."""
    s = text.strip("`\n ")
    if not s.startswith("["):
        s = "[" + s
    if not s.endswith("]"):
        s = s + "]"
    try:
        tree = ast.parse(s.strip().strip("'"), mode="eval").body
        nodes = [tree] if isinstance(tree, ast.Call) else list(tree.elts)
        if not all(isinstance(n, ast.Call) for n in nodes):
            return None
        return [_call(n) for n in nodes]
    except Exception:  # SyntaxError, an unsupported value, arithmetic on strings and numbers, ...
        return None


# ------------------------------------------------------------------------------------------------
# Generation and the run
# ------------------------------------------------------------------------------------------------

def chat_generate(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int, batch_size: int
                  ) -> list[str]:
    """Greedy answers to chat conversations (the tokenizer's chat template), batched by length."""
    if not getattr(tokenizer, "chat_template", None):
        raise BFCLError("models: BFCL needs a chat model (its tokenizer has no chat template)")
    return [a[0] for a in generate_texts(model, tokenizer, conversations, chat=True, max_new_tokens=max_new_tokens,
                                         batch_size=batch_size)]


def _answers(model_id, conversations, cfg: BFCLConfig) -> list[str]:
    if cfg.model_base_url:
        def one(conv):
            return endpoint.chat(cfg.model_base_url, str(model_id), conv, api_key_env=cfg.model_api_key_env,
                                 temperature=0, max_tokens=cfg.max_new_tokens)

        with ThreadPoolExecutor(cfg.model_concurrency) as pool:
            return list(pool.map(one, conversations))
    import torch

    from ..loading import load_model, load_tokenizer

    tok = load_tokenizer(model_id)
    if not getattr(tok, "chat_template", None):  # before the weights load
        raise BFCLError(f"models: {model_id} has no chat template; BFCL asks chat models")
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(model_id, device=device, dtype=torch.bfloat16 if device.startswith("cuda") else torch.float32)
    try:
        return chat_generate(model, tok, conversations, cfg.max_new_tokens, cfg.batch_size)
    finally:
        del model


class BFCLSuite(Suite):
    """BFCL live: ``generate`` answers every entry greedily, ``score`` decodes the answers into calls and has
    bfcl-eval's checker (in its own venv) judge them."""

    name = "bfcl"
    help = "BFCL live function-calling accuracy (bfcl-eval in its own venv)"
    config_class = BFCLConfig
    error = BFCLError

    @staticmethod
    def table(out: dict) -> str:
        return results_table(out)

    def check(self, models, names) -> list:
        """Served names (checked against the server) or checkpoint directories; the bfcl-eval venv (created when
        missing) and the entries of the categories."""
        cfg = self.cfg
        if cfg.model_base_url:
            for m in models:
                endpoint.check_endpoint(cfg.model_base_url, field="model_base_url", api_key_env=cfg.model_api_key_env,
                                        model=str(m), model_field="models")
        else:
            from ..loading import resolve_model  # torch: not paid for by `minitron --help`, which imports every suite

            models = [check_checkpoint(resolve_model(m), field="models") for m in models]
        categories = [cfg.categories] if isinstance(cfg.categories, str) else list(cfg.categories)
        self.py = ensure_venv(cfg.venv, cfg.install)
        data = call_worker(self.py, "load", {"categories": categories, "limit": cfg.limit})
        self.counts = {c: len(data[c]) for c in categories}
        self.entries = [dict(e, category=c) for c in categories for e in data[c]]
        self.rows: list[dict] = []
        return models

    def generate(self, model, name: str) -> tuple[list[str], float]:
        """(the answer to every entry, seconds)."""
        t0 = time.time()
        texts = _answers(model, [e["messages"] for e in self.entries], self.cfg)
        return texts, time.time() - t0

    def score(self, name: str, outputs) -> dict:
        texts, gen_s = outputs
        entries = self.entries
        decoded = [parse_calls(t) for t in texts]
        scored = call_worker(self.py, "score", {"entries": [{"id": e["id"], "category": e["category"], "decoded": d}
                                                            for e, d in zip(entries, decoded)]})
        r = {f"{c}": s["accuracy"] for c, s in scored["categories"].items()}
        r.update(scored["summary"])
        r.update({"entries": len(entries), "decoded": sum(d is not None for d in decoded),
                  "generation_s": round(gen_s, 1)})
        self.rows += [{"model": name, "id": e["id"], "category": e["category"], "answer": t, "decoded": d,
                       "valid": s["valid"], "error": s["error"]}
                      for e, t, d, s in zip(entries, texts, decoded, scored["entries"])]
        return r

    def summary(self) -> dict:
        return {"counts": self.counts}

    def samples(self) -> dict:
        return {"answers": self.rows}


def run_bfcl(models, cfg: BFCLConfig, names=None) -> dict:
    """BFCL live accuracy of each model; {"config", "counts", "results": {name: {metric: value}}} (files in
    ``cfg.output``)."""
    return BFCLSuite(cfg).run(models, names)


def results_table(out: dict) -> str:
    """A row per model: the live summary, then each category (accuracy x 100)."""
    cats = list(out["counts"])
    summary = [k for k in ("live_overall", "live_with_relevance") if k in next(iter(out["results"].values()))]
    cols = summary + cats
    lines = [f"BFCL live ({BFCL_PACKAGE}), entries: " + ", ".join(f"{c} {n}" for c, n in out["counts"].items()) + ".",
             "", "| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name, r in out["results"].items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * r[c]:.1f}" for c in cols) + " |")
    return "\n".join(lines)
