"""`minitron eval instruct` (Table 2): IFEval scoring through lm-eval's own checkers on local rows, GPQA
through lm-eval's task template on local rows, the Table-2 files, and bad input before any model loads."""

import json
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")
pytest.importorskip("langdetect")
pytest.importorskip("immutabledict")

from minitron_hf.eval.harness import EvalError  # noqa: E402
from minitron_hf.eval.instruct import (IFEVAL_METRICS, InstructEvalConfig, benchmark_scores,  # noqa: E402
                                       check_benchmarks, run_instruct_eval)

# IFEval-format rows (key, prompt, instruction_id_list, kwargs) and a hand-written response to each, with
# what each instruction gets, strict and loose (loose also tries the response without its first line,
# without its last line, and without asterisks), worked out by hand.
IFEVAL_ROWS = [
    ({"key": 1, "prompt": "Write about Paris in all lowercase letters.",
      "instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]},
     "**Sure!**\nparis is the capital of france. it is known for the eiffel tower and for its food.",
     [False], [True]),  # the first line has capitals; loose drops it
    ({"key": 2, "prompt": "Describe the sea in at least 12 words, without any commas.",
      "instruction_id_list": ["length_constraints:number_words", "punctuation:no_comma"],
      "kwargs": [{"relation": "at least", "num_words": 12}, {}]},
     "The sea is wide and deep and blue and it covers most of our planet Earth.",  # 16 words
     [True, True], [True, True]),
    ({"key": 3, "prompt": "Name a fruit; use the word banana and end with the phrase 'Any other questions?'",
      "instruction_id_list": ["keywords:existence", "startend:end_checker"],
      "kwargs": [{"keywords": ["banana"]}, {"end_phrase": "Any other questions?"}]},
     "I like apples.\nAny other questions?",
     [False, True], [False, True]),  # no banana in any variant
    ({"key": 4, "prompt": "What is rain? Answer in fewer than 3 sentences, without commas.",
      "instruction_id_list": ["length_constraints:number_sentences", "punctuation:no_comma"],
      "kwargs": [{"relation": "less than", "num_sentences": 3}, {}]},
     "Rain is water falling from clouds.\nIt helps plants grow.\nSome say, it is nice.",
     [False, False], [True, True]),  # 3 sentences and a comma; without the last line: 2 and none
    ({"key": 5, "prompt": "Write a poem with a title in double angular brackets, like <<poem of joy>>.",
      "instruction_id_list": ["detectable_format:title"], "kwargs": [{}]},
     "<<The Quiet Sea>>\nWaves come and go.", [True], [True]),
]


def _naive_ifeval(rows):
    """The four accuracies from per-instruction booleans: prompt level = all of a prompt's instructions
    followed, averaged over prompts; instruction level = averaged over all instructions."""
    out = {}
    for mode, i in (("strict", 2), ("loose", 3)):
        follows = [r[i] for r in rows]
        out[f"prompt_level_{mode}_acc"] = sum(all(f) for f in follows) / len(follows)
        out[f"inst_level_{mode}_acc"] = sum(sum(f) for f in follows) / sum(len(f) for f in follows)
    return out


def _lm_eval_tasks() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def write_ifeval_task(d: Path, rows) -> Path:
    """A local IFEval task: lm-eval's own ifeval.yaml (prompt, generation settings, process_results with its
    instruction registry, aggregations) with the data read from a local jsonl instead of google/IFEval."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "ifeval_local.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "ifeval_local.yaml").write_text(
        f"include: {_lm_eval_tasks() / 'ifeval' / 'ifeval.yaml'}\n"
        "task: ifeval_local\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    train: {d / 'ifeval_local.jsonl'}\n")
    return d


GPQA_ROWS = [
    {"Question": "What is the chemical symbol of gold?", "Correct Answer": "Au", "Incorrect Answer 1": "Ag",
     "Incorrect Answer 2": "Gd", "Incorrect Answer 3": "Go"},
    {"Question": "Which particle carries a negative electric charge?", "Correct Answer": "The electron",
     "Incorrect Answer 1": "The proton", "Incorrect Answer 2": "The neutron", "Incorrect Answer 3": "The photon"},
    {"Question": "What is the capital of France?", "Correct Answer": "Paris", "Incorrect Answer 1": "Lyon",
     "Incorrect Answer 2": "Marseille", "Incorrect Answer 3": "Nice"},
]


def write_gpqa_task(d: Path) -> Path:
    """A local GPQA task: lm-eval's 0-shot GPQA template (its process_docs shuffles the four answers and
    letters them (A)-(D)) on rows in the Hub dataset's schema, instead of the gated Idavidrein/gpqa."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "gpqa_local.jsonl").write_text("".join(json.dumps(r) + "\n" for r in GPQA_ROWS))
    (d / "gpqa_local.yaml").write_text(
        f"include: {_lm_eval_tasks() / 'gpqa' / 'zeroshot' / '_gpqa_zeroshot_yaml'}\n"
        "task: gpqa_local\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    train: {d / 'gpqa_local.jsonl'}\n")
    return d


