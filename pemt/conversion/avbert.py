"""Conversion of the AVBERT authors' checkpoints (Lee et al., ICLR 2021, github.com/sangho-vision/avbert) into pemt.

    pemt convert-avbert CHECKPOINT OUTPUT_DIR [--authors_config config.yaml] [--num_hidden_layers 6 ...]

Two containers exist: a fine-tuned checkpoint `{"model_state_dict": {...}, "optimizer": ..., ...}` (their
fine-tuning loop) and the released pretrained checkpoint `{"state_dict": {"avbert.…": ...}}`. A checkpoint with the
fine-tuning heads (`concat_head`, `concat_seq_head`) becomes a [`PemtForAudioVisualClassification`] with the authors'
per-segment head (`classifier_head="segment"`); one without becomes a [`PemtModel`] (the backbone).

Every pemt parameter is looked up by the authors' name it comes from (the rules below), so a missing or misshapen
key fails with both names. Authors' keys of the backbone that nothing reads are an error too (a layout pemt cannot
hold); any other key (pretraining heads, whose names are not published) is listed as ignored. The shared Transformer
is stored under four names in their state dicts; all four are checked equal. The `_B` buffers (caches of the
orthogonal matrices) are dropped: `Sigma` is recomputed from `A` and `base`.

Their orthogonal factor: `B = base @ expm(S)` with `S` the skew-symmetric matrix of the strict upper triangle of `A`
(the rest of `A` is never read), applied as `x @ B`. pemt applies `Sigma` as `x @ Sigma^T`, so `Sigma = B^T`, stored
as the parametrisation's base with a zero skew part.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import PemtUsageError
from ..model.configuration_pemt import PemtConfig
from ..model.modeling_pemt import PemtForAudioVisualClassification, PemtModel
from ..model.processing_pemt import PemtProcessor

__all__ = [
    "AvbertConversionError",
    "ConversionResult",
    "authors_sigma",
    "build_config",
    "convert_avbert_checkpoint",
    "convert_state_dict",
    "load_authors_checkpoint",
    "read_authors_config",
]

# The one shared Transformer is registered under four attribute names, so its tensors appear four times.
TRANSFORMER_ALIASES = ("transformer", "single_visual_transformer", "single_audio_transformer", "multi_transformer")
LAYER = "encoder.albert_layer_groups.0.albert_layers.0"
FINETUNING_HEADS = ("concat_head.", "concat_seq_head.")
# Prefixes of the authors' backbone: a key under one of them must land in pemt, or the conversion fails.
BACKBONE_PREFIXES = tuple(
    f"avbert.{name}."
    for name in (
        "visual_conv", "audio_conv", "visual_fc", "visual_norm", "audio_fc", "audio_norm", "summary_encoding",
        "single_visual_embeddings", "single_audio_embeddings", "multi_embeddings", *TRANSFORMER_ALIASES,
    )
)
BATCH_NORM_FIELDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

# pemt's `nn.Sequential` index inside a bottleneck branch -> the authors' name in `branch2`.
VISUAL_BRANCH = {0: "a", 1: "a_bn", 3: "b", 4: "b_bn", 6: "c", 7: "c_bn"}
AUDIO_BRANCH = {0: "a", 1: "a_bn", 3: "b", 4: "b_bn", 6: "c", 7: "c_bn"}
AUDIO_SEPARABLE_BRANCH = {0: "a", 1: "a_bn", 3: "b1", 4: "b1_bn", 6: "b2", 7: "b2_bn", 9: "c", 10: "c_bn"}
AUDIO_STEM = {"0": "conv1", "1": "bn1", "3": "conv2", "4": "bn2"}
# pemt's embedding modules -> the authors' (`{m}`: visual or audio).
MODALITY_EMBEDDINGS = {
    "projection": "{m}_fc",
    "projection_norm": "{m}_norm",
    "position_embeddings": "single_{m}_embeddings.position_embeddings",
    "norm": "single_{m}_embeddings.LayerNorm",
}
MULTIMODAL_EMBEDDINGS = {"position_embeddings": "position_embeddings", "token_type_embeddings": "token_type_embeddings", "norm": "LayerNorm"}
# pemt's segment head -> the authors' `concat_seq_head` (on the Transformer) and `concat_head` (on the CNNs).
HEADS = {
    "segment_poolers.visual": "concat_seq_head.fc1",
    "segment_poolers.audio": "concat_seq_head.fc2",
    "norm": "concat_seq_head.ln",
    "classifier": "concat_seq_head.projection",
    "cnn_classifier": "concat_head.projection",
}
# pemt's factored linear maps -> the authors' `FactorLinear` names.
FACTORS = {
    "attention.query": "attention.factor_query",
    "attention.key": "attention.factor_key",
    "attention.value": "attention.factor_value",
    "attention.output": "attention.factor_dense",
    "intermediate": "factor_ffn",
    "output": "factor_ffn_output",
}
# Bottleneck blocks per stage of the authors' ResNet builder, by `DEPTH`.
RESNET_DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class AvbertConversionError(PemtUsageError):
    """The checkpoint (or its config) cannot become a pemt model; the message names the file, key and problem.
    Raised before anything is written; `pemt convert-avbert` prints it as one line and exits with status 2."""


@dataclass
class ConversionResult:
    """What [`convert_avbert_checkpoint`] did.

    Args:
        model: the converted model (classifier or backbone), in eval mode.
        processor: the processor matching the authors' preprocessing.
        kind: `"classifier"` (the fine-tuning heads were present) or `"backbone"`.
        ignored_keys: authors' keys that were not converted (unknown heads), sorted.
        dropped_caches: how many `_B` cache buffers were dropped.
        output_dir: where the model was written, if anywhere.
    """

    model: PemtModel | PemtForAudioVisualClassification
    processor: PemtProcessor
    kind: str
    ignored_keys: list[str] = field(default_factory=list)
    dropped_caches: int = 0
    output_dir: Path | None = None


# ---------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------


def load_authors_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The model state dict of a checkpoint file in either container (a bare state dict is accepted as well), with
    a DDP `module.` prefix removed."""
    path = Path(path)
    if not path.is_file():
        raise AvbertConversionError(f"{path}: no such checkpoint file.")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for files that are not (safe) checkpoints
        raise AvbertConversionError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err}).") from err
    if not isinstance(loaded, dict):
        raise AvbertConversionError(f"{path}: expected a dict, found {type(loaded).__name__}.")
    for container in ("model_state_dict", "state_dict"):
        if isinstance(loaded.get(container), dict):
            state_dict = loaded[container]
            break
    else:
        state_dict = loaded
    if not any(isinstance(k, str) and k.startswith(("avbert.", "module.avbert.")) for k in state_dict):
        raise AvbertConversionError(
            f"{path}: no AVBERT weights found (expected 'model_state_dict' or 'state_dict' holding keys that start "
            f"with 'avbert.'; top-level keys: {sorted(map(str, loaded))[:8]})."
        )
    if all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def read_authors_config(path: str | Path) -> dict[str, dict]:
    """The authors' YAML config as nested dicts (upper-case sections: `RESNET`, `AUDIO_RESNET`, `TRANSFORMER`,
    `DATA`, `MODEL`, ...)."""
    import yaml

    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise AvbertConversionError(f"{path}: cannot read the authors' config ({err}).") from err
    if not isinstance(config, dict):
        raise AvbertConversionError(f"{path}: expected a YAML mapping of config sections.")
    return config


