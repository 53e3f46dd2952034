"""BFCL live: our parser of answers into calls, the bfcl-eval venv (created once, cached) with its data, system
prompt and AST checker on hand-written right and wrong calls, and small end-to-end runs (checkpoint, endpoint)."""

import json
import time

import pytest

from minitron_hf.eval.bfcl import (LIVE_CATEGORIES, BFCLConfig, BFCLError, call_worker, ensure_venv,
                                   parse_calls, run_bfcl)

ANSWERS = [  # (model answer, calls)
    ("[get_user_info(user_id=7890, special='black')]", [{"get_user_info": {"user_id": 7890, "special": "black"}}]),
    ("uber.ride(loc='2020 Addison Street, Berkeley, CA, USA', type=\"comfort\", time=600)",
     [{"uber.ride": {"loc": "2020 Addison Street, Berkeley, CA, USA", "type": "comfort", "time": 600}}]),
    ("[f(a=[1, 2.5, -3], b={'k': True, 'n': None}), g(c=(1, 2))]",
     [{"f": {"a": [1, 2.5, -3], "b": {"k": True, "n": None}}}, {"g": {"c": [1, 2]}}]),
    ("[f(minutes=2 * 60, unit=seconds)]", [{"f": {"minutes": 120, "unit": "seconds"}}]),
    ("```\n[a.b.c(x=1)]\n```", [{"a.b.c": {"x": 1}}]),
    ("[outer(inner=g(y=1), raw=h(2))]", [{"outer": {"inner": {"g": {"y": 1}}, "raw": "h(2)"}}]),
    ("[]", []),
    ("I cannot help with that: no function fits the question.", None),
    ("```python\n[f(a=1)]\n```", None),  # a language tag after the fence is not stripped (as in bfcl-eval)
    ("[f(a=1), 'text']", None),
    ("[f(a=1)", [{"f": {"a": 1}}]),
    ("[f(a='1' + 2)]", None),
]


def test_parse_calls():
    for text, want in ANSWERS:
        assert parse_calls(text) == want, text


def test_bad_input(capsys):
    from minitron_hf.cli import main

    with pytest.raises(BFCLError, match="'simple' is not a BFCL live category"):
        BFCLConfig(categories=["simple"])
    with pytest.raises(BFCLError, match="limit=0"):
        BFCLConfig(limit=0)
    with pytest.raises(BFCLError, match="install='some'"):
        BFCLConfig(install="some")
    with pytest.raises(BFCLError, match="models"):
        run_bfcl([], BFCLConfig())
    assert main(["eval", "bfcl", "x", "--categories", "live_simple", "multi_turn_base"]) == 2
    assert "'multi_turn_base' is not a BFCL live category" in capsys.readouterr().err


@pytest.fixture(scope="module")
def bfcl_python():
    """The bfcl-eval venv in the cache (created on first use, "checker" install: about 10-30 s; reused after)."""
    t0 = time.time()
    py = ensure_venv()
    print(f"bfcl venv ready in {time.time() - t0:.0f} s")
    return py


def _first(value):
    """A nested possible answer ({key: [allowed values]}) as one value: the first allowed value of each key."""
    if isinstance(value, dict):
        return {k: _first(v[0]) for k, v in value.items() if v and v[0] != ""}
    if isinstance(value, list):
        return [_first(v) for v in value]
    return value


def _call_text(truth: list[dict]) -> str:
    """A right answer from a possible answer: the first allowed value of every argument ('' = leave it out)."""
    calls = []
    for call in truth:
        (name, args), = call.items()
        kw = ", ".join(f"{k}={_first(v[0])!r}" for k, v in args.items() if v and v[0] != "")
        calls.append(f"{name}({kw})")
    return "[" + ", ".join(calls) + "]"


