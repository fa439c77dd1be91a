"""PEMT model configuration."""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from collections.abc import Mapping
from pathlib import Path

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.activations import ACT2FN



@strict
class PemtConfig(PreTrainedConfig):
    r"""
    Configuration of a PEMT (Parameter-Efficient Multimodal Transformers, a.k.a. AVBERT) model. The defaults
    give the model of Lee et al., ICLR 2021: a 3D ResNet-50 for video, a half-width 2D ResNet-50 for log-mel
    audio, and visual, audio and multimodal Transformers that share one layer across depth and modalities,
    with every weight matrix factored into a shared part and modality-private low-rank parts.

    Input settings (segments, frames, crops, mel bins) live here as well, so that a processor can be built
    from the model's own config with [`PemtProcessor.from_model_config`].

    Args:
        num_segments (`int`, *optional*, defaults to 10):
            Segments `T` per clip (the downstream setting). Pretraining in the paper uses 15.
        frames_per_segment (`int`, *optional*, defaults to 32):
            Frames in one visual segment.
        frame_stride (`int`, *optional*, defaults to 2):
            Take every `frame_stride`-th frame of the video resampled to `video_fps`.
        video_fps (`float`, *optional*, defaults to 30.0):
            Frame rate the video is resampled to before frames are taken.
        train_short_side_range (`list[int]`, *optional*, defaults to `[128, 160]`):
            Range of the short side a training clip is resized to before the random crop.
        train_crop_size (`int`, *optional*, defaults to 112):
            Side of the random square crop used for training.
        eval_short_side (`int`, *optional*, defaults to 128):
            Short side a test clip is resized to before the centre crop.
        eval_crop_size (`int`, *optional*, defaults to 128):
            Side of the centre crop used for testing.
        image_mean (`float`, *optional*, defaults to 0.45):
            Per-channel mean subtracted from RGB values in [0, 1].
        image_std (`float`, *optional*, defaults to 0.225):
            Per-channel standard deviation RGB values are divided by.
        audio_sampling_rate (`int`, *optional*, defaults to 44100):
            Rate audio is resampled to.
        num_mel_bins (`int`, *optional*, defaults to 80):
            Mel bins of the log-mel spectrogram.
        n_fft (`int`, *optional*, defaults to 1472):
            FFT size; also the window length.
        hop_length (`int`, *optional*, defaults to 736):
            Hop between STFT frames.
        audio_frames (`int`, *optional*, defaults to 128):
            Time frames per segment; the spectrogram is padded or cropped to it.
        log_offset (`float`, *optional*, defaults to 1e-6):
            Added to the mel power before the logarithm.
        spec_augment_ratio (`float`, *optional*, defaults to 0.05):
            Training augmentation: up to this fraction of mel bins and of time frames is masked.
        visual_cnn_width (`int`, *optional*, defaults to 64):
            Channels of the visual stem; bottleneck widths are `width * 2**stage`.
        visual_cnn_depths (`list[int]`, *optional*, defaults to `[3, 4, 6, 3]`):
            Bottleneck blocks per stage of the visual 3D ResNet.
        visual_cnn_temporal_kernels (`list[int]`, *optional*, defaults to `[1, 1, 3, 3]`):
            Temporal kernel of the first convolution of each block, per stage.
        visual_stem_temporal_kernel (`int`, *optional*, defaults to 5):
            Temporal kernel of the visual stem.
        audio_cnn_width (`int`, *optional*, defaults to 32):
            Channels of the audio stem; bottleneck widths are `width * 2**stage`.
        audio_cnn_depths (`list[int]`, *optional*, defaults to `[3, 4, 6, 3]`):
            Bottleneck blocks per stage of the audio 2D ResNet.
        audio_separable_stages (`int`, *optional*, defaults to 2):
            The first this many stages use separable 3x1 / 1x3 convolutions instead of 3x3.
        hidden_size (`int`, *optional*, defaults to 768):
            Width of the Transformers.
        num_hidden_layers (`int`, *optional*, defaults to 6):
            Depth of each Transformer.
        num_attention_heads (`int`, *optional*, defaults to 12):
            Attention heads per layer.
        intermediate_size (`int`, *optional*, defaults to 3072):
            Width of the feed-forward layers.
        hidden_act (`str`, *optional*, defaults to `"gelu"`):
            Feed-forward activation.
        hidden_dropout_prob (`float`, *optional*, defaults to 0.1):
            Dropout on embeddings and layer outputs.
        attention_probs_dropout_prob (`float`, *optional*, defaults to 0.1):
            Dropout on attention probabilities.
        max_position_embeddings (`int`, *optional*, defaults to 22):
            Position slots per modality: the summary token plus up to 21 segments.
        layer_norm_eps (`float`, *optional*, defaults to 1e-12):
            LayerNorm epsilon.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialiser of linear and embedding weights.
        share_layers (`bool`, *optional*, defaults to `True`):
            One layer's weights are applied `num_hidden_layers` times (ALBERT-style).
        share_modalities (`bool`, *optional*, defaults to `True`):
            One Transformer serves as visual, audio and multimodal Transformer.
        share_layer_norms (`bool`, *optional*, defaults to `True`):
            With `share_modalities`, the shared Transformer has one post-attention and one post-FFN LayerNorm per
            layer for all modalities, as the authors' code has (their released checkpoints need it); `False` gives
            each modality its own (SPEC.md's first description). No effect without `share_modalities`.
        low_rank_dim (`int`, *optional*, defaults to 128):
            Rank of the modality-private factors of each weight matrix; 0 keeps full matrices.
        cnn_chunk_size (`int`, *optional*, defaults to 0):
            Run the CNNs over this many segments at a time (0: all at once).
        cnn_checkpointing (`bool`, *optional*, defaults to `False`):
            Recompute CNN activations in the backward pass instead of storing them (saves most of the memory
            of a training step).
        cnn_memory_format (`str`, *optional*, defaults to `"contiguous"`):
            Layout the CNNs run in: `"channels_last"` (channels-last 3D / 2D, the layout oneDNN's and cuDNN's fast
            bf16 kernels are written for) or `"contiguous"` (PyTorch's default NCDHW / NCHW). Same weights and
            state-dict keys either way; outputs agree to float rounding. Contiguous by default: on CPU (torch 2.13,
            two threads) oneDNN's fp32 channels-last Conv3d backward corrupted the heap at the tiny preset's sizes;
            channels-last is the faster choice for bf16 and inference at real sizes (see the README).
        mask_probability (`float`, *optional*, defaults to 0.15):
            Pretraining: fraction of segments of each modality that masked embedding prediction hides.
        mep_num_negatives (`int`, *optional*, defaults to 16):
            Pretraining: negatives per masked segment for the contrastive loss.
        mep_temperature (`float`, *optional*, defaults to 0.1):
            Pretraining: temperature of the contrastive loss.
        negative_sampling (`str`, *optional*, defaults to `"similar"`):
            Pretraining: where MEP's negatives come from: `"similar"` (content-aware, hard negatives first, the
            paper's choice), `"dissimilar"`, `"uniform"` over the batch, or `"sequence"` (the anchor's own clip).
        negative_sampling_temperature (`float`, *optional*, defaults to 1.0):
            Pretraining: temperature of the similarity distribution negatives are drawn from (on cosines in [-1, 1]:
            at 1.0 the most similar candidate is up to e^2 times likelier than the least similar).
        visual_mep_weight, audio_mep_weight, multimodal_mep_weight, cpp_weight (`float`, *optional*, defaults to 1.0):
            Pretraining: weight of each objective in the loss; 0 switches it off (it is then not computed, and with
            `cpp_weight=0` no audio is swapped, with both MEP weights of a modality 0 that modality is not masked).
            The multimodal MEP loss is the sum of its visual and audio parts.
        classifier_modality (`str`, *optional*, defaults to `"audio-visual"`):
            Classification: which inputs the classifier uses, one of `"audio-visual"`, `"visual"`, `"audio"`.
        classifier_head (`str`, *optional*, defaults to `"clip"`):
            Classification head. `"clip"`: one score per clip from pooled Transformer outputs plus one from the mean
            CNN embeddings, added. `"segment"`: the authors' head, which scores every segment from `[summary;
            segment]` outputs and from that segment's CNN embeddings, trains both with per-segment cross-entropy,
            and reports the mean of the segments' and heads' softmaxes (see [`PemtForAudioVisualClassification`]).
            `"cnn"`: a linear layer on the mean CNN embeddings alone, the Transformers unused (the authors' UCF101
            and ESC-50 settings, with one modality and usually one segment per clip).
        classifier_dropout (`float`, *optional*):
            Dropout of the classification heads. Default: `hidden_dropout_prob` for the clip head, 0.5 (the
            authors' `MODEL.DROPOUT_RATE`) for the segment head.
        classifier_layer_norm_eps (`float`, *optional*):
            Epsilon of the head's LayerNorm. Default: `layer_norm_eps` for the clip head, 1e-5 (the authors'
            `MODEL.EPSILON`) for the segment head.
        classifier_loss (`str`, *optional*, defaults to `"cross_entropy"`):
            Single-label training loss: `"cross_entropy"`, or `"multi_margin"` (`torch.nn.MultiMarginLoss`, the
            authors' ESC-50 linear evaluation).
        classifier_margin (`float`, *optional*, defaults to 0.1):
            Margin of the multi-margin loss (the authors' `MODEL.MARGIN`).

    Example:

    ```python
    >>> from pemt import PemtConfig, PemtModel

    >>> config = PemtConfig()  # the paper's model
    >>> model = PemtModel(config)
    >>> tiny = PemtConfig.from_preset("tiny")
    ```"""

    model_type = "pemt"

    num_segments: int = 10
    frames_per_segment: int = 32
    frame_stride: int = 2
    video_fps: float | int = 30.0
    train_short_side_range: list[int] | tuple[int, int] = (128, 160)
    train_crop_size: int = 112
    eval_short_side: int = 128
    eval_crop_size: int = 128
    image_mean: float = 0.45
    image_std: float = 0.225

    audio_sampling_rate: int = 44100
    num_mel_bins: int = 80
    n_fft: int = 1472
    hop_length: int = 736
    audio_frames: int = 128
    log_offset: float = 1e-6
    spec_augment_ratio: float = 0.05

    visual_cnn_width: int = 64
    visual_cnn_depths: list[int] | tuple[int, ...] = (3, 4, 6, 3)
    visual_cnn_temporal_kernels: list[int] | tuple[int, ...] = (1, 1, 3, 3)
    visual_stem_temporal_kernel: int = 5
    audio_cnn_width: int = 32
    audio_cnn_depths: list[int] | tuple[int, ...] = (3, 4, 6, 3)
    audio_separable_stages: int = 2

    hidden_size: int = 768
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.1
    attention_probs_dropout_prob: float | int = 0.1
    max_position_embeddings: int = 22
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02

    share_layers: bool = True
    share_modalities: bool = True
    share_layer_norms: bool = True
    low_rank_dim: int = 128

    cnn_chunk_size: int = 0
    cnn_checkpointing: bool = False
    cnn_memory_format: str = "contiguous"

    mask_probability: float = 0.15
    mep_num_negatives: int = 16
    mep_temperature: float = 0.1
    negative_sampling: str = "similar"
    # Re-measured after negatives stopped including copies of the anchor (the earlier choice of 1.0 was made while
    # they did): at 1.0 "similar" keeps >90% of the pool in play (nearly uniform), at 0.3 about half (mean cosine of
    # the drawn negatives 0.44-0.50 instead of 0.15-0.22). In 150-step tiny runs on the relation demo data (one seed,
    # held-out MEP accuracy with the fixed uniform evaluation sampler) 1.0 reached 0.435 and 0.3 reached 0.340
    # (uniform 0.480), so sharper sampling did not pay at demo scale and 1.0 stays. See README, "Sampling temperature".
    negative_sampling_temperature: float = 1.0
    visual_mep_weight: float | int = 1.0
    audio_mep_weight: float | int = 1.0
    multimodal_mep_weight: float | int = 1.0
    cpp_weight: float | int = 1.0

    classifier_modality: str = "audio-visual"
    classifier_head: str = "clip"
    classifier_dropout: float | int | None = None
    classifier_layer_norm_eps: float | None = None
    classifier_loss: str = "cross_entropy"
    classifier_margin: float = 0.1

    @property
    def visual_embedding_dim(self) -> int:
        """Width of the visual CNN's pooled output (2048 for the paper's ResNet-50)."""
        return self.visual_cnn_width * 2 ** (len(self.visual_cnn_depths) - 1) * 4

    @property
    def audio_embedding_dim(self) -> int:
        """Width of the audio CNN's pooled output (1024 for the paper's half-width ResNet-50)."""
        return self.audio_cnn_width * 2 ** (len(self.audio_cnn_depths) - 1) * 4

    @property
    def audio_segment_samples(self) -> int:
        """Audio samples spanning one visual segment (94,080 at the paper's settings)."""
        seconds = self.frames_per_segment * self.frame_stride / self.video_fps
        return round(seconds * self.audio_sampling_rate)

    def __post_init__(self, **kwargs):
        # JSON turns tuples into lists; normalising keeps a loaded config equal to the one saved.
        for name in ("train_short_side_range", "visual_cnn_depths", "visual_cnn_temporal_kernels", "audio_cnn_depths"):
            setattr(self, name, tuple(getattr(self, name)))
        # Checked here rather than in a `validate_*` hook so that users get a plain `ValueError`.
        self.check_values()
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        super().validate_architecture()
        self.check_values()

    @classmethod
    def check_field_names(cls, names, source: str = "config overrides") -> None:
        """Raises `ValueError` for names that are not fields of a PEMT config (a typo would otherwise be stored in
        `config.json` and change nothing)."""
        known = {f.name for f in dataclasses.fields(cls)} | {"num_labels"}
        unknown = sorted(set(names) - known)
        if unknown:
            raise ValueError(
                f"{source}: unknown PemtConfig field(s) {', '.join(map(repr, unknown))}; the fields are listed in "
                "PemtConfig's documentation."
            )

    def _check_types(self) -> None:
        """Each field holds the kind of value its default has (JSON and command lines give strings and numbers)."""
        for field in dataclasses.fields(PemtConfig):
            if field.default is dataclasses.MISSING or field.name not in _OWN_FIELDS:
                continue
            value, default = getattr(self, field.name), field.default
            annotation = str(PemtConfig.__annotations__[field.name])
            if value is None and "None" in annotation:
                continue
            if default is None:
                # An optional field: its type is the annotation's other member.
                default = 0.0 if "float" in annotation else 0 if "int" in annotation else "" if "str" in annotation else ()
            if isinstance(default, bool):
                ok = isinstance(value, bool)
                kind = "true or false"
            elif isinstance(default, int):
                ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
                kind = "an integer"
            elif isinstance(default, float):
                ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
                kind = "a finite number"
            elif isinstance(default, str):
                ok = isinstance(value, str)
                kind = "a string"
            else:
                ok = isinstance(value, (list, tuple)) and all(
                    isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value
                )
                kind = "a list of integers"
            if not ok:
                raise ValueError(f"{field.name} must be {kind}; got {value!r}.")

    def _check_ranges(self) -> None:
        for name in _POSITIVE_FIELDS:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive; got {getattr(self, name)!r}.")
        for name in _PROBABILITY_FIELDS:
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must lie in [0, 1); got {getattr(self, name)!r}.")
        for name in ("visual_cnn_depths", "audio_cnn_depths", "visual_cnn_temporal_kernels"):
            if not getattr(self, name) or min(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a non-empty list of positive integers; got {list(getattr(self, name))}.")
        if len(self.train_short_side_range) != 2 or not 0 < self.train_short_side_range[0] <= self.train_short_side_range[1]:
            raise ValueError(
                f"train_short_side_range must be [low, high] with 0 < low <= high; got {list(self.train_short_side_range)}."
            )
        if self.initializer_range < 0:
            raise ValueError(f"initializer_range must not be negative; got {self.initializer_range}.")
        if self.hidden_act not in ACT2FN:
            raise ValueError(f"hidden_act is {self.hidden_act!r}; choose one of transformers' activations, e.g. 'gelu'.")

    def check_values(self) -> None:
        """Raises `ValueError` naming the field to change when the values cannot build a model."""
        self._check_types()
        self._check_ranges()
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads}); change one of them."
            )
        if self.low_rank_dim < 0 or self.low_rank_dim > self.hidden_size:
            raise ValueError(
                f"low_rank_dim ({self.low_rank_dim}) must lie between 0 (no decomposition) and hidden_size "
                f"({self.hidden_size}); a rank above the width saves nothing."
            )
        if self.num_segments + 1 > self.max_position_embeddings:
            raise ValueError(
                f"num_segments ({self.num_segments}) needs {self.num_segments + 1} position slots with the summary "
                f"token, but max_position_embeddings is {self.max_position_embeddings}; raise it or use fewer segments."
            )
        if len(self.visual_cnn_temporal_kernels) != len(self.visual_cnn_depths):
            raise ValueError(
                f"visual_cnn_temporal_kernels has {len(self.visual_cnn_temporal_kernels)} entries but visual_cnn_depths "
                f"has {len(self.visual_cnn_depths)} stages; give one temporal kernel per stage."
            )
        if not 0 <= self.audio_separable_stages <= len(self.audio_cnn_depths):
            raise ValueError(
                f"audio_separable_stages ({self.audio_separable_stages}) must be between 0 and the number of audio "
                f"stages ({len(self.audio_cnn_depths)})."
            )
        if self.train_crop_size > min(self.train_short_side_range) or self.eval_crop_size > self.eval_short_side:
            raise ValueError(
                "crop sizes must not exceed the short side they are cropped from: check train_crop_size against "
                "train_short_side_range and eval_crop_size against eval_short_side."
            )
        if self.negative_sampling not in NEGATIVE_SAMPLING_VARIANTS:
            raise ValueError(
                f"negative_sampling is {self.negative_sampling!r}; choose one of {', '.join(NEGATIVE_SAMPLING_VARIANTS)}."
            )
        if self.classifier_modality not in CLASSIFIER_MODALITIES:
            raise ValueError(
                f"classifier_modality is {self.classifier_modality!r}; choose one of {', '.join(CLASSIFIER_MODALITIES)}."
            )
        if self.classifier_head not in CLASSIFIER_HEADS:
            raise ValueError(
                f"classifier_head is {self.classifier_head!r}; choose one of {', '.join(CLASSIFIER_HEADS)}."
            )
        if self.classifier_loss not in CLASSIFIER_LOSSES:
            raise ValueError(
                f"classifier_loss is {self.classifier_loss!r}; choose one of {', '.join(CLASSIFIER_LOSSES)}."
            )
        if not 0.0 < self.mask_probability < 1.0:
            raise ValueError(f"mask_probability ({self.mask_probability}) must lie strictly between 0 and 1.")
        weights = {name: getattr(self, name) for name in OBJECTIVE_WEIGHTS}
        if any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
            raise ValueError(
                f"objective weights {weights} must be >= 0 (0 switches an objective off) with at least one positive."
            )
        if self.cnn_memory_format not in CNN_MEMORY_FORMATS:
            raise ValueError(
                f"cnn_memory_format is {self.cnn_memory_format!r}; choose one of {', '.join(CNN_MEMORY_FORMATS)}."
            )
        if self.cnn_chunk_size < 0:
            raise ValueError(f"cnn_chunk_size ({self.cnn_chunk_size}) must be 0 (no chunking) or a positive count.")

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs) -> "PemtConfig":
        # A config saved before `share_layer_norms` existed (a full dump, so it has `share_modalities`, but none of
        # the fields added with it) describes a model with private LayerNorms: load it as one, or its saved
        # per-modality LayerNorms would be dropped as unexpected keys.
        model_type = config_dict.get("model_type")
        if model_type not in (None, cls.model_type) or (model_type is None and not set(config_dict) & _OWN_FIELDS):
            # Building the paper's model from someone else's config would silently ignore every value in it.
            raise ValueError(
                f"This is not a PEMT config (model_type {model_type!r}, fields {sorted(config_dict)[:6]}...); give a "
                "config.json written by PemtConfig.save_pretrained, a pemt model folder, or a preset name."
            )
        legacy = "share_modalities" in config_dict and not {"share_layer_norms", "classifier_head"} & config_dict.keys()
        if legacy and "share_layer_norms" not in kwargs:
            config_dict = {**config_dict, "share_layer_norms": False}
        loaded = super().from_dict(config_dict, **kwargs)
        # Values given to `from_pretrained` are set after construction, past `__post_init__`'s check.
        (loaded[0] if isinstance(loaded, tuple) else loaded).check_values()
        return loaded

    @classmethod
    def from_preset(cls, name_or_path: str | os.PathLike, **overrides) -> "PemtConfig":
        """
        Builds a preset: a name (`"paper"`, `"small"`, `"tiny"`, read from `presets/<name>.json` beside this file) or
        the path of a preset file of the same form (copy one and edit its `"config"`), with any field overridden by
        keyword.
        """
        cls.check_field_names(overrides, f"overrides of preset {str(name_or_path)!r}")
        return cls(**{**read_preset(name_or_path), **overrides})


