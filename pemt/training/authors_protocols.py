"""The authors' downstream protocols (their `configs/{kinetics-sounds,ucf101,esc50}/config.yaml`), as presets of
`pemt finetune --authors_protocol NAME`.

Each preset is data: model config overrides (head, modality, segments, loss) and fine-tuning arguments (learning
rates, weight decay, optimiser, test views). What the Trainer cannot reproduce is listed in `NOT_REPRODUCED`.
"""

from __future__ import annotations

from torch import nn

__all__ = ["AUTHORS_PROTOCOLS", "NOT_REPRODUCED", "apply_protocol", "authors_parameter_groups"]

# The optimiser all three configs use: Adam (L2 weight decay, not AdamW's decoupled one), eps 1e-6, no warm-up.
_ADAM = {"optimizer": "adam", "adam_epsilon": 1e-6, "weight_decay": 5e-6, "warmup_steps": 0}

AUTHORS_PROTOCOLS: dict[str, dict[str, dict]] = {
    # Audio-visual fine-tuning of the whole model with the per-segment head, cosine schedule; tested on 10 evenly
    # spaced segments per clip (one sequence) through 3 spatial crops.
    "kinetics-sounds": {
        "model": {"classifier_head": "segment", "classifier_modality": "audio-visual", "classifier_dropout": 0.5},
        "args": {**_ADAM, "lr_scheduler_type": "cosine", "head_learning_rate": 1e-3, "learning_rate": 1e-4,
                 "num_temporal_views": 1, "num_spatial_crops": 3, "linear_probe": False},
    },
    # Visual-only: the visual CNN alone on single 32-frame clips, fine-tuned, cosine schedule; tested on 10 temporal x
    # 3 spatial views.
    "ucf101": {
        "model": {"classifier_head": "cnn", "classifier_modality": "visual", "num_segments": 1, "classifier_dropout": 0.5},
        "args": {**_ADAM, "lr_scheduler_type": "cosine", "head_learning_rate": 0.03, "learning_rate": 1e-4,
                 "num_temporal_views": 10, "num_spatial_crops": 3, "linear_probe": False},
    },
    # Audio linear evaluation: the frozen audio CNN and one linear layer, multi-margin loss (margin 0.1), linear
    # schedule; 2-second clips as 128 frames of a 1380-sample window (their n_fft = 2 * (floor(88200 / 128) + 1));
    # 10 test views.
    "esc50": {
        "model": {"classifier_head": "cnn", "classifier_modality": "audio", "num_segments": 1, "classifier_dropout": 0.1,
                  "classifier_loss": "multi_margin", "classifier_margin": 0.1, "n_fft": 1380, "hop_length": 690},
        "args": {**_ADAM, "lr_scheduler_type": "linear", "head_learning_rate": 3e-3, "num_temporal_views": 10,
                 "num_spatial_crops": 1, "linear_probe": True},
    },
}

NOT_REPRODUCED = (
    "epochs are steps unless --num_train_epochs is given; ESC-50's exact 2.0 s window (pemt's segment spans "
    "frames_per_segment * frame_stride / video_fps = 2.13 s, of which the first 128 frames, 2.0 s, are kept); the "
    "authors' nearest-neighbour resizing (pemt: bilinear, antialiased)"
)


def apply_protocol(name: str, argument_groups: tuple, argv: list[str]) -> dict:
    """Sets protocol `name`'s fine-tuning arguments on whichever of `argument_groups` (parsed dataclasses) holds each,
    unless `argv` gives that option explicitly, and returns its model config overrides."""
    protocol = AUTHORS_PROTOCOLS[name]
    given = {a.split("=")[0][2:] for a in argv if a.startswith("--")}
    for field_name, value in protocol["args"].items():
        if field_name in given:
            continue
        holders = [group for group in argument_groups if hasattr(group, field_name)]
        if not holders:
            raise KeyError(f"protocol {name}: no option {field_name}")
        setattr(holders[0], field_name, value)
    return dict(protocol["model"])


def authors_parameter_groups(model: nn.Module, head_lr: float, backbone_lr: float, weight_decay: float, train_backbone: bool) -> list[dict]:
    """The authors' groups: heads and backbone at their own learning rates, BatchNorm parameters without weight decay."""
    head_ids = {id(p) for p in model.head_parameters()}
    groups = {"head": [], "head_bn": [], "backbone": [], "backbone_bn": []}
    for module in model.modules():
        batch_norm = isinstance(module, nn.modules.batchnorm._BatchNorm)
        for parameter in module.parameters(recurse=False):
            if not parameter.requires_grad:
                continue
            part = "head" if id(parameter) in head_ids else "backbone"
            if part == "backbone" and not train_backbone:
                continue
            groups[part + ("_bn" if batch_norm else "")].append(parameter)
    lrs = {"head": head_lr, "backbone": backbone_lr}
    return [
        {"params": params, "lr": lrs[name.split("_")[0]], "weight_decay": 0.0 if name.endswith("_bn") else weight_decay}
        for name, params in groups.items()
        if params
    ]
