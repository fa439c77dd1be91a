"""The CNNs in channels-last layout (`config.cnn_memory_format`): the same outputs, gradients and BatchNorm statistics
as PyTorch's default contiguous layout, with every activation really in the format, and kept through save/load."""
# The weights stay contiguous in both layouts (see `_MemoryFormatMixin`); the layout is the activations'.

from __future__ import annotations

import pytest
import torch
from torch import nn

from pemt import PemtConfig, PemtForAudioVisualClassification, PemtModel

# Float32 sums in another order: channels-last convolutions differ from contiguous ones by rounding only.
TOLERANCE = {"atol": 1e-4, "rtol": 1e-3}


@pytest.fixture(autouse=True)
def one_thread():
    """oneDNN's multi-threaded fp32 channels-last Conv3d backward corrupts the heap at these tiny sizes (torch 2.13,
    CPU; a segmentation fault or "corrupted size vs. prev_size" with two threads, none with one). That is why
    `cnn_memory_format` defaults to "contiguous"; the layout's equivalence is checked where oneDNN is sound."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(**overrides) -> PemtConfig:
    return PemtConfig.from_preset("tiny", **overrides)


def pair(cls=PemtModel, **overrides) -> tuple[nn.Module, nn.Module]:
    """The same weights in the contiguous and the channels-last layout."""
    torch.manual_seed(0)
    contiguous = cls(tiny(cnn_memory_format="contiguous", **overrides))
    channels_last = cls(tiny(cnn_memory_format="channels_last", **overrides))
    channels_last.load_state_dict(contiguous.state_dict())
    return contiguous, channels_last


def inputs(batch: int = 2, segments: int = 3, padded: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    c = tiny()
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, segments, dtype=torch.long)
    if padded:
        mask[0, -1] = 0  # a padded segment: skipped by the CNN runner, outside BatchNorm's batch statistics
    return {
        "pixel_values": torch.randn(batch, segments, 3, c.frames_per_segment, c.eval_crop_size, c.eval_crop_size, generator=g),
        "audio_values": torch.randn(batch, segments, 1, c.num_mel_bins, c.audio_frames, generator=g),
        "pixel_mask": mask,
        "audio_mask": mask.clone(),
    }


def gradients(model: nn.Module, x: dict) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    model.zero_grad()
    out = model(**x)
    readout = torch.randn(out.multimodal_last_hidden_state.shape, generator=torch.Generator().manual_seed(1))
    loss = (out.multimodal_last_hidden_state * readout).sum() + out.visual_cnn_embeddings.square().mean() + out.audio_cnn_embeddings.square().mean()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, out.multimodal_last_hidden_state


def assert_grad_close(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    """Gradients sum many terms (up to ~500 here), and some are zero up to rounding (a key bias cannot change a
    softmax): the tolerance is a fraction of each tensor's largest entry."""
    atol = 1e-3 * expected.abs().max().item() + 1e-6
    torch.testing.assert_close(actual, expected, msg=name, atol=atol, rtol=0)


def assert_state_close(a: nn.Module, b: nn.Module) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, msg=name, **TOLERANCE)


def test_activations_run_in_the_configured_layout():
    contiguous, channels_last = pair()
    seen = {}  # (model, cnn) -> [input in the format] per convolution

    def record(key, fmt):
        def hook(module, args, out):
            # A tensor with one channel, or one pixel per channel, is contiguous in either layout (so the audio stem's
            # one-channel input says nothing, nor does the 1 x 1 map of a tiny model's last stage).
            if args[0].shape[1] > 1 and args[0].shape[2:].numel() > 1:
                seen.setdefault(key, []).append(args[0].is_contiguous(memory_format=fmt))
        return hook

    for tag, model in (("contiguous", contiguous), ("channels_last", channels_last)):
        for name, fmt in (("visual_cnn", torch.channels_last_3d), ("audio_cnn", torch.channels_last)):
            for conv in getattr(model, name).modules():
                if isinstance(conv, (nn.Conv2d, nn.Conv3d)):
                    conv.register_forward_hook(record((tag, name), fmt))
        # In bf16, as inference and mixed-precision training run: every convolution then goes to oneDNN. (In float32
        # on one thread PyTorch sends 1 x 1 x 1 convolutions of small batches to its own kernel, which returns
        # contiguous outputs that the next convolution converts back.)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            model.eval()(**inputs())
    for name in ("visual_cnn", "audio_cnn"):
        # Every convolution, not only the first: the format survives BatchNorm, ReLU, pooling and the residual sums.
        assert len(seen[("channels_last", name)]) > 5
        assert all(seen[("channels_last", name)]), name
        # Negative control: the contiguous model's activations are not channels-last.
        assert not any(seen[("contiguous", name)]), name


