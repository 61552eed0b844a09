"""MVD models: student, teachers, fine-tuning ViT, AVA detector, stage-1 models, registry and checkpoint
interop."""

from mvd.models.checkpoint import CheckpointError, LoadReport, load_checkpoint, model_metadata, save_safetensors
from mvd.models.classifier import VideoViT
from mvd.models.detector import VideoViTDetector
from mvd.models.pretrain import MAEPretrain, VideoMAEPretrain
from mvd.models.registry import create_model, list_models, model_defaults
from mvd.models.student import MVDStudent
from mvd.models.teachers import Frozen, MAETeacher, VideoMAETeacher, freeze, unwrap
from mvd.models.vit import MaskedDecoder, ViTEncoder

__all__ = [
    "CheckpointError", "Frozen", "LoadReport", "MAEPretrain", "MAETeacher", "MVDStudent", "MaskedDecoder",
    "VideoMAEPretrain", "VideoMAETeacher", "VideoViT", "VideoViTDetector", "ViTEncoder", "create_model", "freeze",
    "list_models", "load_checkpoint", "model_defaults", "model_metadata", "save_safetensors", "unwrap",
]
