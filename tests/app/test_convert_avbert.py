"""Conversion of the authors' AVBERT checkpoints, checked against their own forward pass.

`fixtures/avbert_reference.pt` is the numerical reference made for this project (see
`shared/avbert_reference/README.md`): a state dict of the authors' model at a tiny size (all three kinds of sharing,
perturbed so that a Q/K swap shows), fixed inputs, and 28 intermediate outputs of their code. It is not a file of the
authors' repository. Each test writes it into one of their two checkpoint containers and converts that file.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from hub_server import hub_env, hub_server  # noqa: F401  (hub_server is a fixture)
from media_fixtures import write_media

from pemt import PemtForAudioVisualClassification, PemtModel
from pemt.cli import main as cli_main
from pemt.conversion import AvbertConversionError, convert_avbert_checkpoint
from pemt.conversion.avbert import TRANSFORMER_ALIASES
from pemt.conversion.avbert_check import compare_with_reference

REFERENCE_FILE = Path(__file__).parents[1] / "fixtures" / "avbert_reference.pt"
TOLERANCE = 1e-4  # relative to the reference tensor's largest magnitude; float32 rounding gives ~1e-6
LAYER = "encoder.albert_layer_groups.0.albert_layers.0"
# Keys a pretraining checkpoint might hold beside the backbone; their real names are not published.
PRETRAINING_HEADS = {
    "avbert.mep_visual_head.dense.weight": torch.zeros(4, 32),
    "cpp_head.classifier.weight": torch.zeros(1, 64),
}
# Depth and heads are not in the weights; without the YAML they come from flags.
TINY_FLAGS = {"num_hidden_layers": 2, "num_attention_heads": 4, "num_segments": 3}


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(REFERENCE_FILE, weights_only=True)


@pytest.fixture
def authors_yaml(tmp_path, reference) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(reference["config"]))
    return path


def fine_tuned_file(path: Path, state_dict: dict) -> Path:
    """The container of the authors' fine-tuning loop."""
    torch.save(
        {"epoch": 3, "model_state_dict": state_dict, "head_state_dict": None, "optimizer": {"state": {}, "param_groups": []},
         "best_epoch": 2, "best_top1_acc": 0.5, "top5_acc": 0.9},
        path,
    )
    return path


def pretrained_file(path: Path, state_dict: dict) -> Path:
    """The container of the released pretrained checkpoint: `avbert.` keys, no fine-tuning heads, other heads."""
    backbone = {k: v for k, v in state_dict.items() if k.startswith("avbert.")}
    torch.save({"state_dict": {**backbone, **PRETRAINING_HEADS}}, path)
    return path


def worst(differences: dict[str, tuple[float, float]], names) -> float:
    return max(differences[name][1] for name in names)


TRANSFORMER_OUTPUTS = [f"{m}_{o}" for m in ("visual", "audio", "multimodal") for o in ("layer_outputs", "sequence_output")]


# --- equivalence ------------------------------------------------------------------------------------------------


