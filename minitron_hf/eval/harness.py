"""LM Evaluation Harness on in-memory models: task lookup, local tasks, one evaluation call.

lm-eval fetches every registry task's data from the Hugging Face Hub. Where the Hub is unreachable,
tasks come from local task YAML + data files: ``include_path`` directories (lm-eval's own option),
and the tasks this project builds from text every Python install carries (:data:`LOCAL_TASKS`):

- ``pydoc_continuation``: HellaSwag-style multiple choice from the Python documentation prose
  (``pydoc_data.topics``): the beginning of a sentence, and four endings, one its own and three from
  other sentences of similar length. Test items come from the validation split of the default data,
  few-shot examples from its calibration split. Generated on first use into the cache directory;
  never copied into the repository.

The model is wrapped by lm-eval's ``HFLM`` as an object, so layers skipped in memory
(:func:`minitron_hf.pruning.depth.dropped_layers`) are what the harness evaluates.
"""

from __future__ import annotations

import difflib
import json
import logging
import random
from pathlib import Path

from ..data import DataConfig, load_documents, split_documents
from ..data.sources import prose_sentences
from ..outputs import build_once, cache_dir
from .suite import EvalError

logger = logging.getLogger(__name__)


def _check_installed():
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise EvalError("lm-eval is not installed: pip install 'minitron-hf[eval]' (lm-eval==0.4.13)") from None


# ------------------------------------------------------------------------------------------------
# Local tasks built from the Python install
# ------------------------------------------------------------------------------------------------

def _continuation_items(sentences: list[str], n: int, rng: random.Random) -> list[dict]:
    rng.shuffle(sentences)
    pool = [(s.split(), s) for s in sentences]
    items = []
    for words, _ in pool:
        if len(items) >= n:
            break
        cut = max(5, int(len(words) * 0.55))
        context, ending = " ".join(words[:cut]), " ".join(words[cut:])
        # distractors: endings of other sentences cut to about the same number of words
        want = len(words) - cut
        others = []
        for w2, _ in rng.sample(pool, min(len(pool), 40)):
            if w2 is words or len(w2) <= want + 3:
                continue
            e = " ".join(w2[-want:])
            if e != ending and e not in others:
                others.append(e)
            if len(others) == 3:
                break
        if len(others) < 3:
            continue
        label = rng.randrange(4)
        choices = others[:label] + [ending] + others[label:]
        items.append({"context": context, "choices": choices, "label": label})
    return items


