"""Build the artifact's metadata from a ``GradCAMModel`` (the schema lives in :mod:`gradcam_model.contract`)."""

from __future__ import annotations

from ..contract import METADATA_KEY, SCHEMA_VERSION, ArtifactMetadata

__all__ = ["SCHEMA_VERSION", "METADATA_KEY", "ArtifactMetadata", "metadata_for"]


def metadata_for(wrapper, fmt: str, opset: int | None = None) -> ArtifactMetadata:
    """The metadata of ``wrapper`` (a ``GradCAMModel``) exported as ``fmt``."""
    import torch

    from .. import __version__

    return ArtifactMetadata(
        schema_version=SCHEMA_VERSION,
        method=wrapper.method,
        target_layer=wrapper.target_layer,
        architecture=wrapper.architecture,
        num_classes=wrapper.num_classes,
        class_names=wrapper.class_names,
        input_size=wrapper.input_size,
        in_channels=wrapper.in_channels,
        mean=wrapper.mean,
        std=wrapper.std,
        top_k=wrapper.top_k,
        class_input=wrapper.class_input,
        upsample=wrapper.upsample,
        normalize=wrapper.normalize,
        example_size=wrapper.example_size,
        format=fmt,
        package_version=__version__,
        torch_version=torch.__version__,
        opset=opset,
    )
