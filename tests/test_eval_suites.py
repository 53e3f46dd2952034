"""The suite protocol (minitron_hf/eval/suite.py): every registered suite implements it, the served-model options
have one name and one default everywhere, old option names are refused with the new one (command line, YAML, run
config), and each config refuses bad values when it is built (parse time), before anything is written."""

import dataclasses
import json

import pytest

from minitron_hf.config import ConfigError, check_fields, instantiate, renamed_fields
from minitron_hf.errors import MinitronError
from minitron_hf.eval import SUITES, suite_class, suite_parts
from minitron_hf.eval.suite import DEFAULT_CONCURRENCY, EvalError, ServedModelOptions, Suite

PROTOCOL = ("check", "generate", "score", "table")


@pytest.mark.parametrize("name", list(SUITES))
def test_every_registered_suite_implements_the_protocol(name):
    from minitron_hf.cli import make_parser

    cls = suite_class(name)
    assert issubclass(cls, Suite) and cls.name == name and cls.help
    for step in PROTOCOL:  # each step is the suite's own, not the base class's NotImplementedError
        assert getattr(cls, step) is not getattr(Suite, step), f"{name} does not implement {step}"
    assert isinstance(vars(Suite)["table"], staticmethod)  # table renders a results.json read back: no instance
    assert issubclass(cls.error, EvalError) and issubclass(cls.error, MinitronError)
    cfg_cls = cls.config_class
    assert dataclasses.is_dataclass(cfg_cls)
    cfg = cfg_cls()  # the defaults pass the config's own checks
    for f in dataclasses.fields(cfg_cls):
        assert f.metadata.get("help"), f"{cfg_cls.__name__}.{f.name} has no help"
    assert "output" in {f.name for f in dataclasses.fields(cfg_cls)}
    # what the pipeline and the CLI call
    c, run, table = suite_parts(name)
    assert c is cfg_cls and table is cls.table and callable(run)
    assert isinstance(cls(cfg), Suite)
    with pytest.raises(TypeError):
        cls(object())
    ns = make_parser().parse_args(["eval", name, "some-model"])
    assert ns.eval_command == name and ns.models == ["some-model"]


def test_served_model_options_have_one_name_and_one_default():
    served = {f.name: f for f in dataclasses.fields(ServedModelOptions)}
    assert set(served) == {"model_base_url", "model_api_key_env", "model_concurrency"}
    old = set(ServedModelOptions.RENAMED)
    with_served = []
    for name in SUITES:
        cfg_cls = suite_class(name).config_class
        fields = {f.name: f for f in dataclasses.fields(cfg_cls)}
        assert not old & set(fields), f"{name} still has an old option name"
        if "model_base_url" in fields:
            assert issubclass(cfg_cls, ServedModelOptions), name
        if issubclass(cfg_cls, ServedModelOptions):
            with_served.append(name)
            cfg = cfg_cls()
            assert cfg.model_concurrency == DEFAULT_CONCURRENCY and cfg.model_base_url is None
            assert cfg.model_api_key_env is None
    assert set(with_served) == {"base", "humaneval", "mbpp", "bfcl", "mtbench"}
    # MT-Bench's judge: the same word for the same thing
    mt = suite_class("mtbench").config_class()
    assert mt.judge_concurrency == DEFAULT_CONCURRENCY


# (suite, old name, new name, a value)
RENAMED = [("base", "concurrency", "model_concurrency", "3"), ("base", "api_key_env", "model_api_key_env", "KEY"),
           ("humaneval", "concurrency", "model_concurrency", "3"), ("mbpp", "api_key_env", "model_api_key_env", "K"),
           ("bfcl", "concurrency", "model_concurrency", "3"), ("mtbench", "model_workers", "model_concurrency", "3"),
           ("mtbench", "judge_workers", "judge_concurrency", "3")]


