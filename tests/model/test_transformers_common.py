"""transformers' own common model and configuration tests (`ModelTesterMixin`, `ConfigTester`) run against PEMT.

The two test files come from the sdist of the installed transformers version, downloaded once at test time (see
tests/transformers_sdist.py); this module only supplies the tester that builds tiny PEMT configs and inputs, as each
model family in transformers does. Tests that cannot apply to PEMT are skipped with the reason next to them.
"""

from __future__ import annotations

import copy
import unittest

import pytest
import torch
from transformers_sdist import SdistUnavailable, load_common_tests

from pemt import PemtConfig, PemtForAudioVisualClassification, PemtModel

try:
    common = load_common_tests()
except SdistUnavailable as error:  # offline: the suite cannot be fetched, which is not a failure of PEMT
    pytest.skip(str(error), allow_module_level=True)


class PemtModalityTester:
    """The inputs of one modality, for the common tests of `get_video_features` and `get_audio_features`."""

    def __init__(self, tester: "PemtModelTester", keys: tuple[str, ...]):
        self.tester = tester
        self.keys = keys
        self.num_hidden_layers = tester.num_hidden_layers

    def prepare_config_and_inputs_for_common(self) -> tuple[PemtConfig, dict[str, torch.Tensor]]:
        config, inputs = self.tester.prepare_config_and_inputs()
        return config, {key: inputs[key] for key in self.keys}


