"""The reliability probe's cases of the classes of issue 35, a table grouped by class (see ``reliability_cases.py``
for the format): each class is several cases across the commands it applies to."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from reliability_cases import (
    CACHE, CORRECT, DISK, DISTILL, FP8, HOSTILE_YAML, IMPORTANCE, INSIDE, LINK, LOCK, MBPP, MISMATCH, PREPARE, PRUNE,
    SFT, SIGNAL, STAGE, TYPE, Case, opt)
from reliability_setups import (
    chain, check_documents, check_exit, check_holder_named, check_link_kept, check_names, check_preempted,
    check_pruned_from_local, check_rerun, check_stale_taken_over, checks, copy_file, copy_fixture, damage_prepared,
    doc_text, docs_jsonl, files, link, lock_holder, model, other_shape_checkpoint, padded, run_scores, run_yaml, set_,
    tmpfs, write_docs, write_parquet, yaml_bomb)


def prepare_argv(data, out="out"):
    return ["data", "prepare", "--data", data, "--output", out, "--tokenizer", "{T}"]


def blend(*sources):
    """A blend of ``sources`` as --data takes it (JSON)."""
    return json.dumps([{"data": x, "weight": 1} for x in sources])


CHAT = "".join(json.dumps({"prompt": f"Say {w}.", "completion": f"{w}."}) + "\n" for w in ("yes", "maybe", "hi", "ok"))
CHATML_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
                   "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
MBPP_ROWS = "".join(json.dumps({"task_id": i, "text": f"Write a function add{i}(a, b) that returns a + b + {i}.",
                                "code": f"def add{i}(a, b):\n    return a + b + {i}",
                                "test_list": [f"assert add{i}(1, 2) == {3 + i}"], "test_setup_code": "",
                                "challenge_test_list": []}) + "\n" for i in (1, 2, 3, 11))
PRUNE_YAML = "model: {T}\noutput: out\ncalib_samples: 4\nseq_len: 32\nbatch_size: 2\nval_samples: 2\n"

# ---------------- an input lying inside the output folder
data_inside = copy_file("SMALL", "out/data.jsonl")
data_inside_kept = ("out/data.jsonl", "out/notes.txt")
INSIDE_CASES = [
    Case("inside-prune-data", "prune", INSIDE, PRUNE + ["--data", "out/data.jsonl", "--overwrite"], setup=data_inside,
        sentinels=data_inside_kept, check=check_names("data.jsonl"),
        why="--overwrite replaces out, which holds the data it reads"),
    Case("inside-importance-data", "importance", INSIDE, IMPORTANCE + ["--data", "out/data.jsonl", "--overwrite"],
        setup=data_inside, sentinels=data_inside_kept, check=check_names("data.jsonl"),
        why="--overwrite replaces out, which holds the data it reads"),
    Case("inside-fp8-data", "export fp8", INSIDE, FP8 + ["--data", "out/data.jsonl", "--overwrite"], setup=data_inside,
        sentinels=data_inside_kept, check=check_names("data.jsonl"), why="the calibration data lies inside the output"),
    Case("inside-prune-scores", "prune", INSIDE, PRUNE + ["--scores", "out/scores", "--overwrite"],
        setup=run_scores("out/scores"), sentinels=("out/scores", "out/notes.txt"), check=check_names("scores"),
        why="the importance scores folder it reads lies inside the output"),
    Case("inside-prune-config", "prune", INSIDE, ["prune", "--config", "out/p.yaml"],
        setup=files(**{"out/p.yaml": PRUNE_YAML + "overwrite: true\ntarget: {hidden_size: 32}\n"}),
        sentinels=("out/p.yaml", "out/notes.txt"), check=check_names("p.yaml"),
        why="the YAML config that names the output lies inside it (overwrite: true)"),
    Case("inside-prune-blend-source", "prune", INSIDE,
        PRUNE + ["--data", blend("out/a.jsonl", "b.jsonl"), "--overwrite"],
        setup=chain(copy_file("SMALL", "out/a.jsonl"), copy_file("SMALL", "b.jsonl")),
        sentinels=("out/a.jsonl", "out/notes.txt"), check=check_names("a.jsonl"),
        why="one source of a blend lies inside the output"),
    Case("inside-data-prepare-source", "data prepare", INSIDE, prepare_argv("out/data.jsonl") + ["--overwrite"],
        setup=data_inside, sentinels=data_inside_kept, check=check_names("data.jsonl"),
        why="the source file lies inside the output folder"),
    Case("inside-data-prepare-blend-source", "data prepare", INSIDE,
        prepare_argv(blend("out/a.jsonl", "b.jsonl")) + ["--overwrite"],
        setup=chain(copy_file("SMALL", "out/a.jsonl"), files(**{"b.jsonl": docs_jsonl(20, "b")})),
        sentinels=("out/a.jsonl", "out/notes.txt"), check=check_names("a.jsonl"),
        why="one source of a blend lies inside the output folder"),
    Case("inside-data-prepare-beside-ok", "data prepare", INSIDE,
        prepare_argv("data.jsonl", "prepared") + ["--overwrite"], expect="succeed",
        setup=copy_file("SMALL", "data.jsonl"), sentinels=("data.jsonl",),
        why="control: the source next to (not inside) the output"),
    Case("inside-distill-student-checkpoint", "distill", INSIDE,
        opt(opt(DISTILL, "--student", "out/checkpoint-1"), "--output-dir", "out") + ["--overwrite"],
        setup=copy_fixture("DIST", "out"), sentinels=("out/checkpoint-1",), check=check_names("checkpoint-1"),
        why="the student is a checkpoint of the output_dir the run writes its own checkpoint-1 into"),
    Case("inside-distill-data-in-final", "distill", INSIDE, DISTILL + ["--data", "out/final/data.jsonl", "--overwrite"],
        setup=chain(copy_fixture("DIST", "out"), copy_file("SMALL", "out/final/data.jsonl")),
        sentinels=("out/final/data.jsonl",), check=check_names("data.jsonl"),
        why="--overwrite replaces out/final, which holds the data"),
    Case("inside-distill-data-beside", "distill", INSIDE, DISTILL + ["--data", "out/data.jsonl", "--overwrite"],
        expect="either", setup=data_inside, sentinels=data_inside_kept,
        why="a trainer adds checkpoint-N/ and final/ to output_dir and replaces only those: data beside them may be "
            "refused or kept, never touched"),
    Case("inside-correct-data-in-final", "correct-teacher", INSIDE,
        CORRECT + ["--data", "out/final/data.jsonl", "--overwrite"],
        setup=copy_file("SMALL", "out/final/data.jsonl"), sentinels=("out/final/data.jsonl", "out/notes.txt"),
        check=check_names("data.jsonl"), why="--overwrite replaces out/final, which holds the data"),
    Case("inside-sft-data-in-final", "align sft", INSIDE, opt(SFT, "--data", "out/final/chat.jsonl") + ["--overwrite"],
        setup=files(**{"out/final/chat.jsonl": CHAT}), sentinels=("out/final/chat.jsonl",),
        check=check_names("chat.jsonl"), why="--overwrite replaces out/final, which holds the chat data"),
    Case("inside-sft-chat-template-in-final", "align sft", INSIDE,
        SFT + ["--chat-template", "out/final/t.jinja", "--overwrite"],
        setup=files(**{"out/final/t.jinja": CHATML_TEMPLATE}), sentinels=("out/final/t.jinja",),
        check=check_names("t.jinja"), why="--overwrite replaces out/final, which holds the chat template file"),
    Case("inside-mbpp-problems-file", "eval mbpp", INSIDE,
        MBPP + ["--data-files", "out/samples.jsonl", "--output", "out"],
        setup=files(**{"out/samples.jsonl": MBPP_ROWS}), sentinels=("out/samples.jsonl",),
        check=check_names("samples.jsonl"), why="the problems file is named like the completions file the results "
                                                "folder gets (samples.jsonl)"),
]

# ---------------- `minitron run --overwrite` and stage folders that hold the user's files
user_model_in_prune = chain(run_yaml(), model("out/prune"), files(**{"out/prune/README.md": "my model\n"}))
STAGE_CASES = [
    Case("stage-prune-user-model", "run", STAGE, ["run", "run.yaml", "--overwrite"], setup=user_model_in_prune,
        sentinels=("out/prune",), check=check_names("out/prune"), timeout=300,
        why="out/prune is the user's model (config.json, model.safetensors, tokenizer.json, README.md), no run "
            "records"),
    Case("stage-prune-user-model-no-overwrite", "run", STAGE, ["run", "run.yaml"], setup=user_model_in_prune,
        sentinels=("out/prune",), timeout=300, why="the same without --overwrite (refused as not a run, or naming "
                                                   "out/prune)"),
    Case("stage-data-user-files", "run", STAGE, ["run", "run.yaml", "--overwrite"],
        setup=chain(run_yaml(), files(**{"out/data/config.json": '{"mine": true}\n',
                                         "out/data/keep.jsonl": docs_jsonl(5, "keep")})),
        sentinels=("out/data",), check=check_names("out/data"), timeout=300,
        why="out/data holds the user's config.json and keep.jsonl, no run records"),
    Case("stage-importance-user-scores", "run", STAGE, ["run", "run.yaml", "--overwrite"],
        setup=chain(run_yaml(), run_scores("out/importance/scores"),
                    files(**{"out/importance/config.json": '{"mine": true}\n'})),
        sentinels=("out/importance",), check=check_names("out/importance"), timeout=300,
        why="out/importance holds the user's scores and config.json, no run records"),
]

# ---------------- two commands at once: a live process holds the output's lock
LOCK_CASES = [
    Case("locked-prune", "prune", LOCK, PRUNE, setup=lock_holder("out"), check=check_holder_named,
        why="another process holds the lock of out"),
    Case("locked-prune-inside", "prune", LOCK, opt(PRUNE, "--output", "runs/a"), setup=lock_holder("runs"),
        check=check_holder_named, why="another process holds the lock of runs, around the output"),
    Case("locked-data-prepare", "data prepare", LOCK, prepare_argv("{SMALL}"), setup=lock_holder("out"),
        check=check_holder_named, why="another process holds the lock of out"),
    Case("locked-distill", "distill", LOCK, DISTILL, setup=lock_holder("out"), check=check_holder_named,
        why="another process holds the lock of out"),
    Case("locked-run", "run", LOCK, ["run", "run.yaml"], setup=chain(run_yaml(), lock_holder("out")),
        check=check_holder_named, timeout=300, why="another process holds the lock of the run's output_dir"),
    Case("locked-stale-data-prepare", "data prepare", LOCK, prepare_argv("{SMALL}"), expect="succeed",
        setup=lock_holder("out", stale=True), check=check_stale_taken_over,
        why="control: the holder was SIGKILLed, its lock file stays: taken over, with a warning naming its PID"),
]

# ---------------- outputs that are links or odd names
out_links_to_user = chain(files(**{"user/keep.txt": "mine\n"}), link("out", "user"))
names_length = check_names(("bytes", "long"))
LINK_CASES = [
    Case("link-dangling-prune", "prune", LINK, PRUNE, setup=link("out", "nowhere"),
        check=check_link_kept("out", "nowhere"), why="out is a link to a folder that does not exist"),
    Case("link-dangling-data-prepare", "data prepare", LINK, prepare_argv("{SMALL}"), setup=link("out", "nowhere"),
        check=check_link_kept("out", "nowhere"), why="out is a link to a folder that does not exist"),
    Case("link-to-user-folder-prune-overwrite", "prune", LINK, PRUNE + ["--overwrite"], setup=out_links_to_user,
        sentinels=("user/keep.txt",), check=check_link_kept("out", "user"),
        why="out links to the user's folder: replacing out would replace the link or empty the folder"),
    Case("link-to-user-folder-fp8-overwrite", "export fp8", LINK, FP8 + ["--overwrite"], setup=out_links_to_user,
        sentinels=("user/keep.txt",), check=check_link_kept("out", "user"),
        why="out links to the user's folder: replacing out would replace the link or empty the folder"),
    Case("link-to-user-folder-distill-overwrite", "distill", LINK, DISTILL + ["--overwrite"], expect="either",
        setup=out_links_to_user, sentinels=("user/keep.txt",), check=check_link_kept("out", "user"),
        why="a trainer adds to output_dir: following the link is fine; replacing the link or the user's files, or "
            "leaving .old-*/.tmp-* folders, is not"),
    Case("name-250-chars-prune", "prune", LINK, opt(PRUNE, "--output", "o" * 250), check=names_length,
        why="255 bytes are allowed, and the command writes longer-named temporary siblings"),
    Case("name-250-chars-data-prepare", "data prepare", LINK, prepare_argv("{SMALL}", "o" * 250), check=names_length,
        why="255 bytes are allowed, and the command writes longer-named temporary siblings"),
    Case("name-newline-prune", "prune", LINK, opt(PRUNE, "--output", "out\nx"), expect="either",
        why="a legal name with a newline: refuse cleanly, or write exactly that folder"),
    Case("name-under-file-prune", "prune", LINK, opt(PRUNE, "--output", "notes.txt/out"), sentinels=("notes.txt",),
        check=check_names("notes.txt"), why="a path component is a file"),
    Case("name-under-file-distill", "distill", LINK, opt(DISTILL, "--output-dir", "notes.txt/out"),
        sentinels=("notes.txt",), check=check_names("notes.txt"), why="a path component is a file"),
]

# ---------------- MINITRON_CACHE and the embedded alias
IMPORTANCE_LOCAL = IMPORTANCE + ["--data", "small.jsonl"]
small_here = copy_file("SMALL", "small.jsonl")
cache_is_file = chain(small_here, files(cachefile="not a folder\n"))
names_cache = check_names("MINITRON_CACHE")
ON_THE_FLY = "the local data is prepared on the fly into $MINITRON_CACHE/data"
CACHE_CASES = [
    Case("cache-is-file-importance", "importance", CACHE, IMPORTANCE_LOCAL, setup=cache_is_file,
        sentinels=("cachefile",), env={"MINITRON_CACHE": "{D}/cachefile"}, check=names_cache,
        why=ON_THE_FLY + "; it is a file"),
    Case("cache-under-file-importance", "importance", CACHE, IMPORTANCE_LOCAL, setup=cache_is_file,
        sentinels=("cachefile",), env={"MINITRON_CACHE": "{D}/cachefile/sub"}, check=names_cache,
        why=ON_THE_FLY + "; it lies under a file"),
    Case("cache-empty-importance", "importance", CACHE, IMPORTANCE_LOCAL, setup=small_here,
        env={"MINITRON_CACHE": ""}, check=names_cache,
        why=ON_THE_FLY + "; the empty string used to write ./data into the current folder"),
    Case("cache-readonly-importance", "importance", CACHE, IMPORTANCE_LOCAL, setup=small_here,
        env={"MINITRON_CACHE": "/proc/minitron-cache"}, check=names_cache,
        why=ON_THE_FLY + "; /proc is read-only (we run as root: chmod would not stop a write)"),
    Case("cache-is-file-prune-alias", "prune", CACHE, opt(PRUNE, "--model", "smollm2-135m"),
        setup=files(cachefile="x\n"), sentinels=("cachefile",), env={"MINITRON_CACHE": "{D}/cachefile"},
        check=names_cache, why="the embedded model is converted into $MINITRON_CACHE; it is a file"),
    Case("cache-empty-prune-alias", "prune", CACHE, opt(PRUNE, "--model", "smollm2-135m"), env={"MINITRON_CACHE": ""},
        check=names_cache, why="the embedded model is converted into $MINITRON_CACHE; it is empty"),
    Case("cache-readonly-data-prepare-alias-tokenizer", "data prepare", CACHE,
        ["data", "prepare", "--data", "small.jsonl", "--output", "out"], setup=small_here,
        env={"MINITRON_CACHE": "/proc/minitron-cache"}, check=names_cache,
        why="the default tokenizer is the embedded model's, converted into the (read-only) cache"),
    Case("cache-alias-local-folder-prune", "prune", CACHE, opt(PRUNE, "--model", "smollm2-135m"), expect="succeed",
        setup=model("smollm2-135m"), check=check_pruned_from_local(),
        why="./smollm2-135m is a copy of the tiny model: the local folder must win over the embedded alias"),
]

# ---------------- data preparations that fail, then a rerun on the fixed input; damaged prepared folders
GOOD_DOCS = docs_jsonl(8, "good")


def failed_prepare(name, rel, content, fixed, why):
    """A row: `data prepare` of the file d/rel holding ``content`` is refused, naming it; after ``fixed(d, fx)``
    repairs it, the same command succeeds."""
    argv = prepare_argv(rel)
    return Case(name, "data prepare", PREPARE, argv, setup=files(**{rel: content}),
                check=checks(check_names(Path(rel).name), check_rerun(argv, fixed)), why=why)


IMPORTANCE_P = IMPORTANCE + ["--data", "p"]
PREPARE_CASES = [
    Case("prep-ok", "data prepare", PREPARE, prepare_argv("{SMALL}"), expect="succeed", check=check_documents(60),
        why="control"),
    failed_prepare("prep-bad-json-line", "bad.jsonl", docs_jsonl(3, "a") + "{oops\n" + docs_jsonl(3, "b"),
                   files(**{"bad.jsonl": GOOD_DOCS}), "line 4 is not JSON"),
    failed_prepare("prep-number-in-text-field", "num.jsonl", docs_jsonl(3, "a") + '{"text": 5}\n',
                   files(**{"num.jsonl": GOOD_DOCS}), "a number in the text field"),
    failed_prepare("prep-empty-file", "empty.jsonl", "", files(**{"empty.jsonl": GOOD_DOCS}), "an empty file"),
    failed_prepare("prep-parquet-not-parquet", "docs.parquet", b"PAR1 this is not parquet\n" * 40,
                   write_parquet("docs.parquet"), "a .parquet file that is not parquet"),
    Case("prep-blend-missing-second-source", "data prepare", PREPARE, prepare_argv(blend("a.jsonl", "b.jsonl")),
        setup=files(**{"a.jsonl": docs_jsonl(8, "a")}),
        check=checks(check_names("b.jsonl"), check_rerun(prepare_argv(blend("a.jsonl", "b.jsonl")),
                                                         files(**{"b.jsonl": docs_jsonl(8, "b")}), "out/blend.yaml")),
        why="the second source of a blend does not exist (the first is fine)"),
    Case("prep-json-with-bom", "data prepare", PREPARE, prepare_argv("docs.json"), expect="succeed",
        setup=files(**{"docs.json": "\ufeff" + json.dumps([{"text": doc_text("bom", i)} for i in range(8)])}),
        check=check_documents(8), why="a .json file that starts with a UTF-8 BOM (Windows editors write one)"),
    Case("prep-dir-upper-case-extensions", "data prepare", PREPARE, prepare_argv("docs"), expect="succeed",
        setup=files(**{"docs/a.jsonl": docs_jsonl(5, "a"), "docs/D.JSONL": docs_jsonl(5, "D"),
                       "docs/E.Jsonl": docs_jsonl(5, "E")}),
        check=check_documents(15), why="a folder of a.jsonl, D.JSONL, E.Jsonl: all 15 documents must be read"),
    Case("prep-dir-symlinked-subfolder", "data prepare", PREPARE, prepare_argv("docs"), expect="succeed",
        setup=chain(files(**{"docs/a.jsonl": docs_jsonl(5, "a"), "elsewhere/c.jsonl": docs_jsonl(5, "c")}),
                    link("docs/more", "../elsewhere")),
        check=check_documents(10, or_named="more"), why="docs/more links to another folder: read it, or say so"),
    Case("prepared-ok-importance", "importance", PREPARE, IMPORTANCE + ["--data", "{PREP}"], expect="succeed",
        why="control: the undamaged prepared folder"),
    Case("prepared-manifest-list", "importance", PREPARE, IMPORTANCE_P,
        setup=chain(copy_fixture("PREP", "p"), damage_prepared("p", "manifest-list")),
        sentinels=("p",), check=check_names("manifest"), why="manifest.json holds a list"),
    Case("prepared-split-number", "importance", PREPARE, IMPORTANCE_P,
        setup=chain(copy_fixture("PREP", "p"), damage_prepared("p", "split-number")),
        sentinels=("p",), check=check_names("manifest"), why="manifest.json's calibration and validation entries are "
                                                              "numbers"),
    Case("prepared-bin-other-bytes", "importance", PREPARE, IMPORTANCE_P,
        setup=chain(copy_fixture("PREP", "p"), damage_prepared("p", "bin-other-bytes")),
        sentinels=("p",), check=check_names("65535"), why="every .bin shard overwritten with as many 0xFF bytes: "
                                                          "token ids 65535, beyond the vocabulary (49152)"),
    Case("prepared-bin-other-bytes-evaluate", "eval loss", PREPARE,
        ["eval", "loss", "{T}", "--samples", "2", "--seq-len", "32", "--data", "p"],
        setup=chain(copy_fixture("PREP", "p"), damage_prepared("p", "bin-other-bytes")), sentinels=("p",),
        check=check_names("65535"), why="the same, read by eval loss (validation split)"),
]

# ---------------- full disk: the output on a 64 KiB tmpfs
names_space = check_names(("space", "free"))
DISK_CASES = [
    Case("disk-full-data-prepare", "data prepare", DISK, prepare_argv("{DATA}", "small/out"), setup=tmpfs(),
        check=names_space, why="400 documents of tokens do not fit in 64 KiB"),
    Case("disk-full-prune", "prune", DISK, opt(PRUNE, "--output", "small/out"), setup=tmpfs(), check=names_space,
        why="the pruned model (MBs) does not fit in 64 KiB"),
    Case("disk-full-distill", "distill", DISK, opt(DISTILL, "--output-dir", "small/out"), setup=tmpfs(),
        check=names_space, why="the first checkpoint does not fit in 64 KiB"),
    Case("disk-full-fp8", "export fp8", DISK, opt(FP8, "--output", "small/out"), setup=tmpfs(), check=names_space,
        why="the FP8 checkpoint does not fit in 64 KiB"),
]

# ---------------- integers of the wrong type in YAML
PRUNE_CONFIG = ["prune", "--config", "p.yaml"]
WRONG_TYPE = ("integer", "bool", "whole number")
TYPE_CASES = [
    Case("type-target-float", "prune", TYPE, PRUNE_CONFIG,
        setup=files(**{"p.yaml": PRUNE_YAML + "target: {intermediate_size: 64.7}\n"}),
        check=check_names("intermediate_size", WRONG_TYPE), why="used to prune to 64, exit 0"),
    Case("type-target-bool", "prune", TYPE, PRUNE_CONFIG,
        setup=files(**{"p.yaml": PRUNE_YAML + "target: {intermediate_size: true}\n"}),
        check=check_names("intermediate_size", WRONG_TYPE), why="used to prune to 1, exit 0"),
    Case("type-target-string-number", "prune", TYPE, PRUNE_CONFIG, expect="either",
        setup=files(**{"p.yaml": PRUNE_YAML + 'target: {hidden_size: "36"}\n'}),
        why="a quoted number: refuse, or read it as 36 (a decision of its own)"),
    Case("type-target-layers-whole-float", "prune", TYPE, PRUNE_CONFIG, expect="either",
        setup=files(**{"p.yaml": PRUNE_YAML + "target: {num_hidden_layers: 1.0}\n"}),
        why="a whole float: refuse, or read it as 1"),
    Case("type-calib-samples-bool", "prune", TYPE, PRUNE_CONFIG,
        setup=files(**{"p.yaml": PRUNE_YAML.replace("calib_samples: 4", "calib_samples: true")
                       + "target: {hidden_size: 32}\n"}), check=check_names("calib_samples", WRONG_TYPE),
        why="a bool where an integer is expected"),
    Case("type-run-target-float", "run", TYPE, ["run", "run.yaml"],
        setup=run_yaml(set_("prune.target", {"hidden_size": 32, "intermediate_size": 64.7})),
        check=check_names("intermediate_size", WRONG_TYPE), why="the same in a run config"),
    Case("type-run-target-bool", "run", TYPE, ["run", "run.yaml"],
        setup=run_yaml(set_("prune.target", {"hidden_size": 32, "intermediate_size": True})),
        check=check_names("intermediate_size", WRONG_TYPE), why="the same in a run config"),
    Case("type-run-set-bool", "run", TYPE, ["run", "run.yaml", "--set", "prune.calib_samples=true"],
        setup=run_yaml(), check=check_names("calib_samples", WRONG_TYPE),
        why="--set reads YAML scalars: true is a bool, not an integer"),
]

# ---------------- models that do not match their tokenizer, or the checkpoint to resume
names_sizes = check_names("1024", "49152")
VOCAB_WHY = "<other-vocab> has vocab_size 1024 and the real 49152-token tokenizer"
names_shapes = check_names("32", "64")
MISMATCH_CASES = [
    Case("mismatch-vocab-prune", "prune", MISMATCH, opt(PRUNE, "--model", "{V}"), check=names_sizes, why=VOCAB_WHY),
    Case("mismatch-vocab-importance", "importance", MISMATCH, opt(IMPORTANCE, "--model", "{V}"), check=names_sizes,
        why=VOCAB_WHY),
    Case("mismatch-vocab-distill", "distill", MISMATCH, opt(opt(DISTILL, "--student", "{V}"), "--teacher", "{V}"),
        check=names_sizes, why=VOCAB_WHY + " (student and teacher)"),
    Case("mismatch-vocab-correct", "correct-teacher", MISMATCH, opt(CORRECT, "--model", "{V}"), check=names_sizes,
        why=VOCAB_WHY),
    Case("mismatch-vocab-fp8", "export fp8", MISMATCH, ["{V}" if x == "{T}" else x for x in FP8], check=names_sizes,
        why=VOCAB_WHY),
    Case("mismatch-vocab-evaluate", "eval loss", MISMATCH, ["eval", "loss", "{V}", "--samples", "2", "--seq-len", "32"],
        check=names_sizes, why=VOCAB_WHY),
    Case("mismatch-resume-other-shape-distill", "distill", MISMATCH, DISTILL + ["--resume-from-checkpoint", "ck"],
        setup=other_shape_checkpoint(), sentinels=("ck",), check=names_shapes,
        why="ck is a checkpoint of a pruned student (hidden 32, intermediate 64); this student has hidden 64"),
    Case("mismatch-resume-other-shape-correct", "correct-teacher", MISMATCH,
        CORRECT + ["--resume-from-checkpoint", "ck"], setup=other_shape_checkpoint(), sentinels=("ck",),
        check=names_shapes, why="ck is a checkpoint of a pruned model (hidden 32); the model has hidden 64"),
]

# ---------------- hostile YAML: an alias bomb, a huge file
BOMB_WHY = ("9 levels of 9 aliases: 387 million leaves from a few hundred bytes (memory capped at +3 GiB); the "
            "refusal must be about the expansion, not the option's type")
names_expansion = check_names(("alias", "expand"))
HOSTILE_YAML_CASES = [
    Case("yaml-alias-bomb-prune", "prune", HOSTILE_YAML, ["prune", "--config", "bomb.yaml"], timeout=60, mem_mb=3072,
        check=names_expansion,
        setup=files(**{"bomb.yaml": yaml_bomb("calib_samples", head="model: {T}\noutput: out\n")}), why=BOMB_WHY),
    Case("yaml-alias-bomb-run", "run", HOSTILE_YAML, ["run", "bomb.yaml"], timeout=60, mem_mb=3072,
        check=names_expansion,
        setup=files(**{"bomb.yaml": yaml_bomb("seq_len", head="output_dir: {D}/out\nteacher: {T}\nprune:\n  target: "
                                                          "{hidden_size: 32}\n")}),
        why=BOMB_WHY),
    Case("yaml-alias-bomb-data-prepare", "data prepare", HOSTILE_YAML, ["data", "prepare", "--config", "bomb.yaml"],
        timeout=60, mem_mb=3072, check=names_expansion,
        setup=files(**{"bomb.yaml": yaml_bomb("max_documents", head="output: out\n")}), why=BOMB_WHY),
    Case("yaml-20mb-prune", "prune", HOSTILE_YAML, PRUNE_CONFIG, timeout=90, mem_mb=3072,
        setup=padded("p.yaml", PRUNE_YAML + "target: {hidden_size: 32}\n"),
        why="a valid config padded with 20 MB of comments: only its size is wrong"),
    Case("yaml-20mb-data-prepare", "data prepare", HOSTILE_YAML, ["data", "prepare", "--config", "p.yaml"],
        timeout=90, mem_mb=3072, setup=padded("p.yaml", "data: {SMALL}\noutput: out\ntokenizer: {T}\n"),
        why="a valid config padded with 20 MB of comments: only its size is wrong"),
]

# ---------------- signals: a scheduler's SIGTERM, a user's Ctrl-C
JIT = opt(opt(DISTILL, "--max-steps", "1000"), "--save-strategy", "no")
SIGNAL_CASES = [
    Case("signal-sigterm-distill-jit-checkpoint", "distill", SIGNAL,
        opt(JIT, "--save-steps", drop=True) + ["--enable-jit-checkpoint", "true"],
        signal=(r"\{'loss'", signal.SIGTERM, 0, False),
        allow_new=("out", "out/*"), stop_line=r"^minitron distill: .*checkpoint-\d+", check=check_preempted(),
        timeout=180, why="SIGTERM after the first logged step: exit != 0 (a preempted run is not a finished one), "
                         "and stderr names the checkpoint to resume from"),
    Case("signal-sigterm-correct-jit-checkpoint", "correct-teacher", SIGNAL,
        opt(CORRECT, "--max-steps", "1000") + ["--save-strategy", "no", "--logging-steps", "1",
                                               "--enable-jit-checkpoint", "true"],
        signal=(r"\{'loss'", signal.SIGTERM, 0, False), allow_new=("out", "out/*"),
        stop_line=r"^minitron correct-teacher: .*checkpoint-\d+", check=check_preempted(), timeout=180,
        why="the same for teacher correction"),
    Case("signal-sigint-data-prepare-workers", "data prepare", SIGNAL,
        prepare_argv("big.jsonl") + ["--num-proc", "2", "--shard-mb", "1"],
        setup=write_docs("big.jsonl", 30000, "big"), signal=(r"prepare:", signal.SIGINT, 1.5, True),
        allow_new=("out", "out/*"), stop_line=r"^minitron data( prepare)?: interrupted", check=check_exit(130),
        timeout=120, why="Ctrl-C: SIGINT to the process group, tokenizing workers included, 1.5 s into 21 MB: one "
                         "line and exit 130, no worker's traceback"),
]

CLASS_CASES = (INSIDE_CASES + STAGE_CASES + LOCK_CASES + LINK_CASES + CACHE_CASES + PREPARE_CASES + DISK_CASES
               + TYPE_CASES + MISMATCH_CASES + HOSTILE_YAML_CASES + SIGNAL_CASES)
