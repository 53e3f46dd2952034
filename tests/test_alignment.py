"""SFT stages, verifiable rewards, built-in alignment data, rounds of RPO and the NeMo-Aligner export."""

import json

import pytest
import torch

from conftest import save_with_tokenizer, tiny_model
from minitron_hf.alignment import data as adata
from minitron_hf.alignment.rounds import (NEMO_ALIGNER_KEYS, RoundsConfig, best_worst_pairs,
                                          run_rounds, score)
from minitron_hf.alignment.errors import AlignmentError
from minitron_hf.alignment.rpo import RPOConfig
from minitron_hf.alignment.sft import SFTArgs, SFTStageConfig, ensure_chat_template, run_sft


def test_constraint_checks_by_hand():
    row = {"constraints": [{"type": "lowercase"}, {"type": "max_words", "n": 5}, {"type": "no_commas"},
                           {"type": "include", "word": "python"}],
           "source": "Python lists are mutable sequences of objects"}
    assert adata.check_constraints("python lists are mutable.", row["constraints"]) == [True, True, True, True]
    assert adata.check_constraints("Python lists, mutable ones, are fine here", row["constraints"]) == \
        [False, False, False, True]
    assert adata.verifiable_reward(row, "python lists are mutable.") == 1.0
    # unfaithful (words not from the source) loses the faithfulness check only: 4 of 5
    assert adata.verifiable_reward(row, "python bananas grow fast") == pytest.approx(4 / 5)
    assert adata.verifiable_reward({"answer": 12}, "7 + 5 = 12, so 12.") == 1.0
    assert adata.verifiable_reward({"answer": 12}, "it is 13") == 0.0
    assert adata.verifiable_reward({"answer": 12}, "no idea") == 0.0
    with pytest.raises(AlignmentError, match="unknown type 'shout'"):
        adata.check_constraints("x", [{"type": "shout"}])
    with pytest.raises(AlignmentError, match="neither 'answer' nor 'constraints'"):
        adata.verifiable_reward({"prompt": "hi"}, "hello")


def test_builtin_data_references_score_one_and_splits_are_disjoint():
    sft = adata.builtin_rows("builtin:instructions")
    rounds = adata.builtin_rows("builtin:constraints")
    assert len(sft) > 100 and len(rounds) > 200
    assert not {r["source"] for r in sft} & {r["source"] for r in rounds}
    assert all(adata.verifiable_reward(r, r["reference"]) == 1.0 for r in sft + rounds)
    held = [r for r in rounds if r["split"] == "heldout"]
    assert 50 < len(held) < len(rounds) / 2
    mc = adata.builtin_rows("builtin:math-code")
    math_rows = [r for r in mc if "answer" in r]
    assert math_rows and all(adata.verifiable_reward(r, r["reference"]) == 1.0 for r in math_rows)
    code = [r for r in mc if "answer" not in r]
    assert code and all(r["reference"].startswith("```python\ndef ") for r in code)
    for r in code:  # the answers are real, compilable functions
        compile(r["reference"].strip("`").removeprefix("python\n"), "<stdlib>", "exec")
    ex = adata.sft_examples(mc[:3])
    assert ex[0]["prompt"][0]["role"] == "user" and ex[0]["completion"][0]["role"] == "assistant"
    with pytest.raises(AlignmentError, match="row 0 has columns \\['text'\\]"):
        adata.sft_examples([{"text": "x"}])
    with pytest.raises(AlignmentError, match="built-in data are"):
        adata.load_rows("builtin:nope")


