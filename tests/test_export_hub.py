"""Model card + Hub publishing: the real code up to the HTTP call; the Hub itself is a mock (unreachable here)."""

import json
from unittest import mock

import pytest
import yaml
from conftest import tiny_model

from minitron_hf.cli import main
from minitron_hf.export import NotACheckpointError
from minitron_hf.export import hub


@pytest.fixture(autouse=True)
def no_hub_lookups(monkeypatch):
    """The license lookup on the Hub would need the network: record calls instead."""
    calls = []
    monkeypatch.setattr(hub, "_hub_license", lambda hub_id: calls.append(hub_id) or None)
    return calls


def _save(model, d):
    model.save_pretrained(d)
    return d


@pytest.fixture
def lineage_dirs(tmp_path):
    """base (local, with a card) -> pruned (pruning.json) -> distill run (distill.json, final/)."""
    base = _save(tiny_model("llama", hidden_size=48, intermediate_size=96, num_hidden_layers=4), tmp_path / "base")
    (base / "README.md").write_text("---\nlicense: llama3.1\nbase_model: meta-llama/Llama-3.1-8B\n---\n# base\n")
    pruned = _save(tiny_model("llama", hidden_size=24, intermediate_size=48, num_attention_heads=6,
                              num_key_value_heads=2, head_dim=16, num_hidden_layers=3), tmp_path / "pruned")
    (pruned / "pruning.json").write_text(json.dumps({
        "source": str(base), "source_dir": str(base),
        "target": {"hidden_size": 24, "intermediate_size": 48, "num_hidden_layers": 3},
        "importance": {"method": "l2_mean", "calib_samples": 16, "seq_len": 64, "iterative_steps": 1},
        "depth": {"metric": "lm-loss", "dropped": [2]}, "data": {"data": "python-docs"},
        "parameters": {"before": {"total": 1, "non_embedding": 1}, "after": {"total": 1, "non_embedding": 1}}}))
    run = tmp_path / "distill"
    final = _save(tiny_model("llama", seed=1, hidden_size=24, intermediate_size=48, num_hidden_layers=3), run / "final")
    (run / "distill.json").write_text(json.dumps({
        "student": str(pruned), "teacher": str(base), "seq_len": 64, "tokens_per_step": 256, "steps": 10,
        "tokens": 2560, "loss": "forward_kl", "temperature": 1.0, "final_model": str(final),
        "before": {"before_student_lm_loss": 6.5}, "after": {"eval_student_lm_loss": 4.25,
                                                             "eval_teacher_lm_loss": 3.0},
        "data": {"data": "python-docs"}}))
    (run / "checkpoint-10").mkdir()
    (final / "training_args.bin").write_bytes(b"pickle")
    (final / "evaluation.json").write_text(json.dumps({"teacher": {"val_loss": 3.0, "mmlu": 0.61},
                                                       "student": {"val_loss": 4.25}}))
    return base, pruned, final


def _front(text):
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_card_follows_lineage_to_the_hub_base(lineage_dirs, tmp_path):
    base, pruned, final = lineage_dirs
    out = hub.write_model_card(final, tmp_path / "card" / "README.md")
    text = out.read_text()
    meta = _front(text)
    # distilled student -> pruned dir -> local base -> its card's base_model; license from the base's card
    assert meta["base_model"] == "meta-llama/Llama-3.1-8B"
    assert meta["base_model_relation"] == "finetune"
    assert meta["license"] == "llama3.1"
    assert meta["library_name"] == "transformers"
    assert {"minitron", "pruned", "distillation"} <= set(meta["tags"])
    # architecture: base from the local base config, this model from its own config
    assert "| Hidden size | 48 | 24 |" in text
    assert "| Layers | 4 | 3 |" in text
    assert "| MLP (intermediate) size | 96 | 48 |" in text
    assert "| KV heads | 2 | 2 |" in text
    # recipe and tokens: 16 x 64 calibration + 2560 distillation tokens
    assert "dropped layers [2]" in text and "forward_kl" in text and "6.500 -> 4.250" in text
    assert "Tokens used in all: 3,584." in text
    # evaluation.json rendered as a table; a missing metric is a dash
    assert "| model | val_loss | mmlu |" in text
    assert "| teacher | 3 | 0.61 |" in text and "| student | 4.25 | — |" in text


