"""``minitron``: one command, a subcommand per stage. Each subcommand parses options and calls the
library; no logic lives here."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback

from .config import build_parser, parse_args
from .errors import EXIT_BUG, EXIT_INTERRUPTED, EXIT_PREEMPTED, EXIT_USER_ERROR, MinitronError

# old command names: each is refused with the new one (exit 2, one line), before any work
RENAMED_COMMANDS = {"evaluate": "minitron eval loss"}


def _prune(ns):
    from .data import DataConfig
    from .pruning.config import PruneConfig
    from .pruning.prune import run_prune

    data_cfg, cfg = parse_args([DataConfig, PruneConfig], namespace=ns, append_fields=("target",))
    rec = run_prune(data_cfg, cfg)
    p = rec["parameters"]
    print(f"wrote {cfg.output}: parameters {p['before']['total']:,} -> {p['after']['total']:,} "
          f"(non-embedding {p['before']['non_embedding']:,} -> {p['after']['non_embedding']:,}) "
          f"in {rec['wall_time_s']} s")


def _search(ns):
    from .data import DataConfig
    from .pruning.search import SearchConfig, results_table, run_search

    data_cfg, cfg = parse_args([DataConfig, SearchConfig], namespace=ns)
    rec = run_search(data_cfg, cfg)
    print(results_table(rec))
    print(f"wrote {cfg.output}/search.json, search.md and best.yaml in {rec['wall_time_s']} s")


def _eval(ns):
    from .eval import check_results_folder, suite_class

    suite = suite_class(ns.eval_command)
    (cfg,) = parse_args([suite.config_class], namespace=ns)  # the config validates its values here
    check_results_folder(getattr(cfg, "output", None), ns.models, cfg)  # before any model loads
    print(suite.table(suite(cfg).run(ns.models, ns.names)))


def _align(ns):
    if ns.align_command == "sft":
        from .alignment.sft import SFTArgs, SFTStageConfig, run_sft

        cfg, args = parse_args([SFTStageConfig, SFTArgs], namespace=ns)
        rec = run_sft(cfg, args)
        print(f"SFT: {rec['examples']} examples, loss {rec['train_loss']:.3f}, model in {rec['final']}")
    elif ns.align_command == "rpo":
        from .alignment.rpo import RPOConfig, RPOScriptConfig, run_rpo

        cfg, args = parse_args([RPOScriptConfig, RPOConfig], namespace=ns)
        rec = run_rpo(cfg, args)
        print(f"RPO: {rec['pairs']} pairs, loss {rec['train_loss']:.3f}, model in {rec['final']}")
    else:
        from .alignment.rounds import RoundsConfig, rounds_table, run_rounds
        from .alignment.rpo import RPOConfig

        cfg, args = parse_args([RoundsConfig, RPOConfig], namespace=ns)
        print(rounds_table(run_rounds(cfg, args)))


def _importance(ns):
    from .data import DataConfig
    from .pruning.scoring import ImportanceConfig, run_importance

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


def _correct(ns):
    from .data import DataConfig
    from .distill.correct import CorrectionConfig, run_correction
    from .distill.trainer import TrainArgs

    data_cfg, cfg, args = parse_args([DataConfig, CorrectionConfig, TrainArgs], namespace=ns)
    s = run_correction(data_cfg, cfg, args)
    print(f"corrected {cfg.model} ({cfg.mode}, {s['steps']} steps): validation LM loss {s['before_lm_loss']:.3f} -> "
          f"{s['after_lm_loss']:.3f}; model in {args.output_dir}/final")


def _data(ns):
    from .data import DataConfig
    from .data.prepare import PrepareConfig, run_prepare

    data_cfg, cfg = parse_args([DataConfig, PrepareConfig], namespace=ns)
    rec = run_prepare(data_cfg, cfg)
    for r in rec["sources"]:
        m = r["manifest"]
        counts = ", ".join(f"{s} {m['splits'][s]['tokens']:,} tokens / {m['splits'][s]['documents']:,} docs"
                           for s in m["splits"])
        print(f"{r['data']} -> {r['folder']}: {counts}; {m['documents']['duplicates_dropped']:,} duplicates dropped")
    print(f"use it with: --data {json.dumps(rec['config']) if isinstance(rec['config'], list) else rec['config']}")


def _generate(ns):
    from .generation import generate_answer
    from .loading import load_model, load_tokenizer

    model, tok = load_model(ns.model), load_tokenizer(ns.model)
    if ns.raw:
        tok.chat_template = None
    print(generate_answer(model, tok, ns.prompt, ns.max_new_tokens))


def _run(ns):
    from .pipeline import load_run, read_done, run_pipeline

    run = load_run(ns.config, overrides=ns.set)
    again = " ".join(["minitron run", ns.config, *[f"--set {s}" for s in ns.set]])
    status = run_pipeline(run, from_stage=ns.from_stage, only=ns.only, overwrite=ns.overwrite, command=again)
    for stage, st in status.items():
        print(f"{stage:<11} {st}")
    ev = (read_done(run, "evaluate") or {}).get("result", {})
    for name, r in ev.get("models", {}).items():
        print(f"{name:<20} val loss {r['val_loss']:.3f}  ppl {r['perplexity']:.1f}  "
              f"params {r['params_total'] / 1e6:.1f}M")
    if ev.get("gap_recovered") is not None:
        print(f"gap recovered by distillation: {100 * ev['gap_recovered']:.1f}%")
    from .pipeline import OUT_OF_DOMAIN_NOTE, task_accuracy_table

    for line in task_accuracy_table(ev):
        print(line)
    for i, prompt in enumerate(ev.get("domain_prompts") or []):
        print(f"--- in the distillation domain, prompt {i + 1} (greedy continuation):\n{prompt}")
        for name, r in ev.get("models", {}).items():
            ans = (r.get("domain_answers") or [None] * (i + 1))[i]
            if ans is not None:
                print(f"  [{name}] " + " ".join(ans.strip().split())[:160])
    answers = [(n, r["answer"]) for n, r in ev.get("models", {}).items() if r.get("answer") is not None]
    if answers:
        print(f"--- a chat question: {ev['prompt']!r}" if "distilled" not in ev.get("models", {}) else
              f"--- out of the domain, a chat question: {ev['prompt']!r}")
        for name, a in answers:
            print(f"  [{name}] " + " ".join(a.strip().split())[:160])
        if "distilled" in ev.get("models", {}):
            print(f"  ({OUT_OF_DOMAIN_NOTE})")
    print(f"report: {run.out / 'report.md'}")


def _publish(ns):
    from .export.hub import publish

    from .outputs import note_input, read_json

    evaluation = read_json(ns.evaluation, "evaluation") if ns.evaluation else None
    note_input(ns.evaluation)  # an input like the checkpoint: --dry-run DIR may not be, contain or lie inside it
    res = publish(ns.model_dir, ns.repo_id, private=ns.private, dry_run=ns.dry_run, base_model=ns.base_model,
                  evaluation=evaluation, license=ns.license, base_model_relation=ns.base_model_relation,
                  commit_message=ns.commit_message, overwrite=ns.overwrite)
    if res["dry_run"]:
        print(f"dry run: {res['folder']} holds what would be uploaded to {res['repo_id']} "
              f"({len(res['files'])} files: {', '.join(res['files'])})")
    else:
        print(f"published {ns.model_dir} to {res['url']} ({len(res['files'])} files)")


def _export_fp8(ns):
    from .data import DataConfig
    from .export.fp8 import FP8Config, export_fp8

    data_cfg, cfg = parse_args([DataConfig, FP8Config], namespace=ns)
    rec = export_fp8(ns.model_dir, data_cfg, cfg)
    print(f"wrote {cfg.output}: ModelOpt FP8, {rec['quantized_linears']} linear layers quantized, calibrated on "
          f"{rec['calib_samples']} x {rec['seq_len']} tokens in {rec['wall_time_s']} s")


def _export_trtllm(ns):
    from .export.trtllm import TRTLLMConfig, export_trtllm

    (cfg,) = parse_args([TRTLLMConfig], namespace=ns)
    res = export_trtllm(ns.model_dir, cfg)
    print(f"wrote {cfg.output}: {len(res['datasets'])} datasets, batch size {res['batch_size']}, KV cache "
          f"{res['kv_cache_dtype']}; commands in {res['script']}")
    print(res["message"])


def _serve(ns):
    from .export.vllm import ServeConfig, serve

    (cfg,) = parse_args([ServeConfig], namespace=ns)
    sys.exit(serve(ns.model_dir, cfg))


def _bench_throughput(ns):
    from .export.throughput import ThroughputConfig, results_table, run_throughput

    (cfg,) = parse_args([ThroughputConfig], namespace=ns)
    res = run_throughput(ns.models, cfg)
    print(f"{cfg.backend}: {cfg.num_requests} requests per input/output-length pair, batch {cfg.batch_size}")
    print(results_table(res["rows"]))


def _add_export_parsers(sub) -> None:
    """publish / export fp8 / export trtllm / serve (minitron_hf/export/)."""
    from .data import DataConfig
    from .export.fp8 import FP8Config
    from .export.hub import RELATIONS
    from .export.trtllm import TRTLLMConfig
    from .export.vllm import ServeConfig

    p = sub.add_parser("publish", help="upload a checkpoint with a generated model card to the Hugging Face Hub")
    p.add_argument("model_dir", help="checkpoint directory (pruned, distilled or FP8)")
    p.add_argument("--repo-id", required=True, help="Hub repository ORG/NAME (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--dry-run", metavar="DIR", help="write the exact folder that would be uploaded to DIR (new or "
                   "empty; never the checkpoint or a folder around it); upload nothing")
    p.add_argument("--overwrite", action="store_true", help="with --dry-run: replace a DIR that is not empty")
    p.add_argument("--base-model", help="Hub id of the original model (default: followed from pruning.json/distill.json)")
    p.add_argument("--license", help="license id for the card (default: the base model's)")
    p.add_argument("--base-model-relation", choices=RELATIONS, help="default: finetune (pruned/distilled), "
                   "quantized (FP8 of an unpruned model)")
    p.add_argument("--evaluation", metavar="JSON", help="{model: {metric: value}} file (default: DIR/evaluation.json)")
    p.add_argument("--commit-message")
    p.set_defaults(func=_publish)

    p = sub.add_parser("export", help="FP8 (ModelOpt) checkpoints and TensorRT-LLM benchmark commands")
    esub = p.add_subparsers(dest="export_command", required=True)
    e = esub.add_parser("fp8", help="ModelOpt FP8 post-training quantization (TensorRT-LLM >= 1.2 and vLLM load it)")
    e.add_argument("model_dir", help="checkpoint directory to quantize")
    build_parser([DataConfig, FP8Config], e).set_defaults(func=_export_fp8)
    e = esub.add_parser("trtllm", help="trtllm-bench datasets and commands (run when TensorRT-LLM is installed)")
    e.add_argument("model_dir", help="checkpoint directory (BF16 or ModelOpt FP8)")
    build_parser([TRTLLMConfig], e).set_defaults(func=_export_trtllm)

    p = sub.add_parser("serve", help="vLLM's OpenAI-compatible server for a checkpoint")
    p.add_argument("model_dir", help="checkpoint directory")
    build_parser([ServeConfig], p).set_defaults(func=_serve)

    from .export.throughput import ThroughputConfig

    p = sub.add_parser("bench", help="benchmarks")
    bsub = p.add_subparsers(dest="bench_command", required=True)
    b = bsub.add_parser("throughput", help="generation throughput of checkpoints on the same synthetic requests "
                        "(the first is the speedup reference)")
    b.add_argument("models", nargs="+", help="checkpoints (or the alias smollm2-135m)")
    build_parser([ThroughputConfig], b).set_defaults(func=_bench_throughput)


def _at_least(low: int):
    """argparse type: an integer >= ``low`` (argparse names the option in its error)."""
    def parse(v: str) -> int:
        try:
            n = int(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {v!r}") from None
        if n < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {n}")
        return n

    return parse


def make_parser() -> argparse.ArgumentParser:
    from .data import DataConfig
    from .pruning.config import PruneConfig
    from .pruning.scoring import ImportanceConfig

    parser = argparse.ArgumentParser(prog="minitron", description="Minitron compression on Hugging Face checkpoints")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prune", help="importance + width/depth pruning to a vanilla HF checkpoint")
    build_parser([DataConfig, PruneConfig], p, append_fields=("target",)).set_defaults(func=_prune)
    from .pruning.search import SearchConfig

    p = sub.add_parser("search", help="architecture search in a parameter budget: enumerate, prune and score "
                       "candidates (optionally after a short distillation)")
    build_parser([DataConfig, SearchConfig], p).set_defaults(func=_search)
    p = sub.add_parser("importance", help="importance scores and plots only (reusable with prune --scores)")
    build_parser([DataConfig, ImportanceConfig], p).set_defaults(func=_importance)
    from .distill.run import DistillScriptConfig
    from .distill.trainer import DistillationConfig

    p = sub.add_parser("distill", help="logit distillation of a pruned student from its teacher (Trainer)")
    build_parser([DataConfig, DistillScriptConfig, DistillationConfig], p).set_defaults(func=_distill)
    from .distill.correct import CorrectionConfig
    from .distill.trainer import TrainArgs

    p = sub.add_parser("correct-teacher", help="teacher correction: LM fine-tune on the distillation data")
    build_parser([DataConfig, CorrectionConfig, TrainArgs], p).set_defaults(func=_correct)
    from .eval import SUITES, suite_class

    p = sub.add_parser("eval", help="benchmarks of checkpoints, teacher vs students: " + ", ".join(SUITES))
    esub = p.add_subparsers(dest="eval_command", required=True)
    for name in SUITES:
        suite = suite_class(name)
        e = esub.add_parser(name, help=suite.help)
        e.add_argument("models", nargs="+", help="checkpoints (the first is the teacher column)")
        e.add_argument("--names", nargs="+", help="labels of the models in the tables")
        build_parser([suite.config_class], e).set_defaults(func=_eval)
    p = sub.add_parser("align", help="instruct variants (paper sec. 3.5): SFT stages, RPO, rounds of on-policy RPO")
    asub = p.add_subparsers(dest="align_command", required=True)
    from .alignment.rounds import RoundsConfig
    from .alignment.rpo import RPOConfig, RPOScriptConfig
    from .alignment.sft import SFTArgs, SFTStageConfig

    for name, classes, help_ in (("sft", [SFTStageConfig, SFTArgs], "supervised fine-tuning on chat data (TRL SFTTrainer)"),
                                 ("rpo", [RPOScriptConfig, RPOConfig], "Reward-aware Preference Optimization on "
                                  "preference rows with rewards"),
                                 ("rounds", [RoundsConfig, RPOConfig], "rounds of generate -> reward -> best/worst "
                                  "pairs -> RPO, with held-out reward per round")):
        build_parser(classes, asub.add_parser(name, help=help_)).set_defaults(func=_align)
    p = sub.add_parser("data", help="tokenize a source (or a blend) once into token shards every stage reads")
    dsub = p.add_subparsers(dest="data_command", required=True)
    from .data.prepare import PrepareConfig

    build_parser([DataConfig, PrepareConfig], dsub.add_parser(
        "prepare", help="read the source once, split, dedup, tokenize in --num-proc processes, write shards + "
        "manifest (resumable)")).set_defaults(func=_data)
    for old, new in RENAMED_COMMANDS.items():  # refused in main(), whatever follows the old name
        p = sub.add_parser(old, help=f"renamed: use `{new}`", add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p = sub.add_parser("generate", help="greedy answer from a checkpoint, loaded with vanilla transformers")
    p.add_argument("model")
    p.add_argument("--prompt", default="What is the capital of France?")
    p.add_argument("--max-new-tokens", type=_at_least(1), default=48)
    p.add_argument("--raw", action="store_true", help="no chat template")
    p.set_defaults(func=_generate)
    p = sub.add_parser("run", help="the whole recipe from one YAML: correct -> importance -> prune -> distill -> "
                       "evaluate -> export, resumable, with report.md")
    p.add_argument("config", help="run config YAML (e.g. recipes/configs/smollm2-135m/minitron-width.yaml)")
    p.add_argument("--from", dest="from_stage", metavar="STAGE", help="re-run this stage and every later one")
    p.add_argument("--only", metavar="STAGE", help="run just this stage (its inputs must exist)")
    p.add_argument("--set", action="append", default=[], metavar="[SECTION.]KEY=VALUE",
                   help="override a config key, e.g. --set distill.max_steps=20 (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="run in an output_dir that is not empty and not a run "
                   "of this teacher and data (files the run does not write are kept)")
    p.set_defaults(func=_run)
    _add_export_parsers(sub)
    return parser


def _close_progress_bars() -> None:
    """Close tqdm bars an exception left open (the Trainer's), so that none is redrawn after the error line."""
    try:
        from tqdm import tqdm
    except ImportError:
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        try:
            bar.close()
        except Exception:  # a half-built bar: nothing to redraw
            pass


def _unknown_arguments(parser, ns, extra) -> None:
    """Exit 2 naming the subcommand, the unknown arguments and the nearest valid option (argparse's own message
    names neither)."""
    import difflib

    sub = parser
    for name in ("command", "eval_command", "align_command", "export_command", "bench_command"):
        key = getattr(ns, name, None)
        actions = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
        if key is None or not actions or key not in actions[0].choices:
            break
        sub = actions[0].choices[key]
    options = [o for a in sub._actions for o in a.option_strings if o.startswith("--")]
    flag = next((x.split("=")[0] for x in extra if x.startswith("-")), None)
    near = difflib.get_close_matches(flag, options, n=1) if flag else []
    sub.error(f"unrecognized arguments: {' '.join(extra)}" + (f"; did you mean {near[0]}?" if near else ""))


def main(argv=None) -> int:
    """Run one subcommand. Exit codes: 0 done; 2 an error the user can fix (one line naming the field or file:
    :class:`~minitron_hf.errors.MinitronError`); 3 anything else, a bug (one line; the traceback with -v);
    130 interrupted; 143 preempted: training stopped on SIGTERM after saving a checkpoint
    (``--enable-jit-checkpoint true``), nothing final written, resume with ``--resume-from-checkpoint true``
    (:class:`~minitron_hf.resume.TrainingPreempted`)."""
    parser = make_parser()
    ns, extra = parser.parse_known_args(argv)
    if ns.command in RENAMED_COMMANDS:  # before any work, and before its options are looked at
        print(f"minitron {ns.command}: error: renamed: use `{RENAMED_COMMANDS[ns.command]}` (same options)",
              file=sys.stderr)
        return EXIT_USER_ERROR
    if extra:
        _unknown_arguments(parser, ns, extra)
    logging.basicConfig(level=logging.DEBUG if ns.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from .outputs import command_scope

    try:
        with command_scope():  # outputs checked during the command stay locked until it ends (minitron_hf/locks.py)
            ns.func(ns)
    except MinitronError as e:
        if ns.verbose:
            traceback.print_exc()
        _close_progress_bars()
        from .resume import TrainingPreempted

        if isinstance(e, TrainingPreempted):  # not finished, not an error: a scheduler requeues on 143
            print(f"minitron {ns.command}: preempted: {' '.join(str(e).split())}", file=sys.stderr)
            return EXIT_PREEMPTED
        print(f"minitron {ns.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"minitron {ns.command}: interrupted; finished outputs are kept, a rerun resumes or starts over",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # not an error we meant for the user: a bug (ours or a library's)
        if ns.verbose:
            traceback.print_exc()
        _close_progress_bars()
        first = (str(e).strip().splitlines() or [""])[0][:300]
        print(f"minitron {ns.command}: internal error: {type(e).__name__}: {first} (this is a bug; run with -v "
              f"for the traceback and report it)", file=sys.stderr)
        return EXIT_BUG
    return 0


if __name__ == "__main__":
    sys.exit(main())
