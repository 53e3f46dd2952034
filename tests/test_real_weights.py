"""Real weights of a second family: Gemma 3 270M (``gemma3_text``, the embedded alias ``gemma3-270m``) through the
recipe, as tests/test_default_model.py does for SmolLM2 (Llama).

Gemma differs most from Llama in layout (four norms per layer, (1 + w) RMSNorm, the sqrt(hidden) embedding scale the
pruner rescales, q/k norms, sliding-window layers, a 262k vocabulary, a BOS per sequence). Pruning the MLP by half:
activation importance must beat random scores by far. Distillation is left to ``benchmarks/real_weights.py`` (more
calibration; 60 steps of 4 x 128 tokens recovered 58.8% of the gap, 20 steps 45.7%: benchmarks/results/real_weights.md):
measured here, 4 or 8 steps of 2-4 x 64 tokens (1-3 min) moved the held-out loss by less than its noise (3.733 ->
3.77 / 3.75), so a short run in the suite would prove nothing.
"""

import json

import pytest

from minitron_hf.cli import main
from minitron_hf.data import DataConfig
from minitron_hf.loading import resolve_model
from minitron_hf.lm_loss import validation_loss

pytestmark = pytest.mark.slow

SEQ, VAL = 64, 8


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    teacher = resolve_model("gemma3-270m")
    root = tmp_path_factory.mktemp("gemma")
    common = ["--model", str(teacher), "--target", "intermediate_size=1024", "--calib-samples", "8", "--seq-len",
              str(SEQ), "--batch-size", "4"]
    assert main(["prune", *common, "--output", str(root / "imp")]) == 0
    assert main(["prune", *common, "--importance", "random", "--output", str(root / "rand")]) == 0
    return teacher, root


def _loss(d) -> float:
    return validation_loss(d, DataConfig(), samples=VAL, seq_len=SEQ, batch_size=4)


def test_converted_gemma_adds_its_bos_and_is_gemma3(gemma):
    from transformers import AutoConfig, AutoTokenizer

    teacher, _ = gemma
    tok = AutoTokenizer.from_pretrained(teacher)
    assert tok("def f():")["input_ids"][0] == tok.bos_token_id  # the GGUF conversion drops it; put back
    cfg = AutoConfig.from_pretrained(teacher)
    assert cfg.model_type == "gemma3_text" and cfg.intermediate_size == 2048 and cfg.vocab_size == 262144


def test_importance_beats_random_pruning(gemma):
    teacher, root = gemma
    meta = json.loads((root / "imp" / "pruning.json").read_text())
    assert meta["parameters"]["after"]["non_embedding"] < meta["parameters"]["before"]["non_embedding"]
    losses = {"teacher": _loss(teacher), "importance": _loss(root / "imp"), "random": _loss(root / "rand")}
    print(losses)
    assert losses["teacher"] < losses["importance"] < losses["random"]
    # random pruning destroys the model (measured: random 17.61, importance 3.73, teacher 3.11 here); importance keeps
    # most of it
    assert losses["random"] - losses["teacher"] > 3 * (losses["importance"] - losses["teacher"])