def test_card_explicit_arguments_win(lineage_dirs, tmp_path, no_hub_lookups):
    _, pruned, _ = lineage_dirs
    text = hub.model_card_text(pruned, base_model="acme/Big-9B", evaluation={"m": {"acc": 0.5}},
                               license="mit", base_model_relation="quantized")
    meta = _front(text)
    assert (meta["base_model"], meta["license"], meta["base_model_relation"]) == ("acme/Big-9B", "mit", "quantized")
    assert "| m | 0.5 |" in text
    assert no_hub_lookups == []  # license given: no lookup
    with pytest.raises(hub.HubError, match="base_model_relation='pruned'"):
        hub.model_card_text(pruned, base_model_relation="pruned")


def test_license_from_hub_when_local_lineage_has_none(tmp_path, monkeypatch, no_hub_lookups):
    d = _save(tiny_model("llama"), tmp_path / "m")
    (d / "pruning.json").write_text(json.dumps({"source": "acme/Big-9B", "target": {}}))
    monkeypatch.setattr(hub, "_hub_license", lambda hub_id: no_hub_lookups.append(hub_id) or "apache-2.0")
    meta = _front(hub.model_card_text(d))
    assert no_hub_lookups == ["acme/Big-9B"]
    assert meta["base_model"] == "acme/Big-9B" and meta["license"] == "apache-2.0"


def test_default_alias_maps_to_hub_id_and_license(tmp_path):
    d = _save(tiny_model("llama"), tmp_path / "m")
    (d / "pruning.json").write_text(json.dumps({"source": "smollm2-135m", "target": {"hidden_size": 48},
                                                "parameters": {"before": {"total": 134_515_008,
                                                                          "non_embedding": 106_203_456}}}))
    text = hub.model_card_text(d)
    meta = _front(text)
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["license"] == "apache-2.0"


def test_unknown_base_leaves_base_model_out(tmp_path, caplog):
    d = _save(tiny_model("llama"), tmp_path / "m")
    with caplog.at_level("WARNING"):
        meta = _front(hub.model_card_text(d))
    assert "base_model" not in meta and "base_model_relation" not in meta
    assert "pass --base-model" in caplog.text


def test_evaluation_table_rejects_flat_dict():
    with pytest.raises(hub.HubError, match="evaluation must be a mapping"):
        hub.evaluation_table({"acc": 0.5})


def test_dry_run_folder_is_what_is_uploaded(lineage_dirs, tmp_path, monkeypatch):
    _, _, final = lineage_dirs
    (final / "README.md").write_text("old card")
    (final / "importance").mkdir()
    (final / "importance" / "importance.png").write_bytes(b"png")
    dry = tmp_path / "dry"
    res = hub.publish(final, "acme/tiny-pruned", dry_run=dry)
    files = set(res["files"])
    assert files == {"README.md", "config.json", "generation_config.json", "model.safetensors", "evaluation.json",
                     "importance/importance.png"}
    assert (dry / "README.md").read_text() != "old card"
    assert _front((dry / "README.md").read_text())["base_model"] == "meta-llama/Llama-3.1-8B"
    assert (dry / "model.safetensors").read_bytes() == (final / "model.safetensors").read_bytes()

    # the real upload sends exactly that folder (captured while the mock runs: it is deleted afterwards)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    api = mock.MagicMock()
    api.create_repo.return_value = "https://huggingface.co/acme/tiny-pruned"
    uploaded = {}

    def upload_folder(repo_id, folder_path, **kw):
        from pathlib import Path

        root = Path(folder_path)
        uploaded.update({str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()})
        return mock.MagicMock(oid="abc123")

    api.upload_folder.side_effect = upload_folder
    out = hub.publish(final, "acme/tiny-pruned", private=True, api=api)
    api.create_repo.assert_called_once_with("acme/tiny-pruned", private=True, exist_ok=True, repo_type="model")
    assert api.upload_folder.call_args.kwargs["repo_id"] == "acme/tiny-pruned"
    assert set(uploaded) == files
    assert all(uploaded[f] == (dry / f).read_bytes() for f in files)
    assert out["commit"] == "abc123" and out["url"] == "https://huggingface.co/acme/tiny-pruned"
    assert not any(p.name.startswith(".publish-") for p in final.parent.iterdir())  # staging cleaned up