def read_preset(name_or_path: str | os.PathLike) -> dict:
    """The `"config"` fields of a preset file (overrides of the paper's defaults), by preset name or file path."""
    if str(name_or_path) in PRESET_NAMES:
        path = PRESETS_DIR / f"{name_or_path}.json"
        if not path.is_file():
            # Remote code (a model's code copied to the Hub) carries this module but not the preset files.
            raise FileNotFoundError(
                f"Preset {name_or_path!r} is read from {path}, which does not exist: preset files ship with the pemt "
                "package, not with a model's remote code. Install pemt, or load a saved config with "
                "PemtConfig.from_pretrained(...)."
            )
    else:
        path = Path(name_or_path)
        if path.suffix != ".json" or not path.is_file():
            raise ValueError(
                f"Unknown preset {str(name_or_path)!r}; choose one of {', '.join(PRESET_NAMES)} or give the path of a "
                "preset JSON file."
            )
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"Preset file {path} is not valid JSON: {err}.") from None
    if not isinstance(content, dict) or not isinstance(content.get("config"), dict):
        raise ValueError(
            f"Preset file {path} has no \"config\" object; a preset holds {{\"description\", \"notes\", \"config\"}} "
            f"(see {PRESETS_DIR / 'tiny.json'})."
        )
    unknown = sorted(set(content["config"]) - set(PemtConfig().to_dict()))
    if unknown:
        raise ValueError(f"Preset file {path} sets unknown config fields: {', '.join(unknown)}.")
    return content["config"]


