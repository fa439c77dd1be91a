"""The pipeline's overlapped path (segments decoded in a background thread while the visual CNN runs on those already
decoded) against the serial path (processor, then model)."""

from __future__ import annotations

import pytest
import torch
from media_fixtures import write_media
from transformers import pipeline

from pemt import PemtForAudioVisualClassification, PemtProcessor
from pemt.model import overlap_pemt
from pemt.model.media_pemt import MediaDecodeError
from saved_models import save_tiny

LABELS = {0: "speech", 1: "music", 2: "animal", 3: "vehicle"}


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    folder = save_tiny(tmp_path_factory.mktemp("classifier"), labels=LABELS)
    model = PemtForAudioVisualClassification.from_pretrained(folder).eval()
    processor = PemtProcessor.from_pretrained(folder)
    serial = pipeline("audio-visual-classification", model=model, processor=processor, overlap_decoding=False)
    overlapped = pipeline("audio-visual-classification", model=model, processor=processor)
    return serial, overlapped


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    # 6 s, one long GOP: the tiny model's 3 segments of 0.8 s are 3 groups, decoded in one pass.
    good = write_media(folder / "good.mp4", seconds=6.0, fps=20, size=(40, 56), sample_rate=16000, textured=True)
    other = write_media(folder / "other.mp4", seconds=6.0, fps=20, size=(40, 56), sample_rate=16000, tone_hz=880.0)
    # Matroska keeps its header first: a cut file opens (and claims 6 s) but no segment decodes.
    whole = write_media(folder / "whole.mkv", seconds=6.0, fps=20, size=(40, 56), sample_rate=16000, textured=True)
    cut = folder / "cut.mkv"
    cut.write_bytes(whole.read_bytes()[:1500])
    return {"good": str(good), "other": str(other), "cut": str(cut)}


def scores(ranking: list[dict]) -> torch.Tensor:
    by_label = {entry["label"]: entry["score"] for entry in ranking}
    return torch.tensor([by_label[LABELS[i]] for i in range(len(LABELS))])


def counting_classify(monkeypatch) -> list:
    calls = []
    original = overlap_pemt.OverlappedClip.classify

    def classify(self, model):
        calls.append(self.name)
        return original(self, model)

    monkeypatch.setattr(overlap_pemt.OverlappedClip, "classify", classify)
    return calls


def test_overlapped_scores_are_the_serial_ones(pipelines, clips, monkeypatch):
    serial, overlapped = pipelines
    calls = counting_classify(monkeypatch)
    # Raw logits: a tiny random model's probabilities are all close to 1/4.
    expected = scores(serial(clips["good"], top_k=None, function_to_apply="none"))
    assert calls == []
    got = scores(overlapped(clips["good"], top_k=None, function_to_apply="none"))
    assert calls == [clips["good"]]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    # Negative controls: another clip scores differently, and so does this clip with its segments' CNN embeddings
    # put in the wrong places (what a mix-up of the groups' indices would do).
    assert (scores(overlapped(clips["other"], top_k=None, function_to_apply="none")) - expected).abs().max() > 1e-2
    original = overlap_pemt.OverlappedClip._video_group
    monkeypatch.setattr(overlap_pemt.OverlappedClip, "_video_group",
                        lambda self, indices, frames, valid: original(self, [2 - i for i in indices], frames, valid))
    assert (scores(overlapped(clips["good"], top_k=None, function_to_apply="none")) - expected).abs().max() > 1e-5


def test_a_clip_that_fails_in_the_decoding_thread_is_named(pipelines, clips, monkeypatch):
    _, overlapped = pipelines
    calls = counting_classify(monkeypatch)
    with pytest.raises(MediaDecodeError, match="cut.mkv"):
        overlapped(clips["cut"])
    assert calls == [clips["cut"]]  # the error came from the decoding thread, not from opening the file
    results = overlapped([clips["good"], clips["cut"], clips["other"]], errors="return", top_k=None)
    assert "cut.mkv" in results[1]["error"]
    torch.testing.assert_close(scores(results[0]), scores(overlapped(clips["good"], top_k=None)))
    torch.testing.assert_close(scores(results[2]), scores(overlapped(clips["other"], top_k=None)))


def test_batches_take_the_serial_path_with_the_same_scores(pipelines, clips, monkeypatch):
    serial, overlapped = pipelines
    calls = counting_classify(monkeypatch)
    batched = overlapped([clips["good"], clips["other"]], batch_size=2, top_k=None)
    assert calls == []
    for clip, ranking in zip([clips["good"], clips["other"]], batched):
        torch.testing.assert_close(scores(ranking), scores(serial(clip, top_k=None)))


@pytest.mark.parametrize("head", ["clip", "segment", "cnn"])
@pytest.mark.parametrize("modality", ["audio-visual", "visual"])
def test_classifier_reads_precomputed_cnn_embeddings(head, modality):
    from pemt import PemtConfig

    torch.manual_seed(0)
    config = PemtConfig.from_preset("tiny", num_labels=4, classifier_head=head, classifier_modality=modality)
    model = PemtForAudioVisualClassification(config).eval()
    generator = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    pixels = torch.randn(2, 3, 3, config.frames_per_segment, config.eval_crop_size, config.eval_crop_size, generator=generator)
    audio = torch.randn(2, 3, 1, config.num_mel_bins, config.audio_frames, generator=generator)
    with torch.no_grad():
        expected = model(pixel_values=pixels, audio_values=audio, visual_segment_mask=mask, audio_segment_mask=mask).logits
        embedded = {"visual_cnn_embeddings": model.pemt.embed_visual(pixels, mask),
                    "audio_cnn_embeddings": model.pemt.embed_audio(audio, mask)}
        got = model(**embedded, visual_segment_mask=mask, audio_segment_mask=mask).logits
        # Negative control: the CNN embeddings of other segments give other logits.
        swapped = model(**{k: v.flip(0) for k, v in embedded.items()}, visual_segment_mask=mask, audio_segment_mask=mask).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert (swapped - expected).abs().max() > 1e-3
