"""Presets are data files (pemt/model/presets/*.json) a user can copy and edit."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

from pemt import PRESETS, PemtConfig
from pemt.model import configuration_pemt

PRESETS_DIR = Path(configuration_pemt.__file__).parent / "presets"


def as_tuple(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value


@pytest.mark.parametrize("name", ["paper", "small", "ablation", "tiny"])
def test_each_preset_file_sets_exactly_its_fields(name):
    content = json.loads((PRESETS_DIR / f"{name}.json").read_text())
    assert set(content) == {"description", "notes", "config"}
    assert set(content["notes"]) <= set(content["config"]), "a note explains a field the preset sets"
    config, defaults = PemtConfig.from_preset(name).to_dict(), PemtConfig().to_dict()
    for key, value in content["config"].items():
        assert as_tuple(config[key]) == as_tuple(value), key
    # Every other field keeps the paper's default.
    changed = {key for key in defaults if as_tuple(config[key]) != as_tuple(defaults[key])}
    assert changed == {k for k, v in content["config"].items() if as_tuple(defaults[k]) != as_tuple(v)}
    assert dict(PRESETS)[name] == content["config"]


def test_the_tiny_and_small_presets_keep_their_sizes():
    # Golden values the tests and the demo figures rest on.
    tiny, small = PemtConfig.from_preset("tiny"), PemtConfig.from_preset("small")
    assert (tiny.hidden_size, tiny.num_segments, tiny.intermediate_size, tiny.low_rank_dim) == (32, 3, 37, 8)
    assert (small.hidden_size, small.num_segments, small.train_crop_size, small.audio_sampling_rate) == (64, 4, 32, 16000)
    # The ablation preset is the small one with a coarser log-mel that still spans the segment's 1.07 s of video.
    ablation = PemtConfig.from_preset("ablation")
    differs = {k for k, v in ablation.to_dict().items() if as_tuple(v) != as_tuple(small.to_dict()[k])}
    assert differs == {"num_mel_bins", "n_fft", "hop_length", "audio_frames"}
    video_span = ablation.frames_per_segment * ablation.frame_stride / ablation.video_fps
    audio_span = ablation.audio_frames * ablation.hop_length / ablation.audio_sampling_rate
    assert abs(audio_span - video_span) / video_span < 0.05


def test_a_copied_preset_file_loads_and_bad_ones_are_named(tmp_path):
    copy = tmp_path / "mine.json"
    content = json.loads((PRESETS_DIR / "tiny.json").read_text())
    content["config"]["num_hidden_layers"] = 3
    copy.write_text(json.dumps(content))
    assert PemtConfig.from_preset(copy, hidden_size=64).num_hidden_layers == 3
    content["config"]["hiden_size"] = 3
    copy.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=r"mine.json sets unknown config fields: hiden_size"):
        PemtConfig.from_preset(copy)
    copy.write_text('{"hidden_size": 8}')
    with pytest.raises(ValueError, match=r'mine.json has no "config" object'):
        PemtConfig.from_preset(copy)
    with pytest.raises(ValueError, match="Unknown preset 'huge'"):
        PemtConfig.from_preset("huge")


def test_from_preset_in_remote_code_without_preset_files_says_so(tmp_path):
    # What the Hub's remote code holds: the module alone, no presets/ folder beside it.
    shutil.copy(configuration_pemt.__file__, tmp_path / "configuration_pemt.py")
    spec = importlib.util.spec_from_file_location("remote_configuration_pemt", tmp_path / "configuration_pemt.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        with pytest.raises(FileNotFoundError, match="preset files ship with the pemt package, not with a model's remote code"):
            module.PemtConfig.from_preset("tiny")
        assert module.PemtConfig(hidden_size=64, num_attention_heads=4, low_rank_dim=8).hidden_size == 64
    finally:
        del sys.modules[spec.name]
