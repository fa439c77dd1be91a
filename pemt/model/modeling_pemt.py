"""PyTorch PEMT: per-segment CNNs feeding visual, audio and multimodal Transformers that share parameters.

Read top to bottom: outputs, the parameter-sharing building blocks (the paper's contribution), the Transformer
layer and stack, embeddings, the base model, and the heads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput, can_return_tuple, logging

from .cnn_pemt import PemtAudioCNN, PemtVisualCNN, run_cnn_over_segments
from .configuration_pemt import PemtConfig
from .heads_pemt import (
    mean_segment_probabilities,
    multi_margin_loss,
    probabilities_to_logits,
    repeat_per_segment,
    segment_mask,
    segment_pairs,
)
from .objectives import cpp_loss, mask_segments, mep_loss, sample_negatives, segment_ids, swap_audio
from .sharing import AUDIO, MODALITY_NAMES, MULTIMODAL, VISUAL, PemtEncoder, PemtOrthogonal, PemtSharedLinear, random_rotation_generator, sigma_cache
from .weights_check_pemt import check_loaded_weights

logger = logging.get_logger(__name__)

# ---------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class PemtModelOutput(ModelOutput):
    r"""
    Output of [`PemtModel`]. Sequences are `[summary, segment_1, ..., segment_T]` per modality; the multimodal
    sequence is the visual one followed by the audio one. A field is `None` when its modality was not given.

    The standard fields describe the model's final Transformer: the multimodal one when both modalities are given,
    otherwise the Transformer of the one modality given. They are the same tensors as the per-modality fields of
    that Transformer, so code written for any `transformers` encoder reads the model's final output.

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`):
            Output of the final Transformer: `multimodal_last_hidden_state` (length `2 + 2 * num_segments`) when both
            modalities are given, else that modality's `*_last_hidden_state` (length `1 + num_segments`).
        pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            Final Transformer output at its summary token; with both modalities, the mean of the multimodal output at
            the visual and the audio summary token.
        visual_cnn_embeddings (`torch.FloatTensor` of shape `(batch_size, num_segments, visual_embedding_dim)`):
            Pooled visual CNN output per segment (zeros at masked segments).
        audio_cnn_embeddings (`torch.FloatTensor` of shape `(batch_size, num_segments, audio_embedding_dim)`):
            Pooled audio CNN output per segment (zeros at masked segments).
        visual_last_hidden_state (`torch.FloatTensor` of shape `(batch_size, 1 + num_segments, hidden_size)`):
            Output of the visual Transformer.
        audio_last_hidden_state (`torch.FloatTensor` of shape `(batch_size, 1 + num_segments, hidden_size)`):
            Output of the audio Transformer.
        multimodal_last_hidden_state (`torch.FloatTensor` of shape `(batch_size, 2 + 2 * num_segments, hidden_size)`):
            Output of the multimodal Transformer; present only when both modalities are given.
        visual_summary (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            Visual Transformer output at the summary (BOS) token.
        audio_summary (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            Audio Transformer output at the summary (BOS) token.
        multimodal_summary (`torch.FloatTensor` of shape `(batch_size, 2, hidden_size)`):
            Multimodal Transformer outputs at the visual and the audio summary tokens.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            The final Transformer's input to its first layer and output of every layer, when
            `output_hidden_states=True`.
        visual_hidden_states, audio_hidden_states, multimodal_hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            The same for each Transformer.
        visual_attentions, audio_attentions, multimodal_attentions (`tuple(torch.FloatTensor)`, *optional*):
            Attention probabilities `(batch_size, num_heads, seq_len, seq_len)` of every layer of each Transformer,
            when `output_attentions=True`.
        attentions (`tuple(torch.FloatTensor)`, *optional*):
            The final Transformer's attention probabilities.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    visual_cnn_embeddings: torch.FloatTensor | None = None
    audio_cnn_embeddings: torch.FloatTensor | None = None
    visual_last_hidden_state: torch.FloatTensor | None = None
    audio_last_hidden_state: torch.FloatTensor | None = None
    multimodal_last_hidden_state: torch.FloatTensor | None = None
    visual_summary: torch.FloatTensor | None = None
    audio_summary: torch.FloatTensor | None = None
    multimodal_summary: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    visual_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    audio_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    multimodal_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    visual_attentions: tuple[torch.FloatTensor, ...] | None = None
    audio_attentions: tuple[torch.FloatTensor, ...] | None = None
    multimodal_attentions: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class PemtClassifierOutput(ModelOutput):
    r"""
    Output of [`PemtForAudioVisualClassification`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*):
            Cross-entropy (single-label), binary cross-entropy (multi-label) or mean squared error (regression), when
            `labels` are given.
        logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
            Clip head: sum of the Transformer head's and the CNN head's scores. Segment head: the log of the clip
            probability (mean over segments and both heads of their softmaxes), so that `logits.softmax(-1)` is it.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            Hidden states of the Transformer the head reads (see [`PemtModelOutput.hidden_states`]), when
            `output_hidden_states=True`.
        attentions (`tuple(torch.FloatTensor)`, *optional*):
            Its attention probabilities, when `output_attentions=True`.
        segment_logits (`torch.FloatTensor` of shape `(batch_size, num_segments, num_labels)`, *optional*):
            Segment head only: the Transformer head's score of every segment.
        cnn_segment_logits (`torch.FloatTensor` of shape `(batch_size, num_segments, num_labels)`, *optional*):
            Segment head only: the CNN head's score of every segment.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    segment_logits: torch.FloatTensor | None = None
    cnn_segment_logits: torch.FloatTensor | None = None


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference attention; `attention_mask` is boolean `[batch, 1, 1, keys]`, True where a key may be attended."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    # Softmax in float32: in half precision the exponentials of a long row lose the small probabilities.
    probs = scores.softmax(dim=-1, dtype=torch.float32).to(query.dtype)
    probs = F.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2), probs


class PemtAttention(nn.Module):
    """Multi-head self-attention whose Q, K, V and output projections are [`PemtSharedLinear`]s."""

    is_causal = False

    def __init__(self, config: PemtConfig, num_modalities: int):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = config.attention_probs_dropout_prob
        h, r = config.hidden_size, config.low_rank_dim
        self.query = PemtSharedLinear(h, h, num_modalities, r)
        self.key = PemtSharedLinear(h, h, num_modalities, r)
        self.value = PemtSharedLinear(h, h, num_modalities, r)
        self.output = PemtSharedLinear(h, h, num_modalities, r)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor, modality: int, output_attentions: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, length, _ = hidden_states.shape
        shape = (batch, length, self.num_heads, self.head_dim)
        q, k, v = (
            proj(hidden_states, modality).view(shape).transpose(1, 2) for proj in (self.query, self.key, self.value)
        )
        implementation = self.config._attn_implementation or "eager"
        if output_attentions and implementation not in (None, "eager"):
            logger.warning_once("output_attentions=True needs the eager attention; falling back to it for this call.")
            implementation = "eager"
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        context, probs = attention_interface(
            self,
            q,
            k,
            v,
            attention_mask,
            dropout=self.dropout if self.training else 0.0,
            scaling=self.scaling,
            is_causal=False,
        )
        context = context.reshape(batch, length, -1)
        return self.output(context, modality), probs


class PemtLayer(GradientCheckpointingLayer):
    """A post-LayerNorm BERT layer. Its two LayerNorms serve every modality (`config.share_layer_norms`, the
    authors' layout) or are private to each; either way they live in `attention_norm` / `output_norm` lists, one
    entry per LayerNorm."""

    def __init__(self, config: PemtConfig, num_modalities: int):
        super().__init__()
        h, r = config.hidden_size, config.low_rank_dim
        num_norms = 1 if config.share_layer_norms else num_modalities
        self.attention = PemtAttention(config, num_modalities)
        self.attention_norm = nn.ModuleList(nn.LayerNorm(h, eps=config.layer_norm_eps) for _ in range(num_norms))
        self.intermediate = PemtSharedLinear(h, config.intermediate_size, num_modalities, r)
        self.activation = ACT2FN[config.hidden_act]
        self.output = PemtSharedLinear(config.intermediate_size, h, num_modalities, r)
        self.output_norm = nn.ModuleList(nn.LayerNorm(h, eps=config.layer_norm_eps) for _ in range(num_norms))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor, modality: int, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        norm = modality if len(self.attention_norm) > 1 else 0
        attended, probs = self.attention(hidden_states, attention_mask, modality, output_attentions)
        hidden_states = self.attention_norm[norm](hidden_states + self.dropout(attended))
        feed_forward = self.output(self.activation(self.intermediate(hidden_states, modality)), modality)
        hidden_states = self.output_norm[norm](hidden_states + self.dropout(feed_forward))
        return hidden_states, probs



# ---------------------------------------------------------------------------------------------------------------
# Embeddings (always private to their modality)
# ---------------------------------------------------------------------------------------------------------------


class PemtModalityEmbeddings(nn.Module):
    """CNN embedding -> Linear -> LayerNorm, a learned summary token in front, learned positions, LayerNorm, dropout."""

    def __init__(self, config: PemtConfig, cnn_dim: int):
        super().__init__()
        self.projection = nn.Linear(cnn_dim, config.hidden_size)
        self.projection_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.summary_token = nn.Parameter(torch.zeros(config.hidden_size))
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, cnn_embeddings: torch.Tensor) -> torch.Tensor:
        tokens = self.projection_norm(self.projection(cnn_embeddings))
        summary = self.summary_token.expand(tokens.shape[0], 1, -1).to(tokens.dtype)
        tokens = torch.cat([summary, tokens], dim=1)
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return self.dropout(self.norm(tokens + self.position_embeddings(positions)))


class PemtMultimodalEmbeddings(nn.Module):
    """Adds token types (0 visual, 1 audio) and per-modality positions to the two modality outputs it joins."""

    def __init__(self, config: PemtConfig):
        super().__init__()
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(2, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, visual: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        device = visual.device
        positions = torch.cat([torch.arange(visual.shape[1], device=device), torch.arange(audio.shape[1], device=device)])
        types = torch.cat(
            [torch.zeros(visual.shape[1], dtype=torch.long, device=device), torch.ones(audio.shape[1], dtype=torch.long, device=device)]
        )
        tokens = torch.cat([visual, audio], dim=1)
        return self.dropout(self.norm(tokens + self.position_embeddings(positions) + self.token_type_embeddings(types)))


# ---------------------------------------------------------------------------------------------------------------
# Embeddings API: clip-level video, audio and joint features from every PEMT model (PemtEmbeddingsMixin)
# ---------------------------------------------------------------------------------------------------------------

FEATURE_POOLINGS = ("summary", "mean", "summary_and_mean")


def pool_sequence(sequence: torch.Tensor, mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """`[summary, segment_1, ..., segment_T]` `[batch, 1 + T, H]` -> `[batch, H]` (`"summary"`: the summary token's
    output; `"mean"`: the mean output over real segments) or `[batch, 2H]` (`"summary_and_mean"`: both, as the
    classification and correct-pair-prediction heads read a sequence)."""
    if pooling == "summary":
        return sequence[:, 0]
    if pooling == "mean":
        return masked_mean(sequence[:, 1:], mask)
    if pooling == "summary_and_mean":
        return summary_and_mean(sequence, mask)
    raise ValueError(f"pooling is {pooling!r}; choose one of {', '.join(FEATURE_POOLINGS)}.")


@dataclass
class PemtFeaturesOutput(ModelOutput):
    r"""
    Output of [`PemtEmbeddingsMixin.get_features`]: clip embeddings of each modality and of the pair, from one
    forward pass. `D` is `hidden_size` for `pooling="summary"` or `"mean"`, `2 * hidden_size` for
    `"summary_and_mean"`, and `hidden_size` when `projected=True`.

    Args:
        video_embeds (`torch.FloatTensor` of shape `(batch_size, D)`, *optional*):
            Pooled output of the visual Transformer (the picture alone).
        audio_embeds (`torch.FloatTensor` of shape `(batch_size, D)`, *optional*):
            Pooled output of the audio Transformer (the sound alone).
        clip_embeds (`torch.FloatTensor` of shape `(batch_size, 2 * D)`, *optional*):
            The multimodal Transformer's visual part pooled, then its audio part pooled, concatenated (`(batch_size,
            hidden_size)` when projected); present when both modalities are given.
        model_output ([`PemtModelOutput`]):
            The backbone's output (per-segment outputs are in its `*_last_hidden_state[:, 1:]`).
    """

    video_embeds: torch.FloatTensor | None = None
    audio_embeds: torch.FloatTensor | None = None
    clip_embeds: torch.FloatTensor | None = None
    model_output: PemtModelOutput | None = None


class PemtEmbeddingsMixin:
    r"""
    The embeddings API of every PEMT model ([`PemtModel`] and the models with heads, which read their backbone):
    [`~PemtEmbeddingsMixin.get_video_features`], [`~PemtEmbeddingsMixin.get_audio_features`],
    [`~PemtEmbeddingsMixin.get_clip_features`] and all three at once with [`~PemtEmbeddingsMixin.get_features`].

    As in `transformers`' two-tower models, `get_*_features` return a `BaseModelOutputWithPooling` whose
    `pooler_output` is the clip embedding and whose `last_hidden_state` holds the per-segment outputs after the
    summary token. The unimodal embeddings come from separately run Transformers and are not trained to share a
    space across modalities: compare video with video and audio with audio; to ask whether a sound goes with a
    picture use the correct-pair-prediction head ([`PemtForPreTraining.correspondence_logits`]).

    Options:
        pooling (`str`, defaults to `"summary"`): `"summary"` (the summary token's output), `"mean"` (mean output
            of the real segments) or `"summary_and_mean"` (both, concatenated).
        normalize (`bool`, defaults to `False`): L2-normalise the embeddings, so that dot products are cosines.
        projected (`bool`, defaults to `False`): pass through the model's own trained projection instead of
            `pooling`: a fine-tuned [`PemtForAudioVisualClassification`] with `classifier_head="clip"` maps the
            sequences of its `classifier_modality` to the `hidden_size` vector its classifier reads. Models without
            such a projection raise a `ValueError`.
    """

    def _feature_backbone(self) -> PemtModel:
        return getattr(self, "pemt", self)

    def _project_features(self, sequences: dict[str, torch.Tensor], masks: dict[str, torch.Tensor | None]) -> torch.Tensor:
        raise ValueError(
            f"{type(self).__name__} has no trained projection for {' + '.join(sequences)} features; use "
            "projected=False, or a fine-tuned PemtForAudioVisualClassification of that modality."
        )

    def _embed(self, sequences: dict[str, torch.Tensor], masks: dict, pooling: str, normalize: bool, projected: bool) -> torch.Tensor:
        if projected:
            embeds = self._project_features(sequences, masks)
        else:
            embeds = torch.cat([pool_sequence(sequences[name], masks[name], pooling) for name in sequences], dim=-1)
        return F.normalize(embeds, dim=-1) if normalize else embeds

    def get_features(
        self,
        pixel_values: torch.FloatTensor | None = None,
        audio_values: torch.FloatTensor | None = None,
        visual_segment_mask: torch.LongTensor | None = None,
        audio_segment_mask: torch.LongTensor | None = None,
        pooling: str = "summary",
        normalize: bool = False,
        projected: bool = False,
        **kwargs,
    ) -> PemtFeaturesOutput:
        r"""
        Video, audio and joint clip embeddings from one forward pass of the backbone.

        Args:
            pixel_values, audio_values, visual_segment_mask, audio_segment_mask: as for [`PemtModel`] (either modality may be left
                out; `clip_embeds` needs both). `kwargs` go to the backbone (`output_hidden_states`, ...).
            pooling, normalize, projected: see [`PemtEmbeddingsMixin`]. With `projected=True` only the embedding of
                the model's `classifier_modality` is projected; the others are `None`.

        Returns:
            [`PemtFeaturesOutput`].
        """
        output = self._feature_backbone()(
            pixel_values=pixel_values, audio_values=audio_values, visual_segment_mask=visual_segment_mask, audio_segment_mask=audio_segment_mask,
            return_dict=True, **kwargs,
        )
        masks = {"visual": visual_segment_mask, "audio": audio_segment_mask}
        unimodal = {"visual": output.visual_last_hidden_state, "audio": output.audio_last_hidden_state}
        embeds = {}
        for name, sequence in unimodal.items():
            if sequence is None:
                embeds[name] = None
            elif projected:
                embeds[name] = self._embed({name: sequence}, masks, pooling, normalize, True) if self._projects((name,)) else None
            else:
                embeds[name] = self._embed({name: sequence}, masks, pooling, normalize, False)
        clip = None
        if output.multimodal_last_hidden_state is not None and (not projected or self._projects(("visual", "audio"))):
            clip = self._embed(self._joint_sequences(output), masks, pooling, normalize, projected)
        if projected and clip is None and embeds["visual"] is None and embeds["audio"] is None:
            self._project_features({name: s for name, s in unimodal.items() if s is not None}, masks)  # raises
        return PemtFeaturesOutput(
            video_embeds=embeds["visual"], audio_embeds=embeds["audio"], clip_embeds=clip, model_output=output
        )

    def _projects(self, modalities: tuple[str, ...]) -> bool:
        """Whether `_project_features` accepts exactly these modalities."""
        return False

    @staticmethod
    def _joint_sequences(output: PemtModelOutput) -> dict[str, torch.Tensor]:
        """The multimodal output split into its visual and its audio `[summary, segments...]` parts."""
        visual_length = output.visual_last_hidden_state.shape[1]
        hidden = output.multimodal_last_hidden_state
        return {"visual": hidden[:, :visual_length], "audio": hidden[:, visual_length:]}

    def _unimodal_features(self, name: str, inputs: dict, pooling: str, normalize: bool, projected: bool, **kwargs):
        output = self._feature_backbone()(**inputs, return_dict=True, **kwargs)
        sequence = getattr(output, f"{name}_last_hidden_state")
        mask = inputs["visual_segment_mask" if name == "visual" else "audio_segment_mask"]
        embeds = self._embed({name: sequence}, {name: mask}, pooling, normalize, projected)
        return BaseModelOutputWithPooling(
            last_hidden_state=sequence, pooler_output=embeds, hidden_states=getattr(output, f"{name}_hidden_states"),
            attentions=getattr(output, f"{name}_attentions"),
        )

    @can_return_tuple
    def get_video_features(
        self,
        pixel_values: torch.FloatTensor,
        visual_segment_mask: torch.LongTensor | None = None,
        pooling: str = "summary",
        normalize: bool = False,
        projected: bool = False,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        r"""
        Clip embeddings of the picture alone (the visual CNN and Transformer).

        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_segments, 3, frames, height, width)`):
                Video segments, as [`PemtProcessor`] returns them.
            visual_segment_mask (`torch.LongTensor` of shape `(batch_size, num_segments)`, *optional*): 1 for real segments.
            pooling, normalize, projected: see [`PemtEmbeddingsMixin`].

        Returns:
            `BaseModelOutputWithPooling`: `pooler_output` `(batch_size, D)` (`D` as in [`PemtFeaturesOutput`]),
            `last_hidden_state` `(batch_size, 1 + num_segments, hidden_size)`, and the visual hidden states and
            attentions when asked for.
        """
        inputs = {"pixel_values": pixel_values, "visual_segment_mask": visual_segment_mask}
        return self._unimodal_features("visual", inputs, pooling, normalize, projected, **kwargs)

    @can_return_tuple
    def get_audio_features(
        self,
        audio_values: torch.FloatTensor,
        audio_segment_mask: torch.LongTensor | None = None,
        pooling: str = "summary",
        normalize: bool = False,
        projected: bool = False,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        r"""
        Clip embeddings of the sound alone (the audio CNN and Transformer).

        Args:
            audio_values (`torch.FloatTensor` of shape `(batch_size, num_segments, 1, num_mel_bins, audio_frames)`):
                Log-mel segments, as [`PemtProcessor`] returns them.
            audio_segment_mask (`torch.LongTensor` of shape `(batch_size, num_segments)`, *optional*): 1 for real segments.
            pooling, normalize, projected: see [`PemtEmbeddingsMixin`].

        Returns:
            `BaseModelOutputWithPooling` as for [`~PemtEmbeddingsMixin.get_video_features`], for the audio side.
        """
        inputs = {"audio_values": audio_values, "audio_segment_mask": audio_segment_mask}
        return self._unimodal_features("audio", inputs, pooling, normalize, projected, **kwargs)

    @can_return_tuple
    def get_clip_features(
        self,
        pixel_values: torch.FloatTensor,
        audio_values: torch.FloatTensor,
        visual_segment_mask: torch.LongTensor | None = None,
        audio_segment_mask: torch.LongTensor | None = None,
        pooling: str = "summary",
        normalize: bool = False,
        projected: bool = False,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        r"""
        Joint clip embeddings of picture and sound (the multimodal Transformer's output).

        Args:
            pixel_values, audio_values, visual_segment_mask, audio_segment_mask: as for [`PemtModel`]; both modalities are required.
            pooling, normalize, projected: see [`PemtEmbeddingsMixin`].

        Returns:
            `BaseModelOutputWithPooling`: `pooler_output` `(batch_size, 2 * D)` (the visual part pooled beside the
            audio part; `(batch_size, hidden_size)` when projected), `last_hidden_state` `(batch_size, 2 + 2 *
            num_segments, hidden_size)`, and the multimodal hidden states and attentions when asked for.
        """
        if pixel_values is None or audio_values is None:
            raise ValueError("get_clip_features needs both pixel_values and audio_values.")
        output = self._feature_backbone()(
            pixel_values=pixel_values, audio_values=audio_values, visual_segment_mask=visual_segment_mask, audio_segment_mask=audio_segment_mask,
            return_dict=True, **kwargs,
        )
        masks = {"visual": visual_segment_mask, "audio": audio_segment_mask}
        embeds = self._embed(self._joint_sequences(output), masks, pooling, normalize, projected)
        return BaseModelOutputWithPooling(
            last_hidden_state=output.multimodal_last_hidden_state, pooler_output=embeds,
            hidden_states=output.multimodal_hidden_states, attentions=output.multimodal_attentions,
        )


# ---------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------


class PemtPreTrainedModel(PreTrainedModel):
    """Weight initialisation and the class attributes shared by every PEMT model."""

    config_class = PemtConfig
    config: PemtConfig
    base_model_prefix = "pemt"
    main_input_name = "pixel_values"
    input_modalities = ("video", "audio")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["PemtLayer"]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """As [`PreTrainedModel.from_pretrained`], but backbone weights that do not fit the config are an error, not
        a warning (see `weights_check_pemt`); head weights initialised afresh are listed in
        `model.newly_initialized_heads`. A caller asking for `output_loading_info=True` gets the report instead of
        the error, and judges it itself (as `transformers`' own loading tests do)."""
        wants_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs)
        check_loaded_weights(model, info, str(pretrained_model_name_or_path), strict=not wants_info)
        return (model, info) if wants_info else model

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # `transformers.initialization` functions skip tensors already loaded from a checkpoint.
        std = self.config.initializer_range
        if isinstance(module, PemtSharedLinear):
            return  # a linear layer by type only: its parts are initialised as the modules they are
        if isinstance(module, nn.Linear):
            if not parametrize.is_parametrized(module, "weight"):
                init.normal_(module.weight, mean=0.0, std=std * getattr(module, "init_std_scale", 1.0))
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, parametrize.ParametrizationList):
            # Sigma = base @ matrix_exp(skew(original)) starts as a random rotation held by `original`; the buffer
            # `base` starts as the identity (buffers are deterministic: a model built on the meta device must
            # initialise to the same buffers).
            init.copy_(module.original, random_rotation_generator(module.original.shape[-1]))
        elif isinstance(module, PemtOrthogonal):
            init.eye_(module.base)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, (nn.Conv2d, nn.Conv3d)):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        elif isinstance(module, PemtModalityEmbeddings):
            init.normal_(module.summary_token, mean=0.0, std=std)


