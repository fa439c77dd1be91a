"""pemt: Parameter-Efficient Multimodal Transformers (AVBERT) for audio-visual video, in Hugging Face Transformers."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForPreTraining,
    AutoModelForVideoClassification,
)

from .configuration_pemt import PRESETS, PemtConfig
from .modeling_pemt import (
    PemtClassifierOutput,
    PemtForAudioVisualClassification,
    PemtForPreTraining,
    PemtForPreTrainingOutput,
    PemtModel,
    PemtModelOutput,
    PemtPreTrainedModel,
)

# Local registration makes the Auto classes resolve "pemt" while the package is installed; registration for
# auto classes writes `auto_map` into saved configs, so that Hub copies load with `trust_remote_code=True` alone.
AutoConfig.register("pemt", PemtConfig)
AutoModel.register(PemtConfig, PemtModel)
AutoModelForPreTraining.register(PemtConfig, PemtForPreTraining)
AutoModelForVideoClassification.register(PemtConfig, PemtForAudioVisualClassification)
PemtConfig.register_for_auto_class()
PemtModel.register_for_auto_class("AutoModel")
PemtForPreTraining.register_for_auto_class("AutoModelForPreTraining")
PemtForAudioVisualClassification.register_for_auto_class("AutoModelForVideoClassification")

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "PemtConfig",
    "PemtModel",
    "PemtPreTrainedModel",
    "PemtForPreTraining",
    "PemtForAudioVisualClassification",
    "PemtModelOutput",
    "PemtClassifierOutput",
    "PemtForPreTrainingOutput",
]
