"""transformers conventions a user relies on: dtype loading, the orthogonal parametrisation's compatibility with
torch's, attention back-ends, standard output fields, and evaluation with `Trainer`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.parametrizations import orthogonal

from pemt import PemtConfig, PemtForAudioVisualClassification, PemtModel
from pemt.model.sharing import _orthogonal_linear, random_rotation_generator


def tiny_inputs(config: PemtConfig, batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t, side = config.num_segments, config.eval_crop_size
    return {
        "pixel_values": torch.randn(batch, t, 3, config.frames_per_segment, side, side, generator=g),
        "audio_values": torch.randn(batch, t, 1, config.num_mel_bins, config.audio_frames, generator=g),
    }


@pytest.fixture(scope="module")
def saved_classifier(tmp_path_factory):
    torch.manual_seed(0)
    config = PemtConfig.from_preset("tiny", num_labels=3)
    model = PemtForAudioVisualClassification(config).eval()
    directory = tmp_path_factory.mktemp("classifier")
    model.save_pretrained(directory)
    return model, directory


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_from_pretrained_with_dtype_keeps_sigma_and_gives_close_logits(saved_classifier, dtype):
    model, directory = saved_classifier
    loaded, info = PemtForAudioVisualClassification.from_pretrained(directory, dtype=dtype, output_loading_info=True)
    assert not info["unexpected_keys"] and not info["missing_keys"]
    assert loaded.dtype == dtype
    rotation = loaded.pemt.encoder.shared.layers[0].attention.query.private_rotation[1]
    reference = model.pemt.encoder.shared.layers[0].attention.query.private_rotation[1]
    # Sigma is formed in float32 from the half-precision parameters: a rotation to their rounding, and the saved one.
    torch.testing.assert_close(rotation.weight, reference.weight, atol=2e-2, rtol=0)
    assert rotation.weight.dtype == torch.float32
    x = tiny_inputs(model.config)
    with torch.no_grad():
        expected = model(**x).logits
        # Half-precision Conv3d has no CPU kernel in every torch build: the Transformers' path is what is checked, so
        # the CNN embeddings come from the float32 model.
        cnn = model.pemt(**x)
        logits = loaded.pemt(
            visual_cnn_embeddings=cnn.visual_cnn_embeddings.to(dtype), audio_cnn_embeddings=cnn.audio_cnn_embeddings.to(dtype)
        ).last_hidden_state
    assert logits.dtype == dtype and torch.isfinite(logits).all()
    torch.testing.assert_close(logits.float(), cnn.last_hidden_state, atol=0.1, rtol=0.05)
    # Negative control: another model's outputs are far from these.
    torch.manual_seed(5)
    other = PemtModel(model.config).eval()
    with torch.no_grad():
        far = other(**x).last_hidden_state
    assert (far - cnn.last_hidden_state).abs().max() > 0.5
    assert expected.shape == (2, 3)


def test_to_dtype_and_back_keeps_the_parametrised_weights(saved_classifier):
    model, directory = saved_classifier
    copy = PemtForAudioVisualClassification.from_pretrained(directory).eval()
    copy.to(torch.bfloat16)
    rotation = copy.pemt.encoder.shared.layers[0].output.private_rotation[2]
    assert rotation.parametrizations.weight.original.dtype == torch.bfloat16
    assert rotation.parametrizations.weight[0].base.dtype == torch.bfloat16
    sigma = rotation.weight
    torch.testing.assert_close(sigma @ sigma.T, torch.eye(sigma.shape[0]), atol=3e-2, rtol=0)
    copy.to(torch.float32)
    x = tiny_inputs(model.config)
    with torch.no_grad():
        torch.testing.assert_close(copy(**x).logits, model(**x).logits, atol=0.05, rtol=0.05)


def test_parametrisation_reads_checkpoints_of_torch_orthogonal():
    """Checkpoints saved before pemt had its own parametrisation hold torch's `orthogonal` keys and values."""
    torch.manual_seed(0)
    theirs = orthogonal(nn.Linear(8, 8, bias=False))
    with torch.no_grad():
        theirs.weight = nn.init.orthogonal_(torch.empty(8, 8))  # a random `base`
        theirs.parametrizations.weight.original.add_(0.3 * torch.randn(8, 8))  # as if trained
    ours = _orthogonal_linear(8)
    ours.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(ours.weight, theirs.weight)
    # Negative control: without the checkpoint our fresh map is the identity, not their matrix.
    assert not torch.allclose(_orthogonal_linear(8).weight, theirs.weight, atol=0.1)


def test_initial_sigma_is_a_random_rotation_held_by_original():
    torch.manual_seed(0)
    original = random_rotation_generator(64)
    sigma = torch.matrix_exp((original - original.T).double())
    torch.testing.assert_close(sigma @ sigma.T, torch.eye(64, dtype=torch.float64), atol=1e-10, rtol=0)
    # Far from the identity: a Haar rotation's diagonal averages about 0 (|mean| ~ 1/sqrt(n)), the identity's 1.
    assert sigma.diagonal().mean().abs() < 0.3
    model = PemtModel(PemtConfig.from_preset("tiny"))
    rotation = model.encoder.shared.layers[0].attention.key.private_rotation[0]
    torch.testing.assert_close(rotation.parametrizations.weight[0].base, torch.eye(8))
    assert rotation.weight.diagonal().mean() < 0.9


def test_eager_attention_is_selectable_and_returns_probabilities():
    torch.manual_seed(0)
    config = PemtConfig.from_preset("tiny")
    model = PemtModel(config).eval()
    x = tiny_inputs(config)
    with torch.no_grad():
        sdpa = model(**x).last_hidden_state
        model.set_attn_implementation("eager")
        assert model.config._attn_implementation == "eager"
        out = model(**x, output_attentions=True)
    torch.testing.assert_close(out.last_hidden_state, sdpa, atol=1e-5, rtol=1e-4)
    assert out.attentions is out.multimodal_attentions and len(out.attentions) == config.num_hidden_layers
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(2, config.num_attention_heads, 2 + 2 * config.num_segments))


def test_classifier_tuple_output_and_trainer_evaluate_with_compute_metrics(tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    config = PemtConfig.from_preset("tiny", num_labels=3)
    model = PemtForAudioVisualClassification(config).eval()
    x = tiny_inputs(config, batch=4)
    labels = torch.tensor([0, 1, 2, 1])
    as_tuple = model(**x, labels=labels, return_dict=False)
    assert len(as_tuple) == 2 and as_tuple[1].shape == (4, 3)  # loss and logits: no nested backbone output

    rows = [{key: value[i] for key, value in x.items()} | {"labels": labels[i]} for i in range(4)]
    dataset = Dataset.from_list(rows).with_format("torch")
    seen = {}

    def compute_metrics(prediction):
        seen["shape"] = np.asarray(prediction.predictions).shape
        return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}

    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=2, report_to=[], use_cpu=True)
    metrics = Trainer(model=model, args=args, eval_dataset=dataset, compute_metrics=compute_metrics).evaluate()
    assert seen["shape"] == (4, 3)
    with torch.no_grad():
        expected = float((model(**x).logits.argmax(-1) == labels).float().mean())
    assert metrics["eval_accuracy"] == pytest.approx(expected)