@pytest.mark.slow
def test_venv_data_prompt_and_checker(bfcl_python):
    data = call_worker(bfcl_python, "load", {"categories": LIVE_CATEGORIES, "limit": 3})
    assert set(data) == set(LIVE_CATEGORIES) and all(len(v) == 3 for v in data.values())
    first = data["live_simple"][0]
    assert first["id"] == "live_simple_0-0-0" and first["messages"][0]["role"] == "system"
    assert "get_user_info" in first["messages"][0]["content"] and "[func_name1(" in first["messages"][0]["content"]
    assert first["messages"][-1] == {"role": "user", "content": "Can you retrieve the details for the user with the "
                                     "ID 7890, who has black as their special request?"}
    assert data["live_irrelevance"][0]["ground_truth"] is None

    entries, want = [], []
    for cat in ("live_simple", "live_multiple", "live_parallel", "live_parallel_multiple"):
        for i, e in enumerate(data[cat]):
            calls = parse_calls(_call_text(e["ground_truth"]))
            assert calls is not None, e["ground_truth"]
            if i == 1:  # wrong: a changed value of the first argument that has one
                (name, args), = calls[0].items()
                k = next(iter(args))
                args[k] = "surely-not-this" if not isinstance(args[k], str) else args[k] + "-wrong"
            if i == 2:  # wrong: a function the question does not need
                calls = [{"no_such_function": {}}]
            entries.append({"id": e["id"], "category": cat, "decoded": calls})
            want.append(i == 0)
    for cat, valid_first in (("live_irrelevance", True), ("live_relevance", False)):
        for i, e in enumerate(data[cat]):  # no call, then a call, then an undecodable answer
            decoded = [None, [{"anything": {"a": 1}}], None][i]
            entries.append({"id": e["id"], "category": cat, "decoded": decoded})
            want.append((decoded is None) == valid_first)
    scored = call_worker(bfcl_python, "score", {"entries": entries})
    assert [s["valid"] for s in scored["entries"]] == want
    assert all(s["error"] for s, w in zip(scored["entries"], want) if not w)
    # naive reference of the summaries: correct / count
    ref = {c: sum(w for e, w in zip(entries, want) if e["category"] == c) / 3 for c in LIVE_CATEGORIES}
    assert {c: s["accuracy"] for c, s in scored["categories"].items()} == pytest.approx(ref)
    ast_cats = LIVE_CATEGORIES[:4]
    assert scored["summary"]["live_overall"] == pytest.approx(sum(ref[c] * 3 for c in ast_cats) / 12)
    assert scored["summary"]["live_with_relevance"] == pytest.approx(sum(want) / len(want))

    # our parser decodes as bfcl-eval's own decoder does
    texts = [t for t, _ in ANSWERS if "2 * 60" not in t and "'1' + 2" not in t]  # bfcl evaluates with eval()
    ref_decoded = call_worker(bfcl_python, "decode", {"texts": texts})["decoded"]
    assert [parse_calls(t) for t in texts] == ref_decoded


@pytest.mark.server
@pytest.mark.slow
def test_through_an_endpoint_answering_right(bfcl_python, tmp_path):
    from conftest import StubServer

    data = call_worker(bfcl_python, "load", {"categories": ["live_simple", "live_irrelevance"], "limit": 2})
    truth = {e["messages"][-1]["content"]: e["ground_truth"] for e in data["live_simple"]}

    def answer(kind, body):
        q = body["messages"][-1]["content"]
        return _call_text(truth[q]) if q in truth else "None of the functions can answer this question."

    with StubServer(answer, models=["fc"]) as srv:
        out = run_bfcl(["fc"], BFCLConfig(categories=["live_simple", "live_irrelevance"], limit=2,
                                          model_base_url=srv.url, max_new_tokens=64, output=str(tmp_path / "b")))
        r = out["results"]["fc"]
        assert r["live_simple"] == 1.0 and r["live_irrelevance"] == 1.0 and r["live_overall"] == 1.0
        assert all(b["temperature"] == 0 and b["max_tokens"] == 64 and b["messages"][0]["role"] == "system"
                   for _, b in srv.requests)
    rows = [json.loads(x) for x in (tmp_path / "b" / "answers.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(x["valid"] for x in rows)
    assert "| fc | 100.0 | 100.0 | 100.0 | 100.0 |" in (tmp_path / "b" / "results.md").read_text()


@pytest.mark.slow
def test_end_to_end_on_the_default_model(bfcl_python, default_model_dir, tmp_path):
    # the first entries of live_simple and live_parallel are the shortest first entries (about 450 and 510 prompt
    # tokens; live_irrelevance's is 1170): one batch of two, left-padded; relevance scoring is checked above
    cats = ["live_simple", "live_parallel"]
    out = run_bfcl([str(default_model_dir)], BFCLConfig(categories=cats, limit=1, max_new_tokens=12,
                                                        output=str(tmp_path / "b")), names=["smollm2"])
    r = out["results"]["smollm2"]
    assert r["entries"] == 2 and 0 <= r["live_overall"] <= 1 and set(r) >= set(cats) | {"live_with_relevance"}
    rows = [json.loads(x) for x in (tmp_path / "b" / "answers.jsonl").read_text().splitlines()]
    assert [x["category"] for x in rows] == cats and all(x["answer"] for x in rows)
    assert r["live_overall"] == pytest.approx(sum(x["valid"] for x in rows) / 2)
    assert "| smollm2 |" in (tmp_path / "b" / "results.md").read_text()
