"""One generation path (minitron_hf.generation): one BOS for chat templates, the raw text's BOS, left padding that
equals one-by-one generation, and the caller's tokenizer untouched. Every suite goes through it."""

import pytest
import torch
from tokenizers.processors import TemplateProcessing
from transformers import AutoTokenizer

from conftest import tiny_model
from minitron_hf.generation import encode, generate_texts, render


@pytest.fixture
def bos_tokenizer(default_model_dir):
    """The default tokenizer made to add a BOS to every encoding, as Llama-3, Mistral and Gemma tokenizers do.
    SmolLM2's chat template starts with the same token (<|im_start|>, id 1) as the BOS."""
    tok = AutoTokenizer.from_pretrained(default_model_dir)
    bos = tok.bos_token
    tok._tokenizer.post_processor = TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                       special_tokens=[(bos, tok.bos_token_id)])
    assert tok("hi")["input_ids"][0] == tok.bos_token_id  # the tokenizer really adds it
    return tok


def _leading_bos(ids: torch.Tensor, mask: torch.Tensor, bos: int) -> list[int]:
    """How many BOS tokens each row starts with, after its left padding."""
    out = []
    for row, m in zip(ids.tolist(), mask.tolist()):
        row = row[m.index(1):]
        n = 0
        while n < len(row) and row[n] == bos:
            n += 1
        out.append(n)
    return out


def test_chat_prompts_get_one_bos_and_raw_text_gets_its_bos(bos_tokenizer):
    tok = bos_tokenizer
    chats = [[{"role": "user", "content": "What is 2 + 2?"}], [{"role": "user", "content": "Name a colour, please."}]]
    ids, mask = encode(tok, render(tok, chats, chat=True), chat=True)
    assert _leading_bos(ids, mask, tok.bos_token_id) == [1, 1]
    # what the drifted HumanEval loop did: templated text tokenized with the special tokens added again
    twice = tok(render(tok, chats[:1], chat=True)[0])["input_ids"]
    assert twice[:2] == [tok.bos_token_id, tok.bos_token_id]
    ids, mask = encode(tok, ["def f(x):", "import os\n"], chat=False)
    assert _leading_bos(ids, mask, tok.bos_token_id) == [1, 1]
    assert mask.tolist()[0][0] == 0 or mask.tolist()[1][0] == 0  # the shorter one is padded on the left


@pytest.fixture
def model_inputs():
    """A tiny model that records the input ids of every generate call's first forward pass."""
    model = tiny_model("llama", vocab_size=49152)
    seen = []

    def hook(module, args, kwargs):
        cache = kwargs.get("past_key_values")
        if cache is None or cache.get_seq_length() == 0:  # the prompt's forward, not a decoding step
            ids, mask = kwargs["input_ids"], kwargs.get("attention_mask")  # generate drops an all-ones mask
            seen.append((ids.clone(), torch.ones_like(ids) if mask is None else mask.clone()))

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return model, seen


def test_every_suite_gives_the_model_one_bos_and_leaves_the_tokenizer_alone(bos_tokenizer, model_inputs):
    from minitron_hf.eval.bfcl import chat_generate
    from minitron_hf.eval.code import HumanEvalConfig, generate, load_problems
    from minitron_hf.eval.mtbench import MTBenchConfig, generate_answers
    from minitron_hf.generation import generate_answer

    tok, (model, seen) = bos_tokenizer, model_inputs
    side, pad = tok.padding_side, tok.pad_token
    problems = load_problems(2)
    generate(model, tok, problems, HumanEvalConfig(samples=1, temperature=0, max_new_tokens=2, prompt_style="chat"))
    generate(model, tok, problems, HumanEvalConfig(samples=2, temperature=0.8, max_new_tokens=2,
                                                   prompt_style="completion"))
    qs = [{"question_id": i, "category": "writing", "turns": [f"Say {w}.", "Again."]}
          for i, w in enumerate(["yes", "no, not at all"])]
    generate_answers(model, tok, qs, MTBenchConfig(max_new_tokens=2, batch_size=2))
    chat_generate(model, tok, [[{"role": "user", "content": "Call f."}]], max_new_tokens=2, batch_size=2)
    generate_answer(model, tok, "What is the capital of France?", max_new_tokens=2)
    generate_answer(model, tok, "The capital of France is", max_new_tokens=2, chat=False)
    assert len(seen) >= 1 + 1 + 2 + 1 + 1 + 1  # HumanEval chat, completion, MT-Bench 2 turns, BFCL, 2 answers
    for ids, mask in seen:
        assert set(_leading_bos(ids, mask, tok.bos_token_id)) == {1}, ids[:, :4]
    assert (tok.padding_side, tok.pad_token) == (side, pad)


def test_left_padded_batches_equal_one_by_one_and_keep_prompt_order(default_tokenizer):
    model = tiny_model("qwen2", vocab_size=49152)
    prompts = ["a", "a much longer prompt than the first one", "mid length prompt", "b c"]
    batched = generate_texts(model, default_tokenizer, prompts, chat=False, max_new_tokens=5, batch_size=4)
    single = generate_texts(model, default_tokenizer, prompts, chat=False, max_new_tokens=5, batch_size=1)
    assert batched == single and all(len(x) == 1 for x in batched)
    # n samples per prompt, sampled: reproducible from the seed; temperatures per prompt
    a = generate_texts(model, default_tokenizer, prompts, chat=False, n=3, temperature=1.0, max_new_tokens=4, seed=3)
    b = generate_texts(model, default_tokenizer, prompts, chat=False, n=3, temperature=1.0, max_new_tokens=4, seed=3)
    assert a == b and all(len(x) == 3 for x in a)
    mixed = generate_texts(model, default_tokenizer, prompts, chat=False, temperature=[0.0, 0.7, 0.0, 0.7],
                           max_new_tokens=5, seed=0)
    assert mixed[0] == single[0] and mixed[2] == single[2]  # the greedy ones are the greedy answers
