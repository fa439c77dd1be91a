"""The processor's call as transformers' processors take it: audio given apart from the video, unknown arguments."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from media_fixtures import write_media

from pemt import MediaDecodeError, PemtConfig, PemtProcessor, open_media, segment_starts


@pytest.fixture(scope="module")
def processor():
    return PemtProcessor.from_model_config(PemtConfig.from_preset("tiny"))


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    return {
        "silent": write_media(folder / "silent.mkv", seconds=2.5, sample_rate=None),
        "tone": write_media(folder / "tone.wav", seconds=2.5, video=False, sample_rate=8000, tone_hz=300.0),
        "muxed": write_media(folder / "muxed.mp4", seconds=2.5, sample_rate=8000, tone_hz=900.0),
    }


def reference_audio(processor, video, sound) -> torch.Tensor:
    """The sound's log-mel at the segment times the video's duration gives, computed step by step."""
    timing = processor.timing
    with open_media(str(video)) as clip:
        starts = segment_starts(clip.duration, timing.span, processor.num_segments)[0]
    with open_media(str(sound)) as clip:
        waveform = clip.read_segments(starts, timing).waveform
    return processor.feature_extractor(waveform, return_tensors="pt")["audio_values"][None]


def test_separate_audio_file_replaces_the_videos_audio(processor, media):
    combined = processor(videos=str(media["silent"]), audio=str(media["tone"]))
    alone = processor(videos=str(media["silent"]))
    sound = {"audio_values": reference_audio(processor, media["silent"], media["tone"])}
    assert alone["audio_segment_mask"].sum() == 0, "negative control: the video alone has no audio"
    assert combined["audio_segment_mask"].tolist() == [[1, 1, 1]]
    torch.testing.assert_close(combined["audio_values"], sound["audio_values"])
    torch.testing.assert_close(combined["pixel_values"], alone["pixel_values"])
    # A video with its own audio takes the separate audio instead.
    replaced = processor(videos=str(media["muxed"]), audio=str(media["tone"]))
    own = processor(videos=str(media["muxed"]))
    expected = reference_audio(processor, media["muxed"], media["tone"])
    torch.testing.assert_close(replaced["audio_values"], expected)
    assert (own["audio_values"] - expected).abs().max() > 1.0


def test_audio_as_a_waveform_array(processor, media):
    with av.open(str(media["tone"])) as container:
        waveform = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)
    waveform = waveform.astype(np.float32) / 32768.0 if waveform.dtype == np.int16 else waveform
    from_array = processor(videos=str(media["silent"]), audio=waveform[0], sampling_rate=8000)
    from_file = processor(videos=str(media["silent"]), audio=str(media["tone"]))
    torch.testing.assert_close(from_array["audio_values"], from_file["audio_values"], atol=1e-3, rtol=1e-3)
    with pytest.raises(ValueError, match="sampling_rate"):
        processor(videos=str(media["silent"]), audio=waveform[0])


def test_bad_audio_and_unknown_arguments_raise(processor, media):
    with pytest.raises(MediaDecodeError, match="silent.mkv: given as audio"):
        processor(videos=str(media["muxed"]), audio=str(media["silent"]))
    with pytest.raises(ValueError, match="one audio per video"):
        processor(videos=[str(media["silent"])] * 2, audio=[str(media["tone"])])
    with pytest.raises(TypeError, match="num_segmnts"):
        processor(videos=str(media["silent"]), num_segmnts=4)
