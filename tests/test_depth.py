"""Layer importance: in-memory layer skipping and block influence against naive references."""

import pytest
import torch

from minitron_hf.lm_loss import lm_loss
from minitron_hf.pruning.depth import DepthError, block_influence, dropped_layers, layer_importance

from conftest import tiny_model


def test_dropped_layers_equals_trimmed_checkpoint(model_type, tmp_path, prune_tiny):
    model = tiny_model(model_type, num_hidden_layers=5)
    ids = torch.randint(0, 128, (3, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids).logits
        with dropped_layers(model, [1, 2]):
            assert model.config.num_hidden_layers == 3
            skipped = model(ids).logits
        assert torch.equal(model(ids).logits, full)  # restored
    assert model.config.num_hidden_layers == 5 and len(model.model.layers) == 5
    _, pruned = prune_tiny(model, tmp_path, dict(drop_layers=[1, 2]))
    with torch.no_grad():
        torch.testing.assert_close(pruned(ids).logits, skipped, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(skipped, full)


def test_lm_loss_matches_transformers_loss():
    model = tiny_model("llama")
    ids = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids, labels=ids).loss.item()
    assert lm_loss(model, ids, batch_size=3) == pytest.approx(ref, rel=1e-5)


def test_block_influence_matches_naive():
    model = tiny_model("qwen2", num_hidden_layers=5)
    ids = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    k = 2
    blocks, layers = block_influence(model, ids, k, batch_size=3, progress=False)
    with torch.no_grad():
        hs = model(ids, output_hidden_states=True).hidden_states  # hs[i] = input of layer i (last one is normed)
    def bi(a, b):
        return (1 - torch.nn.functional.cosine_similarity(a, b, dim=-1)).mean().item()
    for s in range(5 - k):  # blocks that do not end at the final (normed) state
        assert blocks[s] == pytest.approx(bi(hs[s], hs[s + k]), rel=1e-4, abs=1e-6)
    for i in range(4):
        assert layers[i] == pytest.approx(bi(hs[i], hs[i + 1]), rel=1e-4, abs=1e-6)
    assert len(blocks) == 4 and len(layers) == 5


def test_layer_importance_scan_and_best_block(tmp_path):
    model = tiny_model("mistral", num_hidden_layers=5)
    ids = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    li = layer_importance(model, ids, 2, batch_size=4, progress=False)
    assert len(li.lm_loss) == 4 and len(li.block_influence) == 4
    with dropped_layers(model, [2, 3]):
        assert li.lm_loss[2] == pytest.approx(lm_loss(model, ids), rel=1e-6)
    best = min(range(4), key=li.lm_loss.__getitem__)
    assert li.best_block("lm-loss") == [best, best + 1]
    li.save(tmp_path)
    assert (tmp_path / "layer_importance.png").stat().st_size > 1000
    with pytest.raises(DepthError, match="depth_metric"):
        li.best_block("winogrande")


def test_bad_depth_input():
    model = tiny_model("llama")
    with pytest.raises(DepthError, match="every layer"):
        with dropped_layers(model, range(4)):
            pass
    with pytest.raises(DepthError, match="block_size=4"):
        block_influence(model, torch.zeros(1, 4, dtype=torch.long), 4)
