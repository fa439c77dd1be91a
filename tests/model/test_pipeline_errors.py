"""Batch inference keeps every good result when some inputs are unreadable (issue 14, item 3)."""

from __future__ import annotations

import pytest
import torch
from media_fixtures import write_media
from transformers import pipeline

from pemt import MediaDecodeError
from pemt.cli import main as pemt_main
from saved_models import save_tiny

LABELS = {0: "speech", 1: "music", 2: "animal"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return save_tiny(tmp_path_factory.mktemp("classifier"), labels=LABELS)


@pytest.fixture(scope="module")
def classifier(model_dir):
    return pipeline("audio-visual-classification", model=model_dir)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("files")
    bad = folder / "bad.mp4"
    bad.write_text("not a video")
    return {
        "a": str(write_media(folder / "a.mp4", seconds=1.5, fps=10, size=(24, 32), sample_rate=8000, tone_hz=300)),
        "b": str(write_media(folder / "b.mkv", seconds=2.0, fps=10, size=(32, 24), sample_rate=8000, tone_hz=900)),
        "bad": str(bad),
        "missing": str(folder / "missing.mp4"),
    }


def test_by_default_the_first_bad_file_raises_an_error_naming_it(classifier, files):
    with pytest.raises(MediaDecodeError, match="bad.mp4"):
        classifier([files["a"], files["bad"], files["b"]])


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_errors_return_keeps_every_good_result(classifier, files, batch_size):
    videos = [files["a"], files["bad"], files["b"], files["missing"], files["a"]]
    results = classifier(videos, top_k=3, batch_size=batch_size, num_temporal_views=2, errors="return")
    assert len(results) == 5
    assert results[1] == {"error": results[1]["error"]} and "bad.mp4" in results[1]["error"]
    assert "missing.mp4" in results[3]["error"] and "no such file" in results[3]["error"]
    for index in (0, 2, 4):
        alone = classifier(videos[index], top_k=3, num_temporal_views=2)
        assert [e["label"] for e in results[index]] == [e["label"] for e in alone]
        torch.testing.assert_close(
            torch.tensor([e["score"] for e in results[index]]), torch.tensor([e["score"] for e in alone])
        )
    # Negative control: the two good files do not get the same answer, so equality above is not vacuous.
    assert [e["score"] for e in results[0]] != [e["score"] for e in results[2]]


def test_a_generator_loses_nothing_after_a_bad_file(classifier, files):
    def stream():
        yield files["bad"]
        yield files["a"]
        yield files["bad"]
        yield files["b"]

    results = list(classifier(stream(), top_k=1, errors="return"))
    assert ["error" in r for r in results] == [True, False, True, False]
    assert results[3] == classifier(files["b"], top_k=1)


def test_call_arguments_are_checked(classifier, files):
    for bad in (0, -1):
        with pytest.raises(ValueError, match="top_k"):
            classifier(files["a"], top_k=bad)
    with pytest.raises(ValueError, match="errors"):
        classifier(files["a"], errors="ignore")
    with pytest.raises(ValueError, match="num_temporal_views"):
        classifier(files["a"], num_temporal_views=0)


def test_classify_prints_a_result_per_readable_file_and_exits_1(model_dir, files, capsys):
    with pytest.raises(SystemExit) as info:
        pemt_main(["classify", files["a"], files["bad"], files["b"], "--model", model_dir, "--top_k", "2"])
    assert info.value.code == 1
    captured = capsys.readouterr()
    out = captured.out.strip().splitlines()
    assert out[0] == files["a"] and out[3] == files["b"] and len(out) == 6
    errors = [line for line in captured.err.strip().splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and files["bad"] in errors[0] and "Traceback" not in captured.err
    assert errors[-1] == "error: 1 of 3 file(s) could not be classified."


def test_classify_rejects_top_k_zero_as_a_usage_error(model_dir, files, capsys):
    with pytest.raises(SystemExit) as info:
        pemt_main(["classify", files["a"], "--model", model_dir, "--top_k", "0"])
    assert info.value.code == 2 and "--top_k" in capsys.readouterr().err
