"""PyTorch PEMT: per-segment CNNs feeding visual, audio and multimodal Transformers that share parameters.

Read top to bottom: outputs, the parameter-sharing building blocks (the paper's contribution), the Transformer
layer and stack, embeddings, the base model, and the heads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import orthogonal
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput, logging

from .cnn_pemt import PemtAudioCNN, PemtVisualCNN
from .configuration_pemt import PemtConfig

logger = logging.get_logger(__name__)

# Modality indices select the private parts of shared weights (SPEC: 0 visual, 1 audio, 2 multimodal).
VISUAL, AUDIO, MULTIMODAL = 0, 1, 2
MODALITY_NAMES = ("visual", "audio", "multimodal")


# ---------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class PemtModelOutput(ModelOutput):
    r"""
    Output of [`PemtModel`]. Sequences are `[summary, segment_1, ..., segment_T]` per modality; the multimodal
    sequence is the visual one followed by the audio one. A field is `None` when its modality was not given.

    Args:
        visual_embeddings (`torch.FloatTensor` of shape `(batch_size, num_segments, visual_embedding_dim)`):
            Pooled visual CNN output per segment (zeros at masked segments).
        audio_embeddings (`torch.FloatTensor` of shape `(batch_size, num_segments, audio_embedding_dim)`):
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
        visual_hidden_states, audio_hidden_states, multimodal_hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            Input of the first layer and output of every layer of each Transformer, when `output_hidden_states=True`.
        visual_attentions, audio_attentions, multimodal_attentions (`tuple(torch.FloatTensor)`, *optional*):
            Attention probabilities `(batch_size, num_heads, seq_len, seq_len)` of every layer, when
            `output_attentions=True`.
    """

    visual_embeddings: torch.FloatTensor | None = None
    audio_embeddings: torch.FloatTensor | None = None
    visual_last_hidden_state: torch.FloatTensor | None = None
    audio_last_hidden_state: torch.FloatTensor | None = None
    multimodal_last_hidden_state: torch.FloatTensor | None = None
    visual_summary: torch.FloatTensor | None = None
    audio_summary: torch.FloatTensor | None = None
    multimodal_summary: torch.FloatTensor | None = None
    visual_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    audio_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    multimodal_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    visual_attentions: tuple[torch.FloatTensor, ...] | None = None
    audio_attentions: tuple[torch.FloatTensor, ...] | None = None
    multimodal_attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class PemtClassifierOutput(ModelOutput):
    r"""
    Output of [`PemtForAudioVisualClassification`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*):
            Cross-entropy (single-label) or binary cross-entropy (multi-label), when `labels` are given.
        logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
            Sum of the Transformer head's and the CNN head's scores.
        model_output ([`PemtModelOutput`]):
            The backbone's output.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    model_output: PemtModelOutput | None = None


# ---------------------------------------------------------------------------------------------------------------
# Parameter sharing: the paper's contribution lives in the next three classes.
#   PemtSharedLinear - one weight matrix, full, or factored into modality-private V_g, Sigma_g and a shared U.
#   PemtLayerStack   - `num_hidden_layers` applications of either one layer (layer sharing) or distinct layers.
#   PemtEncoder      - one stack for all three modalities (cross-modal sharing), or a stack per modality.
# ---------------------------------------------------------------------------------------------------------------