def test_fine_tuned_checkpoint_reproduces_every_output_of_the_authors(tmp_path, reference, authors_yaml):
    checkpoint = fine_tuned_file(tmp_path / "finetuned.pyth", reference["state_dict"])
    result = convert_avbert_checkpoint(checkpoint, tmp_path / "converted", authors_yaml)
    assert result.kind == "classifier" and isinstance(result.model, PemtForAudioVisualClassification)
    assert result.ignored_keys == []
    # The processor follows their DATA section: 3 segments of 8 frames, every 2nd at 30 fps, 48-pixel test crops of
    # a 48-pixel short side, 32 mel bins x 48 frames of a window n_fft = 2 * (floor(samples / 48) + 1).
    video, audio = result.processor.video_processor, result.processor.feature_extractor
    assert result.processor.num_segments == 3
    assert (video.frames_per_segment, video.frame_stride, video.video_fps) == (8, 2, 30.0)
    assert (video.eval_short_side, video.eval_crop_size, video.train_crop_size) == (48, 48, 48)
    samples = 44100 * 8 * 2 // 30
    assert (audio.num_mel_bins, audio.audio_frames, audio.n_fft, audio.hop_length) == (32, 48, 2 * (samples // 48 + 1), samples // 48 + 1)
    assert result.dropped_caches == 4 * 18  # 6 factors x 3 modalities, under each of the four Transformer names
    differences = compare_with_reference(result.model, reference)
    assert len(differences) == len(reference["outputs"]) + 1  # every output, and the clip probability
    failing = {name: d for name, d in differences.items() if d[1] > TOLERANCE}
    assert not failing, failing
    # The clip probability the pipeline reports: mean over segments of the authors' test scores, halved.
    probability = result.model(
        pixel_values=reference["inputs"]["visual_seq"], audio_values=reference["inputs"]["audio_seq"]
    ).logits.softmax(-1)
    expected = reference["outputs"]["test_scores"].view(2, 3, -1).mean(1) / 2
    torch.testing.assert_close(probability, expected, rtol=TOLERANCE, atol=1e-7)


def test_pretrained_checkpoint_gives_the_backbone_and_lists_the_unknown_heads(tmp_path, reference):
    checkpoint = pretrained_file(tmp_path / "checkpoint.pyth", reference["state_dict"])
    result = convert_avbert_checkpoint(checkpoint, tmp_path / "backbone", **TINY_FLAGS)
    assert result.kind == "backbone" and type(result.model) is PemtModel
    assert result.ignored_keys == sorted(PRETRAINING_HEADS)
    recorded = json.loads((tmp_path / "backbone" / "conversion.json").read_text())
    assert recorded["ignored_keys"] == sorted(PRETRAINING_HEADS)
    inputs, outputs = reference["inputs"], reference["outputs"]
    with torch.no_grad():
        output = result.model(pixel_values=inputs["visual_seq"], audio_values=inputs["audio_seq"])
    pairs = {
        "visual_cnn_embeddings": output.visual_cnn_embeddings,
        "audio_cnn_embeddings": output.audio_cnn_embeddings,
        "visual_sequence_output": output.visual_last_hidden_state,
        "audio_sequence_output": output.audio_last_hidden_state,
        "multimodal_sequence_output": output.multimodal_last_hidden_state,
    }
    for name, actual in pairs.items():
        torch.testing.assert_close(actual, outputs[name], rtol=0, atol=TOLERANCE * outputs[name].abs().max().item(), msg=name)


def test_without_the_authors_config_paper_defaults_apply_and_flags_override(tmp_path, reference):
    checkpoint = fine_tuned_file(tmp_path / "finetuned.pyth", reference["state_dict"])
    # The paper's 12 heads do not divide hidden size 32, nor do its 10 segments fit the tiny checkpoint's 8 position
    # slots: the errors name the fields to set.
    with pytest.raises(AvbertConversionError, match=r"finetuned.pyth: .*num_attention_heads \(12\)"):
        convert_avbert_checkpoint(checkpoint)
    with pytest.raises(AvbertConversionError, match="num_segments .*max_position_embeddings is 8"):
        convert_avbert_checkpoint(checkpoint, num_attention_heads=4)
    result = convert_avbert_checkpoint(checkpoint, **TINY_FLAGS)
    config = result.model.config
    # From the shapes: widths, depths, hidden size, rank, classes.
    assert (config.visual_cnn_width, config.visual_cnn_depths, config.audio_cnn_depths) == (4, (2, 2, 2, 2), (2, 2, 2, 2))
    assert (config.hidden_size, config.intermediate_size, config.low_rank_dim, config.num_labels) == (32, 37, 8, 32)
    assert config.visual_stem_temporal_kernel == 5 and config.audio_separable_stages == 2
    # From the paper's defaults: the Kinetics-Sounds preprocessing.
    assert (config.eval_crop_size, config.num_mel_bins, config.audio_frames, config.n_fft) == (128, 80, 128, 1472)
    failing = {n: d for n, d in compare_with_reference(result.model, reference).items() if d[1] > TOLERANCE}
    assert not failing, failing


def test_private_layer_norms_get_copies_of_the_shared_ones(reference):
    result = convert_avbert_checkpoint(dict(reference["state_dict"]), authors_config=reference["config"], share_layer_norms=False)
    layer = result.model.pemt.encoder.shared.layers[0]
    assert len(layer.attention_norm) == 3
    torch.testing.assert_close(layer.output_norm[2].weight, layer.output_norm[0].weight, rtol=0, atol=0)
    failing = {n: d for n, d in compare_with_reference(result.model, reference).items() if d[1] > TOLERANCE}
    assert not failing, failing


# --- negative controls ------------------------------------------------------------------------------------------


def test_sigma_not_transposed_fails_the_comparison(reference):
    model = convert_avbert_checkpoint(dict(reference["state_dict"]), authors_config=reference["config"]).model
    state = model.state_dict()
    for name in state:
        if name.endswith("parametrizations.weight.0.base"):
            state[name] = state[name].T.clone(memory_format=torch.contiguous_format)
    model.load_state_dict(state)
    differences = compare_with_reference(model, reference)
    assert worst(differences, ["visual_cnn_embeddings", "audio_cnn_embeddings"]) < TOLERANCE  # the CNNs are untouched
    assert worst(differences, TRANSFORMER_OUTPUTS) > 100 * TOLERANCE


def test_query_and_key_swapped_fails_the_comparison(reference):
    swapped = {}
    for key, value in reference["state_dict"].items():
        if ".attention.factor_query." in key:
            key = key.replace(".factor_query.", ".factor_key.")
        elif ".attention.factor_key." in key:
            key = key.replace(".factor_key.", ".factor_query.")
        swapped[key] = value
    model = convert_avbert_checkpoint(swapped, authors_config=reference["config"]).model
    differences = compare_with_reference(model, reference)
    assert worst(differences, ["visual_transformer_input"]) < TOLERANCE
    assert worst(differences, TRANSFORMER_OUTPUTS) > 10 * TOLERANCE


def test_sigma_from_the_whole_of_a_fails_the_comparison(reference, monkeypatch):
    # The authors read only the strict upper triangle of A; using A - A^T is a plausible mistake.
    from pemt.conversion import avbert

    monkeypatch.setattr(avbert, "authors_sigma", lambda a, base: base.double() @ torch.linalg.matrix_exp((a - a.T).double()))
    model = convert_avbert_checkpoint(dict(reference["state_dict"]), authors_config=reference["config"]).model
    assert worst(compare_with_reference(model, reference), TRANSFORMER_OUTPUTS) > 100 * TOLERANCE


# --- bad checkpoints --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "missing",
    [
        f"avbert.transformer.{LAYER}.attention.factor_value.orthogonal_ms1_linear.A",
        "avbert.visual_conv.s3.pathway0_res1.branch2.b_bn.running_var",
        "concat_seq_head.ln.weight",
    ],
)
def test_a_missing_key_is_an_error_naming_it(tmp_path, reference, authors_yaml, missing):
    aliases = {missing.replace("avbert.transformer.", f"avbert.{alias}.") for alias in TRANSFORMER_ALIASES}
    state_dict = {k: v for k, v in reference["state_dict"].items() if k not in aliases | {missing}}
    checkpoint = fine_tuned_file(tmp_path / "broken.pyth", state_dict)
    with pytest.raises(AvbertConversionError, match=f"missing key '{missing}'") as caught:
        convert_avbert_checkpoint(checkpoint, tmp_path / "out", authors_yaml)
    assert str(checkpoint) in str(caught.value)
    assert not (tmp_path / "out").exists(), "nothing is written for a broken checkpoint"


def test_a_misshapen_key_is_an_error_naming_it(reference, authors_yaml):
    state_dict = dict(reference["state_dict"])
    state_dict["avbert.audio_conv.s4.res1.branch2.b.weight"] = torch.zeros(16, 16, 3, 1)
    with pytest.raises(AvbertConversionError, match=r"'avbert.audio_conv.s4.res1.branch2.b.weight' has shape \(16, 16, 3, 1\)"):
        convert_avbert_checkpoint(state_dict, authors_config=authors_yaml)


def test_transformer_aliases_that_disagree_are_an_error(reference):
    state_dict = dict(reference["state_dict"])
    key = f"avbert.multi_transformer.{LAYER}.full_layer_layer_norm.bias"
    state_dict[key] = state_dict[key] + 1
    with pytest.raises(AvbertConversionError, match="multi_transformer.*full_layer_layer_norm.bias differs"):
        convert_avbert_checkpoint(state_dict, authors_config=reference["config"])


def test_a_backbone_key_pemt_cannot_place_is_an_error(reference):
    state_dict = dict(reference["state_dict"])
    state_dict["avbert.visual_conv.s5.pathway0_res1.branch2.d.weight"] = torch.zeros(1)
    with pytest.raises(AvbertConversionError, match="no place in pemt.*branch2.d.weight"):
        convert_avbert_checkpoint(state_dict, authors_config=reference["config"])


def test_a_config_that_contradicts_the_weights_is_an_error(reference):
    config = json.loads(json.dumps(reference["config"]))
    config["TRANSFORMER"]["HIDDEN_SIZE"] = 64
    with pytest.raises(AvbertConversionError, match="hidden_size=64 but the weights have 32"):
        convert_avbert_checkpoint(dict(reference["state_dict"]), authors_config=config)


# --- the converted model in use ---------------------------------------------------------------------------------


def test_converted_model_saves_reloads_and_classifies_a_clip(tmp_path, reference, authors_yaml, hub_server):  # noqa: F811
    from transformers import pipeline

    from pemt.hub import push_to_hub

    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"class {i}" for i in range(32)) + "\n")
    checkpoint = fine_tuned_file(tmp_path / "finetuned.pyth", reference["state_dict"])
    out = tmp_path / "converted"
    cli_main(["convert-avbert", str(checkpoint), str(out), "--authors_config", str(authors_yaml), "--labels", str(labels)])
    loaded = PemtForAudioVisualClassification.from_pretrained(out).eval()
    assert loaded.config.classifier_head == "segment" and loaded.config.id2label[5] == "class 5"
    assert loaded.config.classifier_layer_norm_eps == 1e-5 and loaded.config.classifier_dropout == 0.5
    failing = {n: d for n, d in compare_with_reference(loaded, reference).items() if d[1] > TOLERANCE}
    assert not failing, failing

    # A real clip at the reference's sizes: 8 frames of every 2nd at 30 fps, 48-pixel crops, 32 x 48 log-mel.
    clip = str(write_media(tmp_path / "clip.mp4", seconds=2.0, fps=30, size=(60, 80), sample_rate=44100))
    classifier = pipeline("audio-visual-classification", model=str(out))
    ranking = classifier(clip, top_k=3)
    inputs = classifier.processor(videos=clip)
    assert inputs["pixel_values"].shape == (1, 3, 3, 8, 48, 48) and inputs["audio_values"].shape == (1, 3, 1, 32, 48)
    with torch.no_grad():
        output = loaded(**inputs)
    # The authors' score: softmaxes of both heads averaged over segments.
    scores = (output.segment_logits.softmax(-1) + output.cnn_segment_logits.softmax(-1)).mean(dim=1)[0] / 2
    top = scores.topk(3)
    assert [entry["label"] for entry in ranking] == [f"class {int(i)}" for i in top.indices]
    torch.testing.assert_close(torch.tensor([entry["score"] for entry in ranking]), top.values, rtol=1e-5, atol=1e-7)

    # Pushed to the (local) Hub and loaded by repository id.
    push_to_hub(out, "tester/avbert-tiny")
    remote = PemtForAudioVisualClassification.from_pretrained("tester/avbert-tiny").eval()
    with torch.no_grad():
        torch.testing.assert_close(remote(**inputs).logits, output.logits, rtol=1e-6, atol=1e-6)
    # And where pemt is not installed: the repository's own code (with the segment head) gives the same scores.
    script = textwrap.dedent(
        """
        import sys
        sys.modules["pemt"] = None
        from transformers import pipeline
        ranking = pipeline("audio-visual-classification", model="tester/avbert-tiny", trust_remote_code=True)(sys.argv[1], top_k=3)
        print(json.dumps(ranking))
        """
    ).replace("import sys", "import json, sys", 1)
    run = subprocess.run(
        [sys.executable, "-c", script, clip], capture_output=True, text=True, env=hub_env(hub_server, tmp_path / "hf"),
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    remote_ranking = json.loads(run.stdout.strip().splitlines()[-1])
    assert [e["label"] for e in remote_ranking] == [e["label"] for e in ranking]
    torch.testing.assert_close(
        torch.tensor([e["score"] for e in remote_ranking]), torch.tensor([e["score"] for e in ranking]), rtol=1e-5, atol=1e-7
    )


def test_cli_check_prints_the_differences(tmp_path, reference, authors_yaml, capsys):
    checkpoint = fine_tuned_file(tmp_path / "finetuned.pyth", reference["state_dict"])
    cli_main(["convert-avbert", str(checkpoint), str(tmp_path / "out"), "--authors_config", str(authors_yaml),
              "--check", str(REFERENCE_FILE)])
    printed = capsys.readouterr().out
    assert "dropped 72 cached _B buffers" in printed
    def is_number(cell: str) -> bool:
        try:
            float(cell)
        except ValueError:
            return False
        return True

    # One row per compared output (an exact match prints 0.00e+00), plus the clip probability.
    rows = [cells for cells in (line.split("|") for line in printed.splitlines() if line.startswith("| "))
            if len(cells) > 3 and is_number(cells[2])]
    assert len(rows) == len(reference["outputs"]) + 1
    assert all(float(row[3]) <= TOLERANCE for row in rows)


def test_cli_reports_a_bad_checkpoint_in_one_line(tmp_path, capsys):
    bad = tmp_path / "notes.pt"
    torch.save({"weights": {"x": torch.zeros(1)}}, bad)
    with pytest.raises(SystemExit) as exited:
        cli_main(["convert-avbert", str(bad), str(tmp_path / "out")])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith(f"pemt convert-avbert: error: {bad}: no AVBERT weights found") and "Traceback" not in error
    assert not (tmp_path / "out").exists()