@pytest.fixture(scope="module")
def local_tasks(tmp_path_factory):
    """The local IFEval and GPQA tasks in one folder, and lm-eval's task index over it and the registry,
    built once for this file (indexing every lm-eval task takes 10-30 s here)."""
    from minitron_hf.eval.harness import task_manager

    d = write_ifeval_task(tmp_path_factory.mktemp("instruct_tasks"), [r[0] for r in IFEVAL_ROWS])
    write_gpqa_task(d)
    return d, task_manager(d)


@pytest.fixture
def shared_index(local_tasks, monkeypatch):
    """`minitron eval instruct` with --tasks-dir of the local tasks gets the index built once."""
    import minitron_hf.eval.instruct as instruct

    d, manager = local_tasks

    def index(include_path=None):
        assert Path(include_path) == d
        return manager

    monkeypatch.setattr(instruct, "task_manager", index)
    return d


@pytest.fixture
def punkt_tab(tmp_path, monkeypatch):
    """An NLTK data folder with an (untrained) English punkt_tab model: the files NLTK's download would
    bring, with no learned abbreviations, so sentences split at . ! ? (no Hub or NLTK server here)."""
    import nltk

    d = tmp_path / "nltk_data"
    en = d / "tokenizers" / "punkt_tab" / "english"
    en.mkdir(parents=True)
    for f in ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab"):
        (en / f).write_text("")
    monkeypatch.setattr(nltk.data, "path", [str(d)] + list(nltk.data.path))
    return d


class CannedLM:
    """An lm-eval LM that answers each generation request with a fixed response (found by its prompt)."""

    def __new__(cls, answers):
        from lm_eval.api.model import LM

        class _Canned(LM):
            def __init__(self):
                super().__init__()
                self.prompts = []

            def generate_until(self, requests, disable_tqdm=False):
                out = []
                for r in requests:
                    self.prompts.append(r.args[0])
                    out.append(next(a for p, a in answers.items() if p in r.args[0]))
                return out

            def loglikelihood(self, requests, disable_tqdm=False):
                raise NotImplementedError

            def loglikelihood_rolling(self, requests, disable_tqdm=False):
                raise NotImplementedError

        return _Canned()


@pytest.mark.slow
def test_ifeval_scoring_strict_and_loose_against_hand_values(local_tasks, punkt_tab):
    """lm-eval's IFEval checkers and aggregation on hand-written responses equal the hand-worked booleans:
    prompt strict 2/5, instruction strict 4/8, prompt loose 4/5, instruction loose 7/8; the table's IFEval
    number is their mean."""
    from minitron_hf.eval.harness import evaluate_model

    lm = CannedLM({r[0]["prompt"]: r[1] for r in IFEVAL_ROWS})
    samples = {}
    res = evaluate_model(None, None, ["ifeval_local"], lm=lm, manager=local_tasks[1], samples=samples)
    want = _naive_ifeval(IFEVAL_ROWS)
    assert want == {"prompt_level_strict_acc": 0.4, "inst_level_strict_acc": 0.5, "prompt_level_loose_acc": 0.8,
                    "inst_level_loose_acc": 0.875}
    got = benchmark_scores("ifeval", res, "ifeval_local", IFEVAL_METRICS)
    for m, v in want.items():
        assert got[f"ifeval/{m}"] == pytest.approx(v)
    assert got["ifeval"] == pytest.approx(sum(want.values()) / 4) == pytest.approx(0.64375)
    # per prompt, per instruction: the booleans worked out by hand (the raw prompt: no chat template)
    by_key = {s["doc"]["key"]: s for s in samples["ifeval_local"]}
    for row, _, strict, loose in IFEVAL_ROWS:
        assert by_key[row["key"]]["inst_level_strict_acc"] == strict
        assert by_key[row["key"]]["inst_level_loose_acc"] == loose
    assert sorted(lm.prompts) == sorted(r[0]["prompt"] for r in IFEVAL_ROWS)


