"""Fine-tuning and evaluation on the demo data, and the metrics against scikit-learn."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import ModelCard
import torch
from sklearn.metrics import average_precision_score, top_k_accuracy_score
from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix

from pemt import PemtForAudioVisualClassification, PemtForPreTraining
from pemt.training import evaluate, finetune
from pemt.training.metrics import confusion_matrix, mean_average_precision, top_k_accuracy
from saved_models import save_tiny_pretrained


@pytest.fixture(scope="module")
def pretrained_tiny(tmp_path_factory) -> str:
    """A tiny model saved by the pretraining class, with its processor, as `pemt pretrain` leaves it."""
    return save_tiny_pretrained(tmp_path_factory.mktemp("pretrained"))


def run_finetune(output_dir, demo_data, cache, pretrained, *extra) -> dict:
    return finetune.main(
        [
            "--output_dir", str(output_dir), "--train_dir", str(demo_data), "--cache_dir", str(cache),
            "--model_name_or_path", pretrained, "--no_progress_bar", "--logging_steps", "5",
            "--checkpointing_steps", "1000", *extra,
        ]
    )


def test_finetuning_a_pretrained_tiny_model_learns_the_demo_classes(
    tmp_path, demo_data, preprocessing_cache, pretrained_tiny
):
    results = run_finetune(
        tmp_path, demo_data, preprocessing_cache, pretrained_tiny,
        "--max_steps", "60", "--per_device_train_batch_size", "8", "--learning_rate", "1e-3",
        "--head_learning_rate", "3e-3", "--num_temporal_views", "2",
    )
    # 4 classes: chance is 0.25.
    assert results["top1_accuracy"] >= 0.6, results
    assert results["num_clips"] == 24 and results["num_temporal_views"] == 2
    saved = json.loads((tmp_path / "eval_results.json").read_text())
    assert saved["top1_accuracy"] == results["top1_accuracy"]
    for name in ("model.safetensors", "config.json", "processor_config.json", "README.md", "confusion_matrix.png",
                 "finetuning.png", "training_args.json"):
        assert (tmp_path / name).exists(), name
    card = ModelCard.load(tmp_path / "README.md").data
    assert card.pipeline_tag == "video-classification"
    assert card.eval_results[0].metric_value == round(results["top1_accuracy"], 4)
    model = PemtForAudioVisualClassification.from_pretrained(tmp_path)
    assert model.config.id2label[0] == "checker_chirp" and model.config.num_labels == 4


@pytest.mark.parametrize(
    ("extra", "metric"),
    [
        (["--modality", "visual"], "top1_accuracy"),
        (["--modality", "audio"], "top1_accuracy"),
        (["--linear_probe"], "top1_accuracy"),
        (["--problem_type", "multi_label_classification"], "mAP"),
    ],
)
def test_each_mode_and_problem_type_trains_and_evaluates(
    tmp_path, demo_data, preprocessing_cache, pretrained_tiny, extra, metric
):
    results = run_finetune(tmp_path, demo_data, preprocessing_cache, pretrained_tiny, "--max_steps", "3", *extra)
    assert 0.0 <= results[metric] <= 1.0
    model = PemtForAudioVisualClassification.from_pretrained(tmp_path)
    if "--modality" in extra:
        assert model.config.classifier_modality == extra[1]
    if "--problem_type" in extra:
        assert model.config.problem_type == "multi_label_classification"


def test_linear_probe_leaves_the_backbone_untouched(tmp_path, demo_data, preprocessing_cache, pretrained_tiny):
    run_finetune(tmp_path, demo_data, preprocessing_cache, pretrained_tiny, "--max_steps", "3", "--linear_probe")
    before = PemtForPreTraining.from_pretrained(pretrained_tiny).pemt.state_dict()
    after = PemtForAudioVisualClassification.from_pretrained(tmp_path).pemt.state_dict()
    for name, tensor in before.items():
        torch.testing.assert_close(after[name], tensor, rtol=0, atol=0, msg=name)


def test_evaluate_command_writes_results(tmp_path, demo_data, preprocessing_cache, pretrained_tiny):
    run_finetune(tmp_path / "model", demo_data, preprocessing_cache, pretrained_tiny, "--max_steps", "2")
    results = evaluate.main(["--model", str(tmp_path / "model"), "--eval_dir", str(demo_data), "--output_dir", str(tmp_path / "eval")])
    assert set(results) >= {"top1_accuracy", "top5_accuracy", "confusion_matrix"}
    assert sum(map(sum, results["confusion_matrix"])) == 24
    assert results["top5_accuracy"] == 1.0  # four classes: every label is within the top five
    assert (tmp_path / "eval" / "confusion_matrix.png").exists()


def test_metrics_equal_scikit_learn():
    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(50, 7, generator=generator)
    labels = torch.randint(0, 7, (50,), generator=generator)
    for k in (1, 3, 5):
        expected = top_k_accuracy_score(labels.numpy(), scores.numpy(), k=k, labels=list(range(7)))
        assert top_k_accuracy(scores, labels, k) == pytest.approx(expected)
    predictions = scores.argmax(dim=1)
    assert confusion_matrix(predictions, labels, 7).tolist() == sklearn_confusion_matrix(
        labels.numpy(), predictions.numpy(), labels=list(range(7))
    ).tolist()
    # Multi-label, with ties in the scores (rounded) to exercise their handling.
    targets = (torch.rand(50, 7, generator=generator) < 0.3).long()
    rounded = (scores * 4).round() / 4
    expected = average_precision_score(targets.numpy(), rounded.numpy(), average="macro")
    assert mean_average_precision(rounded, targets) == pytest.approx(expected, abs=1e-6)


def finetune_args(pretrained: str, overrides: str):
    """(model arguments, classification arguments) of `pemt finetune` starting from `pretrained`."""
    model_args, _, _, task = finetune.parse_finetuning_arguments(
        ["--output_dir", "unused", "--train_dir", "unused", "--model_name_or_path", pretrained,
         *(["--config_overrides", overrides] if overrides else [])]
    )
    return model_args, task


def test_config_overrides_apply_on_top_of_a_pretrained_model(pretrained_tiny):
    # The paper pretrains with more segments than it fine-tunes with: 3 -> 2 here.
    model_args, task = finetune_args(pretrained_tiny, "num_segments=2,hidden_dropout_prob=0.2")
    model = finetune.build_model(model_args, task, {0: "a", 1: "b"})
    assert model.config.num_segments == 2 and model.config.hidden_dropout_prob == 0.2
    assert model.config.num_labels == 2 and model.config.id2label == {0: "a", 1: "b"}
    assert finetune.load_processor(model_args).num_segments == 2
    # The backbone is the pretrained one, not a fresh initialisation.
    pretrained = PemtForPreTraining.from_pretrained(pretrained_tiny).pemt
    torch.testing.assert_close(model.pemt.visual_embeddings.projection.weight, pretrained.visual_embeddings.projection.weight)
    # Negative control: without overrides the pretrained settings stay.
    plain = finetune.build_model(*finetune_args(pretrained_tiny, ""), {0: "a", 1: "b"})
    assert plain.config.num_segments == 3 and plain.config.hidden_dropout_prob == 0.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [("num_segments=9", "8 position slots"), ("hidden_size=64", "cannot change hidden_size"), ("nonsense=1", "nonsense")],
)
def test_config_overrides_that_cannot_apply_to_a_pretrained_model_are_refused(pretrained_tiny, overrides, message):
    with pytest.raises(ValueError, match=message):
        finetune.build_model(*finetune_args(pretrained_tiny, overrides), {0: "a"})
