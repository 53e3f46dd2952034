"""Stage ``data``: every source tokenized once into token shards, before any model loads (arXiv 2408.11796 sec. 3:
the same tokens feed correction, calibration, distillation and evaluation)."""

from __future__ import annotations

from dataclasses import dataclass

from ..data import eval_config, open_sources
from ..data.sources import source_fingerprint
from ..loading import load_tokenizer
from .base import Run, Stage, StageResult


@dataclass
class DataResult(StageResult):
    config: str | list | None = None  # the prepared folder, or [{data, weight}] of a blend: what the stages read
    folders: list[str] | None = None
    splits: list[dict] | None = None  # per source: {split: tokens}


class DataStage(Stage):
    """Each source is prepared into the shared cache (``$MINITRON_CACHE/data``, keyed by content, split rule and
    tokenizer: later runs reuse it), or a prepared folder is checked and used where it is. An interrupted
    preparation resumes at its first unfinished chunk. The top-level data keys are its options (``data:`` itself is
    the source, not a section)."""

    name = "data"
    always = True
    result = DataResult

    def key(self, run: Run):  # the content of the sources: a changed local file prepares again
        return {"sources": [source_fingerprint(c) for c, _ in run.data.sources()], "tokenizer": run.cfg.teacher}

    def run(self, run: Run, resume: bool) -> DataResult:
        # streaming: only the bounded validation/calibration part is prepared; the train split streams in each stage
        sources = open_sources(eval_config(run.data), load_tokenizer(run.cfg.teacher))
        folders = [str(p.path) for p, _ in sources]
        config = folders[0] if isinstance(run.data.data, str) else [{"data": f, "weight": w}
                                                                    for f, (_, w) in zip(folders, sources)]
        splits = [{s: v["tokens"] for s, v in p.manifest["splits"].items()} for p, _ in sources]
        return DataResult(tokens=sum(sum(x.values()) for x in splits), config=config, folders=folders, splits=splits)


STAGE = DataStage()
