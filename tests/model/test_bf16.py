"""bfloat16 paths: autocast training never runs oneDNN's broken bf16 Conv3d backward (NaN gradients at small clips on
CPUs), bf16 inference stays on bf16 kernels, and the pipeline classifies with a bf16 model as a float32 one does."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pemt import PemtConfig, PemtForAudioVisualClassification
from pemt.model.cnn_pemt import PemtVisualCNN


def visual_cnn(frames: int, size: int) -> tuple[PemtVisualCNN, torch.Tensor]:
    config = PemtConfig.from_preset("tiny", frames_per_segment=frames)  # the CNN takes any frame size
    torch.manual_seed(0)
    cnn = PemtVisualCNN(config).train()
    return cnn, torch.randn(4, 3, frames, size, size)


def conv_output_dtypes(cnn: nn.Module, run) -> set[torch.dtype]:
    dtypes = set()
    hooks = [m.register_forward_hook(lambda m, args, out: dtypes.add(out.dtype))
             for m in cnn.modules() if isinstance(m, nn.Conv3d)]
    run()
    for hook in hooks:
        hook.remove()
    return dtypes


def test_autocast_training_at_a_small_clip_runs_the_visual_cnn_in_float32_with_finite_gradients():
    cnn, x = visual_cnn(frames=4, size=16)  # 2 frames after the stem: bf16 backward gives NaN here

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = cnn(x)
        assert out.dtype == torch.bfloat16  # what the bf16 path returns, so callers see one dtype
        out.float().square().sum().backward()

    assert conv_output_dtypes(cnn, step) == {torch.float32}
    grads = [p.grad for p in cnn.parameters()]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    # Without gradients the forward is sound in bf16 at any size, and stays there.
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv_output_dtypes(cnn, lambda: cnn.eval()(x)) == {torch.bfloat16}


def test_autocast_training_at_a_safe_size_stays_in_bf16():
    # Negative control of the fallback: 16 frames (8 after the stem) at 32 x 32 run bf16 forward and backward.
    cnn, x = visual_cnn(frames=16, size=32)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = cnn(x)
        out.float().square().sum().backward()

    assert conv_output_dtypes(cnn, step) == {torch.bfloat16}
    assert all(torch.isfinite(p.grad).all() for p in cnn.parameters())


def test_training_bf16_weights_at_a_small_clip_is_a_clear_error():
    cnn, x = visual_cnn(frames=4, size=16)
    cnn.to(torch.bfloat16)
    with pytest.raises(ValueError, match="bfloat16 weights and is being trained on segments of 4 frames"):
        cnn(x.bfloat16())
    with torch.no_grad():  # inference with bf16 weights is fine
        assert torch.isfinite(cnn.eval()(x.bfloat16())).all()


def test_autocast_classifier_training_step_has_finite_gradients_everywhere():
    config = PemtConfig.from_preset("tiny", num_labels=3)
    torch.manual_seed(0)
    model = PemtForAudioVisualClassification(config).train()
    c = config
    g = torch.Generator().manual_seed(0)
    inputs = {
        "pixel_values": torch.randn(2, c.num_segments, 3, c.frames_per_segment, c.train_crop_size, c.train_crop_size, generator=g),
        "audio_values": torch.randn(2, c.num_segments, 1, c.num_mel_bins, c.audio_frames, generator=g),
    }
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**inputs, labels=torch.tensor([0, 2])).loss
    loss.backward()
    assert torch.isfinite(loss)
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing


@pytest.fixture
def saved_classifier(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from media_fixtures import write_media

    from pemt import PemtProcessor

    labels = {0: "speech", 1: "music", 2: "animal"}
    config = PemtConfig.from_preset("tiny", num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()})
    for seed, name in ((0, "model"), (1, "other")):
        torch.manual_seed(seed)
        PemtForAudioVisualClassification(config).save_pretrained(tmp_path / name)
        PemtProcessor.from_model_config(config).save_pretrained(tmp_path / name)
    clip = write_media(tmp_path / "clip.mp4", seconds=3.0, fps=24, size=(72, 96), sample_rate=16000, channels=1, textured=True)
    return tmp_path / "model", tmp_path / "other", str(clip)


def classify(model_dir, clip: str, dtype: torch.dtype = torch.float32) -> dict[str, float]:
    from transformers import pipeline

    from pemt import PemtProcessor

    model = PemtForAudioVisualClassification.from_pretrained(model_dir).to(dtype)
    classifier = pipeline("audio-visual-classification", model=model, processor=PemtProcessor.from_pretrained(model_dir))
    return {entry["label"]: entry["score"] for entry in classifier(clip, top_k=3)}


def test_pipeline_classifies_with_a_bf16_model_like_float32(saved_classifier):
    model_dir, other_dir, clip = saved_classifier
    fp32, bf16 = classify(model_dir, clip), classify(model_dir, clip, torch.bfloat16)
    assert max(fp32, key=fp32.get) == max(bf16, key=bf16.get)
    assert all(abs(fp32[k] - bf16[k]) < 2e-2 for k in fp32), (fp32, bf16)
    # Negative control: another model's probabilities differ by more than that tolerance.
    other = classify(other_dir, clip)
    assert any(abs(fp32[k] - other[k]) >= 2e-2 for k in fp32), (fp32, other)


def test_cli_classify_with_bf16(saved_classifier):
    from pemt.cli import classify as pemt_classify

    model_dir, _, clip = saved_classifier
    ranking = pemt_classify([clip, "--model", str(model_dir), "--dtype", "bfloat16", "--top_k", "3"])[0]
    bf16, fp32 = {e["label"]: e["score"] for e in ranking}, classify(model_dir, clip)
    assert max(fp32, key=fp32.get) == max(bf16, key=bf16.get)
    assert all(abs(fp32[k] - bf16[k]) < 2e-2 for k in fp32), (fp32, bf16)