class _Presets(Mapping):
    """The shipped presets by name, each read from its file when first asked for."""

    def __getitem__(self, name: str) -> dict:
        if name not in PRESET_NAMES:
            raise KeyError(name)
        return read_preset(name)

    def __iter__(self):
        return iter(PRESET_NAMES)

    def __len__(self) -> int:
        return len(PRESET_NAMES)


OBJECTIVE_WEIGHTS = ("visual_mep_weight", "audio_mep_weight", "multimodal_mep_weight", "cpp_weight")
_OWN_FIELDS = set(PemtConfig.__annotations__)
_POSITIVE_FIELDS = (
    "num_segments", "frames_per_segment", "frame_stride", "video_fps", "train_crop_size", "eval_short_side",
    "eval_crop_size", "image_std", "audio_sampling_rate", "num_mel_bins", "n_fft", "hop_length", "audio_frames",
    "log_offset", "visual_cnn_width", "visual_stem_temporal_kernel", "audio_cnn_width", "hidden_size",
    "num_hidden_layers", "num_attention_heads", "intermediate_size", "max_position_embeddings", "layer_norm_eps",
    "mep_num_negatives", "mep_temperature", "negative_sampling_temperature",
)
_PROBABILITY_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "spec_augment_ratio")
CLASSIFIER_MODALITIES = ("audio-visual", "visual", "audio")
CLASSIFIER_HEADS = ("clip", "segment", "cnn")
CLASSIFIER_LOSSES = ("cross_entropy", "multi_margin")
# The negative samplers of `objectives.sample_negatives`: listed here so that the configuration needs no model code.
NEGATIVE_SAMPLING_VARIANTS = ("similar", "dissimilar", "uniform", "sequence")
CNN_MEMORY_FORMATS = ("channels_last", "contiguous")

# Presets are data files a user can copy: each holds overrides of the paper's defaults, with the reasons in "notes".
# "tiny" exists for unit tests (every forward well under a second on a CPU core); "small" is what the CPU demo
# pretrains in minutes; "paper" adds only the memory settings for training at full size.
PRESETS_DIR = Path(__file__).resolve().parent / "presets"
PRESET_NAMES = ("paper", "small", "ablation", "tiny")
PRESETS: Mapping[str, dict] = _Presets()


__all__ = ["PemtConfig", "PRESETS"]
