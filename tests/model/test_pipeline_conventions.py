"""The pipeline's arguments and inputs as transformers' pipelines take them."""

from __future__ import annotations

import functools
import http.server
import threading

import av
import numpy as np
import pytest
import torch
from media_fixtures import write_media
from transformers import pipeline

from pemt import AudioVisualClassificationPipeline, PemtConfig, PemtForAudioVisualClassification, PemtProcessor
from saved_models import save_tiny

LABELS = {0: "speech", 1: "music", 2: "animal", 3: "vehicle"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return save_tiny(tmp_path_factory.mktemp("classifier"), labels=LABELS)


@pytest.fixture(scope="module")
def classifier(model_dir):
    return pipeline("audio-visual-classification", model=model_dir)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_media(tmp_path_factory.mktemp("clips") / "clip.mp4", seconds=3.0, fps=24, size=(48, 64))


def logits_by_hand(model_dir: str, video) -> torch.Tensor:
    model = PemtForAudioVisualClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return model(**PemtProcessor.from_pretrained(model_dir)(videos=video)).logits[0]


def as_vector(ranking: list[dict]) -> torch.Tensor:
    by_label = {entry["label"]: entry["score"] for entry in ranking}
    return torch.tensor([by_label[LABELS[i]] for i in range(len(LABELS))])


def test_unknown_arguments_raise(classifier, clip):
    with pytest.raises(TypeError, match="topk"):
        classifier(str(clip), topk=1)
    with pytest.raises(ValueError, match="function_to_apply"):
        classifier(str(clip), function_to_apply="relu")


def test_top_k_none_returns_every_label_and_the_default_is_five_at_most(classifier, clip):
    assert {entry["label"] for entry in classifier(str(clip), top_k=None)} == set(LABELS.values())
    assert len(classifier(str(clip), top_k=2)) == 2


@pytest.mark.parametrize("function", ["softmax", "sigmoid", "none"])
def test_function_to_apply(classifier, model_dir, clip, function):
    logits = logits_by_hand(model_dir, str(clip))
    expected = {"softmax": logits.softmax(-1), "sigmoid": logits.sigmoid(), "none": logits}[function]
    scores = as_vector(classifier(str(clip), top_k=None, function_to_apply=function))
    torch.testing.assert_close(scores, expected)
    if function != "softmax":  # negative control: only softmax scores sum to 1
        assert abs(float(scores.sum()) - 1.0) > 1e-3


def test_url_and_frame_arrays_are_accepted(classifier, clip):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(clip.parent))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{clip.name}"
        torch.testing.assert_close(as_vector(classifier(url, top_k=None)), as_vector(classifier(str(clip), top_k=None)))
    finally:
        server.shutdown()

    with av.open(str(clip)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    from_array = classifier(frames, video_fps=24.0, top_k=None)
    from_dict = classifier({"frames": frames, "video_fps": 24.0}, top_k=None)
    torch.testing.assert_close(as_vector(from_array), as_vector(from_dict))
    channels_first = torch.from_numpy(frames).permute(0, 3, 1, 2)
    torch.testing.assert_close(as_vector(classifier(channels_first, video_fps=24.0, top_k=None)), as_vector(from_dict))
    with pytest.raises(ValueError, match="frames, height, width, 3"):
        classifier(np.zeros((4, 5, 6), dtype=np.uint8))


def test_bfloat16_model_reads_cast_inputs(clip, tmp_path):
    # The audio classifier: oneDNN's bfloat16 Conv3d is unreliable at the tiny preset's temporal sizes on CPU.
    torch.manual_seed(0)
    config = PemtConfig.from_preset("tiny", num_labels=4, id2label=LABELS, label2id={v: k for k, v in LABELS.items()},
                                    classifier_modality="audio")
    PemtForAudioVisualClassification(config).save_pretrained(tmp_path)
    PemtProcessor.from_model_config(config).save_pretrained(tmp_path)
    bf16 = pipeline("audio-visual-classification", model=str(tmp_path), dtype=torch.bfloat16)
    fp32 = pipeline("audio-visual-classification", model=str(tmp_path))
    assert bf16.model.dtype == torch.bfloat16
    low, full = as_vector(bf16(str(clip), top_k=None)), as_vector(fp32(str(clip), top_k=None))
    torch.testing.assert_close(low, full, atol=0.05, rtol=0)


def test_saved_pipeline_loads_again(classifier, clip, tmp_path):
    classifier.save_pretrained(tmp_path)
    assert (tmp_path / "processor_config.json").is_file()
    # The saved config names the pipeline's own code (custom_pipelines), which transformers runs only with
    # trust_remote_code=True (tests/test_hub.py does that without pemt); where pemt is installed its class is given.
    reloaded = pipeline("audio-visual-classification", model=str(tmp_path), pipeline_class=AudioVisualClassificationPipeline)
    torch.testing.assert_close(as_vector(reloaded(str(clip), top_k=None)), as_vector(classifier(str(clip), top_k=None)))


def test_classify_command_loads_a_saved_pipeline_without_trust_remote_code(classifier, clip, tmp_path, capsys):
    from pemt.cli import main as pemt_main

    classifier.save_pretrained(tmp_path)  # its config names the pipeline's code, as a pushed repository's does
    pemt_main(["classify", str(clip), "--model", str(tmp_path), "--top_k", "4"])
    printed = capsys.readouterr().out.strip().splitlines()[1:]
    scores = {line.split(maxsplit=1)[1]: float(line.split()[0]) for line in printed}
    expected = as_vector(classifier(str(clip), top_k=None))
    torch.testing.assert_close(torch.tensor([scores[LABELS[i]] for i in range(4)]), expected, atol=1e-3, rtol=0)
