import os
import shutil

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# the model types the tiny-model tests run on: every family of minitron_hf.arch
from minitron_hf.arch import FAMILIES  # noqa: E402
# tiny random models of every family (shared with benchmarks/serve_families.py)
from minitron_hf.tiny import tiny_config, tiny_model  # noqa: E402,F401

CONFIGS = list(FAMILIES)


@pytest.fixture(params=list(CONFIGS))
def model_type(request):
    return request.param


@pytest.fixture(scope="session")
def default_model_dir():
    """The embedded default model converted to an HF checkpoint (cached across runs)."""
    from minitron_hf.default_model import ensure_default_model

    return ensure_default_model()


@pytest.fixture(scope="session")
def default_tokenizer(default_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_dir)


def save_with_tokenizer(model, d, default_model_dir):
    """Save ``model`` to ``d`` with the default model's tokenizer files (and chat template)."""
    model.save_pretrained(d)
    for f in default_model_dir.iterdir():
        if f.name.startswith("tokenizer") or f.name in ("special_tokens_map.json", "chat_template.jinja"):
            shutil.copy2(f, d / f.name)
    return d


@pytest.fixture
def tiny_checkpoint(tmp_path, model_type, default_model_dir):
    """A saved tiny model of each architecture, carrying the default model's tokenizer files."""
    model = tiny_model(model_type, vocab_size=49152)  # the real tokenizer's vocabulary
    return save_with_tokenizer(model, tmp_path / f"tiny-{model_type}", default_model_dir), model
