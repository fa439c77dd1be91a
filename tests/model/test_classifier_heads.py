"""The classification heads beside the clip head: the authors' per-segment head and the CNN-only head."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pemt import PemtConfig, PemtForAudioVisualClassification

NUM_LABELS = 3


def build(seed: int = 0, **overrides) -> PemtForAudioVisualClassification:
    torch.manual_seed(seed)
    return PemtForAudioVisualClassification(PemtConfig.from_preset("tiny", num_labels=NUM_LABELS, **overrides))


def inputs(seed: int = 0, batch: int = 3) -> dict[str, torch.Tensor]:
    c = PemtConfig.from_preset("tiny")
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, c.num_segments, dtype=torch.long)
    mask[0, -1] = 0  # clip 0 has a padding segment
    return {
        "pixel_values": torch.randn(batch, c.num_segments, 3, c.frames_per_segment, c.eval_crop_size, c.eval_crop_size, generator=g),
        "audio_values": torch.randn(batch, c.num_segments, 1, c.num_mel_bins, c.audio_frames, generator=g),
        "visual_segment_mask": mask,
        "audio_segment_mask": mask.clone(),
    }


def test_segment_head_has_the_authors_settings():
    model = build(classifier_head="segment")
    assert model.segment_poolers["visual"].bias is None and model.segment_poolers["audio"].bias is None
    assert model.norm.eps == 1e-5 and model.dropout.p == 0.5
    clip = build(classifier_head="clip")
    assert clip.segment_poolers["visual"].bias is not None and clip.norm.eps == clip.config.layer_norm_eps


def test_segment_head_scores_every_segment_from_summary_and_segment_outputs():
    model = build(classifier_head="segment").eval()
    x = inputs()
    with torch.no_grad():
        output = model(**x)
        backbone = model.pemt(**x)
    hidden = backbone.multimodal_last_hidden_state
    t = x["visual_segment_mask"].shape[1]
    # By hand: [BOS_v; h_t^v] and [BOS_a; h_t^a] from the multimodal output, summed projections, LayerNorm, linear.
    visual = torch.cat([hidden[:, :1].expand(-1, t, -1), hidden[:, 1 : 1 + t]], dim=-1)
    audio = torch.cat([hidden[:, 1 + t : 2 + t].expand(-1, t, -1), hidden[:, 2 + t :]], dim=-1)
    pooled = visual @ model.segment_poolers["visual"].weight.T + audio @ model.segment_poolers["audio"].weight.T
    expected = model.classifier(F.layer_norm(pooled, pooled.shape[-1:], model.norm.weight, model.norm.bias, eps=1e-5))
    torch.testing.assert_close(output.segment_logits, expected)
    cnn = torch.cat([backbone.visual_cnn_embeddings, backbone.audio_cnn_embeddings], dim=-1)
    torch.testing.assert_close(output.cnn_segment_logits, model.cnn_classifier(cnn))


def test_segment_head_logits_are_the_log_of_the_mean_softmax_over_real_segments_and_both_heads():
    model = build(classifier_head="segment").eval()
    x = inputs()
    with torch.no_grad():
        output = model(**x)
    probabilities = (output.segment_logits.softmax(-1) + output.cnn_segment_logits.softmax(-1)) / 2
    expected = torch.stack(
        [probabilities[0, :2].mean(0), probabilities[1].mean(0), probabilities[2].mean(0)]  # clip 0: 2 real segments
    )
    torch.testing.assert_close(output.logits.softmax(-1), expected)
    torch.testing.assert_close(model.probabilities(output.logits), expected)
    # Negative control: counting the padding segment changes clip 0's probability.
    assert not torch.allclose(probabilities[0].mean(0), expected[0], atol=1e-4)


def test_segment_head_loss_sums_per_segment_cross_entropies_with_labels_repeated():
    model = build(classifier_head="segment").eval()  # eval: no dropout, so the loss can be recomputed
    x, labels = inputs(), torch.tensor([2, 0, 1])
    output = model(**x, labels=labels)
    real = x["visual_segment_mask"].bool()
    repeated = labels[:, None].expand_as(real)[real]
    expected = F.cross_entropy(output.segment_logits[real], repeated) + F.cross_entropy(output.cnn_segment_logits[real], repeated)
    torch.testing.assert_close(output.loss, expected)
    # Not the clip-level cross-entropy of the averaged logits.
    assert not torch.allclose(output.loss, F.cross_entropy(output.logits, labels) * 2, atol=1e-3)


def test_segment_head_multi_label_probabilities_are_mean_sigmoids():
    model = build(classifier_head="segment", problem_type="multi_label_classification").eval()
    with torch.no_grad():
        output = model(**inputs())
    probabilities = (output.segment_logits.sigmoid() + output.cnn_segment_logits.sigmoid()) / 2
    torch.testing.assert_close(output.logits.sigmoid()[1:], probabilities[1:].mean(1), rtol=1e-5, atol=1e-6)


def test_segment_head_loss_falls_on_data_with_signal():
    model = build(classifier_head="segment", classifier_dropout=0.0)
    x = inputs(batch=6)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    # The class is written into the clip: a brightness offset of the video and a level of the audio.
    x["pixel_values"] += labels[:, None, None, None, None, None].float()
    x["audio_values"] += labels[:, None, None, None, None].float()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        optimiser.zero_grad()
        loss = model(**x, labels=labels).loss
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("modality", ["visual", "audio"])
def test_cnn_head_uses_the_cnn_alone(modality):
    model = build(classifier_head="cnn", classifier_modality=modality).eval()
    calls = []
    model.pemt.encoder.register_forward_hook(lambda *args: calls.append(1))
    x = model.select_inputs(inputs())
    output = model(**x, labels=torch.tensor([0, 1, 2]))
    assert not calls, "the Transformers must not run"
    embed = model.pemt.embed_visual if modality == "visual" else model.pemt.embed_audio
    values, mask = (x["pixel_values"], x["visual_segment_mask"]) if modality == "visual" else (x["audio_values"], x["audio_segment_mask"])
    embeddings = embed(values, mask)
    features = (embeddings * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    torch.testing.assert_close(output.logits, model.cnn_classifier(features))
    output.loss.backward()
    assert all(p.grad is None for p in model.pemt.encoder.parameters())
    assert not any(p.requires_grad for p in model.pemt.encoder.parameters())
    cnn = model.pemt.visual_cnn if modality == "visual" else model.pemt.audio_cnn
    assert all(p.grad is not None for p in cnn.parameters())


def test_cnn_head_transformers_stay_frozen_after_loading(tmp_path):
    build(classifier_head="cnn", classifier_modality="visual").save_pretrained(tmp_path)
    loaded = PemtForAudioVisualClassification.from_pretrained(tmp_path).train()
    assert not any(p.requires_grad for p in loaded.pemt.encoder.parameters())
    assert all(p.requires_grad for p in loaded.pemt.visual_cnn.parameters())


def test_multi_margin_loss_is_torchs_with_the_authors_margin():
    model = build(classifier_head="cnn", classifier_modality="audio", classifier_loss="multi_margin").eval()
    x, labels = model.select_inputs(inputs()), torch.tensor([2, 0, 1])
    output = model(**x, labels=labels)
    expected = torch.nn.MultiMarginLoss(margin=0.1)(output.logits, labels)
    torch.testing.assert_close(output.loss, expected)
    assert not torch.allclose(output.loss, F.cross_entropy(output.logits, labels))


@pytest.mark.parametrize(("field", "value"), [("classifier_head", "pooled"), ("classifier_loss", "hinge")])
def test_unknown_head_or_loss_is_a_clear_error(field, value):
    with pytest.raises(ValueError, match=f"{field} is '{value}'; choose one of"):
        PemtConfig(**{field: value})
