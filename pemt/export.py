"""`pemt export MODEL OUTPUT --format {onnx,torch}`: a PEMT classifier or feature model as a `torch.export` program
(`.pt2`) or an ONNX graph (`torch.onnx.export(..., dynamo=True)`) with a dynamic batch, checked against eager.

What makes the graphs exportable: in eval mode the CNNs run on every segment and padding is zeroed by a select
(see `run_cnn_over_segments`), so no shape depends on the masks' values; and the orthogonal parametrisation of
each `Sigma_g` is baked into a plain weight (`Sigma_g` is constant at inference, and ONNX has no `matrix_exp`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from .model.configuration_pemt import PemtConfig
from .model.modeling_pemt import PemtForAudioVisualClassification, PemtModel

INPUT_NAMES = ("pixel_values", "audio_values", "visual_segment_mask", "audio_segment_mask")
TARGETS = ("auto", "classifier", "features")
# float32 through a few dozen layers: kernels that differ by batch size or fusion differ in the last bits.
TOLERANCE = 1e-4


class ExportableClassifier(nn.Module):
    """Positional tensors in, `logits` `[batch, num_labels]` out."""

    output_names = ("logits",)

    def __init__(self, model: PemtForAudioVisualClassification):
        super().__init__()
        self.model = model

    def forward(self, pixel_values, audio_values, visual_segment_mask, audio_segment_mask) -> tuple[torch.Tensor]:
        return (self.model(pixel_values, audio_values, visual_segment_mask, audio_segment_mask, return_dict=True).logits,)


class ExportableFeatures(nn.Module):
    """Positional tensors in, L2-normalised `video_embeds`, `audio_embeds`, `clip_embeds` out (summary pooling)."""

    output_names = ("video_embeds", "audio_embeds", "clip_embeds")

    def __init__(self, model: PemtModel):
        super().__init__()
        self.model = model

    def forward(self, pixel_values, audio_values, visual_segment_mask, audio_segment_mask) -> tuple[torch.Tensor, ...]:
        features = self.model.get_features(pixel_values, audio_values, visual_segment_mask, audio_segment_mask, normalize=True)
        return features.video_embeds, features.audio_embeds, features.clip_embeds


def bake_parametrizations(model: nn.Module) -> nn.Module:
    """Replaces every parametrised weight (each orthogonal `Sigma_g`) by its current value, in place."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return model


def load_for_export(model_dir: str | Path, target: str = "auto") -> tuple[nn.Module, nn.Module, str]:
    """Loads `model_dir` twice: an eager reference and a baked copy to export. `target` `"auto"` picks the
    classifier for fine-tuned classifiers and the feature model otherwise. Returns `(eager, exportable, target)`."""
    if target not in TARGETS:
        raise ValueError(f"target is {target!r}; choose one of {', '.join(TARGETS)}.")
    config = PemtConfig.from_pretrained(model_dir)
    if target == "auto":
        target = "classifier" if "PemtForAudioVisualClassification" in (config.architectures or []) else "features"
    if target == "classifier" and "PemtForAudioVisualClassification" not in (config.architectures or []):
        raise ValueError(f"{model_dir}: not a fine-tuned classifier (architectures {config.architectures}); use --target features.")
    model_class, wrapper = (
        (PemtForAudioVisualClassification, ExportableClassifier) if target == "classifier" else (PemtModel, ExportableFeatures)
    )
    # Parametrised modules cannot be deep-copied, so the copy to bake is loaded separately.
    eager = wrapper(model_class.from_pretrained(model_dir).eval()).eval()
    exportable = wrapper(bake_parametrizations(model_class.from_pretrained(model_dir).eval())).eval()
    return eager, exportable, target


def example_inputs(config: PemtConfig, batch: int, seed: int = 0, padded: bool = True) -> tuple[torch.Tensor, ...]:
    """Random inputs of the processor's shapes; with `padded`, the last clip keeps only its first segment real."""
    generator = torch.Generator().manual_seed(seed)
    t, crop = config.num_segments, config.eval_crop_size
    pixels = torch.randn(batch, t, 3, config.frames_per_segment, crop, crop, generator=generator)
    audio = torch.randn(batch, t, 1, config.num_mel_bins, config.audio_frames, generator=generator)
    mask = torch.ones(batch, t, dtype=torch.long)
    if padded:
        mask[-1, 1:] = 0
        pixels[-1, 1:] = 0
        audio[-1, 1:] = 0
    return pixels, audio, mask, mask.clone()


def export(model_dir: str | Path, output: str | Path, format: str = "onnx", target: str = "auto") -> dict:
    """Exports `model_dir` to `output` with a dynamic batch dimension, then checks it against eager for batch
    sizes 1 and 3 (see [`check`]). Returns the check's report."""
    eager, exportable, target = load_for_export(model_dir, target)
    config = eager.model.config
    inputs = example_inputs(config, batch=2)
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic_shapes = tuple({0: batch} for _ in INPUT_NAMES)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        if format == "torch":
            program = torch.export.export(exportable, inputs, dynamic_shapes=dynamic_shapes)
            torch.export.save(program, output)
        elif format == "onnx":
            program = torch.onnx.export(
                exportable, inputs, dynamo=True, dynamic_shapes=dynamic_shapes, input_names=list(INPUT_NAMES),
                output_names=list(exportable.output_names), verbose=False,
            )
            program.save(str(output))
        else:
            raise ValueError(f"format is {format!r}; choose onnx or torch.")
    report = check(output, eager, format)
    report.update({"target": target, "format": format, "output": str(output)})
    return report


def run_exported(path: str | Path, format: str, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """Runs an exported file: a `.pt2` program through `torch.export.load`, an ONNX graph through onnxruntime."""
    if format == "torch":
        with torch.no_grad():
            return list(torch.export.load(path).module()(*inputs))
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError("Checking an ONNX export needs onnxruntime: pip install 'pemt[export]'.") from error
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {name: tensor.numpy() for name, tensor in zip(INPUT_NAMES, inputs)}
    return [torch.from_numpy(array) for array in session.run(None, feeds)]


def check(path: str | Path, eager: nn.Module, format: str, batch_sizes: tuple[int, ...] = (1, 3)) -> dict:
    """Max abs difference between the exported file's outputs and the eager model's, per batch size (inputs with
    a padded clip). Raises `AssertionError` beyond `TOLERANCE`."""
    report = {}
    for batch in batch_sizes:
        inputs = example_inputs(eager.model.config, batch, seed=batch)
        with torch.no_grad():
            expected = eager(*inputs)
        got = run_exported(path, format, inputs)
        difference = max(float((g - e).abs().max()) for g, e in zip(got, expected))
        if not all(g.shape == e.shape for g, e in zip(got, expected)) or not difference <= TOLERANCE:
            raise AssertionError(f"{path}: batch {batch} differs from eager by {difference:.3g} (tolerance {TOLERANCE}).")
        report[f"max_abs_diff_batch_{batch}"] = difference
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="pemt export", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="A saved PEMT model directory (fine-tuned classifier or any PEMT checkpoint).")
    parser.add_argument("output", help="File to write: .onnx or .pt2.")
    parser.add_argument("--format", choices=["onnx", "torch"], default="onnx")
    parser.add_argument("--target", choices=TARGETS, default="auto",
                        help="classifier: logits; features: video/audio/clip embeddings; auto: classifier if fine-tuned.")
    args = parser.parse_args(argv)
    report = export(args.model, args.output, args.format, args.target)
    print(json.dumps(report, indent=2))
    return report
