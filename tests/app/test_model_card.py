"""The model card and the files staged for the Hub: metadata the Hub accepts, no local paths, auto_map for AutoModel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import torch
from huggingface_hub import ModelCard

from pemt import PemtConfig, PemtForAudioVisualClassification, PemtProcessor
from pemt.hub import stage_for_upload
from pemt.model_card import hub_id, public_training_arguments

LABELS = {0: "quiet", 1: "loud"}


def fine_tuned_dir(tmp_path, training_args: dict):
    torch.manual_seed(0)
    config = PemtConfig.from_preset("tiny", num_labels=2, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    model = PemtForAudioVisualClassification(config).eval()
    model_dir = tmp_path / "run" / "model"
    model.save_pretrained(model_dir)
    PemtProcessor.from_model_config(config).save_pretrained(model_dir)
    (model_dir / "training_args.json").write_text(json.dumps(training_args))
    (model_dir / "eval_results.json").write_text(json.dumps({"top1_accuracy": 0.75, "num_clips": 8}))
    return model, model_dir


def test_card_metadata_uses_hub_ids_and_leaves_local_paths_out(tmp_path):
    data_dir = tmp_path / "private_clips"
    data_dir.mkdir()
    args = {
        "model_name_or_path": "someone/pemt-pretrained", "dataset_name": "someone/clips", "train_dir": str(data_dir),
        "cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "run"), "learning_rate": 1e-4, "seed": 3,
    }
    _, model_dir = fine_tuned_dir(tmp_path, args)
    staged = stage_for_upload(model_dir, tmp_path / "staged", "tester/pemt-card")
    card = ModelCard.load(staged / "README.md")
    assert card.data.pipeline_tag == "video-classification"
    assert card.data.license == "apache-2.0"
    assert card.data.base_model == "someone/pemt-pretrained"
    assert card.data.datasets == ["someone/clips"]
    [result] = card.data.eval_results
    assert (result.task_type, result.dataset_type, result.metric_type, result.metric_value) == (
        "video-classification", "someone/clips", "top1_accuracy", 0.75,
    )
    for name in os.listdir(staged):
        if name.endswith((".md", ".json")):
            text = (staged / name).read_text()
            assert str(tmp_path) not in text, f"{name} names a local path"
    published = json.loads((staged / "training_args.json").read_text())
    assert published == {"model_name_or_path": "someone/pemt-pretrained", "dataset_name": "someone/clips",
                         "learning_rate": 1e-4, "seed": 3}
    assert "learning_rate" in card.text and "0.75" in card.text


def test_local_base_model_and_data_are_not_listed_as_hub_ids(tmp_path):
    pretrained = tmp_path / "pretrained"
    pretrained.mkdir()
    data_dir = tmp_path / "clips"
    data_dir.mkdir()
    _, model_dir = fine_tuned_dir(tmp_path, {"model_name_or_path": str(pretrained), "train_dir": str(data_dir)})
    staged = stage_for_upload(model_dir, tmp_path / "staged", "tester/pemt-local", base_model="someone/given")
    card = ModelCard.load(staged / "README.md")
    assert card.data.base_model == "someone/given" and card.data.datasets is None
    assert card.data.eval_results[0].dataset_type == "local"
    assert str(tmp_path) not in (staged / "README.md").read_text()
    assert hub_id(str(pretrained)) is None and hub_id("owner/name") == "owner/name" and hub_id("../x") is None
    assert hub_id("data") is None, "a bare folder name is not listed as a Hub data set"
    assert public_training_arguments({"a": str(data_dir), "b": 2, "c": None, "d": "./rel"}) == {"b": 2}


def test_pushed_classifier_loads_its_backbone_with_automodel(tmp_path):
    model, model_dir = fine_tuned_dir(tmp_path, {})
    staged = stage_for_upload(model_dir, tmp_path / "staged", "tester/pemt-auto")
    auto_map = json.loads((staged / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModel"] == "modeling_pemt.PemtModel"
    script = textwrap.dedent(
        """
        import sys
        sys.modules["pemt"] = None  # as where pemt is not installed
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)
        print(type(model).__name__)
        torch.save(model.state_dict(), sys.argv[2])
        """
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script, str(staged), str(tmp_path / "state.pt")], capture_output=True, text=True, env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "PemtModel"
    loaded = torch.load(tmp_path / "state.pt")
    expected = model.pemt.state_dict()
    assert loaded.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(loaded[name], tensor, rtol=0, atol=0, msg=name)