def test_chat_template_handling(default_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model_dir)
    own = tok.chat_template
    assert ensure_chat_template(tok, None).chat_template == own
    tok.chat_template = None
    with pytest.raises(AlignmentError, match="chat_template: the tokenizer has no chat template and none was given"):
        ensure_chat_template(tok, None, add_default=False)
    ensure_chat_template(tok, None)  # SFT adds ChatML closed by the EOS token
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                                   tokenize=False)
    assert text == f"<|im_start|>user\nhi{tok.eos_token}\n<|im_start|>assistant\nyo{tok.eos_token}\n"
    with pytest.raises(AlignmentError, match="chat_template='/nope.jinja': not a file"):
        ensure_chat_template(tok, "/nope.jinja")


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory, default_model_dir):
    d = tmp_path_factory.mktemp("align") / "policy"
    return save_with_tokenizer(tiny_model("llama", vocab_size=49152), d, default_model_dir)


@pytest.mark.slow
def test_sft_trains_on_completions_only_and_saves_the_template(tiny_policy, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    args = SFTArgs(output_dir=str(tmp_path / "sft"), max_steps=2, per_device_train_batch_size=4, max_length=128,
                   learning_rate=1e-3, packing=True)
    rec = run_sft(SFTStageConfig(model=str(tiny_policy), data="builtin:math-code", max_samples=8), args)
    assert rec["steps"] == 2 and rec["examples"] == 8
    final = tmp_path / "sft" / "final"
    before = AutoModelForCausalLM.from_pretrained(tiny_policy).state_dict()
    after = AutoModelForCausalLM.from_pretrained(final).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert AutoTokenizer.from_pretrained(final).chat_template == AutoTokenizer.from_pretrained(tiny_policy).chat_template
    with pytest.raises(AlignmentError, match="exists; set overwrite=true"):
        run_sft(SFTStageConfig(model=str(tiny_policy), data="builtin:math-code", max_samples=8), args)


def test_sft_completion_mask_covers_only_the_answer(tiny_policy):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    tok = AutoTokenizer.from_pretrained(tiny_policy)
    ex = adata.sft_examples([{"prompt": "What is 2 + 3?", "completion": "2 + 3 = 5."}])
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_policy), train_dataset=Dataset.from_list(ex),
                         processing_class=tok, args=SFTArgs(output_dir="/tmp/sft-mask", max_length=64))
    row = trainer.train_dataset[0]
    trained = tok.decode([i for i in row["labels"] if i != -100])
    assert trained.startswith("2 + 3 = 5.") and trained.endswith("<|im_end|>\n")  # the end of turn is learnt
    assert sum(i != -100 for i in row["labels"]) < len(row["input_ids"]) / 2


def _tiny_prompts(path, n=12):
    rows = [r for r in adata.builtin_rows("builtin:constraints")[:n]]
    path.write_text("".join(json.dumps({k: r[k] for k in ("prompt", "constraints", "source", "split")}) + "\n"
                            for r in rows))
    return path


