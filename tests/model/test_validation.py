"""Values, configs, weights and data lists are checked up front, with errors naming the problem (issue 14, items
7, 8 and 10)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from media_fixtures import write_media
from transformers import pipeline

from pemt import PemtConfig, PemtForAudioVisualClassification, PemtForPreTraining, PemtProcessor, PemtVideoProcessor
from pemt.data.loading import load_video_folder, load_video_list, preprocess_dataset
from pemt.training import evaluate
from pemt.errors import PemtUsageError
from pemt.training.arguments import ModelArguments, load_model_config

TINY = PemtConfig.from_preset("tiny")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"share_layers": "maybe"}, "share_layers must be true or false"),
        ({"hidden_size": "64"}, "hidden_size must be an integer"),
        ({"num_segments": 0}, "num_segments must be positive"),
        ({"video_fps": -30.0}, "video_fps must be positive"),
        ({"hidden_dropout_prob": 1.5}, r"hidden_dropout_prob must lie in \[0, 1\)"),
        ({"train_short_side_range": [30, 20]}, "train_short_side_range"),
        ({"hidden_act": "swishy"}, "hidden_act"),
        ({"eval_crop_size": 24}, "crop sizes must not exceed"),
        ({"shareLayers": False}, "unknown PemtConfig field"),
    ],
)
def test_bad_config_values_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        PemtConfig.from_preset("tiny", **overrides)


def test_config_overrides_on_the_command_line_are_checked(tmp_path):
    TINY.save_pretrained(tmp_path)
    for text, message in (("share_layers=maybe", "share_layers"), ("hiden_size=64", "hiden_size")):
        for name in ("tiny", str(tmp_path)):
            with pytest.raises(ValueError, match=message):
                load_model_config(ModelArguments(model_config=name, config_overrides=text))
    # Negative control: valid overrides pass, typed as the fields are.
    config = load_model_config(ModelArguments(model_config="tiny", config_overrides="share_layers=false,low_rank_dim=0"))
    assert config.share_layers is False and config.low_rank_dim == 0


def test_a_json_that_is_not_a_pemt_config_is_rejected(tmp_path):
    other = tmp_path / "bert.json"
    other.write_text(json.dumps({"model_type": "bert", "hidden_size": 768, "vocab_size": 30522}))
    unrelated = tmp_path / "settings.json"
    unrelated.write_text(json.dumps({"learning_rate": 0.1, "epochs": 3}))
    for path in (other, unrelated):
        with pytest.raises(PemtUsageError) as info:
            load_model_config(ModelArguments(model_config=str(path)))
        assert str(path) in str(info.value)
        # The config class itself refuses them too (for callers outside the command line).
        with pytest.raises(ValueError, match="not a PEMT config"):
            PemtConfig.from_pretrained(path)


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory) -> str:
    directory = tmp_path_factory.mktemp("classifier")
    config = PemtConfig.from_preset("tiny", num_labels=2, id2label={0: "a", 1: "b"}, label2id={"a": 0, "b": 1})
    torch.manual_seed(0)
    PemtForAudioVisualClassification(config).save_pretrained(directory)
    PemtProcessor.from_model_config(config).save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory) -> str:
    directory = tmp_path_factory.mktemp("pretrained")
    torch.manual_seed(0)
    PemtForPreTraining(TINY).save_pretrained(directory)
    PemtProcessor.from_model_config(TINY).save_pretrained(directory)
    return str(directory)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"share_layers": False}, "backbone weight.*missing"), ({"low_rank_dim": 0}, "no place in the model"),
     ({"share_modalities": False}, "missing")],
)
def test_a_config_that_does_not_match_the_weights_is_an_error(classifier_dir, overrides, message):
    with pytest.raises(ValueError, match=message) as info:
        PemtForAudioVisualClassification.from_pretrained(classifier_dir, **overrides)
    assert classifier_dir in str(info.value) and "do not fit the config" in str(info.value)
    # Negative control: the same folder loads as saved.
    assert PemtForAudioVisualClassification.from_pretrained(classifier_dir).newly_initialized_heads == []


def test_a_pretraining_folder_cannot_classify(pretrained_dir, tmp_path):
    # Fine-tuning starts from it on purpose: the heads are new and listed.
    model = PemtForAudioVisualClassification.from_pretrained(pretrained_dir, num_labels=2)
    assert any(name.startswith("classifier.") for name in model.newly_initialized_heads)
    with pytest.raises(ValueError, match="classification head is not trained"):
        pipeline("audio-visual-classification", model=pretrained_dir)
    (tmp_path / "a").mkdir()
    clip = write_media(tmp_path / "a" / "x.mp4", seconds=1.0, fps=10, size=(24, 24), sample_rate=8000)
    with pytest.raises(ValueError, match="classification head is not trained"):
        evaluate.main(["--model", pretrained_dir, "--eval_dir", str(clip.parent.parent)])


def test_processor_files_missing_fields_are_an_error(classifier_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(classifier_dir, folder)
    settings = json.loads((folder / "processor_config.json").read_text())
    del settings["video_processor"]["eval_crop_size"], settings["feature_extractor"]["n_fft"]
    (folder / "processor_config.json").write_text(json.dumps(settings))
    with pytest.raises(ValueError, match="video_processor.eval_crop_size") as info:
        PemtProcessor.from_pretrained(folder)
    assert "feature_extractor.n_fft" in str(info.value) and str(folder) in str(info.value)
    assert PemtProcessor.from_pretrained(classifier_dir).video_processor.eval_crop_size == TINY.eval_crop_size


def test_crops_larger_than_the_short_side_are_rejected():
    with pytest.raises(ValueError, match="eval_crop_size"):
        PemtVideoProcessor(eval_short_side=20, eval_crop_size=32)
    with pytest.raises(ValueError, match="train_crop_size"):
        PemtVideoProcessor(train_short_side_range=(20, 24), train_crop_size=22)
    PemtVideoProcessor(train_short_side_range=(20, 24), train_crop_size=20, eval_short_side=20, eval_crop_size=20)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_media(tmp_path_factory.mktemp("clip") / "clip.mp4", seconds=1.0, fps=10, size=(24, 24), sample_rate=8000)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("no_label.csv", "path,label\n{clip},dog\n{clip},\n", r"no_label.csv, line 3: the row has no label"),
        ("short_row.csv", "path,label\n{clip},dog\n{clip}\n", r"short_row.csv, line 3: the row has no label"),
        ("header.csv", "file,class\n{clip},dog\n", r"header.csv: the header must name the column 'path'"),
        ("only_header.csv", "path,label\n", r"only_header.csv: no clips listed"),
        ("empty.csv", "", r"empty.csv: the header must name"),
        ("broken.jsonl", '{{"path": "{clip}", "label": "a"}}\n\n{{"path": "{clip}", "label": \n', r"broken.jsonl, line 3: not valid JSON"),
        ("no_path.jsonl", '{{"label": "a"}}\n', r"no_path.jsonl, line 1: the row has no path"),
    ],
)
def test_bad_clip_lists_name_the_file_and_line(tmp_path, clip, name, text, message):
    listing = tmp_path / name
    listing.write_text(text.format(clip=clip))
    with pytest.raises(ValueError, match=message):
        load_video_list(listing)


def test_missing_and_empty_folders_are_named(tmp_path):
    with pytest.raises((ValueError, FileNotFoundError), match="no such folder"):
        load_video_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no video files"):
        load_video_folder(tmp_path / "empty")


def test_a_data_set_of_only_unreadable_files_is_an_error(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
        (tmp_path / "data" / name / "x.mp4").write_text("not a video")
    dataset = load_video_folder(tmp_path / "data")
    processor = PemtProcessor.from_model_config(TINY)
    with pytest.raises(ValueError, match="None of the 2 video"):
        preprocess_dataset(dataset, processor, report_path=tmp_path / "skipped.json")
    assert len(json.loads((tmp_path / "skipped.json").read_text())) == 2


def test_push_checks_the_folder_before_contacting_the_hub(tmp_path, monkeypatch):
    import pemt.hub

    def no_network(*args, **kwargs):
        raise AssertionError("the Hub was contacted")

    monkeypatch.setattr(pemt.hub, "HfApi", no_network)
    with pytest.raises(ValueError, match="no such folder"):
        pemt.hub.push_to_hub(tmp_path / "missing", "user/model")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="processor_config.json"):
        pemt.hub.push_to_hub(tmp_path / "half", "user/model")


def test_bfloat16_model_of_a_trained_rotation_is_finite():
    # A trained Sigma has a non-zero generator; torch forms it with matrix_exp, NaN in bfloat16 on CPU at rank 16.
    torch.manual_seed(0)
    model = PemtForAudioVisualClassification(PemtConfig.from_preset("tiny", num_labels=3, low_rank_dim=16)).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("parametrizations.weight.original"):
                parameter.copy_(torch.randn_like(parameter) * 0.3)
    inputs = {"pixel_values": torch.randn(2, 3, 3, 4, 16, 16), "audio_values": torch.randn(2, 3, 1, 16, 16)}
    with torch.no_grad():
        reference = model(**inputs).logits
        half = model.to(torch.bfloat16)(**{k: v.bfloat16() for k, v in inputs.items()}).logits
    assert torch.isfinite(half).all()
    torch.testing.assert_close(half.float(), reference, atol=0.02, rtol=0.05)
