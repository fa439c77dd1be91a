"""The authors' downstream protocols: one crop and flip per training clip, spatial test views, and the presets of
`pemt finetune --authors_protocol`."""

from __future__ import annotations

import json

import pytest
import torch
from media_fixtures import write_media

from pemt import PemtConfig, PemtForAudioVisualClassification, PemtForPreTraining, PemtProcessor
from pemt.model.video_processing_pemt import PemtVideoProcessor
from pemt.training import finetune
from pemt.training.authors_protocols import AUTHORS_PROTOCOLS, authors_parameter_groups
from saved_models import save_tiny_pretrained

CONFIG = PemtConfig.from_preset("tiny")


def column_frames(segments: int = 3, frames: int = 4, height: int = 20, width: int = 40) -> torch.Tensor:
    """uint8 frames whose value is 5 x the column index, so a crop's offset and mirroring can be read back; every
    segment holds the same images."""
    columns = (torch.arange(width, dtype=torch.uint8) * 5).view(1, 1, 1, width, 1)
    return columns.expand(segments, frames, height, width, 3).contiguous()


def columns_seen(pixels: torch.Tensor, video: PemtVideoProcessor) -> torch.Tensor:
    """Column indices a `[..., 3, F, h, w]` crop shows along its first row (undoing the normalisation)."""
    values = (pixels[..., 0, 0, 0, :] * video.image_std + video.image_mean) * 255
    return (values / 5).round().long()


