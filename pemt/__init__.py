"""pemt: Parameter-Efficient Multimodal Transformers (AVBERT) for audio-visual video, in Hugging Face Transformers."""

from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForPreTraining,
    AutoModelForVideoClassification,
    AutoProcessor,
)
from transformers.pipelines import PIPELINE_REGISTRY

from .model.compile_pemt import compile_pemt
from .model.configuration_pemt import PRESETS, PemtConfig
from .model.media_pemt import MediaDecodeError, open_media
from .model.feature_extraction_pemt import PemtFeatureExtractor
from .model.modeling_pemt import (
    PemtClassifierOutput,
    PemtEmbeddingsMixin,
    PemtFeaturesOutput,
    PemtForAudioVisualClassification,
    PemtForPreTraining,
    PemtForPreTrainingOutput,
    PemtModel,
    PemtModelOutput,
    PemtPreTrainedModel,
)
from .model.pipeline_correspondence_pemt import AudioVisualCorrespondencePipeline
from .model.pipeline_features_pemt import AudioVisualFeatureExtractionPipeline
from .model.pipeline_pemt import AudioVisualClassificationPipeline
from .model.processing_pemt import PemtProcessor, segment_starts
from .model.video_processing_pemt import PemtVideoProcessor

# Every Auto-class registration lives here. Local registration makes the Auto classes resolve "pemt" while the
# package is installed; registration for auto classes writes `auto_map` into saved configs and processor files, so
# that Hub copies load with `trust_remote_code=True` where pemt is not installed. (`AutoVideoProcessor` is left
# alone: it needs torchvision, which PEMT does not use; `AutoProcessor` builds the video processor itself.)
AutoConfig.register("pemt", PemtConfig, exist_ok=True)
AutoModel.register(PemtConfig, PemtModel, exist_ok=True)
AutoModelForPreTraining.register(PemtConfig, PemtForPreTraining, exist_ok=True)
AutoModelForVideoClassification.register(PemtConfig, PemtForAudioVisualClassification, exist_ok=True)
AutoProcessor.register(PemtConfig, PemtProcessor, exist_ok=True)
AutoFeatureExtractor.register(PemtConfig, PemtFeatureExtractor, exist_ok=True)
PemtConfig.register_for_auto_class()
PemtModel.register_for_auto_class("AutoModel")
PemtForPreTraining.register_for_auto_class("AutoModelForPreTraining")
PemtForAudioVisualClassification.register_for_auto_class("AutoModelForVideoClassification")
PemtProcessor.register_for_auto_class()
PemtFeatureExtractor.register_for_auto_class()
PIPELINE_REGISTRY.register_pipeline(
    "audio-visual-classification",
    pipeline_class=AudioVisualClassificationPipeline,
    pt_model=AutoModelForVideoClassification,
    type="multimodal",
)
PIPELINE_REGISTRY.register_pipeline(
    "audio-visual-feature-extraction",
    pipeline_class=AudioVisualFeatureExtractionPipeline,
    pt_model=AutoModel,
    type="multimodal",
)
PIPELINE_REGISTRY.register_pipeline(
    "audio-visual-correspondence",
    pipeline_class=AudioVisualCorrespondencePipeline,
    pt_model=AutoModelForPreTraining,
    type="multimodal",
)

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "compile_pemt",
    "AudioVisualClassificationPipeline",
    "AudioVisualCorrespondencePipeline",
    "AudioVisualFeatureExtractionPipeline",
    "PemtEmbeddingsMixin",
    "PemtFeaturesOutput",
    "PemtProcessor",
    "PemtFeatureExtractor",
    "PemtVideoProcessor",
    "MediaDecodeError",
    "open_media",
    "segment_starts",
    "PemtConfig",
    "PemtModel",
    "PemtPreTrainedModel",
    "PemtForPreTraining",
    "PemtForAudioVisualClassification",
    "PemtModelOutput",
    "PemtClassifierOutput",
    "PemtForPreTrainingOutput",
]