@pytest.mark.slow
def test_rounds_end_to_end_with_nemo_aligner_export(tiny_policy, tmp_path, default_model_dir):
    """Two rounds on a tiny random policy, scored by a tiny random reward model (the random policy's answers
    would all get the same verifiable reward)."""
    from transformers import AutoModelForSequenceClassification

    from conftest import tiny_config

    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_config(tiny_config("llama", vocab_size=49152, num_labels=1))
    rm_dir = save_with_tokenizer(rm, tmp_path / "rm", default_model_dir)
    prompts = _tiny_prompts(tmp_path / "prompts.jsonl", 40)
    cfg = RoundsConfig(model=str(tiny_policy), prompts=str(prompts), reward=f"model:{rm_dir}", rounds=2, samples=3,
                       train_prompts=6,
                       heldout_prompts=4, max_new_tokens=12, generation_backend="transformers",
                       export_nemo_aligner=str(tmp_path / "nemo"))
    args = RPOConfig(output_dir=str(tmp_path / "rounds"), max_steps=1, per_device_train_batch_size=2, max_length=128,
                     report_to=[], save_strategy="no", learning_rate=1e-3)
    rec = run_rounds(cfg, args)
    assert [r["round"] for r in rec["rounds"]] == [0, 1, 2]
    for k in (1, 2):
        r = rec["rounds"][k]
        assert 0 < r["pairs"] <= 6 and r["mean_reward_gap"] > 0
        assert (tmp_path / "rounds" / f"round_{k}" / "final" / "config.json").exists()
        prefs = [json.loads(x) for x in (tmp_path / "rounds" / f"round_{k}" / "preferences.jsonl").read_text().splitlines()]
        assert all(p["chosen_reward"] > p["rejected_reward"] for p in prefs)
        # NeMo-Aligner's RPO jsonl schema: exactly these keys; strings and numbers; prompt + response = conversation
        nemo = [json.loads(x) for x in (tmp_path / "nemo" / f"round_{k}_rpo.jsonl").read_text().splitlines()]
        assert len(nemo) == len(prefs)
        for n, p in zip(nemo, prefs):
            assert tuple(n) == NEMO_ALIGNER_KEYS
            assert all(isinstance(n[c], str) for c in NEMO_ALIGNER_KEYS[:3])
            assert all(isinstance(n[c], float) for c in NEMO_ALIGNER_KEYS[3:])
            assert n["prompt"].endswith("<|im_start|>assistant\n") and n["chosen_response"].endswith("<|im_end|>\n")
            assert (n["chosen_reward"], n["rejected_reward"]) == (p["chosen_reward"], p["rejected_reward"])
        sh = (tmp_path / "nemo" / f"round_{k}_train_gpt_dpo.sh").read_text()
        assert "model.dpo.preference_loss=rpo_bwd_kl" in sh and "model.dpo.ref_policy_kl_penalty=0.2" in sh
        assert "model.dpo.gt_reward_scale=1.0" in sh and f"round_{k}_rpo.jsonl" in sh
    table = (tmp_path / "rounds" / "rounds.md").read_text()
    assert "| start (SFT) |" in table and "| 2 |" in table
    # a rerun reuses finished rounds instead of training again
    rec2 = run_rounds(cfg, args)
    assert rec2["rounds"][2]["wall_time_s"] == rec["rounds"][2]["wall_time_s"]


def test_pairs_and_rewards_edge_cases():
    rows = [{"messages": [{"role": "user", "content": "q1"}]}, {"messages": [{"role": "user", "content": "q2"}]}]
    pairs = best_worst_pairs(rows, [["a", "b", "c"], ["x", "y", "z"]], [[0.2, 0.9, 0.5], [0.5, 0.5, 0.5]])
    assert len(pairs) == 1 and pairs[0]["chosen"][0]["content"] == "b" and pairs[0]["rejected"][0]["content"] == "a"
    with pytest.raises(AlignmentError, match="reward: the reward is not a finite number for 1 answer"):
        score(lambda r, a: [0.5, float("nan")], rows, ["a", "b"])


def test_rounds_bad_input(tiny_policy, tmp_path):
    args = RPOConfig(output_dir=str(tmp_path / "r"), report_to=[])
    (tmp_path / "p.jsonl").write_text('{"question": "hi"}\n')
    with pytest.raises(AlignmentError, match="prompts: row 0 has no 'prompt' column \\(has question\\)"):
        run_rounds(RoundsConfig(model=str(tiny_policy), prompts=str(tmp_path / "p.jsonl")), args)
    with pytest.raises(AlignmentError, match="samples=1 must be >= 2"):
        run_rounds(RoundsConfig(model=str(tiny_policy), samples=1), args)
    no_template = tmp_path / "no-template"
    no_template.mkdir()
    for f in tiny_policy.iterdir():
        if f.name != "chat_template.jinja":
            (no_template / f.name).write_bytes(f.read_bytes())
    cfg_file = no_template / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.pop("chat_template", None)
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(AlignmentError, match="chat_template: the tokenizer has no chat template"):
        run_rounds(RoundsConfig(model=str(no_template)), args)
    assert not (tmp_path / "r").exists()  # nothing written before the checks