@pytest.mark.parametrize("train", [False, True])
def test_channels_last_matches_contiguous_outputs(train):
    contiguous, channels_last = pair()
    x = inputs()
    a = contiguous.train(train)(**x)
    b = channels_last.train(train)(**x)
    for field in ("visual_cnn_embeddings", "audio_cnn_embeddings", "multimodal_last_hidden_state"):
        torch.testing.assert_close(b[field], a[field], msg=field, **TOLERANCE)
    # Training mode: BatchNorm's running statistics moved the same way (padding excluded in both).
    assert_state_close(channels_last, contiguous)
    # Negative control: the tolerance tells a real difference apart (one stem weight nudged; a whole filter scaled
    # would be undone by BatchNorm in training mode).
    with torch.no_grad():
        channels_last.visual_cnn.stem[0].weight[0, 0, 0, 0, 0].add_(0.05)
    changed = channels_last(**x).visual_cnn_embeddings
    assert not torch.allclose(changed, a.visual_cnn_embeddings, **TOLERANCE)


def test_channels_last_matches_contiguous_gradients_with_chunks_and_checkpointing():
    overrides = {"cnn_chunk_size": 3, "cnn_checkpointing": True}
    contiguous, channels_last = pair(**overrides)
    contiguous.train()
    channels_last.train()
    x = inputs()
    reference, out_a = gradients(contiguous, x)
    grads, out_b = gradients(channels_last, x)
    torch.testing.assert_close(out_b, out_a, **TOLERANCE)
    assert reference.keys() == grads.keys()
    for name in reference:
        assert_grad_close(grads[name], reference[name], name)
    # Parameters and their gradients stay contiguous (transformers' convention; the layout is the activations').
    assert all(p.is_contiguous() and p.grad.is_contiguous() for p in channels_last.parameters() if p.grad is not None)
    # BatchNorm: one update per chunk (5 real segments in chunks of 3), same statistics as the contiguous model.
    assert channels_last.visual_cnn.stem[1].num_batches_tracked.item() == 2
    assert_state_close(channels_last, contiguous)
    # Negative control: other inputs give other gradients, beyond the tolerance.
    other, _ = gradients(channels_last, inputs(seed=1))
    with pytest.raises(AssertionError):
        assert_grad_close(other["visual_cnn.stem.0.weight"], reference["visual_cnn.stem.0.weight"], "control")


def test_optimiser_steps_match_contiguous_training():
    contiguous, channels_last = pair(PemtForAudioVisualClassification, num_labels=3)
    labels = torch.tensor([0, 2])
    for model in (contiguous, channels_last):
        model.train()
        optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
        for seed in range(2):
            optimiser.zero_grad()
            model(**inputs(seed=seed), labels=labels).loss.backward()
            optimiser.step()
    for (name, a), b in zip(contiguous.state_dict().items(), channels_last.state_dict().values()):
        torch.testing.assert_close(b, a, msg=name, atol=1e-4, rtol=1e-3)


def test_from_pretrained_keeps_the_layout_setting_and_the_outputs(tmp_path):
    _, model = pair(PemtForAudioVisualClassification, num_labels=3)
    model.eval()
    x = inputs()
    expected = model(**x).logits
    model.save_pretrained(tmp_path)
    loaded = PemtForAudioVisualClassification.from_pretrained(tmp_path)
    assert loaded.config.cnn_memory_format == "channels_last"
    assert loaded.pemt.visual_cnn.memory_format == torch.channels_last_3d
    torch.testing.assert_close(loaded(**x).logits, expected)
    # The same checkpoint runs in the contiguous layout with the same outputs.
    contiguous = PemtForAudioVisualClassification.from_pretrained(tmp_path, cnn_memory_format="contiguous")
    torch.testing.assert_close(contiguous(**x).logits, expected, **TOLERANCE)


def test_unknown_memory_format_is_a_clear_error():
    with pytest.raises(ValueError, match="cnn_memory_format is 'nhwc'; choose one of channels_last, contiguous"):
        tiny(cnn_memory_format="nhwc")
