"""PEFT LoRA on PEMT's attention projections, targeted by their names as for any transformers model."""

from __future__ import annotations

import pytest
import torch

from pemt import PemtConfig, PemtForAudioVisualClassification

peft = pytest.importorskip("peft", reason="PEFT is an optional extra (pip install pemt[peft])")


def inputs(config: PemtConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t, side = config.num_segments, config.eval_crop_size
    return {
        "pixel_values": torch.randn(2, t, 3, config.frames_per_segment, side, side, generator=g),
        "audio_values": torch.randn(2, t, 1, config.num_mel_bins, config.audio_frames, generator=g),
    }


def base_model() -> PemtForAudioVisualClassification:
    torch.manual_seed(0)
    return PemtForAudioVisualClassification(PemtConfig.from_preset("tiny", num_labels=3)).eval()


def test_lora_on_query_and_value_trains_and_round_trips(tmp_path):
    model = base_model()
    config = model.config
    x = inputs(config)
    with torch.no_grad():
        before = model(**x).logits
    lora = peft.LoraConfig(target_modules=["query", "value"], r=4, lora_alpha=8, modules_to_save=["classifier"])
    peft_model = peft.get_peft_model(model, lora)
    wrapped = [name for name, module in peft_model.named_modules() if isinstance(module, peft.tuners.lora.LoraLayer)]
    assert wrapped and all(name.endswith(("attention.query", "attention.value")) for name in wrapped)
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name or "classifier" in name for name in trainable)
    with torch.no_grad():  # LoRA's B starts at zero: the adapted model is the base model
        torch.testing.assert_close(peft_model(**x).logits, before)

    optimiser = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    labels = torch.tensor([0, 2])
    # Steps in eval mode: BatchNorm's running statistics belong to the base model, which the adapter file does not
    # hold; training mode would change them and the reloaded model could not match.
    for _ in range(3):
        optimiser.zero_grad()
        loss = peft_model(**x, labels=labels).loss
        loss.backward()
        optimiser.step()
    lora_b = [p for name, p in peft_model.named_parameters() if "lora_B" in name]
    assert all(p.abs().sum() > 0 for p in lora_b), "every adapter got a gradient"
    with torch.no_grad():
        adapted = peft_model(**x).logits
    assert (adapted - before).abs().max() > 1e-4, "negative control: training changed the outputs"

    peft_model.save_pretrained(tmp_path)
    reloaded = peft.PeftModel.from_pretrained(base_model(), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**x).logits, adapted)
