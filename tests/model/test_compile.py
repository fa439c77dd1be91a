"""`torch.compile` of a PEMT model's parts (`compile_pemt`) and its switches: the pipeline's and `pemt classify`'s
`torch_compile`, and the training arguments `--torch_compile`.

Inductor's compilation of even the tiny CNN takes tens of seconds on a 2-core CPU, so one test compiles with inductor
(the visual CNN, eval, the pipeline's case) and the switches are tested with dynamo's "eager" backend, which traces
the same graphs and compiles nothing; the training step with inductor is marked slow and runs with
PEMT_COMPILE_FULL=1."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import pipeline

from pemt import PemtConfig, PemtForAudioVisualClassification, PemtProcessor, compile_pemt
from pemt.model.compile_pemt import is_compiled
from pemt.training.arguments import PemtTrainingArguments
from pemt.training.loop import TrainingLoop, build_accelerator, prepare_output_dir

LABELS = 3


def tiny_classifier(**fields) -> PemtForAudioVisualClassification:
    torch.manual_seed(0)
    return PemtForAudioVisualClassification(PemtConfig.from_preset("tiny", num_labels=LABELS, **fields))


def random_inputs(config: PemtConfig, clips: int = 2, seed: int = 1) -> dict[str, torch.Tensor]:
    """Clips of random segments, the last segment of the second clip padded (masks reach the compiled CNNs as a
    smaller batch of real segments)."""
    generator = torch.Generator().manual_seed(seed)
    t, c = config.num_segments, config
    mask = torch.ones(clips, t, dtype=torch.long)
    mask[1, -1] = 0
    return {
        "pixel_values": torch.randn(clips, t, 3, c.frames_per_segment, c.train_crop_size, c.train_crop_size, generator=generator),
        "audio_values": torch.randn(clips, t, 1, c.num_mel_bins, c.audio_frames, generator=generator),
        "visual_segment_mask": mask,
        "audio_segment_mask": mask.clone(),
    }


def test_inductor_compiled_visual_cnn_matches_eager_and_reads_new_weights():
    model = tiny_classifier().eval()
    inputs = random_inputs(model.config)
    with torch.no_grad():
        eager = model(**inputs).logits
        assert compile_pemt(model, parts=["visual_cnn"]) == ["pemt.visual_cnn"]
        compiled = model(**inputs).logits
    assert is_compiled(model.pemt.visual_cnn) and not is_compiled(model.pemt.audio_cnn)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)

    # Negative control: new weights (as loading or a training step gives) change the compiled output as they change
    # the eager one. The compiled graph takes the parameters as inputs; a graph with baked-in weights would fail here,
    # and the difference shows the tolerance above can tell models apart.
    with torch.no_grad():
        model.pemt.visual_cnn.stem[0].weight.mul_(1.5)
        changed = model(**inputs).logits
        model.pemt.visual_cnn.stem[0].weight.div_(1.5)
    assert (changed - eager).abs().max() > 1e-3
    fresh = tiny_classifier().eval()
    with torch.no_grad():
        fresh.pemt.visual_cnn.stem[0].weight.mul_(1.5)
        eager_changed = fresh(**inputs).logits
    torch.testing.assert_close(changed, eager_changed, rtol=1e-4, atol=1e-5)


def test_compile_keeps_parameters_and_state_dict_keys():
    model = tiny_classifier()
    keys, parameters = list(model.state_dict()), list(model.parameters())
    assert compile_pemt(model, parts=["visual_cnn", "audio_cnn", "encoder"], backend="eager") == [
        "pemt.visual_cnn", "pemt.audio_cnn", "pemt.encoder"
    ]
    assert list(model.state_dict()) == keys
    assert all(a is b for a, b in zip(model.parameters(), parameters, strict=True))
    # PemtModel itself works too (no `pemt.` prefix).
    assert compile_pemt(model.pemt, parts=["encoder"], backend="eager") == ["encoder"]


def test_compile_refuses_unknown_parts_and_other_models():
    with pytest.raises(ValueError, match="unknown part.*cnn"):
        compile_pemt(tiny_classifier(), parts=["cnn"])
    with pytest.raises(TypeError, match="needs a PEMT model.*Linear"):
        compile_pemt(torch.nn.Linear(2, 2))


def test_pipeline_torch_compile_switch_compiles_the_cnns_and_ranks_as_eager(tmp_path):
    from media_fixtures import write_media

    model = tiny_classifier().eval()
    processor = PemtProcessor.from_model_config(model.config)
    clip = str(write_media(Path(tmp_path) / "clip.mp4", seconds=2.0, textured=True))
    eager = pipeline("audio-visual-classification", model=model, processor=processor)(clip, top_k=None)
    compiled_model = tiny_classifier().eval()
    classifier = pipeline(
        "audio-visual-classification", model=compiled_model, processor=processor, torch_compile={"backend": "eager"}
    )
    assert is_compiled(compiled_model.pemt.visual_cnn) and is_compiled(compiled_model.pemt.audio_cnn)
    assert not is_compiled(compiled_model.pemt.encoder)
    compiled = classifier(clip, top_k=None)
    assert [e["label"] for e in compiled] == [e["label"] for e in eager]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(compiled, eager)) < 1e-5
    # Without the switch nothing is compiled.
    plain = tiny_classifier()
    pipeline("audio-visual-classification", model=plain, processor=processor)
    assert not is_compiled(plain.pemt.visual_cnn)


def test_classify_command_passes_the_switch(tmp_path, monkeypatch):
    from pemt import cli

    seen = {}

    def fake_pipeline(task, **kwargs):
        seen.update(kwargs)
        return lambda videos, **_: [[{"label": "a", "score": 1.0}] for _ in videos]

    monkeypatch.setattr("transformers.pipeline", fake_pipeline)
    cli.classify(["x.mp4", "--model", "m", "--torch_compile"])
    assert seen["torch_compile"] is True
    seen.clear()
    cli.classify(["x.mp4", "--model", "m"])
    assert "torch_compile" not in seen


def train_tiny(output_dir: Path, steps: int = 2, **changes) -> TrainingLoop:
    """A few optimiser steps of the tiny classifier on random clips, through the training loop."""
    args = PemtTrainingArguments(
        output_dir=str(output_dir), max_steps=steps, per_device_train_batch_size=2, learning_rate=1e-3,
        report_to="none", no_progress_bar=True, seed=0, checkpointing_steps=100, **changes,
    )
    accelerator = build_accelerator(args)
    prepare_output_dir(accelerator, args, {"test": 1})
    model = tiny_classifier()
    inputs = random_inputs(model.config, clips=4)
    rows = [{**{k: v[i] for k, v in inputs.items()}, "labels": torch.tensor(i % LABELS)} for i in range(4)]
    loop = TrainingLoop(
        accelerator, model, args, rows, collate_fn=torch.utils.data.default_collate, fingerprint={"test": 1}
    )
    loop.train()
    return loop


def test_training_argument_compiles_the_cnns_and_trains_as_eager(tmp_path):
    plain = train_tiny(tmp_path / "plain")
    compiled = train_tiny(tmp_path / "compiled", torch_compile=True, torch_compile_backend="eager")
    model = compiled.unwrapped_model()
    assert is_compiled(model.pemt.visual_cnn) and is_compiled(model.pemt.audio_cnn)
    assert not is_compiled(plain.unwrapped_model().pemt.visual_cnn)
    torch.testing.assert_close(dict(model.state_dict()), dict(plain.unwrapped_model().state_dict()))
    # Negative control: one more step gives weights the comparison tells apart.
    with pytest.raises(AssertionError):
        torch.testing.assert_close(
            dict(train_tiny(tmp_path / "longer", steps=3).unwrapped_model().state_dict()),
            dict(plain.unwrapped_model().state_dict()),
        )


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("PEMT_COMPILE_FULL"), reason="inductor training (~100 s of compilation) runs with PEMT_COMPILE_FULL=1")
def test_inductor_compiled_training_matches_eager(tmp_path):
    plain = train_tiny(tmp_path / "plain")
    compiled = train_tiny(tmp_path / "compiled", torch_compile=True)
    torch.testing.assert_close(
        dict(compiled.unwrapped_model().state_dict()), dict(plain.unwrapped_model().state_dict()), rtol=1e-4, atol=1e-5
    )
    # Negative control: a third step moves the weights by more than the tolerance.
    with pytest.raises(AssertionError):
        torch.testing.assert_close(
            dict(train_tiny(tmp_path / "longer", steps=3).unwrapped_model().state_dict()),
            dict(plain.unwrapped_model().state_dict()), rtol=1e-4, atol=1e-5,
        )