@pytest.mark.slow
def test_bad_input_fails_before_any_model_loads(tmp_path, monkeypatch, shared_index, default_model_dir, capsys):
    import nltk

    import minitron_hf.loading
    from minitron_hf.cli import main

    def no_load(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(minitron_hf.loading, "load_model", no_load)
    with pytest.raises(EvalError, match="did you mean 'ifeval'"):
        check_benchmarks(["ifevl"])
    with pytest.raises(EvalError, match="did you mean 'mtbench'"):
        check_benchmarks(["mt-bench"])
    assert check_benchmarks(["gsm8k", "ifeval", "gsm8k"]) == ["gsm8k", "ifeval"]
    m = str(default_model_dir)
    with pytest.raises(EvalError, match="models"):
        run_instruct_eval([], InstructEvalConfig(benchmarks=["gsm8k"]))
    with pytest.raises(EvalError, match="limit=0"):
        run_instruct_eval([m], InstructEvalConfig(benchmarks=["gsm8k"], limit=0))
    with pytest.raises(EvalError, match="names="):
        run_instruct_eval([m, m], InstructEvalConfig(benchmarks=["gsm8k"]), names=["a", "a"])
    with pytest.raises(EvalError, match="chat_template='yes'"):
        run_instruct_eval([m], InstructEvalConfig(benchmarks=["gsm8k"], chat_template="yes"))
    with pytest.raises(EvalError, match="gpqa_task: unknown lm-eval task 'gpqa_locl'; did you mean gpqa_local"):
        run_instruct_eval([m], InstructEvalConfig(benchmarks=["gpqa"], gpqa_task="gpqa_locl:acc",
                                                  tasks_dir=str(shared_index)))
    with pytest.raises(EvalError, match="ifeval_task="):
        run_instruct_eval([m], InstructEvalConfig(benchmarks=["ifeval"], ifeval_task="ifeval:acc"))
    # IFEval without NLTK's punkt_tab model, which cannot be downloaded (the download is stubbed: offline)
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "empty_nltk")])
    monkeypatch.setattr(nltk, "download", lambda *a, **k: False)
    with pytest.raises(EvalError, match="punkt_tab.*python -m nltk.downloader punkt_tab"):
        run_instruct_eval([m], InstructEvalConfig(benchmarks=["ifeval"], output=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()
    assert main(["eval", "instruct", m, "--benchmarks", "ifeval", "gsm8", "--output", str(tmp_path / "o2")]) == 2
    assert "did you mean 'gsm8k'" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


@pytest.mark.slow
def test_cli_end_to_end_ifeval_and_gpqa_on_the_default_model(tmp_path, punkt_tab, shared_index, default_model_dir,
                                                             capsys):
    """`minitron eval instruct <default model> --benchmarks ifeval gpqa` on local rows through lm-eval with
    the chat template: Table-2 files, numbers equal to a naive recount of the per-document records."""
    from minitron_hf.cli import main

    d = shared_index
    out_dir = tmp_path / "instruct"
    rc = main(["eval", "instruct", str(default_model_dir), "--names", "teacher", "--benchmarks", "ifeval", "gpqa",
               "--tasks-dir", str(d), "--ifeval-task", "ifeval_local", "--gpqa-task", "gpqa_local:acc",
               "--limit", "2", "--max-new-tokens", "16", "--output", str(out_dir)])
    assert rc == 0
    printed = capsys.readouterr().out
    out = json.loads((out_dir / "results.json").read_text())
    assert out["complete"] and out["benchmarks"] == ["ifeval", "gpqa"]
    r = out["results"]["teacher"]
    assert r["ifeval"] == pytest.approx(sum(r[f"ifeval/{m}"] for m in IFEVAL_METRICS) / 4)
    # naive recount from the per-document records
    rows = [json.loads(x) for x in (out_dir / "samples_ifeval.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(row["model"] == "teacher" for row in rows)
    assert all(row["prompt"].startswith("<|im_start|>") and row["prompt"].endswith("<|im_start|>assistant\n")
               for row in rows)  # the chat template was applied
    for mode in ("strict", "loose"):
        assert r[f"ifeval/prompt_level_{mode}_acc"] == pytest.approx(
            sum(row[f"prompt_level_{mode}_acc"] for row in rows) / 2)
        flat = [x for row in rows for x in row[f"inst_level_{mode}_acc"]]
        assert r[f"ifeval/inst_level_{mode}_acc"] == pytest.approx(sum(flat) / len(flat))
    gpqa = [json.loads(x) for x in (out_dir / "samples_gpqa.jsonl").read_text().splitlines()]
    assert len(gpqa) == 2 and r["gpqa"] == pytest.approx(sum(row["acc"] for row in gpqa) / 2)
    for row in gpqa:  # lm-eval's process_docs put the correct answer under the target letter
        correct = next(g["Correct Answer"] for g in GPQA_ROWS if g["Question"] == row["doc"]["Question"])
        assert row["doc"][f"choice{' ABCD'.index(row['target'][1])}"] == correct
    table = (out_dir / "results.md").read_text()
    assert "| benchmark | teacher |" in table and f"| IFEval | {100 * r['ifeval']:.1f} |" in table
    assert f"| GPQA (0) | {100 * r['gpqa']:.1f} |" in table and "| inst_level_loose_acc |" in table
    assert "lm-eval `ifeval_local`" in table and "chat template" in table and "limit: the first 2" in table
    assert "| IFEval |" in printed


def test_sub_benchmark_options_and_table_layout(tmp_path, monkeypatch):
    """HumanEval/MBPP/MT-Bench/BFCL get our shared options and their own by name (the rest keep their
    defaults), a missing module is 'not available' only when asked for, and the table is laid out like
    Table 2 (accuracies x 100, MT-Bench on its 1-10 scale, '-' where a model has no number)."""
    from dataclasses import asdict

    import minitron_hf.eval.instruct as instruct
    from minitron_hf.eval.code import HumanEvalConfig
    from minitron_hf.eval.instruct import results_table, sub_config

    cfg = InstructEvalConfig(limit=3, max_new_tokens=64, batch_size=4, code_samples=5, code_temperature=0.2,
                             judge_model="my-judge", output=str(tmp_path))
    he = sub_config("humaneval", cfg)
    assert isinstance(he, HumanEvalConfig)
    assert (he.limit, he.max_new_tokens, he.batch_size, he.samples, he.temperature) == (3, 64, 4, 5, 0.2)
    assert he.top_p == HumanEvalConfig().top_p and he.output == str(tmp_path / "humaneval")
    assert sub_config("humaneval", InstructEvalConfig()).max_new_tokens == HumanEvalConfig().max_new_tokens
    monkeypatch.setitem(instruct.OTHERS, "bfcl", ("no_such_module",) + instruct.OTHERS["bfcl"][1:])
    with pytest.raises(EvalError, match="'bfcl' is not available"):
        run_instruct_eval(["unused"], InstructEvalConfig(benchmarks=["bfcl"]))

    out = {"config": asdict(cfg), "benchmarks": ["ifeval", "mtbench", "mmlu"],
           "results": {"teacher": {"ifeval": 0.5, "mtbench": 7.126, "mmlu": 0.25}, "student": {"ifeval": 0.25}}}
    table = results_table(out).splitlines()
    assert table[:5] == ["| benchmark | teacher | student |", "|---|---|---|", "| IFEval | 50.0 | 25.0 |",
                         "| MT-Bench (my-judge) | 7.13 | - |", "| MMLU (0) | 25.0 | - |"]


@pytest.mark.server
def test_mtbench_and_mbpp_rows_through_instruct(tmp_path, default_model_dir, stub, mbpp_file):
    """MT-Bench (a local judge answering like OpenAI) and MBPP (local rows) reached through `eval instruct`:
    their numbers land in the Table-2 rows and each writes its own subfolder."""
    pytest.importorskip("mtbench_evaluator")
    pytest.importorskip("openai")
    from conftest import JUDGE, save_with_tokenizer, tiny_model

    stub.judge_reply = "Fine.\nRating: [[6]]"  # every answer of the tiny random model gets 6
    model = save_with_tokenizer(tiny_model("llama", vocab_size=49152), tmp_path / "tiny", default_model_dir)
    cfg = InstructEvalConfig(benchmarks=["mtbench", "mbpp"], limit=2, max_new_tokens=4, judge_base_url=stub.url,
                             judge_model=JUDGE, mbpp_data_files=str(mbpp_file), output=str(tmp_path / "out"))
    out = run_instruct_eval([str(model)], cfg, names=["tiny"])
    r = out["results"]["tiny"]
    assert r["mtbench"] == pytest.approx(6.0) and r["mbpp"] == 0.0  # random weights write no working code
    assert len(stub.posts(JUDGE)) == 4  # 2 questions x 2 turns judged
    for sub in ("mtbench", "mbpp"):
        assert (tmp_path / "out" / sub / "results.json").exists()
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| MT-Bench (stub-judge) | 6.00 |\n| MBPP (0) | 0.0 |" in table