# ---------------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------------


def _shape(state_dict: dict, key: str, source: str) -> torch.Size:
    if key not in state_dict:
        raise AvbertConversionError(f"{source}: missing key {key!r}.")
    return state_dict[key].shape


def _count(state_dict: dict, pattern: str) -> int:
    """How many consecutive indices `i` (from 0) have a key starting with `pattern.format(i)`."""
    count = 0
    while any(k.startswith(pattern.format(count)) for k in state_dict):
        count += 1
    return count


def infer_from_shapes(state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> dict[str, Any]:
    """The pemt config fields the tensor shapes determine: CNN widths and depths, hidden and intermediate sizes,
    rank, position slots and (with the fine-tuning heads) the number of classes."""
    stem = _shape(state_dict, "avbert.visual_conv.s1.pathway0_stem.conv.weight", source)
    visual_depths = tuple(_count(state_dict, f"avbert.visual_conv.s{s}.pathway0_res{{}}.") for s in range(2, 6))
    temporal = []
    for stage, depth in enumerate(visual_depths):
        kernels = {
            _shape(state_dict, f"avbert.visual_conv.s{stage + 2}.pathway0_res{i}.branch2.a.weight", source)[2]
            for i in range(depth)
        }
        if len(kernels) != 1:
            # Their NUM_BLOCK_TEMP_KERNEL can give the temporal kernel to the first k blocks of a stage only.
            raise AvbertConversionError(
                f"{source}: visual stage s{stage + 2} mixes temporal kernels {sorted(kernels)}; pemt uses one per stage."
            )
        temporal.append(kernels.pop())
    audio_depths = tuple(_count(state_dict, f"avbert.audio_conv.s{s}.res{{}}.") for s in range(2, 6))
    separable = sum(f"avbert.audio_conv.s{s}.res0.branch2.b1.weight" in state_dict for s in range(2, 6))
    fc = _shape(state_dict, "avbert.visual_fc.weight", source)
    fields = {
        "visual_cnn_width": stem[0],
        "visual_stem_temporal_kernel": stem[2],
        "visual_cnn_depths": visual_depths,
        "visual_cnn_temporal_kernels": tuple(temporal),
        "audio_cnn_width": _shape(state_dict, "avbert.audio_conv.s1.stem.conv1.weight", source)[0],
        "audio_cnn_depths": audio_depths,
        "audio_separable_stages": separable,
        "hidden_size": fc[0],
        "max_position_embeddings": _shape(state_dict, "avbert.single_visual_embeddings.position_embeddings.weight", source)[0],
    }
    layer = f"avbert.transformer.{LAYER}"
    if f"{layer}.attention.factor_query.ms0_linear.weight" not in state_dict:
        raise AvbertConversionError(
            f"{source}: no factored shared Transformer ({layer}.attention.factor_query.*): only the released layout "
            "(SHARING_ACROSS_LAYERS, SHARING_ACROSS_MODELS and USE_DECOMPOSITION all True) converts."
        )
    fields["low_rank_dim"] = _shape(state_dict, f"{layer}.attention.factor_query.ms0_linear.weight", source)[0]
    fields["intermediate_size"] = _shape(state_dict, f"{layer}.factor_ffn.s_linear.weight", source)[0]
    if "concat_seq_head.projection.weight" in state_dict:
        fields["num_labels"] = _shape(state_dict, "concat_seq_head.projection.weight", source)[0]
    return fields


def _float(value: Any) -> float:
    # PyYAML reads `1e-5` (no dot) as a string.
    return float(value)


def _single(values: list, key: str, source: str) -> float:
    if len(set(values)) != 1:
        raise AvbertConversionError(f"{source}: {key} {values} differs per channel; pemt normalises all channels alike.")
    return _float(values[0])


def from_authors_config(config: dict[str, dict], source: str = "authors' config") -> dict[str, Any]:
    """The pemt config fields the authors' YAML sets (architecture checks, Transformer depth and heads, input
    pipeline, head settings)."""
    fields: dict[str, Any] = {}
    transformer = config.get("TRANSFORMER", {})
    for key in ("SHARING_ACROSS_LAYERS", "SHARING_ACROSS_MODELS", "USE_DECOMPOSITION"):
        if key in transformer and not transformer[key]:
            raise AvbertConversionError(f"{source}: TRANSFORMER.{key} is False; only the released layout converts.")
    for key in ("NUM_HIDDEN_GROUPS", "INNER_GROUP_NUM"):
        if int(transformer.get(key, 1)) != 1:
            raise AvbertConversionError(f"{source}: TRANSFORMER.{key} > 1 (ALBERT layer groups) has no pemt counterpart.")
    names = {
        "HIDDEN_SIZE": "hidden_size", "NUM_HIDDEN_LAYERS": "num_hidden_layers",
        "NUM_ATTENTION_HEADS": "num_attention_heads", "INTERMEDIATE_SIZE": "intermediate_size",
        "MAX_POSITION_EMBEDDINGS": "max_position_embeddings", "ORTHOGONAL_SIZE": "low_rank_dim",
        "HIDDEN_ACT": "hidden_act",
    }
    fields.update({pemt: transformer[key] for key, pemt in names.items() if key in transformer})
    for key, pemt in (("HIDDEN_DROPOUT_PROB", "hidden_dropout_prob"), ("ATTENTION_PROBS_DROPOUT_PROB", "attention_probs_dropout_prob")):
        if key in transformer:
            fields[pemt] = _float(transformer[key])

    for section, prefix in (("RESNET", "visual"), ("AUDIO_RESNET", "audio")):
        resnet = config.get(section, {})
        if resnet.get("TRANS_FUNC", "bottleneck_transform") != "bottleneck_transform" or int(resnet.get("NUM_GROUPS", 1)) != 1:
            raise AvbertConversionError(f"{source}: {section} must use bottleneck_transform with NUM_GROUPS 1.")
        if "WIDTH_PER_GROUP" in resnet:
            fields[f"{prefix}_cnn_width"] = int(resnet["WIDTH_PER_GROUP"])
        if "DEPTH" in resnet:
            depth = int(resnet["DEPTH"])
            if depth not in RESNET_DEPTHS:
                raise AvbertConversionError(f"{source}: {section}.DEPTH {depth} is not one of {sorted(RESNET_DEPTHS)}.")
            fields[f"{prefix}_cnn_depths"] = RESNET_DEPTHS[depth]
    kernels = config.get("RESNET", {}).get("NUM_BLOCK_TEMP_KERNEL")
    if kernels and "visual_cnn_depths" in fields and [k[0] for k in kernels] != list(fields["visual_cnn_depths"]):
        raise AvbertConversionError(
            f"{source}: RESNET.NUM_BLOCK_TEMP_KERNEL {kernels} gives temporal kernels to only some blocks of a stage; "
            "pemt gives them to all."
        )
    if [int(s) for s in config.get("AUDIO_RESNET", {}).get("STRIDES", [2, 2, 2, 2])] != [2, 2, 2, 2]:
        raise AvbertConversionError(f"{source}: AUDIO_RESNET.STRIDES must be [2, 2, 2, 2].")

    data = config.get("DATA", {})
    simple = {
        "SEQUENCE_LENGTH": "num_segments", "NUM_FRAMES": "frames_per_segment", "SAMPLING_RATE": "frame_stride",
        "TRAIN_CROP_SIZE": "train_crop_size", "TARGET_AUDIO_RATE": "audio_sampling_rate",
        "AUDIO_FREQUENCY": "num_mel_bins", "AUDIO_TIME": "audio_frames",
    }
    fields.update({pemt: int(data[key]) for key, pemt in simple.items() if key in data})
    if "TARGET_FPS" in data:
        fields["video_fps"] = _float(data["TARGET_FPS"])
    if "TRAIN_JITTER_SCALES" in data:
        fields["train_short_side_range"] = tuple(int(s) for s in data["TRAIN_JITTER_SCALES"])
    if "TEST_CROP_SIZE" in data:
        # Testing resizes the short side to TEST_CROP_SIZE and crops a square of that size.
        fields["eval_short_side"] = fields["eval_crop_size"] = int(data["TEST_CROP_SIZE"])
    if "MEAN" in data:
        fields["image_mean"] = _single(data["MEAN"], "DATA.MEAN", source)
    if "STD" in data:
        fields["image_std"] = _single(data["STD"], "DATA.STD", source)
    if "FREQUENCY_MASK_RATE" in data:
        fields["spec_augment_ratio"] = _float(data["FREQUENCY_MASK_RATE"])

    model = config.get("MODEL", {})
    if model.get("TASK") in ("VisualClassify", "AudioClassify"):
        # Their CNN-only models hold no AVBERT (no `avbert.` keys); a pretraining config's task is fine.
        raise AvbertConversionError(
            f"{source}: MODEL.TASK {model['TASK']!r} is a CNN-only model; only AVBERT checkpoints convert."
        )
    if "NUM_CLASSES" in model:
        fields["num_labels"] = int(model["NUM_CLASSES"])
    if "EPSILON" in model:
        fields["classifier_layer_norm_eps"] = _float(model["EPSILON"])
    if "DROPOUT_RATE" in model:
        fields["classifier_dropout"] = _float(model["DROPOUT_RATE"])
    if "LOSS_FUNC" in model:
        fields["classifier_loss"] = str(model["LOSS_FUNC"])
    if "MARGIN" in model:
        fields["classifier_margin"] = _float(model["MARGIN"])
    return fields


def _audio_window(fields: dict[str, Any]) -> dict[str, int]:
    """The authors' STFT: `n_fft = 2 * (floor(samples / time_frames) + 1)`, torchaudio's hop `n_fft // 2`."""
    defaults = PemtConfig()
    frames = fields.get("frames_per_segment", defaults.frames_per_segment)
    stride = fields.get("frame_stride", defaults.frame_stride)
    fps = fields.get("video_fps", defaults.video_fps)
    rate = fields.get("audio_sampling_rate", defaults.audio_sampling_rate)
    samples = int(rate * frames * stride / fps)
    n_fft = 2 * (math.floor(samples / fields.get("audio_frames", defaults.audio_frames)) + 1)
    return {"n_fft": n_fft, "hop_length": n_fft // 2}


def build_config(
    state_dict: dict[str, torch.Tensor],
    authors_config: dict[str, dict] | None = None,
    overrides: dict[str, Any] | None = None,
    source: str = "checkpoint",
) -> PemtConfig:
    """The pemt config of a checkpoint: the paper's values, then the authors' YAML (when given), then what the
    shapes say (a YAML value that contradicts a shape is an error), then `overrides`."""
    inferred = infer_from_shapes(state_dict, source)
    fields: dict[str, Any] = {}
    if authors_config is not None:
        fields.update(from_authors_config(authors_config))
        for name, value in inferred.items():
            if name in fields and tuple(_as_tuple(fields[name])) != tuple(_as_tuple(value)):
                raise AvbertConversionError(
                    f"{source}: the authors' config gives {name}={fields[name]} but the weights have {value}."
                )
    fields.update(inferred)
    if not any(k.startswith(FINETUNING_HEADS) for k in state_dict):
        # A backbone has no classes: the YAML's NUM_CLASSES belongs to a head that is not there.
        fields.pop("num_labels", None)
    fields.update(_audio_window(fields))
    fields.update(
        share_layers=True, share_modalities=True, share_layer_norms=True, classifier_head="segment",
        classifier_modality="audio-visual",
    )
    fields.update(overrides or {})
    try:
        return PemtConfig(**fields)
    except (ValueError, TypeError) as err:
        raise AvbertConversionError(f"{source}: the converted config is invalid: {err}") from err


def _as_tuple(value: Any) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


# ---------------------------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------------------------


def authors_sigma(a: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """The authors' orthogonal matrix `B = base @ expm(triu(A, 1) - triu(A, 1)^T)`, computed in float64."""
    upper = torch.triu(a.double(), diagonal=1)
    return base.double() @ torch.linalg.matrix_exp(upper - upper.T)


def _copy(key: str) -> tuple[str, Callable[[dict], torch.Tensor]]:
    return key, lambda sd: sd[key]


def _rules(config: PemtConfig) -> list[tuple[re.Pattern, Callable[[re.Match], tuple[str, Callable]]]]:
    """pemt key pattern -> (the authors' key it reads, how to read it)."""
    transformer = f"avbert.transformer.{LAYER}"

    def visual_block(m: re.Match) -> tuple[str, Callable]:
        stage, block, part, index, name = m.groups()
        prefix = f"avbert.visual_conv.s{int(stage) + 2}.pathway0_res{block}"
        if part == "shortcut":
            return _copy(f"{prefix}.{'branch1' if index == '0' else 'branch1_bn'}.{name}")
        return _copy(f"{prefix}.branch2.{VISUAL_BRANCH[int(index)]}.{name}")

    def audio_block(m: re.Match) -> tuple[str, Callable]:
        stage, block, part, index, name = m.groups()
        prefix = f"avbert.audio_conv.s{int(stage) + 2}.res{block}"
        if part == "shortcut":
            return _copy(f"{prefix}.{'branch1' if index == '0' else 'branch1_bn'}.{name}")
        names = AUDIO_SEPARABLE_BRANCH if int(stage) < config.audio_separable_stages else AUDIO_BRANCH
        return _copy(f"{prefix}.branch2.{names[int(index)]}.{name}")

    def factor(m: re.Match) -> tuple[str, Callable]:
        linear, rest = m.groups()
        prefix = f"{transformer}.{FACTORS[linear]}"
        if match := re.fullmatch(r"private_down\.(\d)\.weight", rest):
            return _copy(f"{prefix}.ms{match[1]}_linear.weight")
        if match := re.fullmatch(r"shared_up\.(weight|bias)", rest):
            return _copy(f"{prefix}.s_linear.{match[1]}")
        if match := re.fullmatch(r"private_rotation\.(\d)\.parametrizations\.weight\.(original|0\.base)", rest):
            orthogonal = f"{prefix}.orthogonal_ms{match[1]}_linear"
            if match[2] == "0.base":
                # pemt computes x @ Sigma^T, the authors x @ B: Sigma = B^T.
                return f"{orthogonal}.A", lambda sd: authors_sigma(sd[f"{orthogonal}.A"], sd[f"{orthogonal}.base"]).T.float()
            # A zero skew part (tril(-I) - tril(-I)^T = 0) leaves Sigma = base; -I is what pemt's own
            # parametrisation stores when a matrix is assigned to it.
            return f"{orthogonal}.base", lambda sd: -torch.eye(config.low_rank_dim)
        raise KeyError(rest)

    def summary(m: re.Match) -> tuple[str, Callable]:
        row = 0 if m[1] == "visual" else 1
        key = "avbert.summary_encoding.bos_embeddings.weight"
        return key, lambda sd: sd[key][row]

    layer = r"pemt\.encoder\.shared\.layers\.0\."
    return [
        (r"pemt\.visual_cnn\.stem\.0\.weight", lambda m: _copy("avbert.visual_conv.s1.pathway0_stem.conv.weight")),
        (r"pemt\.visual_cnn\.stem\.1\.(\w+)", lambda m: _copy(f"avbert.visual_conv.s1.pathway0_stem.bn.{m[1]}")),
        (r"pemt\.visual_cnn\.stages\.(\d+)\.(\d+)\.(branch|shortcut)\.(\d+)\.(\w+)", visual_block),
        (r"pemt\.audio_cnn\.stem\.(\d)\.(\w+)", lambda m: _copy(f"avbert.audio_conv.s1.stem.{AUDIO_STEM[m[1]]}.{m[2]}")),
        (r"pemt\.audio_cnn\.stages\.(\d+)\.(\d+)\.(branch|shortcut)\.(\d+)\.(\w+)", audio_block),
        (r"pemt\.(visual|audio)_embeddings\.summary_token", summary),
        (
            r"pemt\.(visual|audio)_embeddings\.(projection|projection_norm|position_embeddings|norm)\.(weight|bias)",
            lambda m: _copy(f"avbert.{MODALITY_EMBEDDINGS[m[2]].format(m=m[1])}.{m[3]}"),
        ),
        (
            r"pemt\.multimodal_embeddings\.(\w+)\.(weight|bias)",
            lambda m: _copy(f"avbert.multi_embeddings.{MULTIMODAL_EMBEDDINGS[m[1]]}.{m[2]}"),
        ),
        (layer + rf"({'|'.join(re.escape(name) for name in FACTORS)})\.(.+)", factor),
        # One LayerNorm pair serves all modalities in the authors' layer; private LayerNorms each get a copy.
        (layer + r"attention_norm\.\d\.(weight|bias)", lambda m: _copy(f"{transformer}.attention.LayerNorm.{m[1]}")),
        (layer + r"output_norm\.\d\.(weight|bias)", lambda m: _copy(f"{transformer}.full_layer_layer_norm.{m[1]}")),
        (rf"({'|'.join(re.escape(name) for name in HEADS)})\.(weight|bias)", lambda m: _copy(f"{HEADS[m[1]]}.{m[2]}")),
    ]


def _check_aliases(state_dict: dict[str, torch.Tensor], source: str) -> None:
    """The four names of the shared Transformer must hold the same tensors."""
    reference = {k[len("avbert.transformer.") :]: v for k, v in state_dict.items() if k.startswith("avbert.transformer.")}
    for alias in TRANSFORMER_ALIASES[1:]:
        prefix = f"avbert.{alias}."
        tensors = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not tensors:
            continue  # a checkpoint saved without the aliases loses nothing
        if tensors.keys() != reference.keys():
            missing = sorted(reference.keys() - tensors.keys()) or sorted(tensors.keys() - reference.keys())
            raise AvbertConversionError(f"{source}: avbert.{alias} and avbert.transformer differ in keys (e.g. {missing[0]!r}).")
        for name, tensor in tensors.items():
            if not torch.equal(tensor, reference[name]):
                raise AvbertConversionError(
                    f"{source}: {prefix}{name} differs from avbert.transformer.{name}; the four names of the shared "
                    "Transformer must hold the same weights."
                )


def convert_state_dict(
    state_dict: dict[str, torch.Tensor], model: torch.nn.Module, source: str = "checkpoint"
) -> tuple[dict[str, torch.Tensor], list[str], int]:
    """Maps the authors' `state_dict` onto `model`'s keys.

    Returns:
        `(pemt_state_dict, ignored_keys, dropped_caches)`.

    Raises:
        [`AvbertConversionError`]: a key pemt needs is missing or has another shape, a backbone key has no place in
        pemt, or the Transformer's aliases disagree; the message names the key.
    """
    dropped = _count_caches(state_dict)
    state_dict = {k: v for k, v in state_dict.items() if not k.endswith("._B")}
    _check_aliases(state_dict, source)
    rules = [(re.compile(pattern), make) for pattern, make in _rules(model.config)]
    # The rules name the classifier's keys; a backbone's keys are the same without the `pemt.` prefix.
    prefix = "" if isinstance(model, PemtForAudioVisualClassification) else "pemt."
    converted, used = {}, set()
    for name, target in model.state_dict().items():
        for pattern, make in rules:
            if match := pattern.fullmatch(prefix + name):
                key, read = make(match)
                break
        else:
            raise AvbertConversionError(f"{source}: no rule gives pemt's {name!r} (a pemt layout the converter does not know).")
        needed = {key} | ({key[: -len(".A")] + ".base"} if key.endswith(".A") else set())
        for authors_key in sorted(needed):
            if authors_key not in state_dict:
                raise AvbertConversionError(f"{source}: missing key {authors_key!r} (needed for pemt's {name!r}).")
        value = read(state_dict)
        if value.shape != target.shape:
            raise AvbertConversionError(
                f"{source}: {key!r} has shape {tuple(state_dict[key].shape)}, but pemt's {name!r} needs "
                f"{tuple(target.shape)} (check the config: widths, depths, classes)."
            )
        converted[name] = value.to(target.dtype).clone()
        used |= needed
    aliases = tuple(f"avbert.{alias}." for alias in TRANSFORMER_ALIASES[1:])
    leftover = [k for k in state_dict if k not in used and not k.startswith(aliases)]
    unplaced = [k for k in leftover if k.startswith(BACKBONE_PREFIXES)]
    if unplaced:
        raise AvbertConversionError(
            f"{source}: {len(unplaced)} weight(s) of the authors' backbone have no place in pemt, e.g. {unplaced[0]!r} "
            "(a config mismatch: depths, separable stages, sharing)."
        )
    return converted, sorted(leftover), dropped


def _count_caches(state_dict: dict[str, torch.Tensor]) -> int:
    return sum(k.endswith("._B") for k in state_dict)


# ---------------------------------------------------------------------------------------------------------------
# Whole conversion
# ---------------------------------------------------------------------------------------------------------------


def convert_avbert_checkpoint(
    checkpoint: str | Path | dict[str, torch.Tensor],
    output_dir: str | Path | None = None,
    authors_config: str | Path | dict | None = None,
    id2label: dict[int, str] | None = None,
    **overrides: Any,
) -> ConversionResult:
    """
    Converts an authors' AVBERT checkpoint into a pemt model and processor, and writes them to `output_dir`.

    Args:
        checkpoint: a checkpoint file (either container) or an already loaded state dict.
        output_dir: where to write the model directory (safetensors, config, processor config); `None` writes
            nothing.
        authors_config: their YAML config (path or loaded dict). Without it the shapes give what they can and the
            paper's values the rest (6 layers, 12 heads, 10 segments, Kinetics-Sounds preprocessing).
        id2label: class names of a fine-tuned checkpoint (default `LABEL_i`).
        overrides: any [`PemtConfig`] field, applied last (e.g. `num_hidden_layers=6`).

    Returns:
        [`ConversionResult`] with the model (eval mode), its processor, and the ignored keys.

    Example:

    ```python
    >>> from pemt.conversion import convert_avbert_checkpoint

    >>> result = convert_avbert_checkpoint("checkpoint.pyth", "avbert-kinetics700")
    >>> result.kind, result.ignored_keys[:3]
    ```"""
    source = str(checkpoint) if not isinstance(checkpoint, dict) else "state dict"
    state_dict = checkpoint if isinstance(checkpoint, dict) else load_authors_checkpoint(checkpoint)
    if isinstance(authors_config, (str, Path)):
        authors_config = read_authors_config(authors_config)
    classifier = all(any(k.startswith(head) for k in state_dict) for head in FINETUNING_HEADS)
    if id2label is not None:
        overrides = {"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}, **overrides}
    config = build_config(state_dict, authors_config, overrides, source)
    model = PemtForAudioVisualClassification(config) if classifier else PemtModel(config)
    converted, ignored, dropped = convert_state_dict(state_dict, model, source)
    model.load_state_dict(converted, strict=True)
    model.eval()
    processor = PemtProcessor.from_model_config(config)
    result = ConversionResult(
        model=model, processor=processor, kind="classifier" if classifier else "backbone", ignored_keys=ignored,
        dropped_caches=dropped,
    )
    if output_dir is not None:
        output_dir = Path(output_dir)
        model.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
        (output_dir / "conversion.json").write_text(
            json.dumps(
                {"source": source, "kind": result.kind, "ignored_keys": ignored, "dropped_caches": result.dropped_caches},
                indent=2,
            )
            + "\n"
        )
        result.output_dir = output_dir
    return result


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------


def parse_key_values(text: str) -> dict[str, Any]:
    """`"a=1,b=true,c=gelu"` -> `{"a": 1, "b": True, "c": "gelu"}` (values read as JSON where they parse)."""
    values = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise AvbertConversionError(f"--config_overrides item {item!r} is not key=value.")
        try:
            values[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            values[key.strip()] = value
    return values


def build_parser() -> argparse.ArgumentParser:
    from ..cli import ArgumentParser  # one-line usage errors, as every pemt command

    parser = ArgumentParser(
        prog="pemt convert-avbert",
        description="Convert an AVBERT checkpoint of the authors (fine-tuned or pretrained) into a pemt model directory.",
    )
    parser.add_argument("checkpoint", help="The authors' checkpoint (.pyth/.pt): fine-tuned or the released pretrained one.")
    parser.add_argument("output_dir", help="Where to write the pemt model directory.")
    parser.add_argument("--authors_config", help="The authors' YAML config the checkpoint was trained with.")
    parser.add_argument("--num_hidden_layers", type=int, help="Transformer depth (not in the weights; paper: 6).")
    parser.add_argument("--num_attention_heads", type=int, help="Attention heads (not in the weights; paper: 12).")
    parser.add_argument("--num_segments", type=int, help="Segments per clip (paper: 10).")
    parser.add_argument("--labels", help="A text file with one class name per line, in the checkpoint's class order.")
    parser.add_argument("--config_overrides", default="", help="Any other pemt config fields: 'key=value,key=value'.")
    parser.add_argument(
        "--check", metavar="REFERENCE",
        help="A numerical reference (reference.pt: inputs and the authors' outputs); prints the differences.",
    )
    return parser


def main(argv: list[str] | None = None) -> ConversionResult:
    args = build_parser().parse_args(argv)
    overrides = {
        name: getattr(args, name)
        for name in ("num_hidden_layers", "num_attention_heads", "num_segments")
        if getattr(args, name) is not None
    }
    overrides.update(parse_key_values(args.config_overrides))
    id2label = None
    if args.labels:
        names = [line.strip() for line in Path(args.labels).read_text().splitlines() if line.strip()]
        id2label = dict(enumerate(names))
    # An AvbertConversionError propagates: `pemt` prints it as one line naming the file and the problem.
    result = convert_avbert_checkpoint(args.checkpoint, args.output_dir, args.authors_config, id2label, **overrides)
    config = result.model.config
    print(
        f"Converted {args.checkpoint} -> {result.output_dir} ({result.kind}: {type(result.model).__name__}, "
        f"{config.num_hidden_layers} layers, {config.num_attention_heads} heads, hidden {config.hidden_size}, "
        f"rank {config.low_rank_dim}, {config.num_segments} segments"
        + (f", {config.num_labels} classes" if result.kind == "classifier" else "")
        + f"); dropped {result.dropped_caches} cached _B buffers."
    )
    if result.ignored_keys:
        print(f"Ignored {len(result.ignored_keys)} key(s) that are not part of the model:")
        for key in result.ignored_keys:
            print(f"  {key}")
    if args.check:
        from .avbert_check import compare_with_reference, format_differences

        print(format_differences(compare_with_reference(result.model, args.check)))
    return result


if __name__ == "__main__":
    main()
