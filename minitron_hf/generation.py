"""One batched generation path for every in-memory model (alignment rounds, HumanEval/MBPP, MT-Bench, BFCL, reports).

- Prompts are conversations (``chat=True``: rendered by the tokenizer's chat template) or raw text.
- Special tokens: a chat template writes its own, BOS included (Llama-3, Mistral and Gemma templates start with
  it). So templated text is tokenized without adding special tokens again, which would give a second BOS. Raw
  text is tokenized with them, so a model that needs its BOS (Gemma) gets it.
- Batches hold prompts of one temperature and similar length, left-padded by hand. The caller's tokenizer is never
  changed (no ``padding_side`` or ``pad_token`` set on it).
- ``n`` samples per prompt (``num_return_sequences``), greedy when the temperature is 0, optional stop strings.

:func:`generate_answer` is the one-prompt greedy case (the reports' "a greedy answer from each model").
"""

from __future__ import annotations

from typing import Sequence

from tqdm.auto import tqdm


def render(tokenizer, prompts: Sequence, chat: bool) -> list[str]:
    """The text each prompt becomes: the chat template with the generation prompt, or the text itself."""
    if not chat:
        return [str(p) for p in prompts]
    return [tokenizer.apply_chat_template(list(p), tokenize=False, add_generation_prompt=True) for p in prompts]


def encode(tokenizer, texts: Sequence[str], chat: bool, device=None):
    """Left-padded ``input_ids`` and ``attention_mask`` of ``texts`` (rendered prompts). Special tokens are added only
    to raw text: a rendered chat template already holds them."""
    import torch  # at call time: the eval suites import this module, and `minitron --help` imports every suite

    ids = [tokenizer(t, add_special_tokens=not chat)["input_ids"] for t in texts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(x) for x in ids)
    input_ids = torch.tensor([[pad] * (width - len(x)) + list(x) for x in ids], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], dtype=torch.long)
    return input_ids.to(device), mask.to(device)


def generate_texts(model, tokenizer, prompts: Sequence, *, chat: bool, n: int = 1,
                   temperature: float | Sequence[float] = 0.0, top_p: float = 1.0, max_new_tokens: int = 64,
                   batch_size: int = 16, seed: int | None = 0, stop_strings: Sequence[str] | None = None,
                   desc: str | None = None) -> list[list[str]]:
    """``n`` completions of each prompt (decoded, special tokens skipped, not stripped), in prompt order.

    ``temperature`` is one value or one per prompt; ``seed`` seeds torch once before the first batch (None: the
    caller seeds). A batch holds at most ``batch_size`` sequences (``batch_size // n`` prompts, at least one)."""
    import torch

    texts = render(tokenizer, prompts, chat)
    temps = list(temperature) if isinstance(temperature, (list, tuple)) else [float(temperature)] * len(texts)
    if len(temps) != len(texts):
        raise ValueError(f"{len(temps)} temperatures for {len(texts)} prompts")
    if seed is not None:
        torch.manual_seed(seed)
    per_call = max(1, batch_size // n)
    batches: list[list[int]] = []
    for i in sorted(range(len(texts)), key=lambda i: (temps[i], len(texts[i]))):  # similar lengths share a batch
        if batches and len(batches[-1]) < per_call and temps[batches[-1][0]] == temps[i]:
            batches[-1].append(i)
        else:
            batches.append([i])
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop = {"stop_strings": list(stop_strings), "tokenizer": tokenizer} if stop_strings else {}
    out: list[list[str]] = [[] for _ in texts]
    for idx in tqdm(batches, desc=desc, disable=desc is None, leave=False):
        t = temps[idx[0]]
        input_ids, mask = encode(tokenizer, [texts[i] for i in idx], chat, device)
        with torch.no_grad():
            gen = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 do_sample=t > 0, temperature=t if t > 0 else None, top_p=top_p if t > 0 else None,
                                 top_k=None, num_return_sequences=n, pad_token_id=pad, **stop)
        for j, a in enumerate(tokenizer.batch_decode(gen[:, input_ids.shape[1]:], skip_special_tokens=True)):
            out[idx[j // n]].append(a)
    return out


def generate_answer(model, tokenizer, prompt: str, max_new_tokens: int = 48, chat: bool = True) -> str:
    """Greedy answer to ``prompt``: through the chat template when the tokenizer has one and ``chat``, else a raw
    continuation of the text (:func:`generate_texts`)."""
    chat = bool(chat and tokenizer.chat_template)
    prompt = [{"role": "user", "content": prompt}] if chat else prompt
    return generate_texts(model, tokenizer, [prompt], chat=chat, max_new_tokens=max_new_tokens)[0][0]
