"""Chat data for SFT and prompts for the RPO rounds: local files, Hub datasets, or built from the Python install.

Formats (jsonl/json/parquet file, directory of them, or a Hub dataset id):

- SFT: ``messages`` (a list of {"role", "content"}), or ``prompt`` + ``completion`` (strings or message
  lists), the TRL conventions;
- rounds: ``prompt`` (a string or message list) plus what the verifiable reward checks:
  ``constraints`` (a list of {"type": ..., ...}, see :data:`CONSTRAINTS`) and ``source`` (the text the
  answer must stay faithful to), or ``answer`` (a number, exact match of the last number in the reply).

Built-in data (offline, from text every Python install carries; the paper's stages in miniature):

- ``builtin:math-code``: arithmetic word problems with worked answers, and "write this function" requests
  answered with small functions from the standard library's own sources (the math + code SFT stage);
- ``builtin:instructions``: rewrite a sentence of the Python documentation under constraints (all
  lowercase, at most N words, no commas, include a word), answered with a rewrite that satisfies them
  (the instruction SFT stage);
- ``builtin:constraints``: the same kind of requests without answers, for the RPO rounds, scored by
  :func:`verifiable_reward`; ``heldout`` rows are kept apart for evaluation.
"""

from __future__ import annotations

import ast
import hashlib
import random
import re
import sysconfig
from pathlib import Path

from pydoc_data.topics import topics

from ..data import read_rows_file
from ..data.sources import prose_sentences
from .errors import AlignmentError

BUILTIN = ("builtin:math-code", "builtin:instructions", "builtin:constraints")
KEYWORDS = ("python", "code", "value", "object", "simple")


# ------------------------------------------------------------------------------------------------
# Verifiable rewards
# ------------------------------------------------------------------------------------------------

def _words(text: str) -> list[str]:
    return [w.strip(".,;:!?()'\"`").lower() for w in text.split() if w.strip(".,;:!?()'\"`")]


CONSTRAINTS = {
    # type -> (instruction text, check(reply, spec) -> bool)
    "lowercase": (lambda c: "in all lowercase letters", lambda r, c: r == r.lower() and any(ch.isalpha() for ch in r)),
    "max_words": (lambda c: f"in at most {c['n']} words", lambda r, c: 0 < len(r.split()) <= c["n"]),
    "no_commas": (lambda c: "without any commas", lambda r, c: "," not in r),
    "include": (lambda c: f"using the word \"{c['word']}\"", lambda r, c: c["word"].lower() in _words(r)),
}


def check_constraints(reply: str, constraints: list[dict]) -> list[bool]:
    out = []
    for c in constraints:
        if c.get("type") not in CONSTRAINTS:
            raise AlignmentError(f"constraints: unknown type {c.get('type')!r}; allowed: {', '.join(CONSTRAINTS)}")
        out.append(bool(CONSTRAINTS[c["type"]][1](reply.strip(), c)))
    return out


def faithful(reply: str, source: str, min_words: int = 3, share: float = 0.6) -> bool:
    """At least ``min_words`` words, and at least ``share`` of them taken from ``source``."""
    words, src = _words(reply), set(_words(source))
    return len(words) >= min_words and sum(w in src for w in words) >= share * len(words)


def last_number(text: str) -> str | None:
    nums = re.findall(r"-?\d+(?:\.\d+)?", text.replace(",", ""))
    return nums[-1] if nums else None


def verifiable_reward(row: dict, reply: str) -> float:
    """Reward in [0, 1] of ``reply`` to a rounds prompt row.

    - ``answer`` rows (math): 1 if the last number in the reply equals the answer, else 0;
    - ``constraints`` rows: the share of checks passed, the constraints plus faithfulness to ``source``
      when the row has one (so that a reply cannot satisfy "lowercase, no commas" by saying nothing).
    """
    if row.get("answer") is not None:
        got = last_number(reply)
        try:
            return float(got is not None and float(got) == float(row["answer"]))
        except ValueError:
            return 0.0
    if row.get("constraints"):
        checks = check_constraints(reply, row["constraints"])
        if row.get("source"):
            checks.append(faithful(reply, row["source"]))
        return sum(checks) / len(checks)
    raise AlignmentError("prompts: a row has neither 'answer' nor 'constraints': the verifiable reward cannot score "
                         "it (use reward=model:<path> for a reward model)")


# ------------------------------------------------------------------------------------------------
# Built-in data
# ------------------------------------------------------------------------------------------------

def _unit(key: str) -> float:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 2 ** 32


def _doc_sentences() -> list[str]:
    return [s for s in prose_sentences(topics.values()) if len(s.split()) <= 30]


def _rewrite(sentence: str, constraints: list[dict]) -> str:
    """A reply that satisfies ``constraints`` and stays faithful to ``sentence``."""
    words = sentence.rstrip(".").split()
    keyword = next((c["word"] for c in constraints if c["type"] == "include"), None)
    limit = next((c["n"] for c in constraints if c["type"] == "max_words"), None)
    if limit is not None:
        words = words[: limit - (1 if keyword and keyword not in _words(" ".join(words[:limit])) else 0)]
    text = " ".join(words)
    if keyword and keyword not in _words(text):
        text = f"{text} {keyword}"
    if any(c["type"] == "no_commas" for c in constraints):
        text = text.replace(",", "")
    if any(c["type"] == "lowercase" for c in constraints):
        text = text.lower()
    return text + "."


