"""Numerical check of a converted model against the authors' forward pass.

`reference.pt` (made for this project from the authors' own code at a tiny size; see
`shared/avbert_reference/README.md`) holds their state dict, fixed inputs and 28 intermediate outputs. This module
runs a converted pemt classifier on the same inputs, collects pemt's counterpart of every output under the same name,
and reports the largest absolute and relative (to the reference tensor's largest magnitude) difference.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..model.heads_pemt import segment_pairs
from ..model.modeling_pemt import PemtForAudioVisualClassification

__all__ = ["pemt_reference_outputs", "compare_with_reference", "format_differences", "load_reference"]


def load_reference(reference: str | Path | dict) -> dict:
    """`reference.pt` as a dict (`state_dict`, `inputs`, `outputs`, `config`, ...)."""
    if isinstance(reference, dict):
        return reference
    return torch.load(reference, map_location="cpu", weights_only=True)


@torch.no_grad()
def pemt_reference_outputs(
    model: PemtForAudioVisualClassification, pixel_values: torch.Tensor, audio_values: torch.Tensor
) -> dict[str, torch.Tensor]:
    """pemt's counterparts of the reference's outputs, under the reference's names (segment rows `b * T + t`)."""
    if model.config.classifier_head != "segment":
        raise ValueError("The authors' outputs are per segment: check a classifier with classifier_head='segment'.")
    model.eval()
    backbone = model.pemt
    captured: dict[str, list[torch.Tensor]] = {"attention": [], "visual_cnn": [], "audio_cnn": [], "projected": [], "pre_ln": []}
    hooks = [
        backbone.visual_cnn.stages.register_forward_hook(lambda m, a, out: captured["visual_cnn"].append(out)),
        backbone.audio_cnn.stages.register_forward_hook(lambda m, a, out: captured["audio_cnn"].append(out)),
        backbone.visual_embeddings.projection_norm.register_forward_hook(lambda m, a, out: captured["projected"].append(out)),
        backbone.audio_embeddings.projection_norm.register_forward_hook(lambda m, a, out: captured["projected"].append(out)),
        model.norm.register_forward_pre_hook(lambda m, args: captured["pre_ln"].append(args[0])),
        # The classifier returns its own outputs only; the backbone's come from its forward.
        backbone.register_forward_hook(lambda m, a, out: captured.setdefault("backbone", []).append(out)),
    ]
    # Layers run visual, audio, then multimodal; every LayerNorm after attention records in that order.
    for stack in (backbone.encoder.shared,) if backbone.config.share_modalities else backbone.encoder.per_modality:
        for layer in stack.layers:
            for norm in layer.attention_norm:
                hooks.append(norm.register_forward_hook(lambda m, a, out: captured["attention"].append(out)))
    try:
        output = model(pixel_values=pixel_values, audio_values=audio_values, output_hidden_states=True)
    finally:
        for hook in hooks:
            hook.remove()
    backbone_output = captured["backbone"][0]
    batch, length = pixel_values.shape[:2]
    depth = backbone.config.num_hidden_layers
    rows = batch * length
    result = {
        "visual_cnn_feature_map": captured["visual_cnn"][0],
        "audio_cnn_feature_map": captured["audio_cnn"][0],
        "visual_cnn_embeddings": backbone_output.visual_cnn_embeddings,
        "audio_cnn_embeddings": backbone_output.audio_cnn_embeddings,
        "visual_projected": captured["projected"][0],
        "audio_projected": captured["projected"][1],
    }
    for index, name in enumerate(("visual", "audio", "multimodal")):
        hidden = backbone_output[f"{name}_hidden_states"]
        result[f"{name}_transformer_input"] = hidden[0]
        result[f"{name}_attention_block_outputs"] = torch.stack(captured["attention"][index * depth : (index + 1) * depth])
        result[f"{name}_layer_outputs"] = torch.stack(hidden[1:])
        result[f"{name}_sequence_output"] = backbone_output[f"{name}_last_hidden_state"]
    for name, embeddings in (("visual", backbone.visual_embeddings), ("audio", backbone.audio_embeddings)):
        projected = result[f"{name}_projected"]
        result[f"{name}_with_bos"] = torch.cat([embeddings.summary_token.expand(batch, 1, -1), projected], dim=1)
    multimodal = backbone_output.multimodal_last_hidden_state
    result["seq_head_visual_input"] = segment_pairs(multimodal[:, : 1 + length]).reshape(rows, -1)
    result["seq_head_audio_input"] = segment_pairs(multimodal[:, 1 + length :]).reshape(rows, -1)
    result["seq_head_pre_ln"] = captured["pre_ln"][0].reshape(rows, -1)
    result["clip_logits"] = output.cnn_segment_logits.reshape(rows, -1)
    result["seq_logits"] = output.segment_logits.reshape(rows, -1)
    result["clip_probs"] = result["clip_logits"].softmax(dim=-1)
    result["seq_probs"] = result["seq_logits"].softmax(dim=-1)
    result["test_scores"] = result["clip_probs"] + result["seq_probs"]
    result["clip_probability"] = output.logits.softmax(dim=-1)
    return result


def reference_clip_probability(outputs: dict[str, torch.Tensor], batch: int) -> torch.Tensor:
    """The authors' clip probability: their test scores (two softmaxes added per segment) averaged over segments,
    halved so that it sums to one."""
    scores = outputs["test_scores"]
    return scores.view(batch, -1, scores.shape[-1]).mean(dim=1) / 2


def compare_with_reference(
    model: PemtForAudioVisualClassification, reference: str | Path | dict
) -> dict[str, tuple[float, float]]:
    """`{output name: (max |pemt - authors|, that divided by max |authors|)}` for every reference output and the
    clip probability."""
    reference = load_reference(reference)
    inputs, expected = reference["inputs"], dict(reference["outputs"])
    expected["clip_probability"] = reference_clip_probability(expected, inputs["visual_seq"].shape[0])
    actual = pemt_reference_outputs(model, inputs["visual_seq"], inputs["audio_seq"])
    differences = {}
    for name, target in expected.items():
        if name not in actual:
            continue
        got = actual[name].float()
        if got.shape != target.shape:
            raise ValueError(f"{name}: pemt gives shape {tuple(got.shape)}, the reference {tuple(target.shape)}.")
        error = (got - target).abs().max().item()
        differences[name] = (error, error / max(target.abs().max().item(), 1e-30))
    return differences


def format_differences(differences: dict[str, tuple[float, float]]) -> str:
    """A Markdown table of [`compare_with_reference`]'s result."""
    lines = ["| output | max abs diff | relative |", "|---|---|---|"]
    lines += [f"| {name} | {error:.2e} | {relative:.2e} |" for name, (error, relative) in differences.items()]
    return "\n".join(lines)
