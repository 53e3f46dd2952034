"""The one interface of every ``minitron eval <suite>``, and the options shared by suites that talk to served models.

A suite is a :class:`Suite` subclass in its own module, registered with one line in
:data:`minitron_hf.eval.SUITES`. It names its options (``config_class``, a dataclass that validates its own
values in ``__post_init__``, so a bad value fails when the options are parsed) and implements four steps:

``check(models, names)``
    everything that needs the models, the network or installed data, before any model loads: checkpoint
    folders, served model names (``GET /models``), task names, benchmark data. Returns what ``generate``
    gets for each model (a checkpoint directory, a served model name, ...).
``generate(model, name)``
    the outputs of one model: completions, answers, or the harness's raw results (the model is loaded,
    used and freed here).
``score(name, outputs)``
    ``{metric: value}`` of one model from its outputs (sandboxed tests, a judge, a checker ...); rows
    worth keeping (samples, answers, judgments) are kept for :meth:`Suite.samples`.
``table(out)``
    results.md from the returned dict (a static method: it also renders a results.json read back).

:meth:`Suite.run` drives them: ``check`` once, then ``generate`` and ``score`` one model after another,
then results.json, results.md and the ``<name>.jsonl`` files of :meth:`Suite.samples` in ``output``. It
returns ``{"config", <summary keys>, "results": {model name: {metric: value}}}``. A suite made of other
suites (``instruct``) overrides ``run``.

:class:`ServedModelOptions` are the options of a suite that can evaluate models served by an
OpenAI-compatible server (vLLM's ``minitron serve``, TensorRT-LLM, ...) instead of loading checkpoints:
one name and one default each, in every suite that has them. Old names are refused with the new one
(``RENAMED``; see :func:`minitron_hf.config.renamed_fields`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from ..config import at_least
from ..errors import MinitronError
from . import write_results

logger = logging.getLogger(__name__)


class EvalError(MinitronError):
    """Evaluation input that cannot work; the message names the field and what is allowed. The errors of
    each suite (code, MT-Bench, BFCL) derive from it."""


# every suite that talks to served models keeps this many requests in flight unless told otherwise: enough to
# keep a vLLM / TensorRT-LLM server's continuous batching busy on one GPU, few enough for a CPU server or a
# rate-limited gateway (the old defaults were 4 in `eval base` and 8 in the others)
DEFAULT_CONCURRENCY = 8


@dataclass
class ServedModelOptions:
    """Options of a suite that can evaluate models served by an OpenAI-compatible server."""

    # options renamed when the suites were given one set of names: {old name: new name}. A config file, a run
    # config or a command line that still uses an old name fails with the new one (minitron_hf.config).
    RENAMED: ClassVar[dict[str, str]] = {
        "api_key_env": "model_api_key_env",  # eval base, humaneval, mbpp, bfcl
        "concurrency": "model_concurrency",  # eval base, humaneval, mbpp, bfcl
        "model_workers": "model_concurrency",  # eval mtbench
    }

    model_base_url: str | None = field(default=None, metadata={
        "help": "evaluate models served by this OpenAI-compatible API (vLLM: `minitron serve`, e.g. "
                "http://127.0.0.1:8000/v1) instead of loading checkpoints; the models are then served model names "
                "(unset: the models are checkpoint directories, loaded with transformers)"})
    model_api_key_env: str | None = field(default=None, metadata={
        "help": "environment variable holding the API key of model_base_url (unset or empty: no key, for servers "
                "started without one)"})
    model_concurrency: int = field(default=DEFAULT_CONCURRENCY, metadata={
        "help": f"requests in flight at once at model_base_url (default {DEFAULT_CONCURRENCY})"})

    def __post_init__(self):
        at_least(self, ("model_concurrency",), error=EvalError)
        if self.model_base_url is not None and not str(self.model_base_url).startswith(("http://", "https://")):
            raise EvalError(f"model_base_url={self.model_base_url!r}: expected the URL of an OpenAI-compatible API, "
                            f"e.g. http://127.0.0.1:8000/v1 (vLLM), or unset to load checkpoints")


class Suite:
    """One benchmark suite behind ``minitron eval <name>``; see the module docstring for the protocol.

    Subclasses set :attr:`name`, :attr:`help`, :attr:`config_class` (and :attr:`error`, their error class) and
    implement :meth:`check`, :meth:`generate`, :meth:`score` and :meth:`table`; :meth:`summary` and
    :meth:`samples` add to what :meth:`run` writes."""

    name: ClassVar[str] = ""  # `minitron eval <name>`
    help: ClassVar[str] = ""  # its line in `minitron eval --help`
    config_class: ClassVar[type] = object  # its options: a dataclass validated in __post_init__
    error: ClassVar[type[MinitronError]] = EvalError  # what check and run raise

    def __init__(self, cfg):
        if not isinstance(cfg, self.config_class):
            raise TypeError(f"{type(self).__name__} runs with a {self.config_class.__name__}, got {type(cfg).__name__}")
        self.cfg = cfg

    # -- the protocol -------------------------------------------------------------------------------------------

    def check(self, models: list, names: list[str]) -> list:
        """Check the models, endpoints and data before any model loads; what :meth:`generate` gets per model."""
        raise NotImplementedError

    def generate(self, model, name: str) -> Any:
        """The outputs of one model (``model``: an item of :meth:`check`'s list)."""
        raise NotImplementedError

    def score(self, name: str, outputs) -> dict:
        """``{metric: value}`` of one model from its outputs."""
        raise NotImplementedError

    @staticmethod
    def table(out: dict) -> str:
        """results.md (markdown) from what :meth:`run` returns."""
        raise NotImplementedError

    # -- what run writes besides the config and the results ------------------------------------------------------

    def summary(self) -> dict:
        """Keys of results.json between "config" and "results" (the tasks, the problem count ...)."""
        return {}

    def samples(self) -> dict[str, list[dict]]:
        """``{file name: rows}``: each written to ``output/<file name>.jsonl``, a row per line."""
        return {}

    # -- the driver ----------------------------------------------------------------------------------------------

    def check_names(self, models: list, names) -> list[str]:
        """The table labels: ``names`` (one distinct name per model) or the models as given."""
        if not models:
            served = getattr(self.cfg, "model_base_url", None)
            raise self.error("models: name at least one checkpoint" + (" (a served model name with model_base_url)"
                                                                        if served else ""))
        names = [str(m) for m in models] if names is None else [str(n) for n in names]
        if len(names) != len(models) or len(set(names)) != len(names):
            raise self.error(f"names={names}: give one distinct name per model ({len(models)} models)")
        return names

    def run(self, models, names=None) -> dict:
        """Every model through check, generate and score; files in ``cfg.output`` (when set)."""
        models = list(models or [])
        names = self.check_names(models, names)
        refs = self.check(models, names)
        results = {}
        for name, ref in zip(names, refs):
            results[name] = self.score(name, self.generate(ref, name))
            logger.info("%s %s: %s", self.name, name, results[name])
        out = {"config": asdict(self.cfg), **self.summary(), "results": results}
        write_results(getattr(self.cfg, "output", None), out, self.table(out), **self.samples())
        return out

    @classmethod
    def run_suite(cls, models, cfg, names=None) -> dict:
        """``cls(cfg).run(models, names)``: the function form that :func:`minitron_hf.eval.suite_parts` returns."""
        return cls(cfg).run(models, names)
