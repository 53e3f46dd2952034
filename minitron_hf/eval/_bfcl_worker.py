"""Runs inside the bfcl-eval virtual environment (bfcl-eval pins numpy 1.26.4), never in ours: it imports only
the standard library and bfcl-eval's own functions. Called by :mod:`minitron_hf.eval.bfcl` as

    <bfcl venv>/bin/python _bfcl_worker.py COMMAND IN.json OUT.json

- ``load``: {"categories", "limit"} -> {category: [{"id", "messages", "functions", "ground_truth"}]}: the
  entries of each category (``bfcl_eval.utils.load_dataset_entry``), their chat messages with BFCL's default
  system prompt for prompt-based models (``system_prompt_pre_processing_chat_model``: function docs, output
  format), and the possible answers (``load_ground_truth_entry``; relevance categories have none).
- ``score``: {"entries": [{"id", "category", "decoded": calls or null}]} -> {"entries": [{"id", "valid",
  "error"}], "categories": {category: {"accuracy", "total_count"}}, "summary": {...}}: AST categories through
  ``ast_checker`` (Python), relevance/irrelevance by whether a function call was decoded, the live summary
  with bfcl-eval's ``calculate_weighted_accuracy``.
- ``decode``: {"texts": [...]} -> {"decoded": [calls or null]}: bfcl-eval's decoder of prompt-based answers
  (``default_decode_ast_prompting``), used in tests as the reference for our parser.
"""

import copy
import importlib.abc
import importlib.machinery
import importlib.util
import json
import sys

# a prompt-based (not function-calling) model entry of bfcl-eval's table whose checker keeps dotted function
# names (underscore_to_dot=False): the checker looks the model up only for that flag
CHECKER_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
AST_LIVE = ["live_simple", "live_multiple", "live_parallel", "live_parallel_multiple"]

# Stubs for what the default ("checker") install of the venv leaves out; the functions used here never touch
# them (tests/test_eval_bfcl.py runs every command on a checker venv; on 2026-11-23 load, score and decode gave
# identical output here and, without stubs, in a venv with every requirement, on all 2,251 live entries):
# - bfcl-eval's model handler modules (bfcl_eval.model_handler.api_inference.*, .local_inference.*): they
#   import the vendors' SDKs (openai, anthropic, cohere, mistralai, google-genai, qwen-agent, boto3, writer...)
#   at module level, and bfcl_eval.constants.model_config imports every handler class to build its model
#   table, which ast_checker imports only to read one model's ``underscore_to_dot`` flag. The stub modules
#   hand out placeholder classes that refuse to be instantiated, so the table is bfcl-eval's own (real flags)
#   and no handler or SDK ever runs. Always stubbed, also in a "full" venv: importing ~60 handlers and their
#   SDKs takes seconds.
# - numpy and pandas, when not installed: bfcl_eval.eval_checker.eval_runner_helper imports them at module
#   level for its leaderboard CSVs (pandas) and latency percentiles (numpy), not for
#   calculate_weighted_accuracy, the only function used from it. Any attribute of the stub raises.
HANDLER_MODULES = ("bfcl_eval.model_handler.api_inference.", "bfcl_eval.model_handler.local_inference.")
OPTIONAL_MODULES = ("numpy", "pandas")


def _refuse(name):
    def init(self, *args, **kwargs):
        raise RuntimeError(f"{name}: bfcl-eval's model handlers are stubbed in the minitron bfcl worker")
    return init


