"""Parameter sharing, the paper's contribution, in one place.

Three independent switches of [`PemtConfig`] build every variant of the paper's table:

- `low_rank_dim` - [`PemtSharedLinear`]: each weight matrix whole (0), or factored as `x -> U Sigma_g normalize(V_g x)`
  with modality-private `V_g` and orthogonal `Sigma_g` and one shared `U`.
- `share_layers` - [`PemtLayerStack`]: one layer applied `num_hidden_layers` times, or distinct layers.
- `share_modalities` - [`PemtEncoder`]: one stack serves the visual, audio and multimodal Transformers (a modality
  index picks the private parts), or each modality has its own.

`sigma_cache` computes every `Sigma_g` once per forward instead of once per use.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .configuration_pemt import PemtConfig

# Modality indices select the private parts of shared weights (0 visual, 1 audio, 2 multimodal).
VISUAL, AUDIO, MULTIMODAL = 0, 1, 2
MODALITY_NAMES = ("visual", "audio", "multimodal")


class PemtSharedLinear(nn.Linear):
    r"""
    A linear map `in_features -> out_features` used by `num_modalities` modalities.

    With `low_rank_dim == 0` the whole matrix is shared. Otherwise the map is `x -> U(Sigma_g(normalize(V_g x)))`:
    `V_g` (no bias) and the orthogonal `Sigma_g` are private to modality `g`, `U` (with bias) is shared. The L2
    normalisation keeps the private factors on a common scale so one `U` can serve them all, and orthogonality
    keeps `Sigma_g` a pure rotation of that normalised code.

    It is an `nn.Linear` by type (with `in_features`, `out_features`, and `weight` / `bias` naming the shared matrix
    U, or the whole matrix) but holds no parameters of its own: adapter libraries that wrap linear layers by type, as
    PEFT's LoRA does for `target_modules=["query", "value"]`, then wrap it whole and add their update to its output,
    for every modality alike.
    """

    def __init__(self, in_features: int, out_features: int, num_modalities: int, low_rank_dim: int):
        nn.Module.__init__(self)  # not nn.Linear's: the parameters are the parts below
        self.in_features, self.out_features = in_features, out_features
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

    @property
    def weight(self) -> nn.Parameter:
        """The shared matrix: U, or the whole matrix without the decomposition."""
        return self.dense.weight if self.low_rank_dim == 0 else self.shared_up.weight

    @property
    def bias(self) -> nn.Parameter:
        return self.dense.bias if self.low_rank_dim == 0 else self.shared_up.bias

    def forward(self, hidden_states: torch.Tensor, modality: int) -> torch.Tensor:
        if self.low_rank_dim == 0:
            return self.dense(hidden_states)
        code = F.normalize(self.private_down[modality](hidden_states), dim=-1)
        # Under autocast, torch's orthogonal parametrisation forms Sigma_g = base @ matrix_exp(A) with the product in
        # bfloat16, which doubles Sigma's departure from orthogonality over rounding a float32 Sigma (and matrix_exp
        # itself is NaN in bfloat16 on CPU). A 128 x 128 matrix costs nothing in float32; its use below is autocast.
        # (Entered only under autocast: outside it the context changes nothing, and in an exported graph it would
        # leave an autocast node that `torch.export` cannot serialise.)
        device_type = hidden_states.device.type
        with torch.autocast(device_type, enabled=False) if torch.is_autocast_enabled(device_type) else contextlib.nullcontext():
            sigma = self.private_rotation[modality].weight
        return self.shared_up(F.linear(code, sigma.to(code.dtype)))


class PemtOrthogonal(nn.Module):
    r"""
    Parametrisation `Sigma = base @ matrix_exp(A)` with `A = tril(X) - tril(X)^T` skew-symmetric, so `Sigma` is
    orthogonal whatever the trained `X` (the parametrised weight's `original`). The arithmetic is torch's
    `orthogonal(..., orthogonal_map="matrix_exp")` (same state-dict keys and values: `parametrizations.weight.original`
    and `parametrizations.weight.0.base`), with two differences that loading needs. `base` is a real buffer from the
    start, where torch's registers `None` and fills it on the first assignment: a model built on the meta device, or
    loaded with `dtype=`, then has a `base` to load into instead of an "unexpected key". And `Sigma` is always formed
    in float32: `matrix_exp` has no half-precision CPU kernel, and a bfloat16 product doubles Sigma's departure from
    orthogonality; users cast it to their own dtype.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("base", torch.eye(dim))

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        lower = original.float().tril()
        return self.base.float() @ torch.matrix_exp(lower - lower.mT)

    @torch.no_grad()
    def right_inverse(self, sigma: torch.Tensor) -> torch.Tensor:
        """Assigning `weight = Q` stores the orthogonal factor of `Q` as `base` and a zero `original` (A = 0)."""
        if sigma.device.type != "meta":
            q, r = torch.linalg.qr(sigma.float())
            # Signs fixed so that an orthogonal `Q` is kept as it is rather than flipped column by column.
            self.base.copy_(q * r.diagonal().sign().where(r.diagonal() != 0, 1.0))
        return torch.zeros_like(sigma)


def random_rotation_generator(dim: int) -> torch.Tensor:
    """An `original` for [`PemtOrthogonal`] with an identity `base` that makes Sigma a uniformly random rotation:
    the strictly lower triangle of the matrix logarithm of a Haar-random matrix of determinant +1."""
    rotation = nn.init.orthogonal_(torch.empty(dim, dim, dtype=torch.float64))
    if torch.linalg.det(rotation) < 0:
        rotation[:, 0] = -rotation[:, 0]
    # log Q = V log(Lambda) V^-1 with eigenvalues on the unit circle; its real part is skew-symmetric (conjugate pairs
    # of eigenvalues get conjugate logarithms; an eigenvalue of exactly -1 has probability zero).
    values, vectors = torch.linalg.eig(rotation)
    logarithm = (vectors @ torch.diag_embed(values.log()) @ torch.linalg.inv(vectors)).real
    return ((logarithm - logarithm.mT) / 2).tril(-1).float()


def _orthogonal_linear(dim: int) -> nn.Linear:
    """A bias-free `dim x dim` linear map kept orthogonal by [`PemtOrthogonal`]; it starts as the identity
    (`_init_weights` assigns a random rotation)."""
    linear = nn.Linear(dim, dim, bias=False)
    # `unsafe`: Sigma is float32 even in a half-precision model, which the default check forbids.
    parametrize.register_parametrization(linear, "weight", PemtOrthogonal(dim), unsafe=True)
    # Registration passed the random initial weight through `right_inverse`; the buffer goes back to the identity so
    # that it is the same however the model is built (weights are set by `_init_weights`).
    linear.parametrizations.weight[0].base.copy_(torch.eye(dim))
    return linear


class PemtLayerStack(nn.Module):
    """`num_hidden_layers` layer applications: with `share_layers` one layer (built by `make_layer(config,
    num_modalities)`) is applied every time."""

    def __init__(self, config: PemtConfig, num_modalities: int, make_layer: Callable[[PemtConfig, int], nn.Module]):
        super().__init__()
        self.depth = config.num_hidden_layers
        distinct = 1 if config.share_layers else config.num_hidden_layers
        self.layers = nn.ModuleList(make_layer(config, num_modalities) for _ in range(distinct))

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

    def __init__(self, config: PemtConfig, make_layer: Callable[[PemtConfig, int], nn.Module]):
        super().__init__()
        self.share_modalities = config.share_modalities
        if config.share_modalities:
            self.shared = PemtLayerStack(config, 3, make_layer)
        else:
            self.per_modality = nn.ModuleList(PemtLayerStack(config, 1, make_layer) for _ in MODALITY_NAMES)

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


def sigma_cache(model: nn.Module) -> contextlib.AbstractContextManager:
    """Caches each `Sigma_g` for the duration of one forward: every layer application reuses it. Not under layer
    checkpointing while training: the recomputed layer would rebuild `Sigma` that the first pass took from the cache,
    and checkpointing requires both passes to do the same work."""
    if getattr(model, "is_activation_checkpointing", False) and model.training:
        return contextlib.nullcontext()
    return parametrize.cached()