def build_pydoc_continuation(directory: Path, n_test: int = 200, n_train: int = 50, seed: int = 0) -> Path:
    """Write the task's YAML and JSONL files into ``directory``; return it."""
    splits = split_documents(load_documents(DataConfig()), DataConfig())
    rng = random.Random(seed)
    test = _continuation_items(prose_sentences(splits["validation"]), n_test, rng)
    train = _continuation_items(prose_sentences(splits["calibration"] + splits["train"][:200]), n_train, rng)
    directory.mkdir(parents=True, exist_ok=True)
    for name, rows in (("test", test), ("train", train)):
        (directory / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (directory / "pydoc_continuation.yaml").write_text(
        "task: pydoc_continuation\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    test: {directory / 'test.jsonl'}\n"
        f"    train: {directory / 'train.jsonl'}\n"
        "output_type: multiple_choice\n"
        "test_split: test\n"
        "fewshot_split: train\n"
        "doc_to_text: context\n"
        "doc_to_choice: choices\n"
        "doc_to_target: label\n"
        "metric_list:\n"
        "  - metric: acc\n"
        "    aggregation: mean\n"
        "    higher_is_better: true\n"
        "  - metric: acc_norm\n"
        "    aggregation: mean\n"
        "    higher_is_better: true\n"
        "metadata:\n"
        "  version: 1.0\n")
    logger.info("pydoc_continuation: %d test and %d few-shot items in %s", len(test), len(train), directory)
    return directory


LOCAL_TASKS = {"pydoc_continuation": build_pydoc_continuation}
# task YAML shipped with the package (their data still comes from the Hub): xlsum_en
PACKAGE_TASKS = Path(__file__).parent / "tasks"


def local_tasks_dir() -> Path:
    """The cache directory of the built-in local tasks (built on first use)."""
    root = cache_dir() / "lm_eval_tasks"
    for name, build in LOCAL_TASKS.items():  # two runs at once build each once
        build_once(root / name, lambda name=name: (root / name / f"{name}.yaml").exists(),
                   lambda name=name, build=build: build(root / name))
    return root


# ------------------------------------------------------------------------------------------------
# Tasks and evaluation
# ------------------------------------------------------------------------------------------------

def task_manager(include_path=None):
    """lm-eval's TaskManager over its registry, the built-in local tasks and ``include_path`` dirs."""
    _check_installed()
    from lm_eval.tasks import TaskManager

    paths = [str(local_tasks_dir()), str(PACKAGE_TASKS)]
    for p in ([include_path] if isinstance(include_path, (str, Path)) else include_path or []):
        if not Path(p).is_dir():
            raise EvalError(f"tasks_dir={str(p)!r}: no such directory (a folder of lm-eval task YAML files)")
        paths.append(str(p))
    return TaskManager(include_path=paths, verbosity="ERROR")


def check_tasks(names, manager) -> list[str]:
    """Every name must be an lm-eval task, group or tag; unknown ones get the nearest suggestions."""
    known = set(manager.all_tasks)
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise EvalError("tasks: name at least one lm-eval task")
    for n in names:
        if n not in known:
            near = difflib.get_close_matches(n, sorted(known), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(near)}?" if near else \
                "; see `lm_eval ls tasks`, or give a tasks_dir of task YAML files"
            raise EvalError(f"unknown lm-eval task {n!r}{hint}")
    return names


def evaluate_model(model, tokenizer, tasks, *, num_fewshot: int | None = None, limit: int | float | None = None,
                   batch_size: int = 8, include_path=None, manager=None, lm=None, seed: int = 0,
                   apply_chat_template: bool = False, system_instruction: str | None = None,
                   gen_kwargs: dict | None = None, samples: dict | None = None) -> dict:
    """Run lm-eval tasks on an in-memory causal LM; ``{task: {metric: value}}`` (lm-eval's keys,
    e.g. ``acc,none``). Pass ``lm`` (from :func:`wrap_model`) and ``manager`` to reuse them across calls.

    Instruct models: ``apply_chat_template`` wraps each request in the tokenizer's chat template (with
    ``system_instruction`` as the system turn); ``gen_kwargs`` (e.g. ``{"max_gen_toks": 256}``) update the
    generation settings of generative tasks. A ``samples`` dict receives lm-eval's per-document records
    ``{task: [...]}`` (responses, filtered answers, per-document metrics)."""
    _check_installed()
    from lm_eval import simple_evaluate

    manager = manager or task_manager(include_path)
    tasks = check_tasks(tasks, manager)
    lm = lm or wrap_model(model, tokenizer, batch_size)
    out = simple_evaluate(model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit, task_manager=manager,
                          log_samples=samples is not None, bootstrap_iters=0, random_seed=seed, numpy_random_seed=seed,
                          torch_random_seed=seed, fewshot_random_seed=seed, verbosity="ERROR",
                          apply_chat_template=apply_chat_template, system_instruction=system_instruction,
                          gen_kwargs=gen_kwargs)
    if samples is not None:
        samples.update(out.get("samples") or {})
    return {t: {k: v for k, v in r.items() if k != "alias"} for t, r in out["results"].items()}


def wrap_model(model, tokenizer, batch_size: int = 8):
    """lm-eval's HFLM around an in-memory model (its device and dtype as they are)."""
    _check_installed()
    from lm_eval.models.huggingface import HFLM

    device = next(model.parameters()).device
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(device))


def score(results: dict, task: str, metric: str = "acc") -> float:
    """One number from :func:`evaluate_model`'s results: ``metric`` (filter ``none``) of ``task``."""
    r = results.get(task) or {}
    for key in (f"{metric},none", metric):
        if key in r:
            return float(r[key])
    raise EvalError(f"task {task!r} reported no {metric!r} (it has: {', '.join(sorted(r)) or 'nothing'})")