def test_training_takes_one_crop_and_flip_per_clip():
    video = PemtVideoProcessor.from_model_config(CONFIG)
    frames = column_frames()
    flipped_clips = 0
    for seed in range(40):
        pixels = video(frames, training=True, generator=torch.Generator().manual_seed(seed), return_tensors="pt")["pixel_values"]
        # Every segment of the clip shows the same view (the segments hold the same images).
        for segment in range(1, frames.shape[0]):
            torch.testing.assert_close(pixels[segment], pixels[0], rtol=0, atol=0)
        seen = columns_seen(pixels[0], video)
        flipped_clips += bool(seen[0] > seen[-1])
        # Same seed, same view: the data helper's generator makes it reproducible.
        again = video(frames, training=True, generator=torch.Generator().manual_seed(seed), return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(again, pixels, rtol=0, atol=0)
    assert 8 <= flipped_clips <= 32, flipped_clips  # probability 1/2 over 40 clips
    # Negative control: drawing a view per segment (as before) gives segments different crops.
    generator = torch.Generator().manual_seed(3)
    per_segment = torch.stack([video.process_segment(s, True, generator) for s in frames])
    assert not torch.equal(per_segment[0], per_segment[1])


def test_without_flip_training_never_mirrors():
    video = PemtVideoProcessor.from_model_config(CONFIG)
    video.horizontal_flip = False
    for seed in range(10):
        pixels = video(column_frames(), training=True, generator=torch.Generator().manual_seed(seed), return_tensors="pt")["pixel_values"]
        seen = columns_seen(pixels[0], video)
        assert seen[0] < seen[-1]


def test_spatial_crops_are_left_centre_right_along_the_long_side():
    video = PemtVideoProcessor.from_model_config(CONFIG)  # eval short side 20, crop 16
    landscape = column_frames(height=20, width=40)  # already at the short side: no resize
    lefts = [
        columns_seen(video(landscape, spatial_crop=i, num_spatial_crops=3, return_tensors="pt")["pixel_values"][0], video)[0]
        for i in range(3)
    ]
    assert [int(x) for x in lefts] == [0, 12, 24]  # 0, ceil((40 - 16) / 2), 40 - 16
    assert video.spatial_crop_offsets(40, 20, 16, 3) == [(0, 2), (12, 2), (24, 2)]  # portrait: top, centre, bottom
    with pytest.raises(ValueError, match="spatial_crop 3"):
        video(landscape, spatial_crop=3, num_spatial_crops=3)


def test_processor_gives_temporal_times_spatial_views_in_clip_view_crop_order(tmp_path):
    processor = PemtProcessor.from_model_config(CONFIG)
    clip = write_media(tmp_path / "wide.mp4", seconds=3.0, fps=25, size=(40, 80), sample_rate=16000)
    views = processor(videos=[str(clip), str(clip)], num_temporal_views=2, num_spatial_crops=3)
    assert views["pixel_values"].shape == (12, 3, 3, 4, 16, 16) and views["audio_values"].shape[0] == 12
    single = processor(videos=str(clip), num_temporal_views=2)
    pixels = views["pixel_values"][:6].view(2, 3, *views["pixel_values"].shape[1:])
    audio = views["audio_values"][:6].view(2, 3, *views["audio_values"].shape[1:])
    for view in range(2):
        # Crops of one temporal view share its audio; they differ in pixels; crop 1 is the centre crop.
        for crop in range(3):
            torch.testing.assert_close(audio[view, crop], single["audio_values"][view], rtol=0, atol=0)
        assert not torch.equal(pixels[view, 0], pixels[view, 2])
        torch.testing.assert_close(pixels[view, 1], single["pixel_values"][view], rtol=0, atol=0)
    with pytest.raises(ValueError, match="evaluation setting"):
        processor(videos=str(clip), training=True, num_spatial_crops=3)


def test_pipeline_averages_over_temporal_and_spatial_views(tmp_path):
    from transformers import pipeline

    torch.manual_seed(0)
    config = PemtConfig.from_preset("tiny", num_labels=3, classifier_head="segment")
    model = PemtForAudioVisualClassification(config).eval()
    processor = PemtProcessor.from_model_config(config)
    clip = str(write_media(tmp_path / "wide.mp4", seconds=3.0, fps=25, size=(40, 80), sample_rate=16000))
    ranking = pipeline("audio-visual-classification", model=model, processor=processor)(
        clip, top_k=3, num_temporal_views=2, num_spatial_crops=3
    )
    with torch.no_grad():
        logits = model(**processor(videos=clip, num_temporal_views=2, num_spatial_crops=3)).logits
    expected = logits.softmax(-1).mean(0)  # six views of one clip
    assert [entry["label"] for entry in ranking] == [config.id2label[int(i)] for i in expected.argsort(descending=True)]
    torch.testing.assert_close(torch.tensor([e["score"] for e in ranking]), expected.sort(descending=True).values)
    # Negative control: the centre view alone scores differently.
    assert not torch.allclose(logits[1].softmax(-1), expected, atol=1e-5)


def test_authors_parameter_groups_exclude_batch_norm_from_weight_decay():
    torch.manual_seed(0)
    model = PemtForAudioVisualClassification(PemtConfig.from_preset("tiny", num_labels=3, classifier_head="segment"))
    groups = authors_parameter_groups(model, 1e-3, 1e-4, 5e-6, train_backbone=True)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(p.requires_grad for p in model.parameters())
    bn = {id(p) for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for p in m.parameters()}
    heads = {id(p) for p in model.head_parameters()}
    for group in groups:
        members = {id(p) for p in group["params"]}
        assert (group["weight_decay"] == 0.0) == (members <= bn)
        assert group["lr"] == (1e-3 if members <= heads else 1e-4)
    frozen = authors_parameter_groups(model, 1e-3, 1e-4, 5e-6, train_backbone=False)
    assert {id(p) for g in frozen for p in g["params"]} == heads


@pytest.fixture(scope="module")
def pretrained_tiny(tmp_path_factory) -> str:
    return save_tiny_pretrained(tmp_path_factory.mktemp("pretrained"))


@pytest.mark.parametrize("protocol", sorted(AUTHORS_PROTOCOLS))
def test_finetune_with_an_authors_protocol(tmp_path, demo_data, preprocessing_cache, pretrained_tiny, protocol):
    results = finetune.main(
        [
            "--output_dir", str(tmp_path), "--train_dir", str(demo_data), "--cache_dir", str(preprocessing_cache),
            "--model_name_or_path", pretrained_tiny, "--no_progress_bar", "--checkpointing_steps", "1000",
            "--max_steps", "2", "--per_device_train_batch_size", "4", "--authors_protocol", protocol,
            "--num_temporal_views", "2",  # explicit flags win over the protocol's 10 views (kept small here)
        ]
    )
    preset = AUTHORS_PROTOCOLS[protocol]
    model = PemtForAudioVisualClassification.from_pretrained(tmp_path)
    for field, value in preset["model"].items():
        assert getattr(model.config, field) == value, field
    assert results["num_temporal_views"] == 2 and results["num_spatial_crops"] == preset["args"]["num_spatial_crops"]
    args = json.loads((tmp_path / "training_args.json").read_text())
    assert args["optimizer"] == "adam" and args["adam_epsilon"] == 1e-6 and args["weight_decay"] == 5e-6
    assert args["warmup_steps"] == 0 and args["lr_scheduler_type"] == preset["args"]["lr_scheduler_type"]
    assert args["head_learning_rate"] == preset["args"]["head_learning_rate"]
    processor = PemtProcessor.from_pretrained(tmp_path)
    assert processor.num_segments == model.config.num_segments
    if preset["args"]["linear_probe"]:
        before = PemtForPreTraining.from_pretrained(pretrained_tiny).pemt.state_dict()
        for name, tensor in model.pemt.state_dict().items():
            torch.testing.assert_close(tensor, before[name], rtol=0, atol=0, msg=name)
