"""Build the artifact's metadata from a ``GradCAMModel`` (the schema lives in :mod:`gradcam_model.contract`)."""

from __future__ import annotations

from dataclasses import fields

from ..contract import METADATA_KEY, SCHEMA_VERSION, ArtifactMetadata

__all__ = ["SCHEMA_VERSION", "METADATA_KEY", "ArtifactMetadata", "metadata_for"]

# the fields an export adds; every other field is the wrapper's attribute of the same name
_EXPORT_FIELDS = frozenset({"schema_version", "format", "package_version", "torch_version", "opset"})


def metadata_for(wrapper, fmt: str, opset: int | None = None) -> ArtifactMetadata:
    """The metadata of ``wrapper`` (a ``GradCAMModel``) exported as ``fmt``."""
    import torch

    from .. import __version__

    recorded = {f.name: getattr(wrapper, f.name) for f in fields(ArtifactMetadata) if f.name not in _EXPORT_FIELDS}
    return ArtifactMetadata(
        **recorded,
        schema_version=SCHEMA_VERSION,
        format=fmt,
        package_version=__version__,
        torch_version=torch.__version__,
        opset=opset,
    )