def _key_mask(segment_mask: torch.Tensor) -> torch.Tensor:
    """`[batch, T]` segment mask -> boolean `[batch, 1, 1, 1 + T]` key mask with the summary token always visible."""
    summary = segment_mask.new_ones(segment_mask.shape[0], 1)
    return torch.cat([summary, segment_mask], dim=1).bool()[:, None, None, :]


class PemtModel(PemtEmbeddingsMixin, PemtPreTrainedModel):
    r"""
    The PEMT backbone: visual and audio CNNs per segment, then the visual, audio and multimodal Transformers.

    Either modality may be left out (`pixel_values=None` or `audio_values=None`); the multimodal Transformer runs
    only when both are given. Precomputed CNN embeddings (`visual_cnn_embeddings`, `audio_cnn_embeddings`) may replace the
    raw inputs, which is how pretraining substitutes masked segments.
    """

    def __init__(self, config: PemtConfig):
        super().__init__(config)
        self.visual_cnn = PemtVisualCNN(config)
        self.audio_cnn = PemtAudioCNN(config)
        self.visual_embeddings = PemtModalityEmbeddings(config, config.visual_embedding_dim)
        self.audio_embeddings = PemtModalityEmbeddings(config, config.audio_embedding_dim)
        self.multimodal_embeddings = PemtMultimodalEmbeddings(config)
        self.encoder = PemtEncoder(config, PemtLayer)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        """The module that embeds the main input (`pixel_values`): the visual CNN, as vision models return their patch
        embeddings."""
        return self.visual_cnn

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.visual_cnn = value

    def embed_visual(self, pixel_values: torch.Tensor, visual_segment_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`[batch, T, 3, frames, H, W]` -> visual CNN embeddings `[batch, T, visual_embedding_dim]`."""
        mask = visual_segment_mask if visual_segment_mask is not None else pixel_values.new_ones(pixel_values.shape[:2], dtype=torch.long)
        return run_cnn_over_segments(
            self.visual_cnn, pixel_values, mask, self.config.visual_embedding_dim, self.config.cnn_chunk_size,
            self.config.cnn_checkpointing,
        )

    def embed_audio(self, audio_values: torch.Tensor, audio_segment_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`[batch, T, 1, mels, frames]` -> audio CNN embeddings `[batch, T, audio_embedding_dim]`."""
        mask = audio_segment_mask if audio_segment_mask is not None else audio_values.new_ones(audio_values.shape[:2], dtype=torch.long)
        return run_cnn_over_segments(
            self.audio_cnn, audio_values, mask, self.config.audio_embedding_dim, self.config.cnn_chunk_size,
            self.config.cnn_checkpointing,
        )

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        audio_values: torch.FloatTensor | None = None,
        visual_segment_mask: torch.LongTensor | None = None,
        audio_segment_mask: torch.LongTensor | None = None,
        visual_cnn_embeddings: torch.FloatTensor | None = None,
        audio_cnn_embeddings: torch.FloatTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> PemtModelOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_segments, 3, frames, height, width)`, *optional*):
                Normalised video segments, as [`PemtProcessor`] returns them.
            audio_values (`torch.FloatTensor` of shape `(batch_size, num_segments, 1, num_mel_bins, audio_frames)`, *optional*):
                Log-mel spectrogram segments.
            visual_segment_mask, audio_segment_mask (`torch.LongTensor` of shape `(batch_size, num_segments)`, *optional*):
                1 for real segments, 0 for padding. Default: all real.
            visual_cnn_embeddings (`torch.FloatTensor` of shape `(batch_size, num_segments, visual_embedding_dim)`, *optional*):
                CNN embeddings to use instead of running the visual CNN on `pixel_values`.
            audio_cnn_embeddings (`torch.FloatTensor` of shape `(batch_size, num_segments, audio_embedding_dim)`, *optional*):
                CNN embeddings to use instead of running the audio CNN on `audio_values`.
        """
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        if visual_cnn_embeddings is None and pixel_values is not None:
            visual_cnn_embeddings = self.embed_visual(pixel_values, visual_segment_mask)
        if audio_cnn_embeddings is None and audio_values is not None:
            audio_cnn_embeddings = self.embed_audio(audio_values, audio_segment_mask)
        if visual_cnn_embeddings is None and audio_cnn_embeddings is None:
            raise ValueError("PemtModel needs pixel_values, audio_values, or both (or their CNN embeddings).")

        fields = {"visual_cnn_embeddings": visual_cnn_embeddings, "audio_cnn_embeddings": audio_cnn_embeddings}
        with sigma_cache(self):
            key_masks = {}
            for modality, cnn_embeddings, mask, embeddings in (
                (VISUAL, visual_cnn_embeddings, visual_segment_mask, self.visual_embeddings),
                (AUDIO, audio_cnn_embeddings, audio_segment_mask, self.audio_embeddings),
            ):
                if cnn_embeddings is None:
                    continue
                if mask is None:
                    mask = cnn_embeddings.new_ones(cnn_embeddings.shape[:2], dtype=torch.long)
                key_masks[modality] = _key_mask(mask)
                fields.update(
                    self._run_transformer(
                        embeddings(cnn_embeddings), key_masks[modality], modality, output_attentions, output_hidden_states
                    )
                )
            if len(key_masks) == 2:
                tokens = self.multimodal_embeddings(fields["visual_last_hidden_state"], fields["audio_last_hidden_state"])
                key_mask = torch.cat([key_masks[VISUAL], key_masks[AUDIO]], dim=-1)
                fields.update(self._run_transformer(tokens, key_mask, MULTIMODAL, output_attentions, output_hidden_states))
                # The multimodal sequence holds two summary tokens: the visual one first, the audio one after the
                # visual segments.
                visual_length = fields["visual_last_hidden_state"].shape[1]
                hidden = fields["multimodal_last_hidden_state"]
                fields["multimodal_summary"] = torch.stack([hidden[:, 0], hidden[:, visual_length]], dim=1)
        final = MODALITY_NAMES[MULTIMODAL if len(key_masks) == 2 else next(iter(key_masks))]
        fields["last_hidden_state"] = fields[f"{final}_last_hidden_state"]
        summary = fields[f"{final}_summary"]
        fields["pooler_output"] = summary.mean(dim=1) if final == "multimodal" else summary
        fields["hidden_states"] = fields[f"{final}_hidden_states"]
        fields["attentions"] = fields[f"{final}_attentions"]
        return PemtModelOutput(**fields)

    def _run_transformer(
        self, tokens: torch.Tensor, key_mask: torch.Tensor, modality: int, output_attentions: bool, output_hidden_states: bool
    ) -> dict[str, torch.Tensor | tuple]:
        # Hidden states and attentions are collected by the layer stack rather than by transformers' output-recording
        # hooks (`capture_outputs` / `OutputRecorder`): those keep one list per output for a whole forward, while PEMT
        # runs three Transformers through the same (shared) layer objects and reports each one's outputs apart; the
        # hooks would interleave the three and record an initial hidden state for the first only.
        hidden, all_hidden, all_attentions = self.encoder(tokens, key_mask, modality, output_attentions, output_hidden_states)
        name = MODALITY_NAMES[modality]
        fields = {f"{name}_last_hidden_state": hidden, f"{name}_hidden_states": all_hidden, f"{name}_attentions": all_attentions}
        if modality != MULTIMODAL:
            fields[f"{name}_summary"] = hidden[:, 0]
        return fields


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over dim 1 of `[batch, T, D]`, counting only positions where `mask` (`[batch, T]`) is 1."""
    if mask is None:
        return values.mean(dim=1)
    weights = mask.to(values.dtype).unsqueeze(-1)
    return (values * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def summary_and_mean(sequence: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """`[summary, segments...]` `[batch, 1 + T, H]` -> `[batch, 2H]`: the summary output beside the mean segment output.
    The mean carries the clip's content from the first step, while the summary token learns to gather it."""
    return torch.cat([sequence[:, 0], masked_mean(sequence[:, 1:], mask)], dim=-1)


class PemtForAudioVisualClassification(PemtEmbeddingsMixin, PemtPreTrainedModel):
    r"""
    PEMT with the downstream classification heads of the paper's released code: for each modality used, the summary
    output and the mean segment output are concatenated and projected to `hidden_size`; the projections are summed,
    normalised and classified. A second head classifies the mean CNN embeddings, and the two scores are added.

    `config.classifier_modality` selects the inputs: `"audio-visual"` reads the multimodal Transformer, `"visual"`
    and `"audio"` read their own Transformer and CNN only. `config.problem_type` is `"single_label_classification"`
    (cross-entropy) or `"multi_label_classification"` (binary cross-entropy); when unset it follows the labels.

    `config.classifier_head` picks the head: `"clip"` (above), `"segment"` (the authors' head: the same layers, with
    bias-free poolers, applied to `[summary; segment_t]` for every segment, and the CNN head to every segment's
    embeddings; see `heads_pemt.py`), or `"cnn"` (the CNN head alone; the Transformers are frozen and never run).
    """

    def __init__(self, config: PemtConfig):
        super().__init__(config)
        self.pemt = PemtModel(config)
        self.modalities = {"audio-visual": ("visual", "audio"), "visual": ("visual",), "audio": ("audio",)}[
            config.classifier_modality
        ]
        head = config.classifier_head
        h = config.hidden_size
        if head != "cnn":
            # The authors' fc1/fc2 have no bias: a bias added before the LayerNorm would only shift its input.
            self.segment_poolers = nn.ModuleDict(
                {name: nn.Linear(2 * h, h, bias=head == "clip") for name in self.modalities}
            )
            eps = config.classifier_layer_norm_eps
            self.norm = nn.LayerNorm(h, eps=eps if eps is not None else (1e-5 if head == "segment" else config.layer_norm_eps))
            self.classifier = nn.Linear(h, config.num_labels)
        dropout = config.classifier_dropout
        self.dropout = nn.Dropout(dropout if dropout is not None else (0.5 if head == "segment" else config.hidden_dropout_prob))
        cnn_dim = sum(getattr(config, f"{name}_embedding_dim") for name in self.modalities)
        self.cnn_classifier = nn.Linear(cnn_dim, config.num_labels)
        self.post_init()
        self._freeze_unused_parts()

    def _freeze_unused_parts(self) -> None:
        """With the CNN-only head, the Transformers and their embeddings never run: frozen, they cost no optimiser
        state and do not trip distributed training's unused-parameter check. Called again by `train()`, because
        `from_pretrained` replaces the parameters after `__init__` (and ends with `eval()`)."""
        if self.config.classifier_head == "cnn":
            backbone = self.pemt
            for part in (backbone.encoder, backbone.visual_embeddings, backbone.audio_embeddings, backbone.multimodal_embeddings):
                part.requires_grad_(False)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        audio_values: torch.FloatTensor | None = None,
        visual_segment_mask: torch.LongTensor | None = None,
        audio_segment_mask: torch.LongTensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        visual_cnn_embeddings: torch.FloatTensor | None = None,
        audio_cnn_embeddings: torch.FloatTensor | None = None,
        **kwargs,
    ) -> PemtClassifierOutput | tuple:
        r"""
        Args:
            labels (`torch.LongTensor` of shape `(batch_size,)` or `torch.FloatTensor` of shape `(batch_size, num_labels)`, *optional*):
                Class indices (single-label) or multi-hot targets (multi-label).
            visual_cnn_embeddings (`torch.FloatTensor` of shape `(batch_size, num_segments, visual_embedding_dim)`, *optional*):
                The visual CNN's embeddings ([`PemtModel.embed_visual`]) to use instead of running the CNN on
                `pixel_values`: the pipeline computes them segment by segment while the rest of the clip decodes.
            audio_cnn_embeddings (`torch.FloatTensor` of shape `(batch_size, num_segments, audio_embedding_dim)`, *optional*):
                The same for the audio CNN ([`PemtModel.embed_audio`]) and `audio_values`.
        """
        inputs = {
            "visual": {"pixel_values": pixel_values, "visual_segment_mask": visual_segment_mask,
                       "visual_cnn_embeddings": visual_cnn_embeddings},
            "audio": {"audio_values": audio_values, "audio_segment_mask": audio_segment_mask,
                      "audio_cnn_embeddings": audio_cnn_embeddings},
        }
        embeddings = {"visual": visual_cnn_embeddings, "audio": audio_cnn_embeddings}
        backbone_inputs = {}
        for name in self.modalities:
            if next(iter(inputs[name].values())) is None and embeddings[name] is None:
                raise ValueError(
                    f"classifier_modality is {self.config.classifier_modality!r}, so {name} inputs are required."
                )
            backbone_inputs.update(inputs[name])
        masks = {"visual": visual_segment_mask, "audio": audio_segment_mask}
        if self.config.classifier_head == "cnn":
            return self._cnn_forward(pixel_values, audio_values, masks, labels, embeddings)
        output = self.pemt(
            **backbone_inputs, output_attentions=output_attentions, output_hidden_states=output_hidden_states
        )
        if self.config.classifier_head == "segment":
            return self._segment_forward(output, masks, labels)
        pooled = 0
        for name, sequence in self._sequences(output).items():
            pooled = pooled + self.segment_poolers[name](summary_and_mean(sequence, masks[name]))
        logits = self.classifier(self.dropout(self.norm(pooled)))
        cnn_features = torch.cat(
            [masked_mean(output[f"{name}_cnn_embeddings"], masks[name]) for name in self.modalities], dim=-1
        )
        logits = logits + self.cnn_classifier(self.dropout(cnn_features))
        loss = self.compute_loss(logits, labels) if labels is not None else None
        return PemtClassifierOutput(loss=loss, logits=logits, hidden_states=output.hidden_states, attentions=output.attentions)

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """As [`PreTrainedModel.save_pretrained`]; where the config carries an `auto_map` (remote code), it also maps
        `AutoModel` to the backbone, so that `AutoModel.from_pretrained(repo, trust_remote_code=True)` loads it."""
        super().save_pretrained(save_directory, *args, **kwargs)
        auto_map = getattr(self.config, "auto_map", None)
        if auto_map and "AutoModel" not in auto_map:
            auto_map["AutoModel"] = f"{PemtModel.__module__.rsplit('.', 1)[-1]}.PemtModel"
            self.config.save_pretrained(save_directory)

    def _segment_forward(
        self, output: PemtModelOutput, masks: dict[str, torch.Tensor | None], labels: torch.Tensor | None
    ) -> PemtClassifierOutput:
        """The authors' head: both heads score every segment; see `heads_pemt.py`."""
        pooled = 0
        for name, sequence in self._sequences(output).items():
            pooled = pooled + self.segment_poolers[name](self.dropout(segment_pairs(sequence)))
        segment_logits = self.classifier(self.norm(pooled))
        cnn_features = torch.cat([output[f"{name}_cnn_embeddings"] for name in self.modalities], dim=-1)
        cnn_logits = self.cnn_classifier(self.dropout(cnn_features))
        batch, length = segment_logits.shape[:2]
        mask = segment_mask([masks[name] for name in self.modalities], batch, length, segment_logits.device)
        loss = None
        if labels is not None:
            repeated = repeat_per_segment(labels, length)[mask]
            loss = self.compute_loss(segment_logits[mask], repeated) + self.compute_loss(cnn_logits[mask], repeated)
        multi_label = self.config.problem_type == "multi_label_classification"
        probabilities = mean_segment_probabilities([segment_logits, cnn_logits], mask, multi_label)
        return PemtClassifierOutput(
            loss=loss,
            logits=probabilities_to_logits(probabilities, multi_label),
            hidden_states=output.hidden_states,
            attentions=output.attentions,
            segment_logits=segment_logits,
            cnn_segment_logits=cnn_logits,
        )

    def _cnn_forward(
        self,
        pixel_values: torch.Tensor | None,
        audio_values: torch.Tensor | None,
        masks: dict[str, torch.Tensor | None],
        labels: torch.Tensor | None,
        precomputed: dict[str, torch.Tensor | None] | None = None,
    ) -> PemtClassifierOutput:
        """The CNN alone (the authors' single-modality settings): mean CNN embedding over real segments -> linear.
        `precomputed`: CNN embeddings per modality already computed (`None` where the CNN is to run)."""
        pooled = []
        for name in self.modalities:
            if precomputed is not None and precomputed[name] is not None:
                embeddings = precomputed[name]
            elif name == "visual":
                embeddings = self.pemt.embed_visual(pixel_values, masks["visual"])
            else:
                embeddings = self.pemt.embed_audio(audio_values, masks["audio"])
            pooled.append(masked_mean(embeddings, masks[name]))
        features = torch.cat(pooled, dim=-1)
        logits = self.cnn_classifier(self.dropout(features))
        loss = self.compute_loss(logits, labels) if labels is not None else None
        return PemtClassifierOutput(loss=loss, logits=logits)

    def freeze_backbone(self) -> None:
        """Linear evaluation: only the heads train. The backbone also stays in eval mode, so that BatchNorm keeps the
        statistics it was pretrained with."""
        self.pemt.requires_grad_(False)
        self._backbone_frozen = True
        self.train(self.training)

    def train(self, mode: bool = True) -> PemtForAudioVisualClassification:
        super().train(mode)
        self._freeze_unused_parts()
        if getattr(self, "_backbone_frozen", False):
            self.pemt.eval()
        return self

    def select_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The entries of a processor batch that this classifier's modality reads (others are dropped)."""
        prefixes = {"visual": ("pixel", "visual"), "audio": ("audio",)}
        keep = {prefix for name in self.modalities for prefix in prefixes[name]}
        return {key: value for key, value in batch.items() if key.split("_")[0] in keep}

    def probabilities(self, logits: torch.Tensor, num_views: int = 1) -> torch.Tensor:
        """`[clips * num_views, num_labels]` logits (views clip-major, as the processor orders them) -> `[clips,
        num_labels]` class probabilities averaged over views: softmax, or sigmoid for multi-label models."""
        multi_label = self.config.problem_type == "multi_label_classification"
        probabilities = logits.float().sigmoid() if multi_label else logits.float().softmax(dim=-1)
        return probabilities.view(-1, num_views, probabilities.shape[-1]).mean(dim=1)

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters of the classification heads (everything outside the backbone), for their own learning rate."""
        backbone = {id(p) for p in self.pemt.parameters()}
        return [p for p in self.parameters() if id(p) not in backbone]

    def _sequences(self, output: PemtModelOutput) -> dict[str, torch.Tensor]:
        """`[summary, segments...]` per modality: split from the multimodal output when both modalities are used."""
        if len(self.modalities) == 1:
            name = self.modalities[0]
            return {name: output[f"{name}_last_hidden_state"]}
        visual_length = output.visual_last_hidden_state.shape[1]
        hidden = output.multimodal_last_hidden_state
        return {"visual": hidden[:, :visual_length], "audio": hidden[:, visual_length:]}

    # --- Embeddings API: the classification head's own projection (see PemtEmbeddingsMixin) ---------------------

    def _projects(self, modalities: tuple[str, ...]) -> bool:
        # Only the clip head maps a clip to one vector; the segment head classifies segments, the CNN head no sequence.
        return self.config.classifier_head == "clip" and set(modalities) == set(self.modalities)

    def _project_features(self, sequences: dict[str, torch.Tensor], masks: dict[str, torch.Tensor | None]) -> torch.Tensor:
        """The `[batch, hidden_size]` vector the classifier reads (before dropout), for this model's modalities."""
        if not self._projects(tuple(sequences)):
            return super()._project_features(sequences, masks)
        pooled = sum(self.segment_poolers[name](summary_and_mean(sequences[name], masks[name])) for name in self.modalities)
        return self.norm(pooled)

    def compute_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy for class indices, binary cross-entropy for multi-hot targets (see `config.problem_type`)."""
        if self.config.problem_type is None:
            multi_hot = labels.dim() == 2 and labels.shape[-1] == self.config.num_labels and labels.is_floating_point()
            self.config.problem_type = "multi_label_classification" if multi_hot else "single_label_classification"
        if self.config.problem_type == "multi_label_classification":
            return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        if self.config.problem_type == "single_label_classification":
            if self.config.classifier_loss == "multi_margin":
                return multi_margin_loss(logits, labels, self.config.classifier_margin)
            return F.cross_entropy(logits, labels.view(-1).long())
        if self.config.problem_type == "regression":
            return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).squeeze(-1))
        raise ValueError(
            f"problem_type {self.config.problem_type!r} is not supported; use single_label_classification, "
            "multi_label_classification or regression."
        )


# ---------------------------------------------------------------------------------------------------------------
# Pretraining: masked embedding prediction (MEP), correct pair prediction (CPP), content-aware negative sampling
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class PemtForPreTrainingOutput(ModelOutput):
    r"""
    Output of [`PemtForPreTraining`].

    Args:
        loss (`torch.FloatTensor` of shape `()`):
            The objectives' losses weighted by `config.{visual,audio,multimodal}_mep_weight` and `config.cpp_weight`.
        visual_mep_loss, audio_mep_loss, multimodal_mep_loss (`torch.FloatTensor` of shape `()`):
            InfoNCE losses of the visual, audio and multimodal Transformers' predictions at masked segments (the
            multimodal one is the sum of its visual and audio parts); 0 where switched off.
        cpp_loss (`torch.FloatTensor` of shape `()`):
            Binary cross-entropy of correct pair prediction.
        mep_accuracy (`torch.FloatTensor` of shape `()`):
            Fraction of masked segments, over all predictions switched on, whose true embedding scored strictly above
            every negative (NaN when nothing was masked).
        cpp_accuracy (`torch.FloatTensor` of shape `()`):
            Fraction of eligible clips (see [`swap_audio`]) whose pairing was predicted right (NaN when none).
        cpp_logits (`torch.FloatTensor` of shape `(batch_size,)`):
            Scores that the audio belongs to the video.
        cpp_labels (`torch.FloatTensor` of shape `(batch_size,)`):
            1 where the audio is the clip's own, 0 where it was taken from another clip.
        model_output ([`PemtModelOutput`]):
            The backbone's output on the masked, partly swapped inputs.
    """

    loss: torch.FloatTensor | None = None
    visual_mep_loss: torch.FloatTensor | None = None
    audio_mep_loss: torch.FloatTensor | None = None
    multimodal_mep_loss: torch.FloatTensor | None = None
    cpp_loss: torch.FloatTensor | None = None
    mep_accuracy: torch.FloatTensor | None = None
    cpp_accuracy: torch.FloatTensor | None = None
    cpp_logits: torch.FloatTensor | None = None
    cpp_labels: torch.FloatTensor | None = None
    model_output: PemtModelOutput | None = None



class PemtMepHead(nn.Module):
    """Scores `s(o, x) = FFN(o)^T W x` between a Transformer output `o` and a CNN embedding `x`. Both sides are
    L2-normalised (ours): the CNN embeddings are learnt too, and unbounded scores let the loss grow by scale alone."""

    def __init__(self, config: PemtConfig, cnn_dim: int):
        super().__init__()
        self.transform = nn.Sequential(
            nn.Linear(config.hidden_size, config.hidden_size),
            ACT2FN[config.hidden_act],
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps),
        )
        self.target_projection = nn.Linear(cnn_dim, config.hidden_size, bias=False)

    def forward(self, outputs: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """`outputs` `[N, hidden]`, `candidates` `[N, K, cnn_dim]` -> scores `[N, K]`."""
        queries = F.normalize(self.transform(outputs), dim=-1)
        keys = F.normalize(self.target_projection(candidates), dim=-1)
        return torch.einsum("nh,nkh->nk", queries, keys)


class PemtForPreTraining(PemtEmbeddingsMixin, PemtPreTrainedModel):
    r"""
    PEMT with the paper's self-supervised objectives, trained end to end from raw video and audio.

    - Masked embedding prediction: `config.mask_probability` of each clip's real segments (in expectation, see
      [`mask_segments`]) are hidden in CNN-embedding space (80% a learned mask vector, 10% another segment's
      embedding, 10% unchanged). From the visual, audio and multimodal Transformer outputs at those positions, the
      true CNN embedding must outscore `config.mep_num_negatives` negatives drawn by [`sample_negatives`] (InfoNCE,
      temperature `config.mep_temperature`), never a copy of itself.
    - Correct pair prediction: half of the clips get the audio of another clip with the same real segments; an MLP on
      the multimodal outputs of the two modalities (summary and mean segment output each, and their elementwise
      product) tells real pairs from swapped ones.

    Each objective has a weight in the config (`visual_mep_weight`, `audio_mep_weight`, `multimodal_mep_weight`,
    `cpp_weight`; 0 switches it off).
    """

    def __init__(self, config: PemtConfig):
        super().__init__(config)
        self.pemt = PemtModel(config)
        # A switched-off objective has no parameters: data-parallel training needs a gradient for every parameter.
        self.objective_weights = {
            "visual": config.visual_mep_weight, "audio": config.audio_mep_weight,
            "multimodal_visual": config.multimodal_mep_weight, "multimodal_audio": config.multimodal_mep_weight,
        }
        dims = {"visual": config.visual_embedding_dim, "audio": config.audio_embedding_dim}
        self.masked_modalities = tuple(
            m for m in ("visual", "audio") if self.objective_weights[m] > 0 or self.objective_weights[f"multimodal_{m}"] > 0
        )
        for modality in ("visual", "audio"):
            parameter = nn.Parameter(torch.zeros(dims[modality])) if modality in self.masked_modalities else None
            self.register_parameter(f"{modality}_mask_embedding", parameter)
        self.mep_heads = nn.ModuleDict(
            {
                name: PemtMepHead(config, dims[name.split("_")[-1]])
                for name, weight in self.objective_weights.items()
                if weight > 0
            }
        )
        self.cpp_head = None
        if config.cpp_weight > 0:
            self.cpp_head = nn.Sequential(
                nn.Linear(6 * config.hidden_size, config.hidden_size),
                ACT2FN[config.hidden_act],
                nn.Linear(config.hidden_size, 1),
            )
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, PemtForPreTraining):
            for parameter in (module.visual_mask_embedding, module.audio_mask_embedding):
                if parameter is not None:
                    parameter.normal_(mean=0.0, std=self.config.initializer_range)

    def forward(
        self,
        pixel_values: torch.FloatTensor,
        audio_values: torch.FloatTensor,
        visual_segment_mask: torch.LongTensor | None = None,
        audio_segment_mask: torch.LongTensor | None = None,
        return_dict: bool | None = None,
        negative_sampling: str | None = None,
        generator: torch.Generator | None = None,
        **kwargs,
    ) -> PemtForPreTrainingOutput | tuple:
        r"""
        Args:
            pixel_values, audio_values, visual_segment_mask, audio_segment_mask: as for [`PemtModel`]; both modalities are required,
                and the batch needs at least two clips (swapped pairs and negatives come from other clips).
            negative_sampling (`str`, *optional*):
                Overrides `config.negative_sampling` for this call: evaluations compare models trained with different
                samplers under one sampler.
            generator (`torch.Generator`, *optional*):
                A CPU generator for the swaps, masks and negatives (default: the global RNG); a fixed one makes an
                evaluation draw the same for every model.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        config = self.config
        batch, length = pixel_values.shape[:2]
        if batch < 2:
            raise ValueError("Pretraining needs at least two clips per batch (per device).")
        visual_segment_mask = visual_segment_mask if visual_segment_mask is not None else pixel_values.new_ones(batch, length, dtype=torch.long)
        audio_segment_mask = audio_segment_mask if audio_segment_mask is not None else audio_values.new_ones(batch, length, dtype=torch.long)
        visual = self.pemt.embed_visual(pixel_values, visual_segment_mask)
        audio = self.pemt.embed_audio(audio_values, audio_segment_mask)

        # Correct pair prediction: swapped clips get the audio of another clip with the same real segments.
        audio_source = torch.arange(batch, device=audio.device)
        swapped = eligible = torch.zeros(batch, dtype=torch.bool, device=audio.device)
        if config.cpp_weight > 0:
            audio, swapped, audio_source, eligible = swap_audio(audio, audio_segment_mask, generator)

        # A modality is masked only where some objective predicts it: masking without a prediction only corrupts.
        weights = self.objective_weights
        visual_masked, visual_positions = visual, torch.zeros_like(visual_segment_mask, dtype=torch.bool)
        if "visual" in self.masked_modalities:
            visual_masked, visual_positions = mask_segments(
                visual, visual_segment_mask, self.visual_mask_embedding, config.mask_probability, generator
            )
        audio_masked, audio_positions = audio, torch.zeros_like(audio_segment_mask, dtype=torch.bool)
        if "audio" in self.masked_modalities:
            audio_masked, audio_positions = mask_segments(
                audio, audio_segment_mask, self.audio_mask_embedding, config.mask_probability, generator
            )
        output = self.pemt(
            visual_cnn_embeddings=visual_masked, audio_cnn_embeddings=audio_masked, visual_segment_mask=visual_segment_mask, audio_segment_mask=audio_segment_mask,
            return_dict=True,
        )

        multimodal = output.multimodal_last_hidden_state
        visual_tokens = slice(1, 1 + length)
        audio_tokens = slice(2 + length, 2 + 2 * length)
        visual_ids, audio_ids = segment_ids(visual_segment_mask), segment_ids(audio_segment_mask, audio_source)
        predictions = {
            "visual": (output.visual_last_hidden_state[:, visual_tokens], visual, visual_segment_mask, visual_positions, visual_ids),
            "audio": (output.audio_last_hidden_state[:, visual_tokens], audio, audio_segment_mask, audio_positions, audio_ids),
            "multimodal_visual": (multimodal[:, visual_tokens], visual, visual_segment_mask, visual_positions, visual_ids),
            "multimodal_audio": (multimodal[:, audio_tokens], audio, audio_segment_mask, audio_positions, audio_ids),
        }
        zero = visual.sum() * 0.0
        losses, hits = {}, []
        for name, (hidden, targets, real, positions, ids) in predictions.items():
            if weights[name] == 0:
                losses[name] = zero
                continue
            losses[name], name_hits = mep_loss(
                self.mep_heads[name], hidden, targets, real, positions, ids, config.mep_num_negatives,
                negative_sampling or config.negative_sampling, config.negative_sampling_temperature,
                config.mep_temperature, generator,
            )
            hits.append(name_hits)
        # Full weight: the multimodal Transformer predicts masked segments of both modalities, each a loss of its own.
        multimodal_mep_loss = losses["multimodal_visual"] + losses["multimodal_audio"]

        cpp_logits, cpp, cpp_hits = None, zero, None
        if self.cpp_head is not None:
            cpp_logits = self.cpp_logits(multimodal, visual_segment_mask, audio_segment_mask)
            cpp, cpp_hits = cpp_loss(cpp_logits, swapped, eligible)
        total = (
            config.visual_mep_weight * losses["visual"]
            + config.audio_mep_weight * losses["audio"]
            + config.multimodal_mep_weight * multimodal_mep_loss
            + config.cpp_weight * cpp
        )
        hits = torch.cat(hits) if hits else None
        nan = torch.tensor(float("nan"), device=visual.device)
        result = PemtForPreTrainingOutput(
            loss=total,
            visual_mep_loss=losses["visual"],
            audio_mep_loss=losses["audio"],
            multimodal_mep_loss=multimodal_mep_loss,
            cpp_loss=cpp,
            # NaN where nothing was scored (no masked segment, no eligible clip, or the objective is off).
            mep_accuracy=hits.float().mean() if hits is not None and hits.numel() else nan,
            cpp_accuracy=cpp_hits.float().mean() if cpp_hits is not None and cpp_hits.numel() else nan,
            cpp_logits=cpp_logits,
            cpp_labels=(~swapped).to(visual.dtype),
            model_output=output,
        )
        return result if return_dict else result.to_tuple()


    def cpp_logits(
        self, multimodal_last_hidden_state: torch.Tensor, visual_segment_mask: torch.Tensor, audio_segment_mask: torch.Tensor
    ) -> torch.Tensor:
        """Correct pair prediction's head on a multimodal output `[batch, 2 + 2T, hidden]` -> logits `[batch]`."""
        if self.cpp_head is None:
            raise ValueError("This model was pretrained without correct pair prediction (cpp_weight=0): it has no CPP head.")
        length = visual_segment_mask.shape[1]
        # Each modality's part of the multimodal output is pooled as the downstream head pools it. The product gives
        # the MLP the agreement of the two directly; from a concatenation alone it would have to learn that
        # multiplicative interaction, which it does slowly.
        visual_pooled = summary_and_mean(multimodal_last_hidden_state[:, : 1 + length], visual_segment_mask)
        audio_pooled = summary_and_mean(multimodal_last_hidden_state[:, 1 + length :], audio_segment_mask)
        cpp_features = torch.cat([visual_pooled, audio_pooled, visual_pooled * audio_pooled], dim=-1)
        return self.cpp_head(cpp_features).squeeze(-1)

    # --- Audio-visual correspondence (the pipeline, `pemt correspondence`, cross-modal retrieval) ------------------

    def correspondence_logits(
        self,
        pixel_values: torch.FloatTensor | None = None,
        audio_values: torch.FloatTensor | None = None,
        visual_segment_mask: torch.LongTensor | None = None,
        audio_segment_mask: torch.LongTensor | None = None,
        visual_cnn_embeddings: torch.FloatTensor | None = None,
        audio_cnn_embeddings: torch.FloatTensor | None = None,
        per_segment: bool = False,
    ) -> torch.Tensor:
        r"""
        Scores that the sound belongs with the picture, from correct pair prediction's head: `sigmoid` of a logit
        is the probability that the audio is the video's own. Nothing is masked or swapped (unlike `forward`).

        Args:
            pixel_values, audio_values, visual_segment_mask, audio_segment_mask: as for [`PemtModel`]; the audio may come from
                another file than the video.
            visual_cnn_embeddings, audio_cnn_embeddings (`torch.FloatTensor` of shape `(batch_size, num_segments, dim)`, *optional*):
                CNN embeddings instead of raw inputs (computed once, they can be paired with many candidates).
            per_segment (`bool`, *optional*, defaults to `False`): score each segment on its own: segment `t`'s
                picture and sound as a clip of one real segment (as a clip shorter than one segment is presented
                in training), which localises where a soundtrack stops matching.

        Returns:
            `torch.FloatTensor`: logits of shape `(batch_size,)`, or `(batch_size, num_segments)` with
            `per_segment=True` (NaN where either modality's segment is padding).
        """
        if visual_cnn_embeddings is None:
            if pixel_values is None:
                raise ValueError("correspondence_logits needs pixel_values or visual_cnn_embeddings.")
            visual_cnn_embeddings = self.pemt.embed_visual(pixel_values, visual_segment_mask)
        if audio_cnn_embeddings is None:
            if audio_values is None:
                raise ValueError("correspondence_logits needs audio_values or audio_cnn_embeddings.")
            audio_cnn_embeddings = self.pemt.embed_audio(audio_values, audio_segment_mask)
        batch, length = visual_cnn_embeddings.shape[:2]
        ones = visual_cnn_embeddings.new_ones(batch, length, dtype=torch.long)
        visual_segment_mask = ones if visual_segment_mask is None else visual_segment_mask
        audio_segment_mask = ones if audio_segment_mask is None else audio_segment_mask
        if per_segment:
            # Row (b, t) holds segment t of clip b at the first position and padding after it.
            first = torch.zeros(length, dtype=torch.long, device=ones.device)
            first[0] = 1
            one_real = first.expand(batch * length, length)

            def single(embeddings: torch.Tensor) -> torch.Tensor:
                rows = embeddings.new_zeros(batch * length, length, embeddings.shape[-1])
                rows[:, 0] = embeddings.reshape(batch * length, -1)
                return rows

            logits = self.correspondence_logits(
                visual_cnn_embeddings=single(visual_cnn_embeddings), audio_cnn_embeddings=single(audio_cnn_embeddings),
                visual_segment_mask=one_real, audio_segment_mask=one_real,
            ).view(batch, length)
            real = visual_segment_mask.bool() & audio_segment_mask.bool()
            return logits.masked_fill(~real, float("nan"))
        output = self.pemt(
            visual_cnn_embeddings=visual_cnn_embeddings, audio_cnn_embeddings=audio_cnn_embeddings, visual_segment_mask=visual_segment_mask,
            audio_segment_mask=audio_segment_mask, return_dict=True,
        )
        return self.cpp_logits(output.multimodal_last_hidden_state, visual_segment_mask, audio_segment_mask)


__all__ = [
    "PemtModel",
    "PemtPreTrainedModel",
    "PemtForAudioVisualClassification",
    "PemtForPreTraining",
    "PemtModelOutput",
    "PemtClassifierOutput",
    "PemtForPreTrainingOutput",
    "PemtEmbeddingsMixin",
    "PemtFeaturesOutput",
    "sample_negatives",
]