def test_publish_through_hfapi_class_uses_token(lineage_dirs, monkeypatch):
    _, pruned, _ = lineage_dirs
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    with mock.patch("huggingface_hub.HfApi") as cls:
        cls.return_value.create_repo.return_value = "https://huggingface.co/acme/x"
        hub.publish(pruned, "acme/x")
    cls.assert_called_once_with(token="hf_secret")
    assert cls.return_value.upload_folder.called


@pytest.mark.parametrize("repo_id", ["acme/bad name", "acme/x--y", "a/b/c", "noslash", "acme/" + "x" * 100])
def test_bad_repo_id_fails_before_anything(lineage_dirs, repo_id, monkeypatch, tmp_path):
    _, pruned, _ = lineage_dirs
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    api = mock.MagicMock()
    with pytest.raises(hub.HubError, match="repo_id="):
        hub.publish(pruned, repo_id, api=api, dry_run=None)
    with pytest.raises(hub.HubError, match="repo_id="):
        hub.publish(pruned, repo_id, dry_run=tmp_path / "dry")
    assert not api.method_calls and not (tmp_path / "dry").exists()


def test_missing_token_says_how_to_log_in(lineage_dirs, monkeypatch):
    _, pruned, _ = lineage_dirs
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    api = mock.MagicMock()
    with pytest.raises(hub.MissingTokenError, match="hf auth login.*HF_TOKEN"):
        hub.publish(pruned, "acme/x", api=api)
    assert not api.method_calls
    assert not any(p.name.startswith(".publish-") for p in pruned.parent.iterdir())


def test_refused_token_is_reported_as_login_problem(lineage_dirs, monkeypatch):
    from huggingface_hub.errors import HfHubHTTPError

    _, pruned, _ = lineage_dirs
    monkeypatch.setenv("HF_TOKEN", "hf_readonly")
    api = mock.MagicMock()
    api.create_repo.side_effect = HfHubHTTPError("403 Forbidden", response=mock.MagicMock(status_code=403))
    with pytest.raises(hub.MissingTokenError, match="HTTP 403"):
        hub.publish(pruned, "acme/x", api=api)
    assert not api.upload_folder.called


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotACheckpointError, match="no config.json"):
        hub.publish(tmp_path / "empty", "acme/x", dry_run=tmp_path / "dry")
    with pytest.raises(NotACheckpointError, match="no such directory"):
        hub.write_model_card(tmp_path / "missing", tmp_path / "README.md")
    d = tmp_path / "pickled"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (d / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(NotACheckpointError, match="pickled weights are not accepted"):
        hub.build_publish_folder(d, tmp_path / "dry")
    assert not (tmp_path / "dry").exists()


def test_cli_publish_dry_run_and_errors(lineage_dirs, tmp_path, capsys, monkeypatch):
    _, pruned, _ = lineage_dirs
    assert main(["publish", str(pruned), "--repo-id", "acme/tiny", "--dry-run", str(tmp_path / "dry"),
                 "--license", "mit"]) == 0
    assert _front((tmp_path / "dry" / "README.md").read_text())["license"] == "mit"
    assert "acme/tiny" in capsys.readouterr().out
    assert main(["publish", str(pruned), "--repo-id", "acme/bad name"]) == 2
    assert "repo_id='acme/bad name'" in capsys.readouterr().err
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    assert main(["publish", str(pruned), "--repo-id", "acme/tiny"]) == 2
    assert "hf auth login" in capsys.readouterr().err
