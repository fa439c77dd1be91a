"""Evaluation matches labels by name against the model's `id2label` (issue 14, item 1)."""

from __future__ import annotations

import json

import pytest
import torch
from media_fixtures import write_media

from pemt import PemtConfig, PemtForAudioVisualClassification, PemtProcessor
from pemt.training import evaluate

LABELS = {0: "cat", 1: "dog", 2: "owl"}


@pytest.fixture(scope="module")
def always_dog(tmp_path_factory) -> str:
    """A tiny classifier whose heads ignore the input and always rank "dog" first, then "owl", then "cat"."""
    directory = tmp_path_factory.mktemp("always_dog")
    config = PemtConfig.from_preset("tiny", num_labels=3, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    torch.manual_seed(0)
    model = PemtForAudioVisualClassification(config)
    with torch.no_grad():
        for head in (model.classifier, model.cnn_classifier):
            head.weight.zero_()
            head.bias.copy_(torch.tensor([0.0, 20.0, 10.0]))
    model.save_pretrained(directory)
    PemtProcessor.from_model_config(config).save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_media(tmp_path_factory.mktemp("clip") / "clip.mp4", seconds=1.2, fps=10, size=(24, 24), sample_rate=8000)


def folder_of(root, clip, classes: dict[str, int]):
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            (root / name / f"{i}.mp4").write_bytes(clip.read_bytes())
    return root


def run(model_dir, tmp_path, *source) -> dict:
    return evaluate.main(["--model", model_dir, *source, "--output_dir", str(tmp_path / "out")])


def test_a_folder_holding_one_class_is_scored_against_that_class(always_dog, clip, tmp_path):
    # The folder numbers its only class 0, which is the model's "cat": scored by number, every clip was wrong.
    folder = folder_of(tmp_path / "eval", clip, {"dog": 3})
    assert run(always_dog, tmp_path, "--eval_dir", str(folder))["top1_accuracy"] == 1.0
    # Negative control: clips of a class the model never predicts score 0; top-5 (of 3 classes) still covers it.
    other = folder_of(tmp_path / "eval_cat", clip, {"cat": 2})
    results = run(always_dog, tmp_path, "--eval_dir", str(other))
    assert results["top1_accuracy"] == 0.0 and results["top5_accuracy"] == 1.0


def test_confusion_matrix_rows_follow_the_model_classes(always_dog, clip, tmp_path):
    folder = folder_of(tmp_path / "eval", clip, {"owl": 1, "dog": 2})
    results = run(always_dog, tmp_path, "--eval_dir", str(folder))
    assert results["top1_accuracy"] == pytest.approx(2 / 3)
    # Rows are true classes in the model's order (cat, dog, owl), columns predictions: all predicted "dog".
    assert results["confusion_matrix"] == [[0, 0, 0], [0, 2, 0], [0, 1, 0]]


def test_a_list_file_is_matched_by_name(always_dog, clip, tmp_path):
    listing = tmp_path / "eval.csv"
    listing.write_text(f"path,label\n{clip},dog\n{clip},owl\n")
    assert run(always_dog, tmp_path, "--eval_file", str(listing))["top1_accuracy"] == 0.5
    jsonl = tmp_path / "eval.jsonl"
    jsonl.write_text(json.dumps({"path": str(clip), "label": "dog"}) + "\n")
    assert run(always_dog, tmp_path, "--eval_file", str(jsonl))["top1_accuracy"] == 1.0


def test_an_unknown_label_is_an_error_naming_it(always_dog, clip, tmp_path):
    folder = folder_of(tmp_path / "eval", clip, {"dog": 1, "zebra": 1})
    with pytest.raises(ValueError, match="'zebra'") as info:
        run(always_dog, tmp_path, "--eval_dir", str(folder))
    assert "'dog'" not in str(info.value).split("classes")[0] and str(folder) in str(info.value)


def test_fine_tuning_numbers_a_separate_evaluation_folder_by_the_training_classes(clip, tmp_path):
    import dataclasses

    from pemt.training.data_setup import DataArguments, load_raw_splits

    train = folder_of(tmp_path / "train", clip, {"cat": 1, "dog": 1, "owl": 1})
    held_out = folder_of(tmp_path / "held_out", clip, {"owl": 2})
    args = DataArguments(train_dir=str(train), eval_dir=str(held_out))
    _, evaluation = load_raw_splits(args)
    assert evaluation.features["label"].names == ["cat", "dog", "owl"] and evaluation["label"] == [2, 2]
    unknown = folder_of(tmp_path / "unknown", clip, {"emu": 1})
    with pytest.raises(ValueError, match="'emu'"):
        load_raw_splits(dataclasses.replace(args, eval_dir=str(unknown)))
