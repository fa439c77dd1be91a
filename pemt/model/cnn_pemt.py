"""The per-segment CNNs of PEMT: a 3D ResNet for video and a 2D ResNet for log-mel audio.

Each maps one segment to one embedding (global average pool of the last stage). Depths and widths come from
`PemtConfig`; the defaults are the paper's ResNet-50s (about 31.7M visual and 5.8M audio parameters).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .configuration_pemt import PemtConfig

# Bottleneck blocks widen their output 4x, as in every ResNet-50.
EXPANSION = 4

# `config.cnn_memory_format` -> the layout of the visual (5-D) and the audio (4-D) CNN's weights and activations.
MEMORY_FORMATS = {
    "channels_last": (torch.channels_last_3d, torch.channels_last),
    "contiguous": (torch.contiguous_format, torch.contiguous_format),
}


class _MemoryFormatMixin:
    """Runs a CNN in one memory format. oneDNN's and cuDNN's fast bf16 convolution kernels (AVX-512-BF16, AMX, tensor
    cores) are written for channels-last activations; in the default contiguous (NCDHW) layout every convolution
    reorders its input and output, and bf16 then buys little. The input is converted at the CNN's entry and every
    activation then stays in the format: a convolution runs channels-last when its input is, and BatchNorm, ReLU,
    pooling and the residual sums preserve it. The weights stay contiguous, as transformers expects of a model's
    parameters: oneDNN reorders them into its own blocked layout at every call whatever their layout (measured: the
    same time with channels-last weights), and under autocast they are cast at every call anyway.
    [`convert_memory_format`] converts them for a caller who wants it (cuDNN then skips its per-call conversion)."""

    memory_format: torch.memory_format

    @torch.no_grad()
    def convert_memory_format(self) -> None:
        """Stores every convolution weight in `self.memory_format`. In place (`.data`), so the `Parameter` objects an
        optimiser already holds stay the same; the values and state-dict keys do not change. Call it after
        initialising or loading weights: in-place initialisers draw in memory order, and loading replaces tensors."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Conv3d)) and module.weight.device.type != "meta":
                # `.to`, not `.contiguous`: a tensor with one channel (the audio stem's weight) counts as contiguous in
                # either layout, and only `.to` gives it the channels-last strides from which convolutions pick theirs.
                module.weight.data = module.weight.data.to(memory_format=self.memory_format)

    def _to_memory_format(self, inputs: torch.Tensor) -> torch.Tensor:
        # A no-op when the input is already in the format (the processor's tensors are contiguous, so this is one
        # copy of the input per call: negligible next to the convolutions). `.to` for the one-channel audio input, as
        # in `convert_memory_format`.
        return inputs.to(memory_format=self.memory_format)