def _constraint_rows(n: int | None = None, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for s in _doc_sentences():
        kinds = rng.sample(list(CONSTRAINTS), rng.choice((2, 3)))
        cons = []
        for k in kinds:
            c = {"type": k}
            if k == "max_words":
                c["n"] = rng.randint(8, 14)
            if k == "include":
                c["word"] = rng.choice(KEYWORDS)
            cons.append(c)
        ask = ", ".join(CONSTRAINTS[c["type"]][0](c) for c in cons)
        prompt = f"Rewrite this sentence from the Python documentation {ask}:\n{s}"
        # a third of the sentences go to SFT, the rest to the rounds; 20% of those are held out
        u = _unit(s)
        rows.append({"prompt": prompt, "constraints": cons, "source": s,
                     "split": "sft" if u < 1 / 3 else ("heldout" if u < 1 / 3 + 0.2 * 2 / 3 else "train"),
                     "reference": _rewrite(s, cons)})
    return rows[:n] if n else rows


def _math_rows(n: int = 150, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    items = ("files", "functions", "tests", "modules", "lines")
    rows = []
    for _ in range(n):
        a, b, thing = rng.randint(2, 60), rng.randint(2, 40), rng.choice(items)
        if rng.random() < 0.5:
            q = f"A project has {a} {thing} and adds {b} more. How many {thing} does it have now?"
            ans, work = a + b, f"{a} + {b} = {a + b}"
        else:
            a = a + b
            q = f"A project has {a} {thing} and removes {b}. How many {thing} are left?"
            ans, work = a - b, f"{a} - {b} = {a - b}"
        rows.append({"prompt": q, "answer": ans, "reference": f"{work}. The answer is {ans}."})
    return rows


def _stdlib_functions(limit: int = 150, max_lines: int = 12) -> list[dict]:
    """Small documented top-level functions from the standard library's sources."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for path in sorted(root.glob("*.py")):
        try:
            src = path.read_text(encoding="utf-8")
            tree = ast.parse(src)
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
                continue
            doc = ast.get_docstring(node)
            code = ast.get_source_segment(src, node)
            if not doc or not code or len(code.splitlines()) > max_lines or "\t" in code:
                continue
            summary = " ".join(doc.split("\n\n")[0].split())
            out.append({"prompt": f"Write a Python function `{node.name}` that does this: {summary}",
                        "reference": f"```python\n{code}\n```"})
            if len(out) >= limit:
                return out
    return out


def builtin_rows(name: str) -> list[dict]:
    if name == "builtin:math-code":
        return _math_rows() + _stdlib_functions()
    if name == "builtin:instructions":
        return [r for r in _constraint_rows() if r["split"] == "sft"]
    if name == "builtin:constraints":
        return [r for r in _constraint_rows() if r["split"] != "sft"]
    raise AlignmentError(f"data={name!r}: built-in data are {', '.join(BUILTIN)}")


def _as_messages(x, role: str) -> list[dict]:
    return [{"role": role, "content": x}] if isinstance(x, str) else list(x)


def load_rows(spec: str, field: str = "data") -> list[dict]:
    """Rows of a built-in set, a local json/jsonl/parquet file (or directory of them), or a Hub dataset."""
    if spec.startswith("builtin:"):
        return builtin_rows(spec)
    path = Path(spec)
    if path.exists():
        files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl", ".parquet")) if path.is_dir() \
            else [path]
        if not files:
            raise AlignmentError(f"{field}={spec!r}: no .json/.jsonl/.parquet files in the directory")
        rows = []
        for f in files:
            rows += read_rows_file(f, field, AlignmentError)
        return rows
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        import datasets  # a Hub id only: built-in and local rows (benchmarks/chat_mix.py) do without it

        try:
            return datasets.load_dataset(spec, split="train").to_list()
        except Exception as e:
            raise AlignmentError(f"{field}={spec!r}: not a local file and the Hub dataset could not be loaded "
                                 f"({type(e).__name__}: {e})") from e
    raise AlignmentError(f"{field}={spec!r}: no such file; give a json/jsonl/parquet path, a Hub dataset id, or one "
                         f"of {', '.join(BUILTIN)}")


def sft_examples(rows: list[dict], field: str = "data") -> list[dict]:
    """Rows -> TRL conversational prompt/completion examples (the loss falls on the completion only)."""
    out = []
    for i, r in enumerate(rows):
        if "messages" in r:
            msgs = list(r["messages"])
            if not msgs or msgs[-1].get("role") != "assistant":
                raise AlignmentError(f"{field}: row {i}: 'messages' must end with an assistant message")
            out.append({"prompt": msgs[:-1], "completion": msgs[-1:]})
        elif "prompt" in r and ("completion" in r or "reference" in r):
            out.append({"prompt": _as_messages(r["prompt"], "user"),
                        "completion": _as_messages(r.get("completion", r.get("reference")), "assistant")})
        else:
            raise AlignmentError(f"{field}: row {i} has columns {sorted(r)}; SFT needs 'messages', or 'prompt' and "
                                 f"'completion'")
    if not out:
        raise AlignmentError(f"{field}: no examples")
    return out


def prompt_rows(rows: list[dict], field: str = "prompts") -> list[dict]:
    """Rounds prompts: each row gets ``messages`` (the conversation to answer)."""
    out = []
    for i, r in enumerate(rows):
        if "prompt" not in r:
            raise AlignmentError(f"{field}: row {i} has no 'prompt' column (has {', '.join(sorted(r))})")
        out.append({**r, "messages": _as_messages(r["prompt"], "user")})
    if not out:
        raise AlignmentError(f"{field}: no prompts")
    return out
