"""``minitron``: one command, a subcommand per stage. Each subcommand parses options and calls the
library; no logic lives here."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys

from .config import ConfigError, build_parser, parse_args


def _prune(ns):
    from .data import DataConfig
    from .pruning.prune import PruneConfig, run_prune

    data_cfg, cfg = parse_args([DataConfig, PruneConfig], namespace=ns, append_fields=("target",))
    rec = run_prune(data_cfg, cfg)
    p = rec["parameters"]
    print(f"wrote {cfg.output}: parameters {p['before']['total']:,} -> {p['after']['total']:,} "
          f"(non-embedding {p['before']['non_embedding']:,} -> {p['after']['non_embedding']:,}) "
          f"in {rec['wall_time_s']} s")


def _importance(ns):
    from .data import DataConfig
    from .pruning.prune import ImportanceConfig, run_importance

    data_cfg, cfg = parse_args([DataConfig, ImportanceConfig], namespace=ns)
    print(json.dumps(run_importance(data_cfg, cfg), indent=1))


def _distill(ns):
    from .data import DataConfig
    from .distill.run import DistillScriptConfig, run_distill
    from .distill.trainer import DistillationConfig

    data_cfg, script, args = parse_args([DataConfig, DistillScriptConfig, DistillationConfig], namespace=ns)
    s = run_distill(data_cfg, script, args)
    print(f"distilled {script.student} for {s['steps']} steps ({s['tokens']:,} tokens): student LM loss "
          f"{s['before']['before_student_lm_loss']:.3f} -> {s['after']['eval_student_lm_loss']:.3f} "
          f"(teacher {s['after']['eval_teacher_lm_loss']:.3f}); model in {s['final_model']}")


def _evaluate(ns):
    from .data import DataConfig
    from .models import count_parameters, resolve_model
    from .pruning.prune import validation_loss

    from transformers import AutoConfig

    data = DataConfig(data=ns.data)
    print(f"validation split of {ns.data!r}, {ns.samples} x {ns.seq_len} tokens")
    print(f"{'model':<40} {'params':>9} {'non-emb':>9} {'val loss':>9} {'ppl':>10}")
    for m in ns.models:
        n = count_parameters(AutoConfig.from_pretrained(resolve_model(m)))
        loss = validation_loss(m, data, samples=ns.samples, seq_len=ns.seq_len)
        print(f"{str(m):<40} {n['total'] / 1e6:>8.1f}M {n['non_embedding'] / 1e6:>8.1f}M {loss:>9.3f} "
              f"{min(math.exp(loss), 1e12):>10.1f}")


def _generate(ns):
    from .models import load_model, load_tokenizer

    model, tok = load_model(ns.model), load_tokenizer(ns.model)
    if tok.chat_template and not ns.raw:
        ids = tok.apply_chat_template([{"role": "user", "content": ns.prompt}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
    else:
        ids = tok(ns.prompt, return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=ns.max_new_tokens, do_sample=False)
    print(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))


def make_parser() -> argparse.ArgumentParser:
    from .data import DataConfig
    from .pruning.prune import ImportanceConfig, PruneConfig

    parser = argparse.ArgumentParser(prog="minitron", description="Minitron compression on Hugging Face checkpoints")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prune", help="importance + width/depth pruning to a vanilla HF checkpoint")
    build_parser([DataConfig, PruneConfig], p, append_fields=("target",)).set_defaults(func=_prune)
    p = sub.add_parser("importance", help="importance scores and plots only (reusable with prune --scores)")
    build_parser([DataConfig, ImportanceConfig], p).set_defaults(func=_importance)
    from .distill.run import DistillScriptConfig
    from .distill.trainer import DistillationConfig

    p = sub.add_parser("distill", help="logit distillation of a pruned student from its teacher (Trainer)")
    build_parser([DataConfig, DistillScriptConfig, DistillationConfig], p).set_defaults(func=_distill)
    p = sub.add_parser("evaluate", help="validation LM loss and perplexity of checkpoints (same tokens for all)")
    p.add_argument("models", nargs="+")
    p.add_argument("--data", default="python-docs")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=256)
    p.set_defaults(func=_evaluate)
    p = sub.add_parser("generate", help="greedy answer from a checkpoint, loaded with vanilla transformers")
    p.add_argument("model")
    p.add_argument("--prompt", default="What is the capital of France?")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--raw", action="store_true", help="no chat template")
    p.set_defaults(func=_generate)
    return parser


def main(argv=None) -> int:
    parser = make_parser()
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if ns.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        ns.func(ns)
    except (ConfigError, ValueError) as e:
        # our own errors are ValueError subclasses with a message that names the field
        print(f"minitron {ns.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