def _conv_bn_relu(conv: nn.Module, channels: int, norm: type[nn.Module], relu: bool = True) -> list[nn.Module]:
    layers = [conv, norm(channels)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return layers


class PemtVisualBottleneck(nn.Module):
    """3D bottleneck: a temporal-only first convolution (kernel `t x 1 x 1`), a spatial 1 x 3 x 3 convolution
    that carries the stage's spatial stride, and a 1 x 1 x 1 expansion."""

    def __init__(self, in_channels: int, inner: int, temporal_kernel: int, spatial_stride: int):
        super().__init__()
        out = inner * EXPANSION
        self.branch = nn.Sequential(
            *_conv_bn_relu(
                nn.Conv3d(in_channels, inner, (temporal_kernel, 1, 1), padding=(temporal_kernel // 2, 0, 0), bias=False),
                inner,
                nn.BatchNorm3d,
            ),
            *_conv_bn_relu(
                nn.Conv3d(inner, inner, (1, 3, 3), stride=(1, spatial_stride, spatial_stride), padding=(0, 1, 1), bias=False),
                inner,
                nn.BatchNorm3d,
            ),
            *_conv_bn_relu(nn.Conv3d(inner, out, 1, bias=False), out, nn.BatchNorm3d, relu=False),
        )
        self.shortcut = (
            nn.Identity()
            if in_channels == out and spatial_stride == 1
            else nn.Sequential(
                nn.Conv3d(in_channels, out, 1, stride=(1, spatial_stride, spatial_stride), bias=False),
                nn.BatchNorm3d(out),
            )
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.branch(x) + self.shortcut(x))


class PemtAudioBottleneck(nn.Module):
    """2D bottleneck over (mel, time). Early stages factor the 3 x 3 convolution into 3 x 1 (frequency) then
    1 x 3 (time); each factor carries the stride along its own axis."""

    def __init__(self, in_channels: int, inner: int, stride: int, separable: bool):
        super().__init__()
        out = inner * EXPANSION
        if separable:
            middle = [
                *_conv_bn_relu(nn.Conv2d(inner, inner, (3, 1), stride=(stride, 1), padding=(1, 0), bias=False), inner, nn.BatchNorm2d),
                *_conv_bn_relu(nn.Conv2d(inner, inner, (1, 3), stride=(1, stride), padding=(0, 1), bias=False), inner, nn.BatchNorm2d),
            ]
        else:
            middle = _conv_bn_relu(nn.Conv2d(inner, inner, 3, stride=stride, padding=1, bias=False), inner, nn.BatchNorm2d)
        self.branch = nn.Sequential(
            *_conv_bn_relu(nn.Conv2d(in_channels, inner, 1, bias=False), inner, nn.BatchNorm2d),
            *middle,
            *_conv_bn_relu(nn.Conv2d(inner, out, 1, bias=False), out, nn.BatchNorm2d, relu=False),
        )
        self.shortcut = (
            nn.Identity()
            if in_channels == out and stride == 1
            else nn.Sequential(nn.Conv2d(in_channels, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.branch(x) + self.shortcut(x))


def _stages(blocks_per_stage: Sequence[int], width: int, make_block) -> tuple[nn.Sequential, int]:
    """Chains ResNet stages; `make_block(stage, index, in_channels, inner)` builds one block."""
    stages, channels = [], width
    for stage, depth in enumerate(blocks_per_stage):
        inner = width * 2**stage
        blocks = []
        for index in range(depth):
            blocks.append(make_block(stage, index, channels, inner))
            channels = inner * EXPANSION
        stages.append(nn.Sequential(*blocks))
    return nn.Sequential(*stages), channels


# oneDNN's bfloat16 Conv3d backward (torch 2.13, CPU) returns NaN gradients, or corrupts the heap and aborts, on small
# clips: measured with a temporal extent of 2 after the stem (any spatial size), and of 4 with 16 x 16 frames; sizes
# from 8 frames after the stem and 32 x 32 pixels up, and the paper's 16 and 112 x 112, gave finite gradients. The
# forward pass is sound at every size. Below these bounds a training forward that would run the visual CNN in bf16
# runs it in float32 (autocast), or stops with an error (bf16 weights, which cannot be run in float32 in place).
BF16_BACKWARD_MIN_FRAMES_AFTER_STEM = 8
BF16_BACKWARD_MIN_SIZE = 32


def _bf16_backward_unsafe(cnn: nn.Module, pixel_values: torch.Tensor) -> bool:
    """Whether this forward would record a bf16 Conv3d for oneDNN's backward at a size where it is broken."""
    if pixel_values.device.type != "cpu" or not torch.is_grad_enabled():
        return False
    weights_bf16 = cnn.stem[0].weight.dtype == torch.bfloat16
    autocast_bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    if not (weights_bf16 or autocast_bf16):
        return False
    if not (weights_bf16 or pixel_values.requires_grad or any(p.requires_grad for p in cnn.parameters())):
        return False
    conv = cnn.stem[0]
    frames = (pixel_values.shape[2] + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
    if frames >= BF16_BACKWARD_MIN_FRAMES_AFTER_STEM and min(pixel_values.shape[3:]) >= BF16_BACKWARD_MIN_SIZE:
        return False
    if weights_bf16:
        raise ValueError(
            f"The visual CNN has bfloat16 weights and is being trained on segments of {pixel_values.shape[2]} frames at "
            f"{tuple(pixel_values.shape[3:])} pixels, where oneDNN's bfloat16 Conv3d backward returns NaN on CPUs "
            f"(it needs at least {BF16_BACKWARD_MIN_FRAMES_AFTER_STEM} frames after the stride-2 stem and "
            f"{BF16_BACKWARD_MIN_SIZE} x {BF16_BACKWARD_MIN_SIZE} pixels). Train with float32 weights under bf16 "
            "autocast (`--mixed_precision bf16`), which runs the visual CNN in float32 at such sizes."
        )
    return True


class PemtVisualCNN(_MemoryFormatMixin, nn.Module):
    """Single-pathway 3D ResNet: `[N, 3, frames, H, W]` -> `[N, visual_embedding_dim]`."""

    def __init__(self, config: PemtConfig):
        super().__init__()
        self.memory_format = MEMORY_FORMATS[config.cnn_memory_format][0]
        width, t = config.visual_cnn_width, config.visual_stem_temporal_kernel
        self.stem = nn.Sequential(
            *_conv_bn_relu(
                nn.Conv3d(3, width, (t, 7, 7), stride=(2, 2, 2), padding=(t // 2, 3, 3), bias=False), width, nn.BatchNorm3d
            ),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        )
        kernels = config.visual_cnn_temporal_kernels
        self.stages, self.output_dim = _stages(
            config.visual_cnn_depths,
            width,
            lambda stage, index, cin, inner: PemtVisualBottleneck(
                cin, inner, kernels[stage], spatial_stride=2 if stage > 0 and index == 0 else 1
            ),
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pixel_values = self._to_memory_format(pixel_values)
        if _bf16_backward_unsafe(self, pixel_values):
            # Autocast on, but at this size oneDNN's bf16 backward is broken: this CNN runs in float32 instead.
            with torch.autocast("cpu", enabled=False):
                return self._run(pixel_values.float()).to(torch.bfloat16)
        return self._run(pixel_values)

    def _run(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(pixel_values)).mean(dim=(2, 3, 4))


class PemtAudioCNN(_MemoryFormatMixin, nn.Module):
    """2D ResNet over log-mel spectrograms, stride 2 in every stage: `[N, 1, mels, frames]` -> `[N, audio_embedding_dim]`."""

    def __init__(self, config: PemtConfig):
        super().__init__()
        self.memory_format = MEMORY_FORMATS[config.cnn_memory_format][1]
        width = config.audio_cnn_width
        # A separable stem looks along frequency and time separately, which suits spectrograms better than a
        # square kernel: harmonics and onsets are axis-aligned.
        self.stem = nn.Sequential(
            *_conv_bn_relu(nn.Conv2d(1, width, (9, 1), padding=(4, 0), bias=False), width, nn.BatchNorm2d),
            *_conv_bn_relu(nn.Conv2d(width, width, (1, 9), padding=(0, 4), bias=False), width, nn.BatchNorm2d),
        )
        separable = config.audio_separable_stages
        self.stages, self.output_dim = _stages(
            config.audio_cnn_depths,
            width,
            lambda stage, index, cin, inner: PemtAudioBottleneck(
                cin, inner, stride=2 if index == 0 else 1, separable=stage < separable
            ),
        )

    def forward(self, audio_values: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(self._to_memory_format(audio_values))).mean(dim=(2, 3))


__all__ = ["PemtVisualCNN", "PemtAudioCNN", "MEMORY_FORMATS"]




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

    Under `torch.export` / `torch.compile` with the CNN in eval mode, every segment is run instead (see
    [`_run_cnn_on_every_segment`]): the same values at real segments, without the data-dependent shapes.
    """
    if not cnn.training and torch.compiler.is_compiling():
        return _run_cnn_on_every_segment(cnn, segments, mask, out_dim)
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


def _run_cnn_on_every_segment(cnn: nn.Module, segments: torch.Tensor, mask: torch.Tensor, out_dim: int) -> torch.Tensor:
    """The graph-friendly twin of [`run_cnn_over_segments`]: the CNN runs on all `batch * T` segments and padded
    outputs are set to zero by a select on the mask. Selecting the real segments gives a tensor whose size depends
    on the mask's values, which `torch.export` and ONNX cannot express with a symbolic batch; this path has only
    static shapes.

    Only valid in eval mode: BatchNorm then normalises each segment with its running statistics, so computing the
    padding changes no real segment's output. In training, batch statistics would count the padding, so training
    keeps skipping it. Chunking is left out here (it saves memory, not values).
    """
    batch, length = mask.shape
    flat = segments.reshape(batch * length, *segments.shape[2:])
    embedded = cnn(flat).reshape(batch, length, out_dim)
    # `where`, not a multiply: a non-finite output at a padded segment must not leak as NaN.
    return torch.where(mask.bool().unsqueeze(-1), embedded, torch.zeros((), dtype=embedded.dtype, device=embedded.device))
