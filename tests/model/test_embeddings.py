"""Embeddings API, correspondence, retrieval and export on the tiny preset (issue 15)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from media_fixtures import write_media
from transformers import pipeline

from pemt import MediaDecodeError, PemtConfig, PemtForAudioVisualClassification, PemtForPreTraining, PemtModel, PemtProcessor
from pemt.cli import main as pemt_main
from pemt.model import modeling_pemt
from pemt.model.cnn_pemt import _run_cnn_on_every_segment, run_cnn_over_segments
from pemt.retrieval import EmbeddingIndex, build_index, encode, load_model, search, search_main

CONFIG = PemtConfig.from_preset("tiny")


def inputs(batch: int = 3, seed: int = 0, padded: bool = True) -> dict[str, torch.Tensor]:
    """Random processor-shaped inputs; with `padded`, the last clip has one real segment."""
    c, t = CONFIG, CONFIG.num_segments
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, t, dtype=torch.long)
    if padded:
        mask[-1, 1:] = 0
    return {
        "pixel_values": torch.randn(batch, t, 3, c.frames_per_segment, c.eval_crop_size, c.eval_crop_size, generator=g),
        "audio_values": torch.randn(batch, t, 1, c.num_mel_bins, c.audio_frames, generator=g),
        "visual_segment_mask": mask,
        "audio_segment_mask": mask.clone(),
    }


def seeded(cls, config=CONFIG, seed=0):
    torch.manual_seed(seed)
    return cls(config).eval()


@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory) -> str:
    directory = tmp_path_factory.mktemp("pretrained")
    seeded(PemtForPreTraining).save_pretrained(directory)
    PemtProcessor.from_model_config(CONFIG).save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("clips")
    (folder / "sub").mkdir()
    (folder / "corrupt.mp4").write_bytes(b"not a video at all")
    return {
        "low": write_media(folder / "low.mp4", seconds=3.0, tone_hz=300.0),
        "high": write_media(folder / "sub" / "high.mp4", seconds=3.0, tone_hz=1200.0, size=(64, 48)),
        "short": write_media(folder / "short.mp4", seconds=0.5, tone_hz=600.0),
        "silent": write_media(folder / "silent.mkv", seconds=2.0, sample_rate=None),
        "tone": write_media(folder.parent / f"{folder.name}_tone.wav", seconds=2.5, video=False, tone_hz=900.0),
        "folder": folder,
    }


# --- embeddings API -----------------------------------------------------------------------------------------------


def test_features_are_the_documented_poolings_of_the_backbone_outputs():
    model, x = seeded(PemtModel), inputs()
    with torch.no_grad():
        output = model(**x)
        features = model.get_features(**x)
        video = model.get_video_features(x["pixel_values"], x["visual_segment_mask"], pooling="mean")
        audio = model.get_audio_features(x["audio_values"], x["audio_segment_mask"], pooling="summary_and_mean", normalize=True)
        clip = model.get_clip_features(**x)
    h, t = CONFIG.hidden_size, CONFIG.num_segments
    assert features.video_embeds.shape == features.audio_embeds.shape == (3, h)
    assert features.clip_embeds.shape == clip.pooler_output.shape == (3, 2 * h)
    torch.testing.assert_close(features.video_embeds, output.visual_summary)
    torch.testing.assert_close(features.audio_embeds, output.audio_summary)
    torch.testing.assert_close(clip.pooler_output, output.multimodal_summary.flatten(1))
    assert clip.last_hidden_state.shape == (3, 2 + 2 * t, h)
    # Mean over real segments only, computed by hand: the padded clip averages its single real segment.
    sequence = output.visual_last_hidden_state
    expected = torch.stack([sequence[0, 1:].mean(0), sequence[1, 1:].mean(0), sequence[2, 1]])
    torch.testing.assert_close(video.pooler_output, expected)
    assert video.last_hidden_state.shape == (3, 1 + t, h)
    assert audio.last_hidden_state.shape == (3, 1 + t, h) and audio.pooler_output.shape == (3, 2 * h)
    summary_and_mean = torch.cat([output.audio_summary, torch.stack([
        output.audio_last_hidden_state[0, 1:].mean(0), output.audio_last_hidden_state[1, 1:].mean(0),
        output.audio_last_hidden_state[2, 1]])], dim=-1)
    torch.testing.assert_close(audio.pooler_output, F.normalize(summary_and_mean, dim=-1))
    torch.testing.assert_close(audio.pooler_output.norm(dim=-1), torch.ones(3))
    with pytest.raises(ValueError, match="pooling"):
        model.get_video_features(x["pixel_values"], pooling="max")


def test_padding_segments_change_no_embedding_and_unmasking_them_does():
    model, x = seeded(PemtModel), inputs(padded=True)
    noisy = dict(x, pixel_values=x["pixel_values"].clone(), audio_values=x["audio_values"].clone())
    noisy["pixel_values"][-1, 1:] = 5.0  # garbage at padded positions
    noisy["audio_values"][-1, 1:] = -5.0
    with torch.no_grad():
        clean, dirty = model.get_features(**x), model.get_features(**noisy)
        unmasked = model.get_features(**dict(noisy, visual_segment_mask=torch.ones_like(x["visual_segment_mask"])))
    for name in ("video_embeds", "audio_embeds", "clip_embeds"):
        torch.testing.assert_close(dirty[name], clean[name])
    assert not torch.allclose(unmasked.video_embeds[-1], clean.video_embeds[-1], atol=1e-3)  # negative control


@pytest.mark.parametrize("cls", [PemtForPreTraining, PemtForAudioVisualClassification])
def test_models_with_heads_give_their_backbones_features(cls):
    model = seeded(cls, PemtConfig.from_preset("tiny", num_labels=3))
    backbone = PemtModel(model.config).eval()
    backbone.load_state_dict(model.pemt.state_dict())
    x = inputs()
    with torch.no_grad():
        for method, args in (("get_video_features", (x["pixel_values"], x["visual_segment_mask"])),
                             ("get_audio_features", (x["audio_values"], x["audio_segment_mask"])),
                             ("get_clip_features", tuple(x.values()))):
            torch.testing.assert_close(getattr(model, method)(*args).pooler_output, getattr(backbone, method)(*args).pooler_output)


def test_projected_clip_embedding_is_what_the_classifier_reads():
    model, x = seeded(PemtForAudioVisualClassification, PemtConfig.from_preset("tiny", num_labels=3)), inputs()
    with torch.no_grad():
        out = model(**x)
        projected = model.get_clip_features(**x, projected=True).pooler_output
        features = model.get_features(**x, projected=True)
        visual_cnn = model.pemt.embed_visual(x["pixel_values"], x["visual_segment_mask"])
        audio_cnn = model.pemt.embed_audio(x["audio_values"], x["audio_segment_mask"])
    assert projected.shape == (3, CONFIG.hidden_size)
    cnn = torch.cat([
        (visual_cnn * x["visual_segment_mask"][..., None]).sum(1) / x["visual_segment_mask"].sum(1, keepdim=True),
        (audio_cnn * x["audio_segment_mask"][..., None]).sum(1) / x["audio_segment_mask"].sum(1, keepdim=True),
    ], dim=-1)
    torch.testing.assert_close(model.classifier(projected) + model.cnn_classifier(cnn), out.logits)
    torch.testing.assert_close(features.clip_embeds, projected)
    assert features.video_embeds is None and features.audio_embeds is None
    with pytest.raises(ValueError, match="no trained projection"):
        model.get_video_features(x["pixel_values"], projected=True)  # its head reads the multimodal output
    with pytest.raises(ValueError, match="no trained projection"):
        seeded(PemtModel).get_clip_features(**x, projected=True)
    with pytest.raises(ValueError, match="no trained projection"):
        seeded(PemtForPreTraining).get_features(**x, projected=True)
    segment_head = seeded(PemtForAudioVisualClassification, PemtConfig.from_preset("tiny", num_labels=3, classifier_head="segment"))
    with pytest.raises(ValueError, match="no trained projection"):
        segment_head.get_clip_features(**x, projected=True)
    visual = seeded(PemtForAudioVisualClassification, PemtConfig.from_preset("tiny", num_labels=3, classifier_modality="visual"))
    with torch.no_grad():
        logits = visual(pixel_values=x["pixel_values"], visual_segment_mask=x["visual_segment_mask"]).logits
        embeds = visual.get_video_features(x["pixel_values"], x["visual_segment_mask"], projected=True).pooler_output
        cnn = visual.pemt.embed_visual(x["pixel_values"], x["visual_segment_mask"])
    mean_cnn = (cnn * x["visual_segment_mask"][..., None]).sum(1) / x["visual_segment_mask"].sum(1, keepdim=True)
    torch.testing.assert_close(visual.classifier(embeds) + visual.cnn_classifier(mean_cnn), logits)


# --- correspondence -----------------------------------------------------------------------------------------------


def test_correspondence_logits_are_pretrainings_cpp_logits_without_masking_or_swaps(monkeypatch):
    model, x = seeded(PemtForPreTraining), inputs(padded=False)
    no_swap = torch.zeros(x["audio_values"].shape[0], dtype=torch.bool)
    monkeypatch.setattr(modeling_pemt, "swap_audio", lambda a, m, g=None: (a, no_swap, torch.arange(a.shape[0]), ~no_swap))
    monkeypatch.setattr(modeling_pemt, "mask_segments", lambda e, real, vector, p, g=None: (e, torch.zeros_like(real.bool()) | (torch.arange(real.shape[1]) == 0)))
    with torch.no_grad():
        forward = model(**x).cpp_logits
        direct = model.correspondence_logits(**x)
        swapped = model.correspondence_logits(**dict(x, audio_values=x["audio_values"].roll(1, dims=0)))
    torch.testing.assert_close(direct, forward)
    assert not torch.allclose(swapped, direct, atol=1e-4)  # negative control: another clip's sound scores differently


def test_per_segment_scores_are_one_segment_clips():
    model, x = seeded(PemtForPreTraining), inputs(padded=True)
    with torch.no_grad():
        per_segment = model.correspondence_logits(**x, per_segment=True)
        t = CONFIG.num_segments
        for segment in range(t):
            alone = {
                "pixel_values": torch.zeros_like(x["pixel_values"]), "audio_values": torch.zeros_like(x["audio_values"]),
                "visual_segment_mask": torch.zeros_like(x["visual_segment_mask"]), "audio_segment_mask": torch.zeros_like(x["audio_segment_mask"]),
            }
            alone["pixel_values"][:, 0] = x["pixel_values"][:, segment]
            alone["audio_values"][:, 0] = x["audio_values"][:, segment]
            alone["visual_segment_mask"][:, 0] = alone["audio_segment_mask"][:, 0] = 1
            expected = model.correspondence_logits(**alone)
            real = x["visual_segment_mask"][:, segment].bool()
            torch.testing.assert_close(per_segment[real, segment], expected[real])
            assert torch.isnan(per_segment[~real, segment]).all()
    assert per_segment.shape == (3, t)


def test_correspondence_pipeline_matches_the_model_and_scores_another_files_audio(pretrained_dir, clips):
    judge = pipeline("audio-visual-correspondence", model=pretrained_dir)
    model = PemtForPreTraining.from_pretrained(pretrained_dir).eval()
    processor = PemtProcessor.from_pretrained(pretrained_dir)
    own = processor(videos=str(clips["low"]))
    other = processor(videos=str(clips["tone"]))
    dubbed = dict(own, audio_values=other["audio_values"], audio_segment_mask=other["audio_segment_mask"])
    for query, x in ((str(clips["low"]), own), ({"video": str(clips["low"]), "audio": str(clips["tone"])}, dubbed)):
        result = judge(query)
        with torch.no_grad():
            clip = model.correspondence_logits(**x).sigmoid()
            segments = model.correspondence_logits(**x, per_segment=True).sigmoid()
        assert result["score"] == pytest.approx(float(clip[0]), abs=1e-6)
        assert [s["score"] for s in result["segments"]] == pytest.approx(segments[0].tolist(), abs=1e-6)
    assert judge(str(clips["low"]))["score"] != pytest.approx(judge({"video": str(clips["low"]), "audio": str(clips["tone"])})["score"], abs=1e-7)
    segments = judge(str(clips["low"]))["segments"]
    assert [s["segment"] for s in segments] == list(range(CONFIG.num_segments))
    assert segments[0]["start"] == 0.0 and segments[-1]["end"] == pytest.approx(3.0, abs=0.05)
    assert len(judge(str(clips["short"]))["segments"]) == 1  # one real segment
    with pytest.raises(MediaDecodeError, match="silent.mkv"):
        judge(str(clips["silent"]))
    with pytest.raises(TypeError, match="unknown argument.*audio"):
        judge(str(clips["low"]), audio=str(clips["tone"]))  # misspelt use: the pair goes in a dict
    with pytest.raises(MediaDecodeError, match="silent.mkv"):
        judge({"video": str(clips["low"]), "audio": str(clips["silent"])})


def test_correspondence_command_prints_clip_and_segments(pretrained_dir, clips, capsys):
    pemt_main(["correspondence", str(clips["low"]), "--audio", str(clips["tone"]), "--model", pretrained_dir])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"{clips['low']} with {clips['tone']}:") and len(lines) == 1 + CONFIG.num_segments
    assert lines[1].split()[:2] == ["segment", "0"]


# --- feature pipeline -----------------------------------------------------------------------------------------------


def test_feature_pipeline_matches_the_api_and_reports_missing_modalities(pretrained_dir, clips):
    extractor = pipeline("audio-visual-feature-extraction", model=pretrained_dir)
    model = PemtModel.from_pretrained(pretrained_dir).eval()
    processor = PemtProcessor.from_pretrained(pretrained_dir)
    with torch.no_grad():
        expected = model.get_features(**processor(videos=str(clips["high"])), normalize=True)
    result = extractor(str(clips["high"]), return_tensors=True, segment_embeddings=True)
    for key, name in (("video_embedding", "video_embeds"), ("audio_embedding", "audio_embeds"), ("clip_embedding", "clip_embeds")):
        torch.testing.assert_close(result[key], expected[name][0])
    assert result["video_segment_embeddings"].shape == (CONFIG.num_segments, CONFIG.hidden_size)
    as_lists = extractor(str(clips["high"]))
    assert as_lists["clip_embedding"] == pytest.approx(result["clip_embedding"].tolist())
    tone = extractor(str(clips["tone"]))
    assert tone["video_embedding"] is None and tone["clip_embedding"] is None and len(tone["audio_embedding"]) == CONFIG.hidden_size
    videos = [str(clips["low"]), str(clips["tone"]), str(clips["short"])]
    batched = extractor(videos, batch_size=2, return_tensors=True)
    for video, features in zip(videos, batched):
        single = extractor(video, return_tensors=True)
        for key, value in single.items():
            assert (value is None) == (features[key] is None)
            if value is not None:
                torch.testing.assert_close(features[key], value)


# --- retrieval ------------------------------------------------------------------------------------------------------


def test_index_and_search_rank_by_the_documented_scores(pretrained_dir, clips, tmp_path, capsys):
    output = tmp_path / "index.pt"
    pemt_main(["index", str(clips["folder"]), "--model", pretrained_dir, "--output", str(output)])
    printed = capsys.readouterr()
    assert "corrupt.mp4" in printed.err and "silent.mkv" in printed.err  # reported, skipped, the rest indexed
    index = EmbeddingIndex.load(output)
    assert sorted(index.paths) == sorted(str(clips[k]) for k in ("low", "high", "short"))
    model, processor = load_model(pretrained_dir)
    assert isinstance(model, PemtForPreTraining)

    # Clip-to-clip: the query file itself comes first with cosine 1.
    pemt_main(["search", str(output), "--clip", str(clips["high"]), "--top_k", "3"])
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 3 and printed[0].split() == ["1", "1.000", str(clips["high"])]
    results = search_main([str(output), "--clip", str(clips["high"]), "--top_k", "3"])
    assert results[0]["path"] == str(clips["high"]) and results[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)

    # Sound-to-picture: every indexed picture scored with the query's sound by the correspondence head, by hand.
    results = search_main([str(output), "--audio", str(clips["tone"]), "--top_k", "3"])
    query = processor(videos=str(clips["tone"]))
    expected = {}
    with torch.no_grad():
        for path in index.paths:
            picture = processor(videos=path)
            pair = dict(picture, audio_values=query["audio_values"], audio_segment_mask=query["audio_segment_mask"])
            expected[path] = float(model.correspondence_logits(**pair).sigmoid()[0])
    assert [r["path"] for r in results] == sorted(expected, key=expected.get, reverse=True)
    assert [r["score"] for r in results] == pytest.approx(sorted(expected.values(), reverse=True), abs=1e-6)

    # Picture-to-sound with cosine scoring compares the query's video embedding with the indexed audio embeddings.
    encoded = encode(model, dict(processor(videos=str(clips["low"]))))
    results = search(index, encoded, "video", model, top_k=3, scoring="cosine")
    cosines = index.audio_embeds @ encoded["video_embeds"][0]
    assert results[0]["score"] == pytest.approx(float(cosines.max()), abs=1e-6)
    with pytest.raises(ValueError, match="pretrained model"):
        search(index, encoded, "audio", seeded(PemtModel), top_k=3)
    with pytest.raises(ValueError, match="not a pemt index"):
        EmbeddingIndex.load(clips["low"])
    with pytest.raises(ValueError, match="no video files"):
        build_index(tmp_path, pretrained_dir)


# --- export ---------------------------------------------------------------------------------------------------------


def test_every_segment_runner_equals_the_padding_skipping_one_in_eval_only():
    model = seeded(PemtModel)
    x = inputs(padded=True)
    args = (x["pixel_values"], x["visual_segment_mask"], CONFIG.visual_embedding_dim)
    with torch.no_grad():
        skipping = run_cnn_over_segments(model.visual_cnn, *args, chunk_size=0, use_checkpointing=False)
        every = _run_cnn_on_every_segment(model.visual_cnn, *args)
        torch.testing.assert_close(every, skipping)
        assert (every[-1, 1:] == 0).all()
        model.visual_cnn.train()  # batch statistics would count the padding: why training keeps skipping it
        assert not torch.allclose(_run_cnn_on_every_segment(model.visual_cnn, *args), run_cnn_over_segments(model.visual_cnn, *args, 0, False), atol=1e-4)


def test_torch_export_of_the_classifier_equals_eager_for_batches_1_and_3(tmp_path, capsys):
    import json

    from pemt.export import check, load_for_export

    config = PemtConfig.from_preset("tiny", num_labels=3)
    seeded(PemtForAudioVisualClassification, config).save_pretrained(tmp_path / "classifier")
    pemt_main(["export", str(tmp_path / "classifier"), str(tmp_path / "classifier.pt2"), "--format", "torch"])
    report = json.loads(capsys.readouterr().out)
    assert report["target"] == "classifier"
    assert report["max_abs_diff_batch_1"] <= 1e-4 and report["max_abs_diff_batch_3"] <= 1e-4
    program = torch.export.load(tmp_path / "classifier.pt2").module()
    eager, _, _ = load_for_export(tmp_path / "classifier")
    for batch in (2, 5):  # the batch is symbolic: sizes never traced work too
        x = inputs(batch, seed=batch)
        torch.testing.assert_close(program(*x.values())[0], eager(*x.values())[0], rtol=1e-4, atol=1e-5)
    # Negative control: a model that differs in one weight fails the check.
    with torch.no_grad():
        eager.model.classifier.bias += 1e-2
    with pytest.raises(AssertionError, match="differs from eager"):
        check(tmp_path / "classifier.pt2", eager, "torch")


def test_onnx_export_of_the_feature_model_runs_in_onnxruntime_like_eager(pretrained_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from pemt.export import export

    report = export(pretrained_dir, tmp_path / "features.onnx", "onnx")
    assert report["target"] == "features"
    assert report["max_abs_diff_batch_1"] <= 1e-4 and report["max_abs_diff_batch_3"] <= 1e-4
    import onnx

    graph = onnx.load(str(tmp_path / "features.onnx")).graph
    assert [o.name for o in graph.output] == ["video_embeds", "audio_embeds", "clip_embeds"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a named, dynamic batch