@pytest.mark.parametrize("suite,old,new,value", RENAMED, ids=[f"{s}-{o}" for s, o, _, _ in RENAMED])
def test_an_old_option_name_is_refused_with_the_new_one(suite, old, new, value, tmp_path, capsys):
    from minitron_hf.cli import main

    cfg_cls = suite_class(suite).config_class
    assert renamed_fields([cfg_cls])[old] == new
    out = tmp_path / "out"
    # the command line, with dashes and with underscores
    for flag in ("--" + old.replace("_", "-"), "--" + old):
        with pytest.raises(SystemExit) as e:
            main(["eval", suite, "some-model", flag, value, "--output", str(out)])
        assert e.value.code == 2
        assert f"renamed: use --{new.replace('_', '-')}" in capsys.readouterr().err
    # a YAML config
    yml = tmp_path / "eval.yaml"
    yml.write_text(f"{old}: {value}\n")
    assert main(["eval", suite, "some-model", "--config", str(yml), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"field '{old}' was renamed: use '{new}'" in err and str(yml) in err
    # a run config's evaluate.benchmarks section (what the pipeline calls), and instantiate alone
    with pytest.raises(ConfigError, match=f"benchmarks.{suite}: field '{old}' was renamed: use '{new}'"):
        check_fields({old: value}, [cfg_cls], f"benchmarks.{suite}", reserved=("output",))
    with pytest.raises(ConfigError, match=f"field '{old}' was renamed: use '{new}'"):
        instantiate([cfg_cls], {old: value, "output": str(out)})
    # the new name works
    (cfg,) = instantiate([cfg_cls], {new: value})
    assert str(getattr(cfg, new)) == value
    assert not out.exists()


# (suite, {field: bad value}, what the error says); each also through the command line
BAD = [
    ("base", {"model_concurrency": 0}, "model_concurrency=0 must be >= 1"),
    ("base", {"model_base_url": "localhost:8000"}, "model_base_url='localhost:8000': expected the URL"),
    ("base", {"limit": 0}, "limit=0 must be > 0"),
    ("base", {"batch_size": 0}, "batch_size=0 must be >= 1"),
    ("humaneval", {"samples": 0}, "samples=0 must be >= 1"),
    ("humaneval", {"top_p": 1.5}, r"top_p=1.5 must be in \(0, 1\]"),
    ("humaneval", {"samples": 4, "temperature": 0}, "samples=4 with temperature=0: greedy"),
    ("humaneval", {"model_concurrency": -1}, "model_concurrency=-1 must be >= 1"),
    ("mbpp", {"num_fewshot": 11}, "num_fewshot=11 must be in 0..10"),
    ("mbpp", {"data_files": "/no/such/mbpp.jsonl"}, "data_files='/no/such/mbpp.jsonl': no such file"),
    ("bfcl", {"categories": ["live_simple", "multi_turn_base"]}, "'multi_turn_base' is not a BFCL live category"),
    ("bfcl", {"limit": 0}, "limit=0 must be >= 1"),
    ("mtbench", {"categories": ["poetry"]}, "categories=.*poetry.*allowed: writing"),
    ("mtbench", {"judge_concurrency": 0}, "judge_concurrency=0 must be >= 1"),
    ("mtbench", {"judge_base_url": "api.openai.com"}, "judge_base_url='api.openai.com': expected the URL"),
    ("mtbench", {"judge_model": ""}, "judge_model is empty"),
    ("instruct", {"benchmarks": ["ifeval", "gsm8"]}, "did you mean 'gsm8k'"),
    ("instruct", {"mmlu_fewshot": -1}, "mmlu_fewshot=-1 must be >= 0"),
    ("instruct", {"ifeval_task": "ifeval:acc"}, "ifeval_task='ifeval:acc'"),
    ("instruct", {"code_samples": 0}, "code_samples=0 must be >= 1"),
    ("loss", {"samples": 0}, "samples=0 must be >= 1"),
    ("loss", {"seq_len": 1}, "seq_len=1 must be >= 2"),
]


def _argv(values: dict) -> list[str]:
    argv = []
    for k, v in values.items():
        argv += ["--" + k.replace("_", "-"), *(map(str, v) if isinstance(v, list) else [str(v)])]
    return argv


@pytest.mark.parametrize("suite,values,match", BAD, ids=[f"{s}-{'-'.join(v)}" for s, v, _ in BAD])
def test_each_config_refuses_bad_values_when_built(suite, values, match, tmp_path, capsys):
    from minitron_hf.cli import main

    cls = suite_class(suite)
    out = tmp_path / "out"
    with pytest.raises(EvalError, match=match):  # the base of every suite's errors, a MinitronError
        cls.config_class(**values, output=str(out))
    with pytest.raises(MinitronError, match=match):  # the pipeline's path
        instantiate([cls.config_class], {**values, "output": str(out)})
    # the command line: one line naming the field, exit 2, nothing written
    assert main(["eval", suite, "some-model", *_argv(values), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("minitron eval: error:") and len(err.strip().splitlines()) == 1
    assert not out.exists()


# ------------------------------------------------------------------------------------------------
# The driver: a suite is a config, the four steps and a registry line
# ------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class WordsConfig:
    """Options of a suite written for this test: it "generates" a model name's letters and scores their count."""

    upper: bool = dataclasses.field(default=False, metadata={"help": "upper-case the letters"})
    output: str | None = dataclasses.field(default=None, metadata={"help": "results folder"})


class WordsSuite(Suite):
    name = "words"
    help = "letters of model names"
    config_class = WordsConfig

    def check(self, models, names):
        self.rows, self.checked = [], list(models)
        return [str(m) for m in models]

    def generate(self, model, name):
        return list(model.upper() if self.cfg.upper else model)

    def score(self, name, outputs):
        self.rows += [{"model": name, "letter": c} for c in outputs]
        return {"letters": len(outputs), "vowels": sum(c.lower() in "aeiou" for c in outputs)}

    @staticmethod
    def table(out):
        return "\n".join(f"| {m} | {r['letters']} |" for m, r in out["results"].items())

    def summary(self):
        return {"checked": self.checked}

    def samples(self):
        return {"letters": self.rows}


def test_the_driver_runs_check_generate_score_table_and_writes_the_files(tmp_path):
    out = WordsSuite.run_suite(["ab", "cde"], WordsConfig(upper=True, output=str(tmp_path / "w")), names=["x", "y"])
    assert list(out) == ["config", "checked", "results"]
    assert out["results"] == {"x": {"letters": 2, "vowels": 1}, "y": {"letters": 3, "vowels": 1}}
    assert out["config"] == {"upper": True, "output": str(tmp_path / "w")}
    assert json.loads((tmp_path / "w" / "results.json").read_text()) == out
    assert (tmp_path / "w" / "results.md").read_text() == "| x | 2 |\n| y | 3 |\n"
    rows = [json.loads(x) for x in (tmp_path / "w" / "letters.jsonl").read_text().splitlines()]
    assert [r["letter"] for r in rows] == ["A", "B", "C", "D", "E"] and rows[2]["model"] == "y"
    # names: the models as given by default, one distinct name per model
    assert list(WordsSuite(WordsConfig()).run(["ab"])["results"]) == ["ab"]
    for models, names in ((["a", "b"], ["x", "x"]), (["a", "b"], ["x"]), ([], None)):
        with pytest.raises(EvalError, match="names=|models: name at least one"):
            WordsSuite(WordsConfig(output=str(tmp_path / "none"))).run(models, names)
    assert not (tmp_path / "none").exists()