class PemtSharedLinear(nn.Module):
    r"""
    A linear map `in_features -> out_features` used by `num_modalities` modalities.

    With `low_rank_dim == 0` the whole matrix is shared. Otherwise the map is `x -> U(Sigma_g(normalize(V_g x)))`:
    `V_g` (no bias) and the orthogonal `Sigma_g` are private to modality `g`, `U` (with bias) is shared. The L2
    normalisation keeps the private factors on a common scale so one `U` can serve them all, and orthogonality
    keeps `Sigma_g` a pure rotation of that normalised code.
    """

    def __init__(self, in_features: int, out_features: int, num_modalities: int, low_rank_dim: int):
        super().__init__()
        self.low_rank_dim = low_rank_dim
        if low_rank_dim == 0:
            self.dense = nn.Linear(in_features, out_features)
            return
        self.private_down = nn.ModuleList(nn.Linear(in_features, low_rank_dim, bias=False) for _ in range(num_modalities))
        self.private_rotation = nn.ModuleList(_orthogonal_linear(low_rank_dim) for _ in range(num_modalities))
        self.shared_up = nn.Linear(low_rank_dim, out_features)
        # A full matrix of std `initializer_range` maps a unit-variance input of width `in_features` to outputs of
        # std `initializer_range * sqrt(in_features)`. U is fed a unit-norm code instead, so at the same std it would
        # start sqrt(in_features) times smaller (8x at width 64, 28x at 768): every sublayer would add about 2% to the
        # post-LN residual and the outputs would hardly depend on the input. `_init_weights` scales U's std by this
        # factor so that the factored map starts at the scale of the matrix it replaces.
        self.shared_up.init_std_scale = in_features**0.5

    def forward(self, hidden_states: torch.Tensor, modality: int) -> torch.Tensor:
        if self.low_rank_dim == 0:
            return self.dense(hidden_states)
        code = F.normalize(self.private_down[modality](hidden_states), dim=-1)
        # Under autocast, torch's orthogonal parametrisation forms Sigma_g = base @ matrix_exp(A) with the product in
        # bfloat16, which doubles Sigma's departure from orthogonality over rounding a float32 Sigma (and matrix_exp
        # itself is NaN in bfloat16 on CPU). A 128 x 128 matrix costs nothing in float32; its use below is autocast.
        with torch.autocast(hidden_states.device.type, enabled=False):
            sigma = self.private_rotation[modality].weight
        return self.shared_up(F.linear(code, sigma))


def _orthogonal_linear(dim: int) -> nn.Linear:
    """A bias-free `dim x dim` linear map kept orthogonal by torch's parametrisation."""
    # Registering the parametrisation tests the initial matrix for orthogonality, a data-dependent check that meta
    # tensors (which `from_pretrained` builds models with) cannot run; so small a matrix is built for real instead.
    device = torch.get_default_device()
    with torch.device("cpu" if device.type == "meta" else device):
        return orthogonal(nn.Linear(dim, dim, bias=False))


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
    probs = F.dropout(scores.softmax(dim=-1), p=dropout, training=module.training)
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
        attention_interface: Callable = eager_attention_forward
        implementation = self.config._attn_implementation
        if output_attentions and implementation != "eager":
            logger.warning_once("output_attentions=True needs the eager attention; falling back to it for this call.")
        elif implementation not in (None, "eager"):
            attention_interface = ALL_ATTENTION_FUNCTIONS[implementation]
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
    """A post-LayerNorm BERT layer. Its LayerNorms are private to each modality even when the weights are shared."""

    def __init__(self, config: PemtConfig, num_modalities: int):
        super().__init__()
        h, r = config.hidden_size, config.low_rank_dim
        self.attention = PemtAttention(config, num_modalities)
        self.attention_norm = nn.ModuleList(nn.LayerNorm(h, eps=config.layer_norm_eps) for _ in range(num_modalities))
        self.intermediate = PemtSharedLinear(h, config.intermediate_size, num_modalities, r)
        self.activation = ACT2FN[config.hidden_act]
        self.output = PemtSharedLinear(config.intermediate_size, h, num_modalities, r)
        self.output_norm = nn.ModuleList(nn.LayerNorm(h, eps=config.layer_norm_eps) for _ in range(num_modalities))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor, modality: int, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, probs = self.attention(hidden_states, attention_mask, modality, output_attentions)
        hidden_states = self.attention_norm[modality](hidden_states + self.dropout(attended))
        feed_forward = self.output(self.activation(self.intermediate(hidden_states, modality)), modality)
        hidden_states = self.output_norm[modality](hidden_states + self.dropout(feed_forward))
        return hidden_states, probs


