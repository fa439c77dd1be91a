"""Model tests on the tiny preset: shapes, masks, attention back-ends, checkpointing, sharing, save/load."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from pemt import PemtConfig, PemtForAudioVisualClassification, PemtForPreTraining, PemtModel
from pemt.model.modeling_pemt import PemtLayer
from pemt.model.sharing import PemtEncoder, PemtSharedLinear

# Paper-size "Transformers" parameter counts of SPEC.md, keyed by (share_layers, share_modalities, low_rank_dim).
SPEC_COUNTS = {
    (False, False, 0): 127.58e6,
    (True, False, 0): 21.26e6,
    (False, True, 0): 42.53e6,
    (True, True, 0): 7.09e6,
    (True, True, 128): 3.84e6,
    (False, True, 128): 23.06e6,
}


class PemtModelTester:
    """Builds tiny configs and inputs; `segments` lets a test pad clips with extra segments."""

    def __init__(self, batch_size: int = 2, **overrides):
        self.batch_size = batch_size
        self.config = PemtConfig.from_preset("tiny", **overrides)

    def inputs(self, segments: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
        c, b = self.config, self.batch_size
        t = segments or c.num_segments
        g = torch.Generator().manual_seed(seed)
        return {
            "pixel_values": torch.randn(b, t, 3, c.frames_per_segment, c.eval_crop_size, c.eval_crop_size, generator=g),
            "audio_values": torch.randn(b, t, 1, c.num_mel_bins, c.audio_frames, generator=g),
            "visual_segment_mask": torch.ones(b, t, dtype=torch.long),
            "audio_segment_mask": torch.ones(b, t, dtype=torch.long),
        }


def seeded(cls, config, seed=0):
    torch.manual_seed(seed)
    return cls(config)


@pytest.fixture
def tester():
    return PemtModelTester()


# --- shapes -----------------------------------------------------------------------------------------------------


def test_backbone_output_shapes_for_each_modality_mode(tester):
    c, b, t = tester.config, tester.batch_size, tester.config.num_segments
    model = seeded(PemtModel, c).eval()
    x = tester.inputs()
    both = model(**x)
    assert both.visual_cnn_embeddings.shape == (b, t, c.visual_embedding_dim)
    assert both.audio_cnn_embeddings.shape == (b, t, c.audio_embedding_dim)
    assert both.visual_last_hidden_state.shape == (b, 1 + t, c.hidden_size)
    assert both.audio_last_hidden_state.shape == (b, 1 + t, c.hidden_size)
    assert both.multimodal_last_hidden_state.shape == (b, 2 + 2 * t, c.hidden_size)
    assert both.multimodal_summary.shape == (b, 2, c.hidden_size)
    torch.testing.assert_close(both.visual_summary, both.visual_last_hidden_state[:, 0])
    torch.testing.assert_close(both.multimodal_summary[:, 1], both.multimodal_last_hidden_state[:, 1 + t])

    visual_only = model(pixel_values=x["pixel_values"])
    assert visual_only.audio_last_hidden_state is None and visual_only.multimodal_last_hidden_state is None
    # A modality's own Transformer does not see the other modality.
    torch.testing.assert_close(visual_only.visual_last_hidden_state, both.visual_last_hidden_state)
    audio_only = model(audio_values=x["audio_values"])
    assert audio_only.visual_last_hidden_state is None
    torch.testing.assert_close(audio_only.audio_last_hidden_state, both.audio_last_hidden_state)

    with pytest.raises(ValueError, match="pixel_values, audio_values"):
        model()


def test_hidden_states_and_attentions_when_asked(tester):
    c, b, t = tester.config, tester.batch_size, tester.config.num_segments
    out = seeded(PemtModel, c).eval()(**tester.inputs(), output_hidden_states=True, output_attentions=True)
    assert len(out.multimodal_hidden_states) == c.num_hidden_layers + 1
    assert len(out.visual_attentions) == c.num_hidden_layers
    assert out.multimodal_attentions[0].shape == (b, c.num_attention_heads, 2 + 2 * t, 2 + 2 * t)
    torch.testing.assert_close(out.visual_attentions[-1].sum(-1), torch.ones(b, c.num_attention_heads, 1 + t))
    torch.testing.assert_close(out.visual_hidden_states[-1], out.visual_last_hidden_state)


@pytest.mark.parametrize("modality", ["audio-visual", "visual", "audio"])
def test_classifier_shapes_and_loss_for_each_modality(modality):
    tester = PemtModelTester(num_labels=5, classifier_modality=modality)
    model = seeded(PemtForAudioVisualClassification, tester.config)
    x = tester.inputs()
    if modality == "visual":
        x = {k: v for k, v in x.items() if k.startswith(("pixel", "visual"))}
    elif modality == "audio":
        x = {k: v for k, v in x.items() if k.startswith("audio")}
    labels = torch.tensor([1, 4])
    out = model(**x, labels=labels)
    assert out.logits.shape == (2, 5)
    torch.testing.assert_close(out.loss, nn.functional.cross_entropy(out.logits, labels))
    out.loss.backward()
    assert model.pemt.encoder.shared.layers[0].output.shared_up.weight.grad is not None


def test_classifier_requires_the_inputs_of_its_modality():
    tester = PemtModelTester(num_labels=3, classifier_modality="audio-visual")
    model = seeded(PemtForAudioVisualClassification, tester.config)
    x = tester.inputs()
    with pytest.raises(ValueError, match="audio inputs are required"):
        model(pixel_values=x["pixel_values"])


def test_multi_label_classification_uses_binary_cross_entropy():
    tester = PemtModelTester(num_labels=4, problem_type="multi_label_classification")
    model = seeded(PemtForAudioVisualClassification, tester.config)
    labels = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    out = model(**tester.inputs(), labels=labels)
    torch.testing.assert_close(out.loss, nn.functional.binary_cross_entropy_with_logits(out.logits, labels))


def test_pretraining_outputs_losses_and_accuracies():
    tester = PemtModelTester(batch_size=4)
    model = seeded(PemtForPreTraining, tester.config)
    x = tester.inputs()
    x["pixel_values"] = x["pixel_values"][..., : tester.config.train_crop_size, : tester.config.train_crop_size]
    out = model(**x)
    parts = out.visual_mep_loss + out.audio_mep_loss + out.multimodal_mep_loss + out.cpp_loss
    torch.testing.assert_close(out.loss, parts)
    assert 0.0 <= float(out.mep_accuracy) <= 1.0 and 0.0 <= float(out.cpp_accuracy) <= 1.0
    assert out.cpp_logits.shape == (4,)
    out.loss.backward()
    assert model.pemt.visual_cnn.stem[0].weight.grad.abs().sum() > 0, "pretraining must train the CNNs end to end"


# --- masks ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("train_mode", [False, True])
def test_padding_with_masked_segments_leaves_real_outputs_unchanged(tester, train_mode):
    model = seeded(PemtModel, tester.config).train(train_mode)
    t = tester.config.num_segments
    short = tester.inputs(segments=t)
    padded = tester.inputs(segments=t + 2, seed=1)
    for key in short:
        padded[key][:, :t] = short[key]
    padded["visual_segment_mask"][:, t:] = 0
    padded["audio_segment_mask"][:, t:] = 0
    a, b = model(**short), model(**padded)
    torch.testing.assert_close(b.visual_last_hidden_state[:, : 1 + t], a.visual_last_hidden_state)
    torch.testing.assert_close(b.audio_last_hidden_state[:, : 1 + t], a.audio_last_hidden_state)
    real = torch.cat([torch.arange(1 + t), 1 + t + 2 + torch.arange(1 + t)])
    torch.testing.assert_close(b.multimodal_last_hidden_state[:, real], a.multimodal_last_hidden_state)
    assert torch.all(b.visual_cnn_embeddings[:, t:] == 0)


def test_clip_without_audio_track_is_masked_out(tester):
    model = seeded(PemtModel, tester.config).eval()
    x = tester.inputs()
    x["audio_segment_mask"][0] = 0
    changed = {**x, "audio_values": x["audio_values"].clone()}
    changed["audio_values"][0] = 100.0
    torch.testing.assert_close(model(**x).multimodal_summary[0], model(**changed).multimodal_summary[0])


# --- attention back-ends and checkpointing ------------------------------------------------------------------------


def test_sdpa_and_eager_attention_agree(tester):
    x = tester.inputs()
    x["visual_segment_mask"][1, -1] = 0
    model = seeded(PemtModel, tester.config).eval()
    assert model.config._attn_implementation == "sdpa"
    sdpa = model(**x)
    model.set_attn_implementation("eager")
    eager = model(**x)
    torch.testing.assert_close(sdpa.multimodal_last_hidden_state, eager.multimodal_last_hidden_state, atol=1e-5, rtol=1e-4)


def _gradients(model: nn.Module, inputs: dict) -> dict[str, torch.Tensor]:
    model.zero_grad()
    out = model(**inputs)
    readout = torch.randn(out.multimodal_last_hidden_state.shape, generator=torch.Generator().manual_seed(0))
    ((out.multimodal_last_hidden_state * readout).sum() + out.visual_cnn_embeddings.square().mean()).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_the_same_gradients(tester):
    model = seeded(PemtModel, tester.config).train()
    x = tester.inputs()
    reference = _gradients(model, x)
    model.gradient_checkpointing_enable()
    assert all(layer.gradient_checkpointing for layer in model.encoder.shared.layers)
    checkpointed = _gradients(model, x)
    assert reference.keys() == checkpointed.keys()
    for name in reference:
        torch.testing.assert_close(checkpointed[name], reference[name], msg=name)


def test_chunked_cnns_match_unchunked_in_eval_mode(tester):
    plain = seeded(PemtModel, tester.config).eval()
    chunked = seeded(PemtModel, PemtConfig.from_preset("tiny", cnn_chunk_size=1, cnn_checkpointing=True)).eval()
    chunked.load_state_dict(plain.state_dict())
    x = tester.inputs()
    torch.testing.assert_close(chunked(**x).visual_cnn_embeddings, plain(**x).visual_cnn_embeddings)


def test_checkpointed_cnn_chunks_give_the_same_gradients_and_update_batchnorm_once(tester):
    # Batch statistics depend on which segments BatchNorm sees together, so compare equal chunking with and
    # without recomputation.
    unchecked = seeded(PemtModel, PemtConfig.from_preset("tiny", cnn_chunk_size=2)).train()
    checked = seeded(PemtModel, PemtConfig.from_preset("tiny", cnn_chunk_size=2, cnn_checkpointing=True)).train()
    checked.load_state_dict(unchecked.state_dict())
    x = tester.inputs()
    reference = _gradients(unchecked, x)
    grads = _gradients(checked, x)
    assert reference.keys() == grads.keys()
    for name in reference:
        torch.testing.assert_close(grads[name], reference[name], msg=name)

    chunks = -(-tester.batch_size * tester.config.num_segments // 2)
    for model in (checked, unchecked):
        assert model.visual_cnn.stem[1].num_batches_tracked.item() == chunks, "one update per chunk, not two"
    for (name, a), b in zip(checked.state_dict().items(), unchecked.state_dict().values()):
        if "running" in name:
            torch.testing.assert_close(a, b, msg=name)


# --- parameter sharing ------------------------------------------------------------------------------------------


def _count_calls(module: nn.Module) -> list:
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_layer_sharing_applies_one_layer_at_every_depth():
    tester = PemtModelTester(share_layers=True)
    model = seeded(PemtModel, tester.config).eval()
    layers = model.encoder.shared.layers
    assert len(layers) == 1
    calls = _count_calls(layers[0])
    model(**tester.inputs())
    assert len(calls) == 3 * tester.config.num_hidden_layers  # visual, audio, multimodal

    unshared = seeded(PemtModel, PemtModelTester(share_layers=False).config)
    layers = unshared.encoder.shared.layers
    assert len(layers) == tester.config.num_hidden_layers
    assert layers[0].attention.query.shared_up.weight is not layers[1].attention.query.shared_up.weight


def test_cross_modal_sharing_keeps_private_parts_private():
    tester = PemtModelTester(share_modalities=True, low_rank_dim=8)
    model = seeded(PemtModel, tester.config)
    linear = model.encoder.shared.layers[0].attention.query
    assert len(linear.private_down) == 3 and len(linear.private_rotation) == 3
    # A visual-only forward trains the shared factor and the visual private parts, nothing of the audio ones.
    summary = model(pixel_values=tester.inputs()["pixel_values"]).visual_summary
    # A random readout: the plain sum of a LayerNorm output has zero gradient at initialisation.
    (summary * torch.randn(summary.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
    assert linear.shared_up.weight.grad.abs().sum() > 0
    assert linear.private_down[0].weight.grad.abs().sum() > 0
    assert linear.private_down[1].weight.grad is None and linear.private_down[2].weight.grad is None


@pytest.mark.parametrize("share_layer_norms", [True, False])
def test_layer_norms_are_shared_across_modalities_or_private(share_layer_norms):
    tester = PemtModelTester(share_layer_norms=share_layer_norms)
    model = seeded(PemtModel, tester.config)
    layer = model.encoder.shared.layers[0]
    assert len(layer.attention_norm) == len(layer.output_norm) == (1 if share_layer_norms else 3)
    summary = model(audio_values=tester.inputs()["audio_values"]).audio_summary
    (summary * torch.randn(summary.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
    # An audio-only forward trains the one shared LayerNorm, or only the audio one of three private ones.
    used = 0 if share_layer_norms else 1
    for norms in (layer.attention_norm, layer.output_norm):
        for index, norm in enumerate(norms):
            assert (norm.weight.grad is not None) == (index == used)
    # Changing the audio Transformer's LayerNorm changes the visual output too when it is shared, not when private.
    inputs = tester.inputs()
    model.eval()
    with torch.no_grad():
        before = model(**inputs)
        layer.output_norm[used].bias.add_(0.5)
        after = model(**inputs)
    assert not torch.allclose(before.audio_summary, after.audio_summary)
    assert torch.allclose(before.visual_summary, after.visual_summary) == (not share_layer_norms)


def test_a_model_saved_before_share_layer_norms_existed_loads_with_private_layer_norms(tmp_path, tester):
    model = seeded(PemtModel, PemtModelTester(share_layer_norms=False).config).eval()
    model.save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    saved = json.loads(config_file.read_text())
    for field in ("share_layer_norms", "classifier_head", "classifier_dropout", "classifier_layer_norm_eps",
                  "classifier_loss", "classifier_margin"):
        saved.pop(field)
    config_file.write_text(json.dumps(saved))
    loaded, info = PemtModel.from_pretrained(tmp_path, output_loading_info=True)
    assert loaded.config.share_layer_norms is False
    # Also when other new fields are passed as overrides (as `pemt finetune --authors_protocol` does).
    assert PemtConfig.from_pretrained(tmp_path, classifier_head="segment").share_layer_norms is False
    assert not info["missing_keys"] and not info["unexpected_keys"]
    x = tester.inputs()
    torch.testing.assert_close(loaded.eval()(**x).multimodal_last_hidden_state, model(**x).multimodal_last_hidden_state, rtol=1e-6, atol=1e-6)
    # A config saved now keeps its layout.
    assert PemtConfig.from_dict(PemtConfig().to_dict()).share_layer_norms is True


def test_paper_size_transformers_with_shared_layer_norms_have_the_authors_parameter_count():
    counts = {}
    for share_layer_norms in (True, False):
        with torch.device("meta"):
            encoder = PemtEncoder(PemtConfig(share_layer_norms=share_layer_norms), PemtLayer)
        counts[share_layer_norms] = sum(p.numel() for p in encoder.parameters())
    # The authors' AVBERT Transformer (layer + cross-modal sharing, rank 128), counted in their code.
    assert counts[True] == 3_843_840
    # Private LayerNorms: two more LayerNorms (2 x 768 parameters each) for each of two more modalities.
    assert counts[False] - counts[True] == 2 * 2 * 2 * 768


def test_without_cross_modal_sharing_each_modality_has_its_own_transformer():
    tester = PemtModelTester(share_modalities=False)
    encoder = seeded(PemtModel, tester.config).encoder
    stacks = encoder.per_modality
    assert len(stacks) == 3
    ids = [{id(p) for p in stack.parameters()} for stack in stacks]
    assert not (ids[0] & ids[1]) and not (ids[1] & ids[2]) and not (ids[0] & ids[2])
    assert len(stacks[0].layers[0].attention.query.private_down) == 1


def test_full_rank_sharing_uses_one_dense_matrix():
    config = PemtModelTester(low_rank_dim=0).config
    linear = seeded(PemtModel, config).encoder.shared.layers[0].intermediate
    assert isinstance(linear.dense, nn.Linear) and not hasattr(linear, "private_down")
    x = torch.randn(3, config.hidden_size)
    torch.testing.assert_close(linear(x, 0), linear(x, 2))


def test_low_rank_linear_matches_its_definition():
    linear = PemtSharedLinear(6, 5, num_modalities=2, low_rank_dim=4)
    x = torch.randn(7, 6)
    v, sigma, u = linear.private_down[1].weight, linear.private_rotation[1].weight, linear.shared_up
    expected = nn.functional.normalize(x @ v.T, dim=-1) @ sigma.T @ u.weight.T + u.bias
    torch.testing.assert_close(linear(x, 1), expected)


def test_sigma_stays_orthogonal_after_optimiser_steps(tester):
    model = seeded(PemtForAudioVisualClassification, PemtConfig.from_preset("tiny", num_labels=3))
    optimiser = torch.optim.AdamW(model.parameters(), lr=0.05)
    x = tester.inputs()
    rotation = model.pemt.encoder.shared.layers[0].output.private_rotation[2]
    before = rotation.weight.detach().clone()
    for _ in range(5):
        optimiser.zero_grad()
        model(**x, labels=torch.tensor([0, 2])).loss.backward()
        optimiser.step()
    sigma = rotation.weight.detach()
    assert not torch.allclose(sigma, before), "Sigma must be trained"
    torch.testing.assert_close(sigma @ sigma.T, torch.eye(sigma.shape[0]), atol=1e-5, rtol=0)


def test_bf16_autocast_trains_and_computes_sigma_in_float32():
    # The audio classifier: oneDNN's bfloat16 Conv3d backward (torch 2.13, CPU) returns NaN or stalls for minutes at
    # tiny temporal extents, which the tiny visual CNN has; paper sizes are unaffected. What this test guards is the
    # Transformers' path, which is the same for every modality.
    tester = PemtModelTester()
    model = seeded(PemtForAudioVisualClassification, PemtConfig.from_preset("tiny", num_labels=3, classifier_modality="audio"))
    linear = model.pemt.encoder.shared.layers[0].output
    inputs_of_up, sigmas = [], []
    hooks = [
        linear.shared_up.register_forward_hook(lambda module, args, out: inputs_of_up.append(args[0])),
        linear.private_rotation[1].parametrizations.weight.register_forward_hook(lambda m, a, out: sigmas.append(out)),
    ]
    audio = {k: v for k, v in tester.inputs().items() if k.startswith("audio")}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(**audio, labels=torch.tensor([0, 2]))
    for hook in hooks:
        hook.remove()
    output.loss.backward()
    assert output.logits.dtype == inputs_of_up[0].dtype == torch.bfloat16, "autocast must reach the layers"
    sigma = sigmas[0]
    assert sigma.dtype == torch.float32
    torch.testing.assert_close(sigma @ sigma.T, torch.eye(sigma.shape[0]), atol=1e-5, rtol=0)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize(("share_layers", "share_modalities", "low_rank_dim"), list(SPEC_COUNTS))
def test_paper_size_transformer_parameter_counts_match_spec(share_layers, share_modalities, low_rank_dim):
    config = PemtConfig(share_layers=share_layers, share_modalities=share_modalities, low_rank_dim=low_rank_dim)
    with torch.device("meta"):
        encoder = PemtEncoder(config, PemtLayer)
    count = sum(p.numel() for p in encoder.parameters())
    expected = SPEC_COUNTS[(share_layers, share_modalities, low_rank_dim)]
    tolerance = 0.05 if low_rank_dim else 0.01
    assert abs(count - expected) / expected < tolerance, f"{count / 1e6:.2f}M vs {expected / 1e6:.2f}M"


def test_encoder_attribute_holds_transformer_layers_only(tester):
    model = seeded(PemtModel, tester.config)
    encoder_ids = {id(p) for p in model.encoder.parameters()}
    for name in ("visual_cnn", "audio_cnn", "visual_embeddings", "audio_embeddings", "multimodal_embeddings"):
        assert not encoder_ids & {id(p) for p in getattr(model, name).parameters()}, name


# --- configuration ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"hidden_size": 100}, "divisible by num_attention_heads"),
        ({"low_rank_dim": 1024}, "low_rank_dim"),
        ({"num_segments": 30}, "max_position_embeddings"),
        ({"negative_sampling": "hardest"}, "similar, dissimilar, uniform"),
        ({"classifier_modality": "text"}, "audio-visual, visual, audio"),
        ({"train_crop_size": 200}, "crop sizes"),
        ({"visual_cnn_temporal_kernels": (1, 3)}, "one temporal kernel per stage"),
    ],
)
def test_invalid_configs_raise_value_errors_that_say_what_to_change(overrides, message):
    with pytest.raises(ValueError, match=message):
        PemtConfig(**overrides)


def test_presets_and_unknown_preset():
    paper, defaults = PemtConfig.from_preset("paper").to_dict(), PemtConfig().to_dict()
    # The paper preset is the default model, trained with chunked, checkpointed CNNs.
    assert {k: v for k, v in paper.items() if not k.startswith("cnn_")} == {k: v for k, v in defaults.items() if not k.startswith("cnn_")}
    assert paper["cnn_chunk_size"] == 5 and paper["cnn_checkpointing"] is True
    assert PemtConfig.from_preset("tiny", hidden_size=64).hidden_size == 64
    with pytest.raises(ValueError, match="Unknown preset"):
        PemtConfig.from_preset("huge")


# --- save / load ------------------------------------------------------------------------------------------------


def test_config_round_trip(tmp_path):
    config = PemtConfig.from_preset("small", share_layers=False)
    config.save_pretrained(tmp_path)
    assert PemtConfig.from_pretrained(tmp_path).to_dict() == config.to_dict()


@pytest.mark.parametrize("cls", [PemtModel, PemtForAudioVisualClassification, PemtForPreTraining])
def test_save_load_round_trip_gives_identical_outputs(tmp_path, tester, cls):
    model = seeded(cls, PemtConfig.from_preset("tiny", num_labels=3)).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "config.json").exists()
    loaded, info = cls.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name, rtol=0, atol=0)
    if cls is not PemtForPreTraining:
        x = tester.inputs()
        first, second = model(**x), loaded.eval()(**x)
        key = "logits" if cls is PemtForAudioVisualClassification else "multimodal_last_hidden_state"
        # Weights are bit-identical (above); outputs only to float32 rounding: safetensors memory-maps tensors at
        # offsets that are not 64-byte aligned, and the CPU kernels then take other vector paths (cloning the
        # loaded weights gives bit-identical outputs again).
        torch.testing.assert_close(first[key], second[key], rtol=1e-6, atol=1e-6)


def test_automodel_in_a_fresh_process_gives_identical_outputs(tmp_path, tester):
    model = seeded(PemtForAudioVisualClassification, PemtConfig.from_preset("tiny", num_labels=3)).eval()
    model.save_pretrained(tmp_path / "model")
    x = tester.inputs()
    torch.save({"inputs": x, "logits": model(**x).logits}, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import torch, pemt
        from transformers import AutoModelForVideoClassification
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        model = AutoModelForVideoClassification.from_pretrained({str(tmp_path / "model")!r}).eval()
        assert type(model).__name__ == "PemtForAudioVisualClassification"
        # float32 rounding only: memory-mapped weights are not 64-byte aligned, so kernels may take other paths.
        torch.testing.assert_close(model(**expected["inputs"]).logits, expected["logits"], rtol=1e-6, atol=1e-6)
        print("same logits")
        """
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "same logits" in result.stdout


def test_pretrained_backbone_loads_into_the_classifier(tmp_path):
    pretrained = seeded(PemtForPreTraining, PemtConfig.from_preset("tiny"))
    pretrained.save_pretrained(tmp_path)
    classifier = PemtForAudioVisualClassification.from_pretrained(tmp_path, num_labels=4)
    a = pretrained.pemt.state_dict()
    b = classifier.pemt.state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    assert classifier.classifier.out_features == 4
    assert copy.deepcopy(classifier.config).num_labels == 4
