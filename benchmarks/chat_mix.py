"""Issue 21: does chat data in the distillation mix keep the instruct teacher's chat ability?

The demo (recipes/configs/smollm2-135m/minitron-width.yaml) prunes SmolLM2-135M-Instruct by width and distils
it on python-docs only; the student then answers chat prompts with garbage. This benchmark prunes once with
the demo's settings and distils the same pruned student twice with the demo's distillation settings and the
same token budget:

  (a) python-docs only (the demo),
  (b) a mix: python-docs train documents + chat conversations (``builtin:instructions`` rows rendered with
      the teacher's chat template), MIX_CHAT share of the training tokens.

Then teacher, pruned, (a) and (b) are evaluated on: validation LM loss on python-docs (the same 16 x 256
tokens for all), the held-out chat reward of ``make demo-instruct`` (greedy answers to the 32 held-out
``builtin:constraints`` prompts, 48 new tokens, verifiable reward: ``alignment.rounds.heldout_reward``), and
greedy answers to three chat prompts. Writes benchmarks/results/chat_mix.md and .json.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/chat_mix.py [--steps 30]

Everything intermediate lives under runs/chat_mix/ and is reused when present (pruned model, corpus,
distilled models, per-model evaluations); --fresh-eval redoes the evaluations.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, write_result  # noqa: E402

RUNS = ROOT / "runs" / "chat_mix"
MIX_CHAT = 0.30  # share of training tokens that are chat conversations (paper-like 70/30)
SEQ_LEN, BATCH = 256, 8
PROMPTS = ["What is the capital of France?",
           "Give me two tips for sleeping better.",
           "Write a Python function that returns the square of a number."]
HELDOUT_CHATS = 40  # the last conversations of builtin:instructions: never in the mix, scored by chat LM loss
CHUNK_CHARS = 2000  # python-docs documents of the mix are cut into pieces of about this size (see build_mix)

logger = logging.getLogger("chat_mix")


def prune_once():
    from minitron_hf.data import DataConfig
    from minitron_hf.pruning.config import PruneConfig
    from minitron_hf.pruning.prune import run_prune

    out = RUNS / "pruned"
    if (out / "config.json").exists():
        logger.info("reusing %s", out)
        return out, json.loads((out / "pruning.json").read_text()).get("wall_time_s")
    cfg = PruneConfig(model="smollm2-135m", output=str(out), target={"hidden_size": 432, "intermediate_size": 768},
                      importance="l2_mean", calib_samples=64, batch_size=8, seq_len=SEQ_LEN)
    rec = run_prune(DataConfig(), cfg)
    return out, rec["wall_time_s"]


def _chunks(text: str, size: int = CHUNK_CHARS):
    buf, n = [], 0
    for line in text.splitlines(keepends=True):
        if n + len(line) > size and buf:
            yield "".join(buf)
            buf, n = [], 0
        buf.append(line)
        n += len(line)
    if buf and "".join(buf).strip():
        yield "".join(buf)


def build_mix(tok, train_tokens: int, heldout_rows: list[dict]) -> dict:
    """The mixed corpus as runs/chat_mix/mix.jsonl ({"text": ...} rows) and what the student will see of it.

    The distiller re-splits the file by a hash of each text (90% train) and packs the shuffled train texts
    until ``train_tokens`` are full, so the file is sized to about what the budget takes (plus a margin),
    python-docs documents are cut into <= CHUNK_CHARS pieces (a single stdlib source can be 30k tokens and would
    swing the ratio), and the ratio actually seen is measured by replaying the library's split and packing.
    """
    from minitron_hf.alignment.data import load_rows
    from minitron_hf.data import DataConfig, load_documents, split_documents

    path = RUNS / "mix.jsonl"
    docs_cfg = DataConfig()
    py_splits = split_documents(load_documents(docs_cfg), docs_cfg)
    py_train = py_splits["train"]  # never the validation split
    rows = load_rows("builtin:instructions")  # prompt + reference (a rewrite that satisfies the constraints)
    chats = [tok.apply_chat_template([{"role": "user", "content": r["prompt"]},
                                      {"role": "assistant", "content": r["reference"]}], tokenize=False)
             for r in rows]
    ntok = lambda t: len(tok(t, add_special_tokens=False)["input_ids"]) + 1  # noqa: E731  (+ EOS)
    margin = 1.0 / 0.9 * 1.08  # 10% of the file goes to validation/calibration; a little spare
    chat_target = MIX_CHAT * train_tokens * margin
    chat_texts, n_chat = [], 0
    for t in chats[:-HELDOUT_CHATS]:
        if n_chat >= chat_target:
            break
        chat_texts.append(t)
        n_chat += ntok(t)
    if n_chat < chat_target:
        logger.warning("only %d chat tokens available, %.0f wanted", n_chat, chat_target)
    py_target = (1 - MIX_CHAT) / MIX_CHAT * n_chat if n_chat < chat_target else (1 - MIX_CHAT) * train_tokens * margin
    py_texts, n_py = [], 0
    for doc in py_train:
        for c in _chunks(doc):
            if n_py >= py_target:
                break
            py_texts.append(c)
            n_py += ntok(c)
        if n_py >= py_target:
            break
    # python-docs validation documents, whole: the split hashes (seed, text), so they fall into the mix's
    # validation split again (the distiller's own eval needs 8 x 256 tokens there) and are never trained on
    val_texts = py_splits["validation"]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in chat_texts + py_texts + val_texts))

    # held-out prompts must not be in the distillation data
    texts = chat_texts + py_texts
    chat_blob = "\n".join(chat_texts)
    leaks_chat = sum(r["prompt"] in chat_blob or r["source"] in chat_blob for r in heldout_rows)
    if leaks_chat:
        raise SystemExit(f"{leaks_chat} held-out prompts/sentences are in the chat part of the mix")
    py_blob = "\n".join(py_train)
    src_in_docs = sum(r["source"] in py_blob for r in heldout_rows)  # the sentences come from pydoc topics

    # replay the distiller's split + packing order to measure the ratio it trains on
    mix_cfg = DataConfig(data=str(path))
    train = split_documents(load_documents(mix_cfg), mix_cfg)["train"]
    assert not set(val_texts) & set(train), "python-docs validation documents in the mix's train split"
    chat_set = set(chat_texts)
    seen = {"chat": 0, "python-docs": 0}
    left = train_tokens
    for t in train:
        if left <= 0:
            break
        k = min(ntok(t), left)
        seen["chat" if t in chat_set else "python-docs"] += k
        left -= k
    if left > 0:
        raise SystemExit(f"the mix holds {train_tokens - left} train tokens, {train_tokens} needed")
    return {"path": str(path), "chat_conversations": len(chat_texts), "chat_rows_available": len(rows),
            "python_docs_pieces": len(py_texts), "file_tokens": {"chat": n_chat, "python-docs": n_py},
            "trained_tokens": seen, "chat_share": seen["chat"] / train_tokens,
            "heldout_prompts_in_mix": 0, "heldout_sources_in_python_docs_train": src_in_docs,
            "heldout_prompts": len(heldout_rows), "n_documents": len(texts)}


def distil(name: str, data: str, student: Path, steps: int) -> dict:
    from minitron_hf.data import DataConfig
    from minitron_hf.distill.run import DistillScriptConfig, run_distill
    from minitron_hf.distill.trainer import DistillationConfig

    out = RUNS / name
    if (out / "final" / "config.json").exists() and (out / "distill.json").exists():
        s = json.loads((out / "distill.json").read_text())
        if s["steps"] == steps:
            logger.info("reusing %s", out)
            return s
    script = DistillScriptConfig(student=str(student), teacher="smollm2-135m", seq_len=SEQ_LEN, eval_samples=8,
                                 overwrite=True)
    # the demo's distill section; checkpoints are not saved (save_strategy does not change training)
    args = DistillationConfig(output_dir=str(out), kd_loss="forward_kl", learning_rate=1e-3,
                              lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr": 1e-4},
                              warmup_steps=3, max_steps=steps, per_device_train_batch_size=BATCH, weight_decay=0.0,
                              eval_strategy="steps", eval_steps=15, logging_steps=2, save_strategy="no", seed=0,
                              report_to="none")
    return run_distill(DataConfig(data=data), script, args)


def heldout_chats(tok) -> list[str]:
    """The last HELDOUT_CHATS builtin:instructions conversations (prompt + reference answer) in the chat template."""
    from minitron_hf.alignment.data import load_rows

    rows = load_rows("builtin:instructions")[-HELDOUT_CHATS:]
    return [tok.apply_chat_template([{"role": "user", "content": r["prompt"]},
                                     {"role": "assistant", "content": r["reference"]}], tokenize=False) for r in rows]


def chat_loss(model, tok, texts: list[str]) -> float:
    """Mean next-token loss over the tokens of held-out conversations (how well a model predicts chat)."""
    import torch

    total, n = 0.0, 0
    for t in texts:
        ids = tok(t, return_tensors="pt", add_special_tokens=False)["input_ids"][:, :SEQ_LEN]
        with torch.no_grad():
            loss = model(input_ids=ids, labels=ids).loss
        total += float(loss) * (ids.shape[1] - 1)
        n += ids.shape[1] - 1
    return total / n


def evaluate(name: str, model_dir, held, rcfg, fresh: bool) -> dict:
    from minitron_hf.alignment.rounds import heldout_reward, make_reward
    from minitron_hf.data import DataConfig
    from minitron_hf.generation import generate_texts
    from minitron_hf.loading import load_model, load_tokenizer, resolve_model
    from minitron_hf.lm_loss import validation_loss

    cache = RUNS / f"eval_{name}.json"
    if cache.exists() and not fresh:
        return json.loads(cache.read_text())
    t0 = time.time()
    d = resolve_model(model_dir)
    loss = validation_loss(d, DataConfig(), samples=16, seq_len=SEQ_LEN, batch_size=8)
    h = heldout_reward(d, held, make_reward("verifiable"), rcfg)
    model, tok = load_model(d), load_tokenizer(d)
    closs = chat_loss(model, tok, heldout_chats(tok))
    answers = [a[0].strip() for a in generate_texts(model, tok, [[{"role": "user", "content": p}] for p in PROMPTS],
                                                    chat=True, max_new_tokens=40)]
    res = {"model": str(model_dir), "val_loss": loss, "chat_loss": closs, "heldout_reward": h["mean_reward"],
           "answers": answers,
           "heldout_answers": h["answers"][:5], "heldout_rewards": h["rewards"], "eval_wall_s": round(time.time() - t0, 1)}
    cache.write_text(json.dumps(res, indent=1))
    logger.info("%s: val loss %.3f, held-out reward %.3f (%.0f s)", name, loss, h["mean_reward"], res["eval_wall_s"])
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=30, help="distillation steps of 8 x 256 tokens (demo: 30)")
    ap.add_argument("--fresh-eval", action="store_true")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import torch

    from minitron_hf.alignment.data import load_rows, prompt_rows
    from minitron_hf.alignment.rounds import RoundsConfig, split_prompts
    from minitron_hf.loading import load_tokenizer, resolve_model

    t_all = time.time()
    RUNS.mkdir(parents=True, exist_ok=True)
    train_tokens = a.steps * BATCH * SEQ_LEN
    # the held-out measure of demo-instruct's rounds section (32 prompts, 48 new tokens, greedy)
    rcfg = RoundsConfig(prompts="builtin:constraints", reward="verifiable", heldout_prompts=32, max_new_tokens=48)
    _, held = split_prompts(prompt_rows(load_rows(rcfg.prompts)), rcfg)

    times = {}
    t0 = time.time()
    pruned, _ = prune_once()
    times["prune"] = round(time.time() - t0, 1)
    t0 = time.time()
    tok = load_tokenizer(resolve_model("smollm2-135m"))
    mix = build_mix(tok, train_tokens, held)
    times["build mix"] = round(time.time() - t0, 1)
    logger.info("mix: %s", {k: v for k, v in mix.items() if k != "path"})
    runs = {}
    for name, data in (("docs-only", "python-docs"), ("docs+chat", mix["path"])):
        t0 = time.time()
        s = distil(name, data, pruned, a.steps)
        times[f"distill {name}"] = round(time.time() - t0, 1)
        runs[name] = {"tokens": s["tokens"], "steps": s["steps"], "train_runtime_s": s["train_runtime_s"],
                      "kd_before": s["before"].get("before_kd_loss"), "kd_after": s["after"].get("eval_kd_loss")}
    models = {"teacher": ("smollm2-135m", 0), "pruned": (pruned, 0),
              "distilled, python-docs only (a)": (RUNS / "docs-only" / "final", runs["docs-only"]["tokens"]),
              "distilled, python-docs + chat (b)": (RUNS / "docs+chat" / "final", runs["docs+chat"]["tokens"])}
    evals = {}
    t0 = time.time()
    for i, (label, (path, _)) in enumerate(models.items()):
        evals[label] = evaluate(["teacher", "pruned", "docs-only", "docs-chat"][i], path, held, rcfg, a.fresh_eval)
    times["evaluate (4 models)"] = round(time.time() - t0, 1)
    total = round(time.time() - t_all, 1)

    record = {"steps": a.steps, "train_tokens": train_tokens, "mix": mix, "runs": runs, "evals": evals,
              "times_s": times, "total_s": total, "prompts": PROMPTS, "threads": torch.get_num_threads()}
    (RESULTS / "chat_mix.json").write_text(json.dumps(record, indent=1))

    L = [f"Pruned once (demo settings: hidden 576 -> 432, MLP 1536 -> 768, l2_mean, 64 x 256 calibration tokens), "
         f"then distilled twice with the demo's distill settings (forward KL, LR 1e-3 cosine to 1e-4, 3 warmup "
         f"steps, seed 0) for {a.steps} steps x {BATCH} x {SEQ_LEN} = {train_tokens:,} tokens each; only the data "
         f"differ. Mix (b): {MIX_CHAT:.0%} chat by tokens (measured: {mix['chat_share']:.1%} of the trained tokens, "
         f"{mix['trained_tokens']['chat']:,} chat + {mix['trained_tokens']['python-docs']:,} python-docs), "
         f"{mix['chat_conversations']} of the {mix['chat_rows_available']} `builtin:instructions` conversations "
         f"(prompt + reference rewrite) rendered with the teacher's chat template, plus python-docs train-split "
         f"documents cut into <= {CHUNK_CHARS}-character pieces.", "",
         f"Held-out reward: the measure of `make demo-instruct` (`alignment.rounds.heldout_reward`): greedy answers "
         f"(48 new tokens) to the {mix['heldout_prompts']} held-out `builtin:constraints` prompts, verifiable reward "
         f"(constraints + faithfulness). None of those prompts or their sentences is in the chat part of the mix; "
         f"{mix['heldout_sources_in_python_docs_train']} of their {mix['heldout_prompts']} source sentences occur "
         f"verbatim in python-docs train documents (pydoc topics), which both (a) and (b) train on. Validation loss: "
         f"python-docs validation split, 16 x {SEQ_LEN} tokens, the same for every model. Chat loss: next-token "
         f"loss over the {HELDOUT_CHATS} last `builtin:instructions` conversations (prompt + reference answer, in "
         f"the chat template), which the mix leaves out: how well a model predicts conversations.", "",
         "| model | val loss (python-docs) | chat loss (held out) | held-out reward | distillation tokens |",
         "|---|---|---|---|---|"]
    for label, (path, toks) in models.items():
        e = evals[label]
        L.append(f"| {label} | {e['val_loss']:.3f} | {e['chat_loss']:.3f} | {e['heldout_reward']:.3f} | {toks:,} |")
    L += ["", "KD loss (validation split of each run's own data) before -> after: " + "; ".join(
        f"{n}: {r['kd_before']:.3f} -> {r['kd_after']:.3f}" for n, r in runs.items()), "",
        "## Greedy answers (40 new tokens)", ""]
    for i, p in enumerate(PROMPTS):
        L += [f"**{p}**", "", "| model | answer |", "|---|---|"]
        for label in models:
            ans = evals[label]["answers"][i].replace("\n", " ").replace("|", "\\|")
            L.append(f"| {label} | {ans} |")
        L.append("")
    L += ["## Wall times", "", "| step | s |", "|---|---|"] + [f"| {k} | {v} |" for k, v in times.items()]
    L += [f"| total | {total} |", "", "(reused stages count their reuse time only; evaluation per model: "
          + ", ".join(f"{k} {v['eval_wall_s']} s" for k, v in evals.items()) + ")"]
    path = write_result("chat_mix", "Chat data in the distillation mix (issue 21): SmolLM2-135M width demo",
                        "\n".join(L))
    print(path)


if __name__ == "__main__":
    main()
