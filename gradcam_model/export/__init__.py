"""Writers for deployable artifacts: ONNX and TorchScript, metadata embedded, atomic."""

from .metadata import METADATA_KEY, SCHEMA_VERSION, ArtifactMetadata
from .onnx import export_onnx
from .torchscript import export_torchscript

__all__ = ["ArtifactMetadata", "METADATA_KEY", "SCHEMA_VERSION", "export_onnx", "export_torchscript"]