class PemtModelTester:
    """Tiny configs and inputs for the common tests, with `create_and_check_*` checks of PEMT's own outputs."""

    def __init__(self, parent: unittest.TestCase, batch_size: int = 2, num_segments: int = 3, num_labels: int = 3):
        self.parent = parent
        self.batch_size = batch_size
        self.num_segments = num_segments
        self.num_labels = num_labels
        self.is_training = True
        config = self.get_config()
        self.hidden_size = config.hidden_size
        self.num_hidden_layers = config.num_hidden_layers
        self.num_attention_heads = config.num_attention_heads
        # The final Transformer (multimodal) reads the visual and the audio sequence: summary token + segments each.
        self.seq_length = 2 + 2 * num_segments
        # `output_hidden_states=True` adds the standard `hidden_states` and one tuple per Transformer.
        self.num_hidden_states_types = 4
        # `get_video_features` / `get_audio_features` read one modality: the common tests take their inputs from these.
        self.video_model_tester = PemtModalityTester(self, ("pixel_values", "visual_segment_mask"))
        self.audio_model_tester = PemtModalityTester(self, ("audio_values", "audio_segment_mask"))

    def get_config(self) -> PemtConfig:
        return PemtConfig.from_preset("tiny", num_segments=self.num_segments, num_labels=self.num_labels)

    def prepare_config_and_inputs(self) -> tuple[PemtConfig, dict[str, torch.Tensor]]:
        config = self.get_config()
        b, t = self.batch_size, self.num_segments
        side = config.eval_crop_size
        inputs = {
            "pixel_values": common.floats_tensor([b, t, 3, config.frames_per_segment, side, side]),
            "audio_values": common.floats_tensor([b, t, 1, config.num_mel_bins, config.audio_frames]),
            "visual_segment_mask": torch.ones(b, t, dtype=torch.long),
            # The second clip is one segment shorter, so that the masks are exercised.
            "audio_segment_mask": torch.tensor([[1] * t, [1] * (t - 1) + [0]] * (b // 2) + [[1] * t] * (b % 2)),
        }
        return config, inputs

    def prepare_config_and_inputs_for_common(self) -> tuple[PemtConfig, dict[str, torch.Tensor]]:
        return self.prepare_config_and_inputs()

    def create_and_check_model(self, config: PemtConfig, inputs: dict[str, torch.Tensor]) -> None:
        model = PemtModel(config).eval()
        with torch.no_grad():
            output = model(**inputs)
        b, t, h = self.batch_size, self.num_segments, config.hidden_size
        self.parent.assertEqual(output.last_hidden_state.shape, (b, self.seq_length, h))
        self.parent.assertIs(output.last_hidden_state, output.multimodal_last_hidden_state)
        self.parent.assertEqual(output.visual_last_hidden_state.shape, (b, 1 + t, h))
        torch.testing.assert_close(output.pooler_output, output.multimodal_summary.mean(dim=1))
        with torch.no_grad():
            visual_only = model(pixel_values=inputs["pixel_values"])
        self.parent.assertIs(visual_only.last_hidden_state, visual_only.visual_last_hidden_state)
        torch.testing.assert_close(visual_only.pooler_output, visual_only.visual_summary)

    def create_and_check_for_classification(self, config: PemtConfig, inputs: dict[str, torch.Tensor]) -> None:
        model = PemtForAudioVisualClassification(config).eval()
        labels = torch.arange(self.batch_size) % config.num_labels
        with torch.no_grad():
            output = model(**inputs, labels=labels, output_hidden_states=True)
        self.parent.assertEqual(output.logits.shape, (self.batch_size, config.num_labels))
        torch.testing.assert_close(output.loss, torch.nn.functional.cross_entropy(output.logits, labels))
        self.parent.assertEqual(len(output.hidden_states), config.num_hidden_layers + 1)

    def create_and_check_for_regression(self, config: PemtConfig, inputs: dict[str, torch.Tensor]) -> None:
        config = copy.deepcopy(config)
        config.num_labels, config.problem_type = 1, "regression"
        model = PemtForAudioVisualClassification(config).eval()
        targets = torch.tensor([0.5, -1.0][: self.batch_size])
        with torch.no_grad():
            output = model(**inputs, labels=targets)
        torch.testing.assert_close(output.loss, torch.nn.functional.mse_loss(output.logits.squeeze(-1), targets))


class PemtCommonTests(common.ModelTesterMixin):
    """What both test classes share. The backbone and the classifier are tested apart because the common tests count
    the fields `output_hidden_states` adds with one number per tester (`num_hidden_states_types`): the backbone
    adds the standard `hidden_states` and one tuple per Transformer, the classifier only `hidden_states`."""

    all_model_classes = ()
    # Video and audio input: no token embeddings to resize.
    test_resize_embeddings = False
    # Inputs besides the main one (`pixel_values`) that the attention-equivalence tests must pass on.
    additional_model_inputs = ["audio_values", "visual_segment_mask", "audio_segment_mask"]
    # The shape check of `get_audio_features` reads the batch size from `input_values` / `input_features`, the names
    # of transformers' speech models; PEMT's audio input is `audio_values` (log-mel segments). Its shapes are
    # asserted in tests/test_embeddings.py instead.
    skip_test_audio_features_output_shape = True
    tester_overrides: dict = {}

    def setUp(self) -> None:
        self.model_tester = PemtModelTester(self)
        for name, value in self.tester_overrides.items():
            setattr(self.model_tester, name, value)
        # A width of 32 with 4 heads and rank 8: the config requires the width to split into heads and the private
        # rank not to exceed the width.
        self.config_tester = common.ConfigTester(
            self, config_class=PemtConfig, has_text_modality=False, hidden_size=32, num_attention_heads=4, low_rank_dim=8
        )

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels and model_class is PemtForAudioVisualClassification:
            inputs_dict["labels"] = torch.zeros(self.model_tester.batch_size, dtype=torch.long)
        return inputs_dict

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_model(self):
        self.model_tester.create_and_check_model(*self.model_tester.prepare_config_and_inputs())

    def test_for_classification(self):
        self.model_tester.create_and_check_for_classification(*self.model_tester.prepare_config_and_inputs())

    def test_for_regression(self):
        self.model_tester.create_and_check_for_regression(*self.model_tester.prepare_config_and_inputs())

    def test_model_get_set_embeddings(self):
        # The common version expects a token `nn.Embedding`; like the vision models, PEMT's input embedding is the
        # module that embeds `pixel_values` (the visual CNN).
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(copy.deepcopy(config))
            self.assertIs(model.get_input_embeddings(), model.base_model.visual_cnn)
            replacement = torch.nn.Identity()
            model.set_input_embeddings(replacement)
            self.assertIs(model.get_input_embeddings(), replacement)
            self.assertIsNone(model.get_output_embeddings())

    def test_torch_export(self):
        # The sdist lacks transformers' ExportTesterMixin (tests/exporters); this is our equivalent check.
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        model = PemtModel(config).eval()
        with torch.no_grad():
            expected = model(**inputs).last_hidden_state
        # Padded segments (the masks of `inputs`) take the export path of `run_cnn_over_segments`: every segment runs
        # and padding is zeroed, instead of a boolean-mask selection whose shape depends on the data.
        program = torch.export.export(model, args=(), kwargs=inputs, strict=False)
        with torch.no_grad():
            exported = program.module()(**inputs)
        torch.testing.assert_close(exported.last_hidden_state if hasattr(exported, "last_hidden_state") else exported[0], expected)



class PemtModelTest(PemtCommonTests, unittest.TestCase):
    all_model_classes = (PemtModel,)
    # The backbone has no loss: the common training tests run on the classifier (transformers skips base models
    # there by their name in its own model mapping, which PEMT is not in).
    tester_overrides = {"is_training": False}


class PemtForAudioVisualClassificationTest(PemtCommonTests, unittest.TestCase):
    all_model_classes = (PemtForAudioVisualClassification,)
    tester_overrides = {"num_hidden_states_types": 1}

    # The backbone's own checks run once, in PemtModelTest.
    test_config = test_model = test_torch_export = None
