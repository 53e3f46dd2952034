"""``minitron run CONFIG.yaml``: the whole recipe, stage by stage, resumable, with a report.

Stages, in order, each in its own subdirectory of ``output_dir`` and its own module here:

===========  =====================================================  ============================
stage        what                                                   result
===========  =====================================================  ============================
data         the data (or blend) tokenized once into token shards   ``data/`` (``data/source-N``)
correct      teacher correction (only with a ``correct:`` section)  ``correct/final``
importance   activation importance (width) and/or the depth scan    ``importance/``
prune        trim the (corrected) teacher to ``prune.target``       ``prune/model``
distill      logit KD from the (corrected) teacher (``distill:``)   ``distill/final``
align        SFT stages + rounds of RPO (only with ``align:``)      ``align/rounds/round_N/final``
evaluate     validation loss / perplexity, teacher vs students      ``evaluate/evaluation.json``
export       the final student as a vanilla HF folder (``export:``) ``export/hf``
===========  =====================================================  ============================

Each stage writes ``config.json`` (its resolved config, including fingerprints of the stages it
reads) when it starts and ``done.json`` when it has finished. A rerun skips a stage whose
``done.json`` holds the same resolved config; a changed config, or a re-run upstream stage, runs
it again (and so everything downstream). A stage interrupted mid-way resumes: trainer stages from
their newest ``checkpoint-*``, the others by starting over (their outputs are written atomically).
``--from STAGE`` re-runs STAGE and everything after it; ``--only STAGE`` runs just that one.

``report.md`` (with PNG plots) is rewritten after every stage.

The YAML: top-level keys are :class:`RunConfig` and :class:`~minitron_hf.data.DataConfig` fields;
each stage's section takes that stage's own options (those of ``minitron correct-teacher``,
``minitron prune``, ``minitron distill``, ...), except the ones the pipeline sets itself (models,
output directories). Every key is checked before any work.

Where things live: ``base`` (the :class:`Stage` interface, typed results, done records), one module per stage
(``data``, ``correct``, ``importance``, ``prune``, ``distill``, ``align``, ``evaluate``, ``export``), ``stages``
(their order), ``config`` (``load_run``), ``runner`` (``run_pipeline``) and ``report`` (``report.md``).
"""

from .base import PipelineError, Run, RunConfig, Stage, StageResult, prepared_data, read_done, read_result
from .config import load_run
from .evaluate import OUT_OF_DOMAIN_NOTE, gap_recovered, task_accuracy, task_accuracy_table
from .report import write_report
from .runner import check_run_dir, resolved_config, run_pipeline, select_stages
from .stages import STAGES, stage_named

__all__ = ["OUT_OF_DOMAIN_NOTE", "STAGES", "PipelineError", "Run", "RunConfig", "Stage", "StageResult",
           "check_run_dir", "gap_recovered", "load_run", "prepared_data", "read_done", "read_result",
           "resolved_config", "run_pipeline", "select_stages", "stage_named", "task_accuracy", "task_accuracy_table",
           "write_report"]