class _Stubs(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self):
        self.optional = {m for m in OPTIONAL_MODULES if importlib.util.find_spec(m) is None}

    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if name.startswith(HANDLER_MODULES) or top in self.optional:
            return importlib.machinery.ModuleSpec(name, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        name = module.__name__
        handler = name.startswith(HANDLER_MODULES)

        def getattr_(attr):
            if attr.startswith("__") or not handler:
                raise AttributeError(f"{name}.{attr}: {name} is a stub in the minitron bfcl worker (not installed "
                                     "in its checker venv)")
            cls = type(attr, (), {"__module__": name, "__init__": _refuse(f"{name}.{attr}")})
            setattr(module, attr, cls)
            return cls

        module.__getattr__ = getattr_


sys.meta_path.insert(0, _Stubs())


def load(req):
    from bfcl_eval.model_handler.utils import system_prompt_pre_processing_chat_model
    from bfcl_eval.utils import load_dataset_entry, load_ground_truth_entry

    out = {}
    for cat in req["categories"]:
        entries = load_dataset_entry(cat, include_prereq=False)
        plain = {e["id"]: e["function"] for e in load_dataset_entry(cat, include_prereq=False,
                                                                    include_language_specific_hint=False)}
        truth = {} if "relevance" in cat else {g["id"]: g["ground_truth"] for g in load_ground_truth_entry(cat)}
        if req.get("limit"):
            entries = entries[:req["limit"]]
        rows = []
        for e in entries:
            turns = copy.deepcopy(e["question"])
            messages = system_prompt_pre_processing_chat_model(turns[0], e["function"], e["id"])
            rows.append({"id": e["id"], "messages": messages, "functions": plain[e["id"]],
                         "ground_truth": truth.get(e["id"])})
        out[cat] = rows
    return out


def score(req):
    from bfcl_eval.constants.enums import Language
    from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker
    from bfcl_eval.eval_checker.eval_runner_helper import calculate_weighted_accuracy
    from bfcl_eval.utils import is_empty_output, is_function_calling_format_output, load_dataset_entry, \
        load_ground_truth_entry

    cats = sorted({e["category"] for e in req["entries"]})
    functions, truth = {}, {}
    for cat in cats:
        for e in load_dataset_entry(cat, include_prereq=False, include_language_specific_hint=False):
            functions[e["id"]] = e["function"]
        if "relevance" not in cat:
            truth.update({g["id"]: g["ground_truth"] for g in load_ground_truth_entry(cat)})
    results, counts = [], {c: [0, 0] for c in cats}
    for e in req["entries"]:
        cat, decoded = e["category"], e["decoded"]
        if "relevance" in cat:  # irrelevance: right when no call was decoded; relevance: right when one was
            has_call = decoded is not None and not is_empty_output(decoded)
            valid = not has_call if "irrelevance" in cat else has_call
            error = None if valid else ("a function call was decoded" if has_call else "no function call decoded")
        elif decoded is None:
            valid, error = False, "the answer is not a list of function calls (decoder failed)"
        elif not is_function_calling_format_output(decoded):
            valid, error = False, "the decoded answer is not in function-calling format"
        else:
            r = ast_checker(functions[e["id"]], decoded, truth[e["id"]], Language.PYTHON, cat, CHECKER_MODEL)
            valid, error = bool(r["valid"]), None if r["valid"] else "; ".join(map(str, r.get("error", [])))
        counts[cat][0] += valid
        counts[cat][1] += 1
        results.append({"id": e["id"], "valid": valid, "error": error})
    categories = {c: {"accuracy": k / n, "total_count": n, "display_accuracy": k / n} for c, (k, n) in counts.items()}
    summary = {}
    ast = [categories[c] for c in AST_LIVE if c in categories]
    if ast:  # bfcl-eval's live overall accuracy: the AST categories weighted by their counts
        summary["live_overall"] = calculate_weighted_accuracy(ast, display_na_if_category_missing=False)["accuracy"]
    everything = [categories[c] for c in cats if c.startswith("live_")]
    if everything:
        summary["live_with_relevance"] = calculate_weighted_accuracy(
            everything, display_na_if_category_missing=False)["accuracy"]
    return {"entries": results, "categories": {c: {k: v for k, v in d.items() if k != "display_accuracy"}
                                               for c, d in categories.items()}, "summary": summary}


def decode(req):
    from bfcl_eval.constants.enums import ReturnFormat
    from bfcl_eval.model_handler.utils import default_decode_ast_prompting

    out = []
    for t in req["texts"]:
        try:
            out.append(default_decode_ast_prompting(t, ReturnFormat.PYTHON))
        except Exception:
            out.append(None)
    return {"decoded": out}


if __name__ == "__main__":
    command, src, dst = sys.argv[1:4]
    with open(src) as f:
        request = json.load(f)
    result = {"load": load, "score": score, "decode": decode}[command](request)
    with open(dst, "w") as f:
        json.dump(result, f)