class PemtLayerStack(nn.Module):
    """`num_hidden_layers` layer applications: with `share_layers` one [`PemtLayer`] is applied every time."""

    def __init__(self, config: PemtConfig, num_modalities: int):
        super().__init__()
        self.depth = config.num_hidden_layers
        distinct = 1 if config.share_layers else config.num_hidden_layers
        self.layers = nn.ModuleList(PemtLayer(config, num_modalities) for _ in range(distinct))

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        modality: int,
        output_attentions: bool,
        output_hidden_states: bool,
    ) -> tuple[torch.Tensor, tuple | None, tuple | None]:
        all_hidden = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for depth in range(self.depth):
            layer = self.layers[depth % len(self.layers)]
            hidden_states, probs = layer(hidden_states, attention_mask, modality, output_attentions)
            if output_hidden_states:
                all_hidden += (hidden_states,)
            if output_attentions:
                all_attentions += (probs,)
        return hidden_states, all_hidden, all_attentions


class PemtEncoder(nn.Module):
    """
    The visual, audio and multimodal Transformers. With `share_modalities` one [`PemtLayerStack`] serves all three
    and a modality index picks its private parts; otherwise each modality has a stack of its own. Holds Transformer
    layers only, so its parameter count is the "Transformers" figure of the paper.
    """

    def __init__(self, config: PemtConfig):
        super().__init__()
        self.share_modalities = config.share_modalities
        if config.share_modalities:
            self.shared = PemtLayerStack(config, num_modalities=3)
        else:
            self.per_modality = nn.ModuleList(PemtLayerStack(config, num_modalities=1) for _ in MODALITY_NAMES)

    def stack_for(self, modality: int) -> tuple[PemtLayerStack, int]:
        """The stack that runs `modality`, and the index of that modality's private parts inside it."""
        if self.share_modalities:
            return self.shared, modality
        return self.per_modality[modality], 0

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        modality: int,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, tuple | None, tuple | None]:
        stack, index = self.stack_for(modality)
        return stack(hidden_states, attention_mask, index, output_attentions, output_hidden_states)


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
# CNNs over segments
# ---------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _frozen_batchnorm_statistics(module: nn.Module):
    """Restores BatchNorm running statistics on exit, so that a checkpoint's recomputed forward leaves them as the
    first forward set them instead of counting the same batch twice."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, (mean, var, count) in zip(norms, saved):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)


def run_cnn_over_segments(
    cnn: nn.Module, segments: torch.Tensor, mask: torch.Tensor, out_dim: int, chunk_size: int, use_checkpointing: bool
) -> torch.Tensor:
    """
    Applies `cnn` to the real segments of `segments` (`[batch, T, ...]`, `mask` `[batch, T]`) and returns
    `[batch, T, out_dim]` with zeros at padding. Padding is skipped rather than computed, so it neither costs time
    nor enters BatchNorm's batch statistics. With `chunk_size > 0` the segments go through in chunks, each
    optionally checkpointed: peak memory then holds one chunk's activations instead of the whole batch's.
    """
    batch, length = mask.shape
    flat_mask = mask.reshape(-1).bool()
    real = segments.reshape(batch * length, *segments.shape[2:])[flat_mask]
    pieces = real.split(chunk_size) if chunk_size > 0 else (real,)
    recompute = use_checkpointing and torch.is_grad_enabled() and cnn.training
    outputs = []
    for piece in pieces:
        if recompute:
            outputs.append(
                checkpoint(
                    cnn,
                    piece,
                    use_reentrant=False,
                    context_fn=lambda: (contextlib.nullcontext(), _frozen_batchnorm_statistics(cnn)),
                )
            )
        else:
            outputs.append(cnn(piece))
    embedded = torch.cat(outputs) if outputs else real.new_zeros(0, out_dim)
    result = embedded.new_zeros(batch * length, out_dim)
    result[flat_mask] = embedded
    return result.view(batch, length, out_dim)


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

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if parametrize.is_parametrized(module, "weight"):
                # Assigning goes through the parametrisation's inverse, so Sigma starts as a random rotation.
                module.weight = nn.init.orthogonal_(torch.empty_like(module.weight))
            else:
                module.weight.normal_(mean=0.0, std=std * getattr(module, "init_std_scale", 1.0))
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
        elif isinstance(module, (nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
            module.running_mean.zero_()
            module.running_var.fill_(1.0)
            module.num_batches_tracked.zero_()
        elif isinstance(module, PemtModalityEmbeddings):
            module.summary_token.normal_(mean=0.0, std=std)


def _key_mask(segment_mask: torch.Tensor) -> torch.Tensor:
    """`[batch, T]` segment mask -> boolean `[batch, 1, 1, 1 + T]` key mask with the summary token always visible."""
    summary = segment_mask.new_ones(segment_mask.shape[0], 1)
    return torch.cat([summary, segment_mask], dim=1).bool()[:, None, None, :]


class PemtModel(PemtPreTrainedModel):
    r"""
    The PEMT backbone: visual and audio CNNs per segment, then the visual, audio and multimodal Transformers.

    Either modality may be left out (`pixel_values=None` or `audio_values=None`); the multimodal Transformer runs
    only when both are given. Precomputed CNN embeddings (`visual_embeddings`, `audio_embeddings`) may replace the
    raw inputs, which is how pretraining substitutes masked segments.
    """

    def __init__(self, config: PemtConfig):
        super().__init__(config)
        self.visual_cnn = PemtVisualCNN(config)
        self.audio_cnn = PemtAudioCNN(config)
        self.visual_embeddings = PemtModalityEmbeddings(config, config.visual_embedding_dim)
        self.audio_embeddings = PemtModalityEmbeddings(config, config.audio_embedding_dim)
        self.multimodal_embeddings = PemtMultimodalEmbeddings(config)
        self.encoder = PemtEncoder(config)
        self.post_init()

    def embed_visual(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`[batch, T, 3, frames, H, W]` -> visual CNN embeddings `[batch, T, visual_embedding_dim]`."""
        mask = pixel_mask if pixel_mask is not None else pixel_values.new_ones(pixel_values.shape[:2], dtype=torch.long)
        return run_cnn_over_segments(
            self.visual_cnn, pixel_values, mask, self.config.visual_embedding_dim, self.config.cnn_chunk_size,
            self.config.cnn_checkpointing,
        )

    def embed_audio(self, audio_values: torch.Tensor, audio_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`[batch, T, 1, mels, frames]` -> audio CNN embeddings `[batch, T, audio_embedding_dim]`."""
        mask = audio_mask if audio_mask is not None else audio_values.new_ones(audio_values.shape[:2], dtype=torch.long)
        return run_cnn_over_segments(
            self.audio_cnn, audio_values, mask, self.config.audio_embedding_dim, self.config.cnn_chunk_size,
            self.config.cnn_checkpointing,
        )

    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        audio_values: torch.FloatTensor | None = None,
        pixel_mask: torch.LongTensor | None = None,
        audio_mask: torch.LongTensor | None = None,
        visual_embeddings: torch.FloatTensor | None = None,
        audio_embeddings: torch.FloatTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> PemtModelOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_segments, 3, frames, height, width)`, *optional*):
                Normalised video segments, as [`PemtProcessor`] returns them.
            audio_values (`torch.FloatTensor` of shape `(batch_size, num_segments, 1, num_mel_bins, audio_frames)`, *optional*):
                Log-mel spectrogram segments.
            pixel_mask, audio_mask (`torch.LongTensor` of shape `(batch_size, num_segments)`, *optional*):
                1 for real segments, 0 for padding. Default: all real.
            visual_embeddings (`torch.FloatTensor` of shape `(batch_size, num_segments, visual_embedding_dim)`, *optional*):
                CNN embeddings to use instead of running the visual CNN on `pixel_values`.
            audio_embeddings (`torch.FloatTensor` of shape `(batch_size, num_segments, audio_embedding_dim)`, *optional*):
                CNN embeddings to use instead of running the audio CNN on `audio_values`.
        """
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if visual_embeddings is None and pixel_values is not None:
            visual_embeddings = self.embed_visual(pixel_values, pixel_mask)
        if audio_embeddings is None and audio_values is not None:
            audio_embeddings = self.embed_audio(audio_values, audio_mask)
        if visual_embeddings is None and audio_embeddings is None:
            raise ValueError("PemtModel needs pixel_values, audio_values, or both (or their CNN embeddings).")

        fields = {"visual_embeddings": visual_embeddings, "audio_embeddings": audio_embeddings}
        # Sigma_g is used by every layer application; caching computes each orthogonal matrix once per forward. Not
        # under layer checkpointing: the recomputed layer would rebuild Sigma that the first pass took from the cache,
        # and checkpointing requires both passes to do the same work.
        recomputing_layers = self.is_activation_checkpointing and self.training
        with contextlib.nullcontext() if recomputing_layers else parametrize.cached():
            key_masks = {}
            for modality, cnn_embeddings, mask, embeddings in (
                (VISUAL, visual_embeddings, pixel_mask, self.visual_embeddings),
                (AUDIO, audio_embeddings, audio_mask, self.audio_embeddings),
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
        output = PemtModelOutput(**fields)
        return output if return_dict else output.to_tuple()

    def _run_transformer(
        self, tokens: torch.Tensor, key_mask: torch.Tensor, modality: int, output_attentions: bool, output_hidden_states: bool
    ) -> dict[str, torch.Tensor | tuple]:
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


class PemtForAudioVisualClassification(PemtPreTrainedModel):
    r"""
    PEMT with the downstream classification heads of the paper's released code: for each modality used, the summary
    output and the mean segment output are concatenated and projected to `hidden_size`; the projections are summed,
    normalised and classified. A second head classifies the mean CNN embeddings, and the two scores are added.

    `config.classifier_modality` selects the inputs: `"audio-visual"` reads the multimodal Transformer, `"visual"`
    and `"audio"` read their own Transformer and CNN only. `config.problem_type` is `"single_label_classification"`
    (cross-entropy) or `"multi_label_classification"` (binary cross-entropy); when unset it follows the labels.
    """

    def __init__(self, config: PemtConfig):
        super().__init__(config)
        self.pemt = PemtModel(config)
        self.modalities = {"audio-visual": ("visual", "audio"), "visual": ("visual",), "audio": ("audio",)}[
            config.classifier_modality
        ]
        h = config.hidden_size
        self.segment_poolers = nn.ModuleDict({name: nn.Linear(2 * h, h) for name in self.modalities})
        self.norm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(h, config.num_labels)
        cnn_dim = sum(getattr(config, f"{name}_embedding_dim") for name in self.modalities)
        self.cnn_classifier = nn.Linear(cnn_dim, config.num_labels)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        audio_values: torch.FloatTensor | None = None,
        pixel_mask: torch.LongTensor | None = None,
        audio_mask: torch.LongTensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> PemtClassifierOutput | tuple:
        r"""
        Args:
            labels (`torch.LongTensor` of shape `(batch_size,)` or `torch.FloatTensor` of shape `(batch_size, num_labels)`, *optional*):
                Class indices (single-label) or multi-hot targets (multi-label).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        inputs = {
            "visual": {"pixel_values": pixel_values, "pixel_mask": pixel_mask},
            "audio": {"audio_values": audio_values, "audio_mask": audio_mask},
        }
        backbone_inputs = {}
        for name in self.modalities:
            if next(iter(inputs[name].values())) is None:
                raise ValueError(
                    f"classifier_modality is {self.config.classifier_modality!r}, so {name} inputs are required."
                )
            backbone_inputs.update(inputs[name])
        output = self.pemt(
            **backbone_inputs, output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True
        )
        masks = {"visual": pixel_mask, "audio": audio_mask}
        pooled = 0
        for name, sequence in self._sequences(output).items():
            pooled = pooled + self.segment_poolers[name](summary_and_mean(sequence, masks[name]))
        logits = self.classifier(self.dropout(self.norm(pooled)))
        cnn_features = torch.cat(
            [masked_mean(output[f"{name}_embeddings"], masks[name]) for name in self.modalities], dim=-1
        )
        logits = logits + self.cnn_classifier(self.dropout(cnn_features))
        loss = self.compute_loss(logits, labels) if labels is not None else None
        result = PemtClassifierOutput(loss=loss, logits=logits, model_output=output)
        return result if return_dict else result.to_tuple()

    def freeze_backbone(self) -> None:
        """Linear evaluation: only the heads train. The backbone also stays in eval mode, so that BatchNorm keeps the
        statistics it was pretrained with."""
        self.pemt.requires_grad_(False)
        self._backbone_frozen = True
        self.train(self.training)

    def train(self, mode: bool = True) -> PemtForAudioVisualClassification:
        super().train(mode)
        if getattr(self, "_backbone_frozen", False):
            self.pemt.eval()
        return self

    def select_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The entries of a processor batch that this classifier's modality reads (others are dropped)."""
        prefixes = {"visual": ("pixel",), "audio": ("audio",)}
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

    def compute_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy for class indices, binary cross-entropy for multi-hot targets (see `config.problem_type`)."""
        if self.config.problem_type is None:
            multi_hot = labels.dim() == 2 and labels.shape[-1] == self.config.num_labels and labels.is_floating_point()
            self.config.problem_type = "multi_label_classification" if multi_hot else "single_label_classification"
        if self.config.problem_type == "multi_label_classification":
            return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        if self.config.problem_type == "single_label_classification":
            return F.cross_entropy(logits, labels.view(-1).long())
        raise ValueError(
            f"problem_type {self.config.problem_type!r} is not supported; use single_label_classification or "
            "multi_label_classification."
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
            Sum of the three masked-embedding-prediction losses and the correct-pair-prediction loss.
        visual_mep_loss, audio_mep_loss, multimodal_mep_loss (`torch.FloatTensor` of shape `()`):
            InfoNCE losses of the visual, audio and multimodal Transformers' predictions at masked segments.
        cpp_loss (`torch.FloatTensor` of shape `()`):
            Binary cross-entropy of correct pair prediction.
        mep_accuracy (`torch.FloatTensor` of shape `()`):
            Fraction of masked segments, over all three predictions, whose true embedding scored above every negative.
        cpp_accuracy (`torch.FloatTensor` of shape `()`):
            Fraction of clips whose pairing (real or swapped audio) was predicted right.
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


def sample_negatives(
    anchors: torch.Tensor, pool: torch.Tensor, anchor_positions: torch.Tensor, num_negatives: int, variant: str,
    temperature: float,
) -> torch.Tensor:
    r"""
    Content-aware negative sampling: for each anchor (a masked segment's true CNN embedding), draws `num_negatives`
    indices into `pool` (all real segments of the batch, same modality), never the anchor itself.

    The draw follows `softmax(s * cos(anchor, candidate) / temperature)` with `s = +1` for `"similar"` (hard negatives
    first, the paper's choice), `s = -1` for `"dissimilar"`, and equal weights for `"uniform"`. Embeddings are
    compared without gradient: sampling chooses the contrast, the loss trains the CNNs. Without enough candidates the
    draw repeats indices.

    Returns:
        `torch.LongTensor` of shape `(num_anchors, num_negatives)`.
    """
    if pool.shape[0] < 2:
        raise ValueError("Negative sampling needs at least two real segments of a modality in the batch.")
    with torch.no_grad():
        if variant == "uniform":
            logits = anchors.new_zeros(anchors.shape[0], pool.shape[0], dtype=torch.float32)
        else:
            sign = 1.0 if variant == "similar" else -1.0
            # Pooled post-ReLU features share a large positive common component that makes every cosine near 1;
            # centring on the pool's mean leaves the part that tells segments apart.
            centre = pool.float().mean(dim=0)
            cosine = F.normalize(anchors.float() - centre, dim=-1) @ F.normalize(pool.float() - centre, dim=-1).T
            logits = sign * cosine / temperature
        logits[torch.arange(anchors.shape[0], device=anchors.device), anchor_positions] = float("-inf")
        probabilities = logits.softmax(dim=-1)
        return torch.multinomial(probabilities, num_negatives, replacement=pool.shape[0] - 1 < num_negatives)


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


class PemtForPreTraining(PemtPreTrainedModel):
    r"""
    PEMT with the paper's self-supervised objectives, trained end to end from raw video and audio.

    - Masked embedding prediction: `config.mask_probability` of each clip's real segments (at least one) are hidden
      in CNN-embedding space (80% a learned mask vector, 10% another segment's embedding, 10% unchanged). From the
      visual, audio and multimodal Transformer outputs at those positions, the true CNN embedding must outscore
      `config.mep_num_negatives` negatives drawn by [`sample_negatives`] (InfoNCE, temperature
      `config.mep_temperature`).
    - Correct pair prediction: half of the clips get another clip's audio; an MLP on the multimodal outputs of the
      two modalities (summary and mean segment output each, and their elementwise product) tells real pairs from
      swapped ones.
    """

    def __init__(self, config: PemtConfig):
        super().__init__(config)
        self.pemt = PemtModel(config)
        self.visual_mask_embedding = nn.Parameter(torch.zeros(config.visual_embedding_dim))
        self.audio_mask_embedding = nn.Parameter(torch.zeros(config.audio_embedding_dim))
        self.mep_heads = nn.ModuleDict(
            {
                "visual": PemtMepHead(config, config.visual_embedding_dim),
                "audio": PemtMepHead(config, config.audio_embedding_dim),
                "multimodal_visual": PemtMepHead(config, config.visual_embedding_dim),
                "multimodal_audio": PemtMepHead(config, config.audio_embedding_dim),
            }
        )
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
            module.visual_mask_embedding.normal_(mean=0.0, std=self.config.initializer_range)
            module.audio_mask_embedding.normal_(mean=0.0, std=self.config.initializer_range)

    def forward(
        self,
        pixel_values: torch.FloatTensor,
        audio_values: torch.FloatTensor,
        pixel_mask: torch.LongTensor | None = None,
        audio_mask: torch.LongTensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> PemtForPreTrainingOutput | tuple:
        r"""
        Args:
            pixel_values, audio_values, pixel_mask, audio_mask: as for [`PemtModel`]; both modalities are required,
                and the batch needs at least two clips (swapped pairs and negatives come from other clips).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        batch, length = pixel_values.shape[:2]
        if batch < 2:
            raise ValueError("Pretraining needs at least two clips per batch (per device).")
        pixel_mask = pixel_mask if pixel_mask is not None else pixel_values.new_ones(batch, length, dtype=torch.long)
        audio_mask = audio_mask if audio_mask is not None else audio_values.new_ones(batch, length, dtype=torch.long)
        visual = self.pemt.embed_visual(pixel_values, pixel_mask)
        audio = self.pemt.embed_audio(audio_values, audio_mask)

        # Correct pair prediction: a random cyclic shift (never 0) gives every swapped clip another clip's audio.
        swapped = torch.rand(batch, device=visual.device) < 0.5
        donor = (torch.arange(batch, device=visual.device) + torch.randint(1, batch, (1,), device=visual.device)) % batch
        audio = torch.where(swapped[:, None, None], audio[donor], audio)
        audio_mask = torch.where(swapped[:, None], audio_mask[donor], audio_mask)

        visual_masked, visual_positions = self._mask_segments(visual, pixel_mask, self.visual_mask_embedding)
        audio_masked, audio_positions = self._mask_segments(audio, audio_mask, self.audio_mask_embedding)
        output = self.pemt(
            visual_embeddings=visual_masked, audio_embeddings=audio_masked, pixel_mask=pixel_mask, audio_mask=audio_mask,
            return_dict=True,
        )

        multimodal = output.multimodal_last_hidden_state
        visual_tokens = slice(1, 1 + length)
        audio_tokens = slice(2 + length, 2 + 2 * length)
        predictions = {
            "visual": (output.visual_last_hidden_state[:, visual_tokens], visual, pixel_mask, visual_positions),
            "audio": (output.audio_last_hidden_state[:, visual_tokens], audio, audio_mask, audio_positions),
            "multimodal_visual": (multimodal[:, visual_tokens], visual, pixel_mask, visual_positions),
            "multimodal_audio": (multimodal[:, audio_tokens], audio, audio_mask, audio_positions),
        }
        losses, correct, counted = {}, 0, 0
        for name, (hidden, targets, real, positions) in predictions.items():
            loss, hits = self._mep_loss(self.mep_heads[name], hidden, targets, real, positions)
            losses[name] = loss
            correct, counted = correct + hits.sum(), counted + hits.numel()
        multimodal_mep_loss = (losses["multimodal_visual"] + losses["multimodal_audio"]) / 2

        # Each modality's part of the multimodal output is pooled as the downstream head pools it. The product gives
        # the MLP the agreement of the two directly; from a concatenation alone it would have to learn that
        # multiplicative interaction, which it does slowly.
        visual_pooled = summary_and_mean(multimodal[:, : 1 + length], pixel_mask)
        audio_pooled = summary_and_mean(multimodal[:, 1 + length :], audio_mask)
        cpp_features = torch.cat([visual_pooled, audio_pooled, visual_pooled * audio_pooled], dim=-1)
        cpp_logits = self.cpp_head(cpp_features).squeeze(-1)
        cpp_labels = (~swapped).to(cpp_logits.dtype)
        cpp_loss = F.binary_cross_entropy_with_logits(cpp_logits, cpp_labels)
        total = losses["visual"] + losses["audio"] + multimodal_mep_loss + cpp_loss
        result = PemtForPreTrainingOutput(
            loss=total,
            visual_mep_loss=losses["visual"],
            audio_mep_loss=losses["audio"],
            multimodal_mep_loss=multimodal_mep_loss,
            cpp_loss=cpp_loss,
            mep_accuracy=correct.float() / max(counted, 1),
            cpp_accuracy=((cpp_logits > 0) == swapped.logical_not()).float().mean(),
            cpp_logits=cpp_logits,
            cpp_labels=cpp_labels,
            model_output=output,
        )
        return result if return_dict else result.to_tuple()

    def _mask_segments(
        self, embeddings: torch.Tensor, real: torch.Tensor, mask_embedding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """BERT-style corruption of CNN embeddings; returns the corrupted copy and the boolean masked positions."""
        real = real.bool()
        scores = torch.rand(real.shape, device=embeddings.device).masked_fill(~real, 2.0)
        positions = (scores < self.config.mask_probability) & real
        # Short clips would often get no masked segment at 15%; every clip with a real segment masks at least one.
        lowest = scores.argmin(dim=1, keepdim=True)
        positions.scatter_(1, lowest, real.gather(1, lowest))
        choice = torch.rand(real.shape, device=embeddings.device)
        use_mask_vector = positions & (choice < 0.8)
        use_random = positions & (choice >= 0.8) & (choice < 0.9)
        flat_real = embeddings[real]
        random_pick = flat_real[torch.randint(flat_real.shape[0], real.shape, device=embeddings.device)]
        corrupted = torch.where(use_mask_vector[..., None], mask_embedding.to(embeddings.dtype), embeddings)
        corrupted = torch.where(use_random[..., None], random_pick, corrupted)
        return corrupted, positions

    def _mep_loss(
        self, head: PemtMepHead, hidden: torch.Tensor, targets: torch.Tensor, real: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """InfoNCE at masked positions: the true embedding (index 0) against sampled negatives."""
        real = real.bool()
        pool = targets[real]
        # Index of each real segment in `pool`, so that a masked segment can be excluded from its own negatives.
        pool_index = (real.flatten().cumsum(0) - 1).view(real.shape)
        anchor_positions = pool_index[positions]
        anchors = targets[positions]
        negatives = sample_negatives(
            anchors, pool, anchor_positions, self.config.mep_num_negatives, self.config.negative_sampling,
            self.config.negative_sampling_temperature,
        )
        candidates = torch.cat([anchors[:, None], pool[negatives]], dim=1)
        scores = head(hidden[positions], candidates) / self.config.mep_temperature
        loss = F.cross_entropy(scores.float(), torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device))
        return loss, scores.argmax(dim=-1) == 0


__all__ = [
    "PemtModel",
    "PemtPreTrainedModel",
    "PemtForAudioVisualClassification",
    "PemtForPreTraining",
    "PemtModelOutput",
    "PemtClassifierOutput",
    "PemtForPreTrainingOutput",
    "sample_negatives",
]
